"""The public drivers end to end: hbm.fit(method="auto") keeping NUTS and falling back to
ADVI, find_map(laplace=True), the hbm.advi wrapper, and the CLI's --method and --data."""

import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import hbm
from hbm import constraints, dist
from hbm.diagnostics import HbmWarning

# mu ~ N(M0, S0), y_i ~ N(mu, NOISE); log sigma ~ N(A, B) (sigma ~ LogNormal, no data):
# in unconstrained space (mu, log sigma) the posterior is exactly Gaussian.
M0, S0, NOISE, A, B = 1.0, 2.0, 1.5, -0.5, 0.7
Y = np.array([0.3, 2.1, 1.4, -0.2, 1.9, 0.8])
POST_VAR = 1.0 / (1.0 / S0**2 + Y.size / NOISE**2)
POST_MEAN = POST_VAR * (M0 / S0**2 + Y.sum() / NOISE**2)
EXACT_MEAN = np.array([POST_MEAN, A])
EXACT_COV = np.diag([POST_VAR, B**2])

conjugate = hbm.Model(
    prior={"mu": dist.Normal(M0, S0), "sigma": dist.LogNormal(A, B)},
    likelihood=lambda p, d: {"y": dist.Normal(p["mu"], NOISE)},
)
DATA = {"y": Y}


def unconstrained(fit):
    """(draws, 2) in the unconstrained coordinates (mu, log sigma)."""
    return np.column_stack([fit.posterior["mu"].ravel(), np.log(fit.posterior["sigma"].ravel())])


def assert_gaussian_draws(xs, mean, cov):
    """z-test of the sample mean and of each sample variance (Monte Carlo error of the
    variance of Gaussian draws: var * sqrt(2 / (n - 1)))."""
    n = xs.shape[0]
    z_mean = (xs.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    z_var = (xs.var(0, ddof=1) - np.diag(cov)) / (np.diag(cov) * np.sqrt(2.0 / (n - 1)))
    assert np.all(np.abs(z_mean) < 4.0), z_mean
    assert np.all(np.abs(z_var) < 4.0), z_var


def test_find_map_laplace_is_exact_on_a_gaussian_posterior():
    fit = hbm.find_map(conjugate, DATA, laplace=True, draws=4000, seed=1)
    assert fit.method == "laplace" and fit.info["jacobian"]
    assert fit.posterior["mu"].shape == (1, 4000)
    np.testing.assert_allclose(fit.info["unconstrained_mode"], EXACT_MEAN, atol=1e-6)
    np.testing.assert_allclose(fit.info["covariance"], EXACT_COV, atol=1e-6)
    assert_gaussian_draws(unconstrained(fit), EXACT_MEAN, EXACT_COV)
    assert fit.log_likelihood["y"].shape == (1, 4000, Y.size)


def test_advi_wrapper_recovers_the_gaussian_posterior():
    # Mean-field ADVI with sticking-the-landing gradients is exact when the posterior is
    # a Gaussian with independent coordinates (the family contains it).
    fit = hbm.advi(conjugate, DATA, method="meanfield", max_steps=3000, tol_rel_obj=0.0,
                   draws=4000, seed=2, progress=False)
    assert fit.method == "advi" and fit.info["advi_method"] == "meanfield"
    np.testing.assert_allclose(fit.info["mean"], EXACT_MEAN, atol=1e-6)
    np.testing.assert_allclose(fit.info["sd"], np.sqrt(np.diag(EXACT_COV)), atol=1e-6)
    assert fit.info["khat"] < 0.5
    assert_gaussian_draws(unconstrained(fit), EXACT_MEAN, EXACT_COV)
    assert fit.summary().loc["mu", "mean"] == pytest.approx(fit.posterior["mu"].mean(), abs=1e-3)


def test_fit_auto_keeps_nuts_on_a_healthy_posterior():
    # no warning at all: 4 x 1000 draws, so R-hat's own noise stays well below 1.01
    with warnings.catch_warnings():
        warnings.simplefilter("error", HbmWarning)
        fit = hbm.fit(conjugate, DATA, method="auto", chains=4, warmup=300, draws=1000,
                      seed=3, progress=False)
    assert fit.method == "nuts" and fit.fallback_reason is None
    draws = fit.posterior["mu"].ravel()
    ess = float(fit.summary().loc["mu", "ess_bulk"])
    assert abs(draws.mean() - POST_MEAN) / np.sqrt(POST_VAR / ess) < 4.0


def wall(p, d):
    """A standard normal cut by walls at |x| = 1.5 that cost 10^4 nats: any trajectory
    that reaches a wall has an energy error far above 1000, so a large share of NUTS
    transitions diverge."""
    x = p["x"]
    return -0.5 * x**2 - 1e4 * (jnp.abs(x) > 1.5)


walled = hbm.Model.from_logdensity(wall, params={"x": constraints.real})


def test_fit_auto_falls_back_to_advi_when_warmup_diverges():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = hbm.fit(walled, None, method="auto", chains=2, warmup=200, draws=200, seed=0,
                      progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, HbmWarning)]
    assert fit.method == "advi"
    assert "diverged" in fit.fallback_reason and "more than 20%" in fit.fallback_reason
    assert fit.info["fallback_reason"] == fit.fallback_reason
    assert fit.info["requested_method"] == "auto" and fit.info["advi_method"] == "fullrank"
    assert any("falling back to full-rank ADVI" in m for m in messages)
    assert fit.posterior["x"].shape == (1, 200)
    # the walls are invisible to gradients, so ADVI cannot fit them either; its own
    # quality check must say so rather than pass the approximation off as reliable
    assert fit.info["khat"] > 0.7
    assert any("Pareto k-hat" in m and "unreliable" in m for m in messages)


