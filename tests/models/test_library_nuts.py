"""NUTS on the model library: every model samples, and simulated truths are recovered.

Smoke: each library model (insteval only builds: too big for a test) runs a short NUTS
and returns finite draws of the declared names and shapes.

Recovery: on data simulated by :func:`hbm.models.simulate_crt` and
:func:`hbm.models.simulate_measurement_error` with known parameters, the 90% central
posterior intervals cover the truth about 90% of the time over several simulated data
sets (two-sided exact binomial test); the measurement-error slope is not attenuated
(pooled z-test against the truth) while the naive OLS slope on the observed covariate
is, by the reliability ratio ``x_sd^2 / (x_sd^2 + measurement_sd^2)`` (Fuller 1987,
"Measurement Error Models", sec. 1.1).

Thresholds. Frequentist coverage of Bayesian intervals at a fixed truth is close to
nominal when the priors are weak relative to the data; here they are weakly informative
and scaled to the data. 200 draws per fit put Monte Carlo noise in the interval ends,
which lowers coverage by about a percent. The binomial tests use alpha = 0.001 per
parameter, so with the ~11 tested quantities the family-wise false alarm rate is below
1.2%; seeds are fixed, so the outcome is deterministic. Compiled programs are shared:
the simulation studies reuse the library's ``crt`` and ``measurement_error`` model objects
(same data shapes), so only one program per model is compiled in this file.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import hbm
from hbm import models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SMOKE = dict(chains=2, warmup=150, draws=100, progress=False)
STUDY = dict(chains=2, warmup=150, draws=100, progress=False)
ALPHA = 0.001
N_DATASETS = 20


@functools.cache
def _model(name):
    """(model, data) of a library model, built once: one compiled program per model."""
    return models.MODELS[name]()


def _expected_shapes(model, data):
    """Names and constrained shapes (parameters and deterministics), traced, not compiled."""
    bound = model.bind(data)
    x = jax.ShapeDtypeStruct((bound.size,), jnp.float64)
    return {k: tuple(v.shape) for k, v in jax.eval_shape(bound.constrain, x).items()}


SAMPLED = [name for name in models.MODELS if name != "insteval"]


@pytest.mark.parametrize("name", SAMPLED)
def test_library_model_samples_finite_draws_of_declared_shapes(name):
    model, data = _model(name)
    fit = hbm.sample(model, data, seed=1, **SMOKE)
    expected = _expected_shapes(model, data)
    assert set(fit.posterior) == set(expected)
    for key, shape in expected.items():
        draws = np.asarray(fit.posterior[key])
        assert draws.shape == (SMOKE["chains"], SMOKE["draws"], *shape), key
        assert np.all(np.isfinite(draws)), key
    assert np.asarray(fit.sample_stats["diverging"]).shape == (2, 100)


def test_insteval_builds_and_binds():
    model, data = models.insteval()
    expected = _expected_shapes(model, data)
    assert expected["s_effect"] == (2972,) and expected["d_effect"] == (1128,)
    assert expected["sigma"] == ()


# ------------------------------------------------------------------ simulation studies
def _interval(draws, level=0.9):
    draws = np.asarray(draws).reshape(-1, *np.shape(draws)[2:])
    tail = (1.0 - level) / 2.0
    return np.quantile(draws, tail, axis=0), np.quantile(draws, 1.0 - tail, axis=0)


def _covers(draws, truth):
    low, high = _interval(draws)
    return bool(low <= truth <= high)


def _check_coverage(hits: dict, n: int):
    """Two-sided exact binomial test of each coverage count against 0.9."""
    report = {k: (v, stats.binomtest(v, n, 0.9).pvalue) for k, v in hits.items()}
    print("\ncoverage of 90% intervals over", n, "data sets:",
          {k: f"{v}/{n} (p={p:.3g})" for k, (v, p) in report.items()})
    for key, (count, pvalue) in report.items():
        assert pvalue > ALPHA, f"{key}: {count}/{n} covered, binomial p = {pvalue:.2g}"


CRT_TRUTH = dict(n_clusters=20, cluster_size=30, icc=0.1, effect=0.5, intercept=0.5,
                 total_sd=1.0)


@functools.cache
def _crt_study():
    """Per simulated CRT data set: posterior draws of the scalar quantities of interest."""
    model, _ = _model("crt")
    results = []
    for k in range(N_DATASETS):
        _, data = models.crt(models.simulate_crt(100 + k, **CRT_TRUTH))
        fit = hbm.sample(model, data, seed=k, **STUDY)
        post = fit.posterior
        results.append({"intercept": post["beta"][..., 0], "effect": post["beta"][..., 1],
                        "sigma_cluster": post["sigma_cluster"], "sigma": post["sigma"],
                        "icc": post["icc"], "design_effect": post["design_effect"]})
    return results


def _crt_true_values():
    icc, sd = CRT_TRUTH["icc"], CRT_TRUTH["total_sd"]
    return {"intercept": CRT_TRUTH["intercept"], "effect": CRT_TRUTH["effect"],
            "sigma_cluster": np.sqrt(icc) * sd, "sigma": np.sqrt(1 - icc) * sd, "icc": icc,
            "design_effect": 1.0 + (CRT_TRUTH["cluster_size"] - 1) * icc}


@pytest.mark.slow
def test_crt_recovers_truth_and_design_effect_coverage():
    truth = _crt_true_values()
    results = _crt_study()
    hits = {k: sum(_covers(r[k], truth[k]) for r in results) for k in truth}
    _check_coverage(hits, len(results))


@pytest.mark.slow
def test_crt_design_effect_is_recovered_not_one():
    """The posterior of the design effect centres on 1 + (m - 1) icc = 3.9, far from 1.

    Pooled z-test over the simulated data sets: the mean of the posterior medians against
    the truth, with the standard error from their spread (the median, not the mean,
    because the posterior of a variance ratio is right-skewed). With 20 clusters the
    half-normal prior on ``sigma_cluster`` pulls the estimate up a little, a bias small
    next to this standard error. A design effect of 1 (ignoring the clustering, as an
    individually randomized analysis would) is rejected.
    """
    truth = _crt_true_values()["design_effect"]
    medians = np.array([np.median(r["design_effect"]) for r in _crt_study()])
    se = medians.std(ddof=1) / np.sqrt(len(medians))
    z_truth = (medians.mean() - truth) / se
    z_one = (medians.mean() - 1.0) / se
    print(f"\ndesign effect: truth {truth:.2f}, mean posterior median {medians.mean():.2f} "
          f"(se {se:.2f}), z vs truth {z_truth:.2f}, z vs 1 {z_one:.1f}")
    assert abs(z_truth) < stats.norm.isf(ALPHA / 2)
    assert z_one > stats.norm.isf(ALPHA)


ME_TRUTH = dict(n=100, intercept=0.5, slope=1.0, sigma=0.5, x_mean=0.0, x_sd=1.0,
                measurement_sd=0.5)


@functools.cache
def _me_study():
    """Per simulated data set: posterior draws and the naive OLS slope on x_obs."""
    model, _ = _model("measurement_error")
    results = []
    for k in range(N_DATASETS):
        df = models.simulate_measurement_error(200 + k, **ME_TRUTH)
        _, data = models.measurement_error(df.drop(columns="x_true"))
        fit = hbm.sample(model, data, seed=k, **STUDY)
        post = fit.posterior
        ols_slope = np.polyfit(df["x_obs"], df["y"], 1)[0]
        results.append({"intercept": post["beta"][..., 0], "slope": post["beta"][..., 1],
                        "sigma": post["sigma"], "mu_x": post["mu_x"],
                        "sigma_x": post["sigma_x"], "ols_slope": ols_slope})
    return results


@pytest.mark.slow
def test_measurement_error_coverage():
    truth = {"intercept": ME_TRUTH["intercept"], "slope": ME_TRUTH["slope"],
             "sigma": ME_TRUTH["sigma"], "mu_x": ME_TRUTH["x_mean"],
             "sigma_x": ME_TRUTH["x_sd"]}
    results = _me_study()
    hits = {k: sum(_covers(r[k], truth[k]) for r in results) for k in truth}
    _check_coverage(hits, len(results))


@pytest.mark.slow
def test_measurement_error_slope_not_attenuated_but_naive_ols_is():
    """Latent-x slope: mean over data sets of the posterior means equals the truth (1).
    Naive OLS on x_obs: its mean equals the attenuated reliability * slope = 0.8 and is
    far below 1. Both by z-tests with standard errors from the spread over data sets."""
    results = _me_study()
    slope = ME_TRUTH["slope"]
    reliability = ME_TRUTH["x_sd"] ** 2 / (ME_TRUTH["x_sd"] ** 2 + ME_TRUTH["measurement_sd"] ** 2)
    bayes = np.array([np.mean(r["slope"]) for r in results])
    ols = np.array([r["ols_slope"] for r in results])

    def z(values, target):
        return (values.mean() - target) / (values.std(ddof=1) / np.sqrt(len(values)))

    print(f"\nslope truth {slope}; latent-x model mean {bayes.mean():.3f} "
          f"(z vs truth {z(bayes, slope):.2f}); naive OLS mean {ols.mean():.3f} "
          f"(z vs truth {z(ols, slope):.1f}, z vs {reliability * slope:.2f}: "
          f"{z(ols, reliability * slope):.2f})")
    critical = stats.norm.isf(ALPHA / 2)
    assert abs(z(bayes, slope)) < critical
    assert z(bayes, reliability * slope) > critical
    assert z(ols, slope) < -critical
    assert abs(z(ols, reliability * slope)) < critical
