"""benchmarks/posteriordb_models.py: each posteriordb model builds, and its log density
(without Jacobian, centered) equals the Stan model block written out with scipy.stats."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats
from scipy.special import expit

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/posteriordb")

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="posteriordb data not present")


def _load():
    spec = importlib.util.spec_from_file_location("posteriordb_models",
                                                  ROOT / "benchmarks" / "posteriordb_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _normal_regression(p, d, sigma_prior=0.0):
    return (np.sum(stats.norm.logpdf(d["response"], d["design"] @ p["beta"], p["sigma"]))
            + sigma_prior)


def _reference(name, p, d):
    """The Stan model block (with all normalizing constants), scipy.stats."""
    if name == "diamonds":
        return (np.sum(stats.norm.logpdf(p["b"], 0, 1))
                + stats.t.logpdf(p["Intercept"], 3, 8, 10)
                + np.log(2) + stats.t.logpdf(p["sigma"], 3, 0, 10)
                + np.sum(stats.norm.logpdf(d["Y"], p["Intercept"] + d["Xc"] @ p["b"],
                                           p["sigma"])))
    if name == "kidiq":
        return _normal_regression(p, d, np.log(2) + stats.cauchy.logpdf(p["sigma"], 0, 2.5))
    if name in ("mesquite", "nes2000"):
        return _normal_regression(p, d)
    if name == "seeds":
        alphas = sum(stats.norm.logpdf(p[k], 0, 1000)
                     for k in ("alpha0", "alpha1", "alpha2", "alpha12"))
        logit = (p["alpha0"] + p["alpha1"] * d["x1"] + p["alpha2"] * d["x2"]
                 + p["alpha12"] * d["x1x2"] + p["b"])
        return (alphas + stats.gamma.logpdf(p["tau"], 0.001, scale=1000.0)
                + np.sum(stats.norm.logpdf(p["b"], 0, 1 / np.sqrt(p["tau"])))
                + np.sum(stats.binom.logpmf(d["n"], d["N"], expit(logit))))
    if name == "surgical":
        return (stats.norm.logpdf(p["mu"], 0, 1000)
                + stats.invgamma.logpdf(p["sigmasq"], 0.001, scale=0.001)
                + np.sum(stats.norm.logpdf(p["b"], p["mu"], np.sqrt(p["sigmasq"])))
                + np.sum(stats.binom.logpmf(d["r"], d["n"], expit(p["b"]))))
    if name == "gp_pois_regr":
        x = d["x"]
        cov = (p["alpha"] ** 2 * np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / p["rho"] ** 2)
               + 1e-10 * np.eye(len(x)))
        f = np.linalg.cholesky(cov) @ p["f_tilde"]
        return (stats.gamma.logpdf(p["rho"], 25, scale=1 / 4)
                + np.log(2) + stats.norm.logpdf(p["alpha"], 0, 2)
                + np.sum(stats.norm.logpdf(p["f_tilde"]))
                + np.sum(stats.poisson.logpmf(d["k"], np.exp(f))))
    raise AssertionError(name)


EXPECTED_SIZES = {"diamonds": 26, "kidiq": 4, "mesquite": 7, "nes2000": 10, "seeds": 26,
                  "surgical": 14, "gp_pois_regr": 13}


def test_every_model_builds_and_matches_its_stan_model_block():
    module = _load()
    assert set(module.MODELS) == set(EXPECTED_SIZES)
    for name in module.MODELS:
        model, data = module.load(name)
        bound = model.bind(data, reparam="centered")
        assert bound.size == EXPECTED_SIZES[name], name
        x = 0.3 * jax.random.normal(jax.random.PRNGKey(len(name)), (bound.size,))
        # one compiled call: eager evaluation op by op is slower than compiling here
        params, lp = jax.jit(lambda x: (bound.constrain(x, deterministic=False),
                                        bound.logdensity(x, jacobian=False)))(x)
        params, lp = {k: np.asarray(v) for k, v in params.items()}, float(lp)
        np.testing.assert_allclose(lp, _reference(name, params, data), rtol=1e-10,
                                   err_msg=name)