def test_fit_auto_falls_back_on_the_time_budget():
    with pytest.warns(HbmWarning, match="falling back"):
        fit = hbm.fit(conjugate, DATA, method="auto", time_budget=1e-9, chains=2, warmup=100,
                      draws=100000, seed=4, progress=False)
    assert fit.method == "advi" and "the whole time budget" in fit.fallback_reason
    with pytest.raises(hbm.ConfigurationError, match="time_budget"):
        hbm.fit(conjugate, DATA, method="auto", time_budget=0.0)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hbm.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


def posterior_of(path):
    import xarray as xr

    return xr.open_dataset(path, group="posterior")


MODEL_FILE = """
import numpy as np
import jax.numpy as jnp
import hbm
from hbm import constraints, dist


def normal_mean(df=None):
    y = np.asarray(df["y"], dtype=float) if df is not None else np.zeros(3)
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)})
    return model, {"y": y}


def walled():
    def wall(p, d):
        return -0.5 * p["x"] ** 2 - 1e4 * (jnp.abs(p["x"]) > 1.5)
    return hbm.Model.from_logdensity(wall, params={"x": constraints.real}), None
"""


def test_cli_data_option_feeds_the_model(tmp_path):
    (tmp_path / "models.py").write_text(MODEL_FILE)
    y = np.array([2.0, 3.5, 1.0, 4.5])
    (tmp_path / "y.csv").write_text("y\n" + "\n".join(str(v) for v in y) + "\n")
    out = run_cli("fit", f"{tmp_path / 'models.py'}:normal_mean", "--data",
                  str(tmp_path / "y.csv"), "--method", "map", "--out", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    # prior N(0, 1), y_i ~ N(mu, 1): the mode is sum(y) / (n + 1)
    mu = float(np.asarray(posterior_of(tmp_path / "o" / "fit.nc")["mu"]).ravel()[0])
    assert mu == pytest.approx(y.sum() / (y.size + 1), abs=1e-5)
    # a library model with --data: sleepstudy with every reaction time 1000 ms slower
    from hbm.datasets import load

    table = load("sleepstudy")
    table["Reaction"] += 1000.0
    table.to_csv(tmp_path / "slow.csv", index=False)
    # (the Laplace approximation at the unconstrained mode: the classical MAP of the
    # centered sleepstudy model is degenerate, its subject sds collapse to 0)
    out = run_cli("fit", "sleepstudy", "--data", str(tmp_path / "slow.csv"), "--method",
                  "laplace", "--out", str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    intercept = float(np.asarray(posterior_of(tmp_path / "s" / "fit.nc")["beta"]).ravel()[0])
    assert 1200.0 < intercept < 1300.0  # the bundled data's intercept is about 251


@pytest.mark.parametrize("method", ["advi", "laplace"])
def test_cli_methods(tmp_path, method):
    out = run_cli("fit", "eight_schools", "--method", method, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert f"method: {method}" in out.stdout and "tau" in out.stdout
    assert posterior_of(tmp_path / "fit.nc")["tau"].shape[1] == 1000


def test_cli_auto_keeps_nuts_and_reports_a_fallback(tmp_path):
    out = run_cli("fit", "eight_schools", "--method", "auto", "--chains", "2", "--warmup",
                  "150", "--draws", "100")
    assert out.returncode == 0, out.stderr
    assert "method: nuts" in out.stdout and "fell back" not in out.stdout
    (tmp_path / "models.py").write_text(MODEL_FILE)
    out = run_cli("fit", f"{tmp_path / 'models.py'}:walled", "--method", "auto", "--chains",
                  "2", "--warmup", "200", "--draws", "200")
    assert out.returncode == 0, out.stderr
    assert "method: advi (fell back:" in out.stdout and "diverged" in out.stdout
