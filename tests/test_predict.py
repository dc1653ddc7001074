"""Tests of hbm.predict: prior predictive, posterior predictive, new groups.

Statistical checks are z-tests whose null distribution is exact given the posterior
draws: a predictive draw minus the draw's linear predictor is, conditionally on that
draw's parameters, Normal(0, v_s) with a known v_s, independently across draws (fresh
noise and fresh group effects per draw), so ``mean(r / sqrt(v))`` and
``mean(r**2 / v) - 1`` have known standard errors ``1 / sqrt(S)`` and ``sqrt(2 / S)``.
"""

import warnings

import jax
import numpy as np
import pytest

import hbm
from hbm import dist
from hbm.errors import ConfigurationError, DataError, ModelError
from hbm.prediction import predict, prior_predictive

Z = 4.0  # two-sided z bound of every statistical check (fixed seeds)


def z_mean(u):
    """z of the mean of iid N(0, 1) values."""
    u = np.ravel(u)
    return u.mean() / (1.0 / np.sqrt(u.size))


def z_chi2(u):
    """z of the mean of u**2 - 1 for iid N(0, 1) values (variance test)."""
    u = np.ravel(u)
    return (np.mean(u**2) - 1.0) / np.sqrt(2.0 / u.size)


def z_variance_vs(r, v):
    """z of mean(r**2) against mean(v), r_s ~ N(0, v_s) independently."""
    r, v = np.ravel(r), np.ravel(v)
    return (np.mean(r**2) - np.mean(v)) / np.sqrt(np.sum(2.0 * v**2)) * r.size


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def radon():
    return hbm.models.radon_varying_intercept()


@pytest.fixture(scope="module")
def nuts_fit(radon):
    model, data = radon
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hbm.sample(model, data, chains=2, warmup=300, draws=300, seed=11)


@pytest.fixture(scope="module")
def radon_prior(radon):
    model, data = radon
    return prior_predictive(model, data, draws=1000, seed=3)


def fit_from_draws(model, data, draws, chains=2):
    """A Fit whose 'posterior' is a set of given parameter draws (prior draws here):
    predictions are conditional on the draws, so any draws test the machinery."""
    post = {k: np.asarray(draws[k]).reshape((chains, -1) + np.shape(draws[k])[1:])
            for k in model.prior}
    return hbm.Fit(post, method="nuts", model=model, data=data, dims=model.dims,
                   coords=model.coords, observed_data={"y": data["y"]})


@pytest.fixture(scope="module")
def prior_fit(radon, radon_prior):
    model, data = radon
    return fit_from_draws(model, data, {k: v[:200] for k, v in radon_prior.items()})


def well_measured_county(data):
    counts = np.bincount(np.asarray(data["county"]))
    return int(np.argmax(counts))


# --------------------------------------------------------------- prior predictive
def test_prior_predictive_shapes(radon, radon_prior):
    model, data = radon
    n, j = len(data["y"]), len(model.coords["county"])
    assert radon_prior["beta"].shape == (1000, 2)
    assert radon_prior["sigma"].shape == (1000,)
    assert radon_prior["sigma_county"].shape == (1000,)
    assert radon_prior["county_effect"].shape == (1000, j)
    assert radon_prior["y"].shape == (1000, n)
    assert hbm.prior_predictive is prior_predictive


def test_prior_predictive_moments(radon, radon_prior):
    model, data = radon
    y = np.asarray(data["y"])
    sd_y = np.std(y, ddof=1)
    s = radon_prior
    # beta[0] ~ Normal(mean(y), 2.5 sd(y)); sigma ~ HalfNormal(sd(y))
    assert abs((s["beta"][:, 0].mean() - y.mean()) / (2.5 * sd_y / np.sqrt(1000))) < Z
    half_mean, half_sd = sd_y * np.sqrt(2 / np.pi), sd_y * np.sqrt(1 - 2 / np.pi)
    assert abs((s["sigma"].mean() - half_mean) / (half_sd / np.sqrt(1000))) < Z
    # county effects ~ Normal(0, sigma_county) given sigma_county
    u = s["county_effect"] / s["sigma_county"][:, None]
    assert abs(z_mean(u)) < Z and abs(z_chi2(u)) < Z
    # y given the parameters: Normal(linear predictor, sigma)
    floor, county = np.asarray(data["floor"]), np.asarray(data["county"])
    mu = s["beta"][:, :1] + s["beta"][:, 1:] * floor + s["county_effect"][:, county]
    u = (s["y"] - mu) / s["sigma"][:, None]
    assert abs(z_mean(u)) < Z and abs(z_chi2(u)) < Z


