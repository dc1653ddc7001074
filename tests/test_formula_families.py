"""Families, links, offsets, weights, priors and simulation of hbm.formula models.

Each family's pointwise log likelihood at a parameter point is checked against
``scipy.stats``; a recovery test checks that 90% Laplace intervals cover the true
coefficients of data sets simulated from the prior at the nominal rate (binomial test).
"""

import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import hbm
from hbm import dist
from hbm.results import Fit


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(3)
    n = 30
    x = rng.normal(size=n)
    return pd.DataFrame(dict(
        x=x, gauss=rng.normal(size=n), pos=rng.gamma(2.0, 1.5, n), unit=rng.beta(2, 3, n),
        count=rng.poisson(3.0, n), hit=rng.integers(0, 2, n), k=rng.integers(0, 6, n),
        off=rng.normal(size=n), w=rng.uniform(0.5, 2.0, n)))


def _point(model, data, seed=0):
    """Constrained parameters at a random point, without binding (no compilation)."""
    rng = np.random.default_rng(seed)
    p = {}
    for name, node in model.prior.items():
        d = node if isinstance(node, dist.Distribution) else node(p, data)
        p[name] = np.asarray(d.sample(jax.random.PRNGKey(int(rng.integers(1 << 30)))))
    return p


def _loglik(model, data, p):
    key = model.formula_spec.response_key
    return np.asarray(model.likelihood(p, data)[key].log_prob(data[key]))


def _inv(link, eta):
    return {"identity": eta, "log": np.exp(eta), "logit": special.expit(eta),
            "probit": stats.norm.cdf(eta), "cloglog": -np.expm1(-np.exp(eta))}[link]


@pytest.mark.parametrize("family, response, link, expected", [
    ("gaussian", "gauss", "identity", lambda y, m, p: stats.norm.logpdf(y, m, p["sigma"])),
    ("gaussian", "pos", "log", lambda y, m, p: stats.norm.logpdf(y, m, p["sigma"])),
    ("student", "gauss", "identity",
     lambda y, m, p: stats.t.logpdf(y, p["nu"], m, p["sigma"])),
    ("bernoulli", "hit", "logit", lambda y, m, p: stats.bernoulli.logpmf(y, m)),
    ("bernoulli", "hit", "probit", lambda y, m, p: stats.bernoulli.logpmf(y, m)),
    ("bernoulli", "hit", "cloglog", lambda y, m, p: stats.bernoulli.logpmf(y, m)),
    ("poisson", "count", "log", lambda y, m, p: stats.poisson.logpmf(y, m)),
    ("negbinomial", "count", "log", lambda y, m, p: stats.nbinom.logpmf(
        y, p["shape"], p["shape"] / (p["shape"] + m))),
    ("gamma", "pos", "log", lambda y, m, p: stats.gamma.logpdf(y, p["shape"],
                                                               scale=m / p["shape"])),
    ("lognormal", "pos", "identity", lambda y, m, p: stats.lognorm.logpdf(
        y, p["sigma"], scale=np.exp(m))),
    ("beta", "unit", "logit", lambda y, m, p: stats.beta.logpdf(y, m * p["phi"],
                                                                (1 - m) * p["phi"])),
])
def test_family_log_likelihood_matches_scipy(df, family, response, link, expected):
    priors = {"b": dist.Normal(0.0, 0.3)} if link in ("log", "identity") and \
        family in ("gaussian",) and response == "pos" else None
    model, data = hbm.formula(f"{response} ~ x", df, family=family, link=link, priors=priors)
    assert model.formula_spec.link == link
    p = _point(model, data)
    eta = np.asarray(data["X"]) @ p["b"]
    y = df[response].to_numpy()
    np.testing.assert_allclose(_loglik(model, data, p), expected(y, _inv(link, eta), p),
                               rtol=1e-9, atol=1e-9)


def test_binomial_links_and_trials_argument(df):
    for link in ("logit", "probit", "cloglog"):
        model, data = hbm.formula("k ~ x", df, family="binomial", link=link, trials=6)
        p = _point(model, data)
        m = _inv(link, np.asarray(data["X"]) @ p["b"])
        np.testing.assert_allclose(_loglik(model, data, p),
                                   stats.binom.logpmf(df["k"], 6, m), rtol=1e-9, atol=1e-9)


def test_offset_and_weights(df):
    model, data = hbm.formula("count ~ x", df, family="poisson", offset="off", weights="w")
    plain, plain_data = hbm.formula("count ~ x", df, family="poisson")
    p = _point(model, data)
    eta = np.asarray(data["X"]) @ p["b"] + df["off"].to_numpy()
    expected = df["w"].to_numpy() * stats.poisson.logpmf(df["count"], np.exp(eta))
    np.testing.assert_allclose(_loglik(model, data, p), expected, rtol=1e-9)
    # offsets and weights given as arrays
    model2, data2 = hbm.formula("count ~ x", df, family="poisson",
                                offset=df["off"].to_numpy(), weights=df["w"].to_numpy())
    np.testing.assert_allclose(_loglik(model2, data2, p), expected, rtol=1e-9)


