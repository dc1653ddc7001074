"""hbm.map_vs_mean and hbm.plots.map_vs_mean on eight schools and radon."""

import warnings

import numpy as np
import pytest
import scipy.optimize
from scipy import stats

import hbm
from hbm.compare import hierarchical_scales
from hbm.errors import ConfigurationError


def _exact_posterior_mean_tau(y, sigma):
    """E[tau | y] for eight schools by quadrature over (mu, log tau); theta integrated
    out: y_j | mu, tau ~ N(mu, sigma_j^2 + tau^2), mu ~ N(0, 5), tau ~ HalfCauchy(5)."""
    mu = np.linspace(-40.0, 50.0, 1801)
    log_tau = np.linspace(-14.0, 8.0, 2201)
    tau = np.exp(log_tau)
    sd = np.sqrt(sigma[None, :] ** 2 + tau[:, None] ** 2)  # (tau, school)
    # log density over the (log tau, mu) grid, including the Jacobian tau of log tau
    loglik = stats.norm.logpdf(y[None, None, :], mu[None, :, None], sd[:, None, :]).sum(-1)
    logp = (loglik + stats.norm.logpdf(mu, 0.0, 5.0)[None, :]
            + stats.halfcauchy.logpdf(tau, scale=5.0)[:, None] + log_tau[:, None])
    weight = np.exp(logp - logp.max())
    marginal = np.trapezoid(weight, mu, axis=1)  # over mu, per log tau
    return np.trapezoid(marginal * tau, log_tau) / np.trapezoid(marginal, log_tau)


@pytest.fixture(scope="module")
def schools():
    model, data = hbm.models.eight_schools(centered=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hbm.HbmWarning)
        fit = hbm.sample(model, data, chains=4, warmup=500, draws=500, seed=1, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = hbm.map_vs_mean(model, data, fit=fit)
    return model, data, fit, report, caught


def test_schools_layout_and_no_warning_spam(schools):
    model, data, fit, report, caught = schools
    assert list(report.index) == ["mu", "tau"] + [f"theta[{s}]" for s in "ABCDEFGH"]
    assert list(report.columns[:8]) == ["map", "mode_jacobian", "mean", "median", "sd",
                                        "std_distance", "q05", "q95"]
    assert not [w for w in caught if issubclass(w.category, hbm.HbmWarning)]
    assert report.attrs["fit"] is fit
    assert report.attrs["map"].method == "map"
    assert report.attrs["mode_jacobian"].info["jacobian"] is True


def test_schools_tau_collapses_and_the_rest_is_the_limit_map(schools):
    model, data, fit, report, _ = schools
    assert hierarchical_scales(model.bind(data, reparam="centered"),
                               {k: np.median(v, axis=(0, 1)) for k, v in
                                fit.posterior.items()}) == {"theta": {"tau"}}
    assert report.loc["tau", "group_scale"] and report.loc["tau", "collapsed"]
    assert report.loc["tau", "boundary"] and report.loc["tau", "outside_90"]
    assert report.loc["tau", "map"] < 1e-100
    assert report["collapsed"].sum() == 1 and not report.loc["mu", "group_scale"]
    assert report.attrs["map_is_limit"]
    # at tau = 0 every theta equals mu and mu is the precision-weighted mean with its prior
    y, sigma = np.asarray(data["y"]), np.asarray(data["sigma"])
    expected_mu = np.sum(y / sigma**2) / (np.sum(1 / sigma**2) + 1 / 5.0**2)
    np.testing.assert_allclose(report.loc["mu", "map"], expected_mu, rtol=1e-6)
    np.testing.assert_allclose(report.filter(like="theta", axis=0)["map"], expected_mu,
                               rtol=1e-6)


def test_schools_columns_match_the_draws(schools):
    _, _, fit, report, _ = schools
    theta = fit.posterior["theta"].reshape(-1, 8)
    tau = fit.posterior["tau"].reshape(-1)
    np.testing.assert_allclose(report.filter(like="theta", axis=0)["mean"], theta.mean(0),
                               rtol=1e-12)
    np.testing.assert_allclose(report.loc["tau", ["mean", "median", "sd", "q05", "q95"]]
                               .to_numpy(float),
                               [tau.mean(), np.median(tau), tau.std(ddof=1),
                                *np.quantile(tau, [0.05, 0.95])], rtol=1e-12)
    np.testing.assert_allclose(report["std_distance"],
                               (report["map"] - report["mean"]) / report["sd"], rtol=1e-12)
    outside = (report["map"] < report["q05"]) | (report["map"] > report["q95"])
    assert (report["outside_90"] == outside).all()


def test_schools_posterior_mean_of_tau_matches_quadrature(schools):
    _, data, fit, report, _ = schools
    import arviz

    exact = _exact_posterior_mean_tau(np.asarray(data["y"], float),
                                      np.asarray(data["sigma"], float))
    assert 3.4 < exact < 3.8  # the known value, about 3.6
    ess = float(arviz.ess(fit.posterior["tau"], method="mean"))
    mcse = report.loc["tau", "sd"] / np.sqrt(ess)
    z = (report.loc["tau", "mean"] - exact) / mcse
    assert abs(z) < 4, (report.loc["tau", "mean"], exact, mcse)


def test_fit_and_sampler_options_are_exclusive(schools):
    model, data, fit, _, _ = schools
    with pytest.raises(ConfigurationError):
        hbm.map_vs_mean(model, data, fit=fit, draws=10)


def test_plot_writes_png(schools, tmp_path):
    _, _, _, report, _ = schools
    path = tmp_path / "map_vs_mean.png"
    fig = hbm.plots.map_vs_mean(report, path=path)
    assert fig.axes and path.exists()
    head = path.read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    import matplotlib.pyplot as plt

    fig2, ax = plt.subplots()
    assert hbm.plots.map_vs_mean(report, ax=ax) is fig2
    plt.close("all")
    with pytest.raises(ConfigurationError):
        hbm.plots.map_vs_mean(report[["map"]])


# ------------------------------------------------------------------------------ radon
def _scipy_map(model, data):
    """Classical MAP (no Jacobian) by scipy's L-BFGS-B on a model's flat log density."""
    import jax

    bound = model.bind(data, reparam="centered")
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda x: -bound.logdensity(x, jacobian=False)))

    def objective(x):
        v, g = value_and_grad(x)
        return float(v), np.asarray(g, dtype=float)

    x0 = np.zeros(bound.size)
    result = scipy.optimize.minimize(objective, x0, jac=True, method="L-BFGS-B",
                                     options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000})
    assert result.success, result.message
    return {k: np.asarray(v) for k, v in bound.constrain(result.x).items()}