def test_prior_predictive_validates():
    model = hbm.Model.from_logdensity(lambda p, d: -p["mu"] ** 2,
                                      params={"mu": hbm.constraints.real})
    with pytest.raises(ModelError, match="cannot simulate"):
        prior_predictive(model, None, draws=10)
    model, data = hbm.models.eight_schools()
    with pytest.raises(ConfigurationError, match="draws"):
        prior_predictive(model, data, draws=0)


# ------------------------------------------------------- posterior predictive (NUTS)
@pytest.fixture(scope="module")
def replicated(nuts_fit):
    return nuts_fit.predict(seed=5)


def test_posterior_predictive_shapes_and_attached(nuts_fit, replicated, radon):
    _, data = radon
    assert set(replicated) == {"y"}
    assert replicated["y"].shape == (2, 300, len(data["y"]))
    assert nuts_fit.posterior_predictive is replicated
    assert np.all(np.isfinite(replicated["y"]))


def linear_predictor(fit, data):
    post = fit.posterior
    floor, county = np.asarray(data["floor"]), np.asarray(data["county"])
    return (post["beta"][..., :1] + post["beta"][..., 1:] * floor
            + post["county_effect"][..., county])


def test_posterior_predictive_mean_equals_linear_predictor(nuts_fit, replicated, radon):
    _, data = radon
    mu = linear_predictor(nuts_fit, data)
    sigma = nuts_fit.posterior["sigma"][..., None]
    diff = replicated["y"] - mu                       # (chain, draw, obs)
    draws = diff.shape[0] * diff.shape[1]
    # per observation: mean over draws of y_rep equals the mean of the linear predictor
    z_obs = diff.sum(axis=(0, 1)) / np.sqrt((sigma**2).sum(axis=(0, 1)))
    j = well_measured_county(data)
    chosen = [0, int(np.flatnonzero(np.asarray(data["county"]) == j)[0]), 400, 918]
    assert np.all(np.abs(z_obs[chosen]) < Z), z_obs[chosen]
    assert abs(z_obs.sum() / np.sqrt(z_obs.size)) < Z
    assert abs((np.sum(z_obs**2) - z_obs.size) / np.sqrt(2 * z_obs.size)) < Z
    # and the spread around it is sigma
    assert abs(z_chi2(diff / sigma)) < Z
    assert draws == 600


def test_predict_none_equals_predict_on_fit_data(prior_fit, radon):
    _, data = radon
    a = prior_fit.predict(seed=9)["y"]
    b = prior_fit.predict(data, seed=9)["y"]
    np.testing.assert_array_equal(a, b)
    assert prior_fit.predictions["y"] is b
    assert set(prior_fit.predictions_constant_data) == {"floor", "county"}


# ------------------------------------------------------------------- new groups
M = 40  # observations of the new county A and of the well-measured county


@pytest.fixture(scope="module")
def new_data(radon):
    model, data = radon
    known = model.coords["county"][well_measured_county(data)]
    county = ["NEW_A"] * M + ["NEW_B"] + [known] * M
    floor = [0.0] * M + [1.0] + [0.0] * M
    return {"county": county, "floor": floor}


@pytest.fixture(scope="module")
def sampled(nuts_fit, new_data):
    return nuts_fit.predict(new_data, new_groups="sample", seed=21)["y"]


@pytest.fixture(scope="module")
def at_mean(nuts_fit, new_data):
    return nuts_fit.predict(new_data, new_groups="mean", seed=21)["y"]


def test_new_groups_recorded_and_attached(nuts_fit, sampled, new_data):
    assert sampled.shape == (2, 300, 2 * M + 1)
    assert nuts_fit.info["predict_new_groups"] in ({"county": ["NEW_A", "NEW_B"]},)
    np.testing.assert_array_equal(nuts_fit.predictions_constant_data["floor"],
                                  new_data["floor"])


def test_new_group_sample_matches_hierarchy(nuts_fit, sampled):
    post = nuts_fit.posterior
    b0, b1 = post["beta"][..., 0], post["beta"][..., 1]
    s2, sc2 = post["sigma"] ** 2, post["sigma_county"] ** 2
    # NEW_B, one observation on the first floor: y - b0 - b1 ~ N(0, sigma_c^2 + sigma^2)
    r_b = sampled[..., M] - b0 - b1
    assert abs(z_variance_vs(r_b, sc2 + s2)) < Z
    assert abs(z_mean(r_b / np.sqrt(sc2 + s2))) < Z
    # NEW_A's mean over its M observations: ~ N(0, sigma_c^2 + sigma^2 / M)
    r_a = sampled[..., :M].mean(axis=-1) - b0
    assert abs(z_variance_vs(r_a, sc2 + s2 / M)) < Z
    # observations of one new group share its effect: differences are pure noise
    d = sampled[..., 0] - sampled[..., 1]
    assert abs(z_variance_vs(d, 2 * s2)) < Z