def test_prior_overrides_and_table(df):
    model, _ = hbm.formula("gauss ~ x + (1 | k)", df, priors={
        "b": dist.Normal(0.0, 10.0), "b[x]": dist.Normal(1.0, 0.5),
        "sd_k": dist.HalfNormal(2.0), "sigma": dist.HalfStudentT(3.0, 1.0)})
    np.testing.assert_allclose(np.asarray(model.prior["b"].loc), [0.0, 1.0])
    np.testing.assert_allclose(np.asarray(model.prior["b"].scale), [10.0, 0.5])
    assert isinstance(model.prior["sd_k"], dist.HalfNormal)
    table = model.formula_spec.priors
    assert table.loc["b[x]", "source"] == "user (b[x])"
    assert table.loc["b[Intercept]", "source"] == "user (b)"
    assert table.loc["sd_k[Intercept]", "prior"] == "HalfNormal(scale=2)"
    assert table.loc["sigma", "source"] == "user (sigma)"
    # a class override applies to every sd; the parameter's own key wins over the class
    model, _ = hbm.formula("gauss ~ x + (1 | k) + (1 | hit)", df, priors={
        "sd": dist.HalfNormal(3.0), "sd_hit": dist.Exponential(2.0)})
    assert isinstance(model.prior["sd_k"], dist.HalfNormal)
    assert isinstance(model.prior["sd_hit"], dist.Exponential)


def test_predict_new_levels_draws_from_the_population(df):
    """New levels get fresh effects from the fitted hierarchy, per posterior draw: for
    each draw, a new group's prediction is Normal(b0 + b1 x, sqrt(z' S z + sigma^2))
    with S = diag(sd) L L^T diag(sd); standardized, the predictions are N(0, 1)."""
    model, data = hbm.formula("gauss ~ x + (1 + x | k)", df)
    rng = np.random.default_rng(2)
    draws, n_levels = 400, len(model.coords["k"])
    rho = rng.uniform(-0.9, 0.9, draws)
    L = np.zeros((draws, 2, 2))
    L[:, 0, 0], L[:, 1, 0], L[:, 1, 1] = 1.0, rho, np.sqrt(1 - rho**2)
    sd = rng.uniform(0.5, 2.0, (draws, 2))
    posterior = {"b": rng.normal(size=(draws, 2)), "sd_k": sd, "L_k": L,
                 "r_k": rng.normal(size=(draws, n_levels, 2)),
                 "sigma": rng.uniform(0.2, 1.0, draws)}
    fit = Fit({k: v[None] for k, v in posterior.items()}, method="map", model=model,
              data=data, dims=model.dims, coords=model.coords)
    n_new = 5
    new = pd.DataFrame({"x": np.linspace(-1, 1, n_new + 1),
                        "k": ["2"] + [f"new{i}" for i in range(n_new)]})
    out = fit.predict(new, new_groups="sample", seed=3)  # a DataFrame, as brms's newdata
    assert fit.info["predict_new_groups"]["k"] == [f"new{i}" for i in range(n_new)]
    # the DataFrame is the data dict formula_spec.new_data builds: same draws, same seed
    same = fit.predict(model.formula_spec.new_data(new), new_groups="sample", seed=3)
    np.testing.assert_array_equal(same["gauss"], out["gauss"])
    pred = out["gauss"][0]  # (draws, rows)
    z = np.column_stack([np.ones(n_new + 1), new["x"]])
    chol = sd[:, :, None] * L                                        # diag(sd) L
    sigma, b = posterior["sigma"], posterior["b"]
    var = np.sum(np.einsum("dij,ri->drj", chol, z) ** 2, axis=-1) + sigma[:, None] ** 2
    std = ((pred - b @ z.T) / np.sqrt(var))[:, 1:].ravel()           # the new levels only
    m = std.size
    assert abs(std.mean()) / np.sqrt(1.0 / m) < 3.5
    assert abs(std.var(ddof=1) - 1.0) / np.sqrt(2.0 / (m - 1)) < 3.5
    # the fitted level "2" uses its own effect: only the residual noise remains
    level = model.coords["k"].index("2")
    known = (pred[:, 0] - b @ z[0] - posterior["r_k"][:, level] @ z[0]) / sigma
    assert abs(known.mean()) / np.sqrt(1.0 / known.size) < 3.5
    assert abs(known.var(ddof=1) - 1.0) / np.sqrt(2.0 / (known.size - 1)) < 3.5


@pytest.mark.parametrize("family, response", [("poisson", "count"), ("bernoulli", "hit")])
def test_recovery_coverage_of_90_percent_laplace_intervals(df, family, response):
    """Data sets simulated from the prior; the 90% Laplace intervals of both coefficients
    must cover the true values at a rate consistent with 0.9 (exact binomial test at
    level 0.001). Fixed priors (not data-scaled) so the simulation's prior is the
    fitted one."""
    model, data = hbm.formula(f"{response} ~ x", df, family=family,
                              priors={"b": dist.Normal(0.0, 1.0)})
    datasets = 40
    sims = hbm.prior_predictive(model, data, draws=datasets, seed=11)  # works on the model
    assert sims[response].shape == (datasets, len(df)) and sims["b"].shape == (datasets, 2)
    hits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(datasets):
            fit = hbm.find_map(model, dict(data, **{response: sims[response][i]}),
                               laplace=True, draws=400, seed=i)
            b = np.asarray(fit.posterior["b"]).reshape(-1, 2)
            lo, hi = np.quantile(b, [0.05, 0.95], axis=0)
            hits.extend((lo <= sims["b"][i]) & (sims["b"][i] <= hi))
    result = stats.binomtest(int(np.sum(hits)), len(hits), 0.9)
    assert result.pvalue > 1e-3, (np.mean(hits), result.pvalue)