@pytest.fixture(scope="module")
def radon():
    model, data = hbm.models.radon_varying_intercept()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hbm.HbmWarning)
        fit = hbm.sample(model, data, chains=2, warmup=200, draws=200, seed=0, progress=False)
    report = hbm.map_vs_mean(model, data, fit=fit)
    return model, data, fit, report


def test_radon_county_sd_map_beside_posterior(radon):
    model, data, fit, report, = radon
    row = report.loc["sigma_county"]
    draws = fit.posterior["sigma_county"].reshape(-1)
    np.testing.assert_allclose([row["mean"], row["sd"]], [draws.mean(), draws.std(ddof=1)],
                               rtol=1e-12)
    assert row["group_scale"] and row["collapsed"] and row["map"] < 1e-100
    assert row["q05"] > 0.1  # the posterior itself is far from 0
    effects = report.filter(like="county_effect", axis=0)
    assert len(effects) == 85 and not effects["collapsed"].any()
    assert np.all(np.abs(effects["map"]) < 1e-12)


def test_radon_limit_map_equals_independent_pooled_optimization(radon):
    """With the county sd collapsed, (beta, sigma) maximize the complete-pooling model's
    density (same priors): scipy on that other model's log density gives the same."""
    _, _, _, report = radon
    pooled_model, pooled_data = hbm.models.radon_pooled()
    expected = _scipy_map(pooled_model, pooled_data)
    got = report.loc[["beta[intercept]", "beta[floor]", "sigma"], "map"].to_numpy(float)
    want = np.concatenate([expected["beta"], np.atleast_1d(expected["sigma"])])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