def test_new_group_wider_than_well_measured_group(nuts_fit, sampled):
    arviz = pytest.importorskip("arviz")
    new_mean = sampled[..., :M].mean(axis=-1)          # (chain, draw)
    old_mean = sampled[..., M + 1:].mean(axis=-1)
    v_new, v_old = new_mean.var(ddof=1), old_mean.var(ddof=1)
    n_new = float(arviz.ess(new_mean))
    n_old = float(arviz.ess(old_mean))
    se = np.sqrt(2 * v_new**2 / n_new + 2 * v_old**2 / n_old)
    assert (v_new - v_old) / se > Z


def test_new_group_mean_uses_population_mean(nuts_fit, sampled, at_mean):
    post = nuts_fit.posterior
    b0, b1 = post["beta"][..., 0], post["beta"][..., 1]
    s2, sc2 = post["sigma"] ** 2, post["sigma_county"] ** 2
    # the effect of a new group is 0 (Normal(0, sigma_county)'s mean): only noise remains
    r_a = at_mean[..., :M].mean(axis=-1) - b0
    assert abs(z_variance_vs(r_a, s2 / M)) < Z
    assert abs(z_mean(r_a / np.sqrt(s2 / M))) < Z
    r_b = at_mean[..., M] - b0 - b1
    assert abs(z_chi2(r_b / np.sqrt(s2))) < Z
    # same seed: identical noise, so "sample" - "mean" is the drawn effect, shared within
    # a new group, zero for the fitted county, and ~ Normal(0, sigma_county)
    effect = sampled - at_mean
    np.testing.assert_allclose(effect[..., :M], effect[..., :1].repeat(M, -1), atol=1e-12)
    np.testing.assert_array_equal(effect[..., M + 1:], 0.0)
    assert abs(z_variance_vs(effect[..., 0], sc2)) < Z
    assert abs(z_mean(effect[..., M] / np.sqrt(sc2))) < Z


def test_new_group_error_names_labels(nuts_fit, new_data):
    with pytest.raises(DataError, match=r"NEW_A.*NEW_B"):
        nuts_fit.predict(new_data, new_groups="error")
    # known groups only: no error
    known = {"county": new_data["county"][M + 1:], "floor": new_data["floor"][M + 1:]}
    assert nuts_fit.predict(known, new_groups="error", draws=3)["y"].shape == (2, 3, M)


def test_codes_and_labels_agree(prior_fit, radon):
    model, data = radon
    labels = model.coords["county"]
    j = len(labels)
    by_label = {"county": [labels[4], "ZED", labels[0], "ALPHA", "ZED"],
                "floor": [0.0, 1.0, 1.0, 0.0, 0.0]}
    # new groups by code: distinct codes >= J in increasing order; "ZED" came first
    by_code = {"county": np.array([4, j, 0, j + 7, j]), "floor": by_label["floor"]}
    a = prior_fit.predict(by_label, seed=2)["y"]
    b = prior_fit.predict(by_code, seed=2)["y"]
    np.testing.assert_array_equal(a, b)
    assert prior_fit.info["predict_new_groups"] == {"county": [f"code {j}", f"code {j + 7}"]}
    with pytest.raises(DataError, match="code 107"):
        prior_fit.predict({"county": [j + 22], "floor": [0.0]}, new_groups="error")
    with pytest.raises(DataError, match=">= 0"):
        prior_fit.predict({"county": [-1], "floor": [0.0]})


def test_predict_options_validated(prior_fit):
    with pytest.raises(ConfigurationError, match="new_groups"):
        prior_fit.predict(new_groups="nearest")
    with pytest.raises(ConfigurationError, match="draws"):
        prior_fit.predict(draws=10_000)
    out = prior_fit.predict(draws=7)
    assert out["y"].shape[:2] == (2, 7)
    bare = hbm.Fit({"mu": np.zeros((1, 3))}, method="nuts")
    with pytest.raises(ConfigurationError, match="model"):
        bare.predict()
    # a DataFrame of new rows needs a formula model, which knows how to read it
    import pandas as pd
    with pytest.raises(DataError, match="hbm.formula"):
        prior_fit.predict(pd.DataFrame({"floor": [0.0, 1.0]}))


# ------------------------------------------------- correlated intercepts and slopes
def correlated_draws(n, n_county, seed):
    """Parameter draws of the varying intercept-slope model (any values will do: the
    checks are conditional on them)."""
    rng = np.random.default_rng(seed)
    rho = rng.uniform(-0.9, 0.9, n)
    chol = np.zeros((n, 2, 2))
    chol[:, 0, 0], chol[:, 1, 0], chol[:, 1, 1] = 1.0, rho, np.sqrt(1 - rho**2)
    draws = {"beta": rng.normal([1.5, -0.7], 0.1, (n, 2)),
             "sigma_county": rng.uniform(0.2, 1.0, (n, 2)),
             "L_county": chol, "sigma": rng.uniform(0.5, 1.0, n)}
    z = rng.normal(size=(n, n_county, 2))
    tril = draws["sigma_county"][:, :, None] * chol
    draws["county_effect"] = z @ np.swapaxes(tril, -1, -2)
    return draws


@pytest.mark.parametrize("seed", [4, 5])
def test_new_groups_with_correlated_effects(seed):
    model, data = hbm.models.radon_varying_intercept_slope()
    fit = fit_from_draws(model, data, correlated_draws(1000, len(model.coords["county"]),
                                                       seed=seed))
    new = {"county": ["N1", "N1", "N2"], "floor": [0.0, 1.0, 1.0]}
    y = fit.predict(new, seed=8)["y"]
    ym = fit.predict(new, new_groups="mean", seed=8)["y"]
    post = fit.posterior
    b0, b1 = post["beta"][..., 0], post["beta"][..., 1]
    s2 = post["sigma"] ** 2
    tril = post["sigma_county"][..., :, None] * post["L_county"]
    cov = tril @ np.swapaxes(tril, -1, -2)
    c00, c01, c11 = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
    r0, r1 = y[..., 0] - b0, y[..., 1] - b0 - b1
    assert abs(z_chi2(r0 / np.sqrt(c00 + s2))) < Z
    assert abs(z_chi2(r1 / np.sqrt(c00 + 2 * c01 + c11 + s2))) < Z
    assert abs(z_chi2((r1 - r0) / np.sqrt(c11 + 2 * s2))) < Z      # shared intercept
    r2 = y[..., 2] - b0 - b1                                         # another new group
    assert abs(z_mean(r2 / np.sqrt(c00 + 2 * c01 + c11 + s2))) < Z
    assert abs(z_mean((r2 - r1) / np.sqrt(2 * (c00 + 2 * c01 + c11 + s2)))) < Z
    # "mean": population mean effect 0, only noise
    m = np.stack([ym[..., 0] - b0, ym[..., 1] - b0 - b1, ym[..., 2] - b0 - b1], -1)
    assert abs(z_chi2(m / np.sqrt(s2)[..., None])) < Z


# --------------------------------------------------------------- guards on the model
def small_model(group_level_prior: bool):
    """Three groups; the effect's prior location depends on a group covariate u when
    ``group_level_prior``, else u enters the likelihood."""
    if group_level_prior:
        effect = lambda p, d: dist.Normal(p["gamma"] * d["u"], p["tau"])  # noqa: E731
        mean = lambda p, d: p["effect"][d["g"]]  # noqa: E731
    else:
        effect = lambda p, d: dist.Normal(0.0, p["tau"]).expand((3,))  # noqa: E731
        mean = lambda p, d: (p["gamma"] * d["u"] + p["effect"])[d["g"]]  # noqa: E731
    model = hbm.Model(
        prior={"gamma": dist.Normal(0.0, 1.0), "tau": dist.HalfNormal(1.0),
               "effect": effect},
        likelihood=lambda p, d: {"y": dist.Normal(mean(p, d), 0.5)},
        dims={"effect": ("g",)}, coords={"g": ["a", "b", "c"]})
    data = {"y": np.array([0.1, 0.3, -0.2, 1.0, 0.5, 0.0]),
            "g": np.array([0, 0, 1, 1, 2, 2], dtype=np.int32),
            "u": np.array([-1.0, 0.0, 2.0])}
    return model, data


def small_draws(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return {"gamma": rng.normal(size=n), "tau": rng.uniform(0.5, 1.0, n),
            "effect": rng.normal(size=(n, 3))}


def test_group_level_data_must_be_extended_for_new_groups():
    model, data = small_model(group_level_prior=False)
    fit = fit_from_draws(model, data, small_draws(), chains=1)
    with pytest.raises(DataError, match="'u'.*4 entries"):
        fit.predict({"g": ["a", "new"]})
    out = fit.predict({"g": ["a", "new"], "u": [-1.0, 0.0, 2.0, 5.0]})
    assert out["y"].shape == (1, 20, 2)
    # known groups only: the fitted u is reused
    assert fit.predict({"g": ["c", "a"]})["y"].shape == (1, 20, 2)


def test_group_specific_prior_refuses_new_groups():
    model, data = small_model(group_level_prior=True)
    fit = fit_from_draws(model, data, small_draws(), chains=1)
    with pytest.raises(ModelError, match="'effect'.*different distributions"):
        fit.predict({"g": ["new"], "u": [-1.0, 0.0, 2.0, 1.0]})
    assert fit.predict({"g": ["b"]})["y"].shape == (1, 20, 1)


# ------------------------------------------------------------------------- ArviZ
def test_to_arviz_gains_prediction_groups(prior_fit):
    prior_fit.predict(draws=5)
    prior_fit.predict({"county": ["AITKIN", "NEW"], "floor": [0.0, 1.0]}, draws=5)
    idata = prior_fit.to_arviz()
    groups = idata.groups() if callable(idata.groups) else idata.children  # ArviZ 0.x / 1.x
    assert "posterior_predictive" in groups and "predictions" in groups


@pytest.mark.parametrize("seed", [6, 7])
def test_new_groups_from_the_fitted_groups_gaussian(seed):
    """new_groups="fitted_gaussian": per draw, a new county's (intercept, slope) is drawn
    from the Gaussian with the mean and covariance of that draw's 85 fitted county
    effects (z-tests of the standardized residuals, fixed seeds)."""
    model, data = hbm.models.radon_varying_intercept_slope()
    draws = correlated_draws(1000, len(model.coords["county"]), seed=seed)
    draws["county_effect"] = draws["county_effect"] * np.array([1.0, 3.0]) + 0.4  # moved
    fit = fit_from_draws(model, data, draws)
    new = {"county": ["N1", "N1", "N2"], "floor": [0.0, 1.0, 1.0]}
    y = fit.predict(new, new_groups="fitted_gaussian", seed=9)["y"]
    post = fit.posterior
    effects = post["county_effect"]  # (chain, draw, county, 2)
    mean = effects.mean(axis=2)
    centered = effects - mean[..., None, :]
    cov = np.einsum("...gi,...gj->...ij", centered, centered) / (effects.shape[2] - 1)
    b0, b1 = post["beta"][..., 0], post["beta"][..., 1]
    s2 = post["sigma"] ** 2
    c00, c01, c11 = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
    r0 = y[..., 0] - b0 - mean[..., 0]
    r1 = y[..., 1] - b0 - b1 - mean[..., 0] - mean[..., 1]
    assert abs(z_mean(r0 / np.sqrt(c00 + s2))) < Z
    assert abs(z_chi2(r0 / np.sqrt(c00 + s2))) < Z
    assert abs(z_chi2(r1 / np.sqrt(c00 + 2 * c01 + c11 + s2))) < Z
    assert abs(z_chi2((r1 - r0) / np.sqrt(c11 + 2 * s2))) < Z      # shared intercept
    r2 = y[..., 2] - b0 - b1 - mean[..., 0] - mean[..., 1]            # another new group
    assert abs(z_mean((r2 - r1) / np.sqrt(2 * (c00 + 2 * c01 + c11 + s2)))) < Z
    # the hierarchy's own distribution ("sample") has mean 0, not the fitted groups' 0.4:
    # the two modes differ detectably
    ys = fit.predict(new, seed=9)["y"]
    assert abs(z_mean((ys[..., 0] - b0 - mean[..., 0]) / np.sqrt(c00 + s2))) > Z


def test_fitted_gaussian_needs_two_fitted_groups():
    model = hbm.Model(
        prior={"tau": dist.HalfNormal(1.0),
               "effect": lambda p, d: dist.Normal(0.0, p["tau"]).expand((1,))},
        likelihood=lambda p, d: {"y": dist.Normal(p["effect"][d["g"]], 0.5)},
        dims={"effect": ("g",)}, coords={"g": ["a"]})
    data = {"y": np.array([0.1, 0.3]), "g": np.array([0, 0], dtype=np.int32)}
    fit = fit_from_draws(model, data, {"tau": np.full(10, 0.5), "effect": np.zeros((10, 1))})
    with pytest.raises(DataError, match="at least two fitted groups"):
        fit.predict({"g": ["b"]}, new_groups="fitted_gaussian")
