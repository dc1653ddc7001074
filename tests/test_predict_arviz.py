"""The ArviZ route to predictions: ``fit.to_arviz(posterior_predictive=True)``,
``fit.predict(..., arviz=True)`` and ``hbm.predict``, under ArviZ 0.x (InferenceData)
and ArviZ >= 1 (DataTree).

The statistical check is a z-test whose null distribution is exact given the posterior
draws: a replicated observation minus its draw's linear predictor is, conditionally on
that draw, Normal(0, sigma_s**2), independently across draws.
"""

import types
import warnings

import numpy as np
import pytest

import hbm
from hbm import dist
from hbm.diagnostics import arviz_major_version, load_arviz
from hbm.errors import ConfigurationError

Z = 4.0  # two-sided z bound of the statistical checks (fixed seeds)
CHAINS, DRAWS = 2, 100
GROUP = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], dtype=np.int32)
X = np.linspace(-1.0, 1.0, GROUP.size)
OBS = [f"o{i}" for i in range(GROUP.size)]


def group_names(converted):
    """Groups of an InferenceData (ArviZ 0.x) or DataTree (ArviZ >= 1)."""
    if hasattr(converted, "groups") and callable(converted.groups):
        return [name.strip("/") for name in converted.groups()]
    return list(converted.children)


@pytest.fixture(scope="module")
def model_and_data():
    rng = np.random.default_rng(1)
    effect = np.array([-1.0, 0.5, 2.0])
    y = effect[GROUP] + 0.8 * X + rng.normal(0.0, 0.5, GROUP.size)
    model = hbm.Model(
        prior={
            "mu": dist.Normal(0.0, 5.0),
            "tau": dist.HalfNormal(2.0),
            "effect": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand((3,)),
            "beta": dist.Normal(0.0, 5.0),
            "sigma": dist.HalfNormal(2.0),
        },
        likelihood=lambda p, d: {
            "y": dist.Normal(p["effect"][d["g"]] + p["beta"] * d["x"], p["sigma"])
        },
        dims={"effect": ("g",), "y": ("obs",)},
        coords={"g": ["a", "b", "c"], "obs": OBS},
    )
    return model, {"y": y, "x": X, "g": GROUP}


@pytest.fixture(scope="module")
def fit(model_and_data):
    model, data = model_and_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hbm.sample(model, data, chains=CHAINS, warmup=100, draws=DRAWS, seed=0,
                          progress=False)


@pytest.fixture(scope="module")
def idata(fit):
    return fit.to_arviz(posterior_predictive=True, seed=3)


def linear_predictor(posterior, x, g):
    """``effect[g] + beta * x`` per draw, shape (chain, draw, obs)."""
    return posterior["effect"][..., g] + posterior["beta"][..., None] * x


# ------------------------------------------------------- to_arviz(posterior_predictive)
def test_posterior_predictive_group_shape_dims_and_coords(idata):
    assert {"posterior", "observed_data", "posterior_predictive"} <= set(group_names(idata))
    replicated = idata["posterior_predictive"]["y"]
    observed = idata["observed_data"]["y"]
    assert replicated.shape == (CHAINS, DRAWS, GROUP.size)
    assert replicated.dims == ("chain", "draw", "obs")
    assert observed.dims == ("obs",)
    assert list(replicated["obs"].values) == OBS == list(observed["obs"].values)
    assert np.all(np.isfinite(replicated.values))


def test_posterior_predictive_equals_predict_with_same_seed(fit, idata):
    before = getattr(fit, "posterior_predictive", None)
    again = fit.to_arviz(posterior_predictive=True, seed=3)
    assert getattr(fit, "posterior_predictive", None) is before   # the fit is not changed
    from_arviz = idata["posterior_predictive"]["y"].values
    np.testing.assert_array_equal(again["posterior_predictive"]["y"].values, from_arviz)
    np.testing.assert_array_equal(fit.predict(seed=3)["y"], from_arviz)
    other = fit.to_arviz(posterior_predictive=True, seed=4)["posterior_predictive"]["y"]
    assert not np.allclose(other.values, from_arviz)


def test_posterior_predictive_centred_on_linear_predictor(idata):
    posterior = {name: idata["posterior"][name].values for name in ("effect", "beta", "sigma")}
    mu = linear_predictor(posterior, X, GROUP)
    sigma = posterior["sigma"][..., None]
    diff = idata["posterior_predictive"]["y"].values - mu          # (chain, draw, obs)
    # per observation: the mean of the replicated draws is the mean of the predictor
    z_obs = diff.sum(axis=(0, 1)) / np.sqrt((sigma**2).sum(axis=(0, 1)) * np.ones(GROUP.size))
    assert np.all(np.abs(z_obs) < Z), z_obs
    # and the conditional spread is sigma: mean(u**2) - 1 with sd sqrt(2 / n)
    u = np.ravel(diff / sigma)
    assert abs((np.mean(u**2) - 1.0) / np.sqrt(2.0 / u.size)) < Z


def test_plot_ppc_runs(idata):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arviz = load_arviz()
    try:
        if arviz_major_version(arviz) >= 1:
            arviz.plot_ppc_dist(idata, num_samples=20)
        else:
            arviz.plot_ppc(idata, num_pp_samples=20)
        assert plt.get_fignums()
    finally:
        plt.close("all")


def test_posterior_predictive_survives_netcdf(idata, tmp_path):
    arviz = load_arviz()
    path = tmp_path / "ppc.nc"
    idata.to_netcdf(str(path))
    loaded = arviz.from_netcdf(str(path))
    np.testing.assert_array_equal(loaded["posterior_predictive"]["y"].values,
                                  idata["posterior_predictive"]["y"].values)


def test_posterior_predictive_needs_a_model():
    posterior = {"mu": np.zeros((2, 5))}
    with pytest.raises(ConfigurationError, match="model"):
        hbm.Fit(posterior, method="nuts").to_arviz(posterior_predictive=True)


# --------------------------------------------------------------- predict(arviz=True)
def test_predict_arviz_in_sample_gives_posterior_predictive(fit):
    draws = fit.predict(seed=7)
    converted = fit.predict(seed=7, arviz=True)
    groups = set(group_names(converted))
    assert {"posterior", "observed_data", "posterior_predictive"} <= groups
    np.testing.assert_array_equal(converted["posterior_predictive"]["y"].values, draws["y"])
    assert converted["posterior_predictive"]["y"].dims == ("chain", "draw", "obs")


def test_predict_arviz_new_data_gives_predictions(fit):
    new = {"g": ["a", "NEW"], "x": [0.0, 1.0]}
    draws = fit.predict(new, seed=8)["y"]
    converted = fit.predict(new, seed=8, arviz=True)
    groups = set(group_names(converted))
    assert {"posterior", "predictions", "predictions_constant_data"} <= groups
    predicted = converted["predictions"]["y"]
    np.testing.assert_array_equal(predicted.values, draws)
    assert predicted.shape == (CHAINS, DRAWS, 2)
    # the new data have 2 observations, not the 12 labelled ones: integer labels
    assert predicted.dims == ("chain", "draw", "obs")
    assert list(predicted["obs"].values) == [0, 1]
    constant = converted["predictions_constant_data"]
    np.testing.assert_array_equal(constant["x"].values, [0.0, 1.0])
    np.testing.assert_array_equal(constant["g"].values, [0, 3])   # the new group's code
    # the fitted observations keep their labels
    assert list(converted["observed_data"]["obs"].values) == OBS


def test_predict_arviz_same_length_new_data_keeps_coords(fit):
    converted = fit.predict({"x": X + 1.0}, seed=9, arviz=True)
    assert list(converted["predictions"]["y"]["obs"].values) == OBS


# ------------------------------------------------------------------------ hbm.predict
def test_hbm_predict_is_the_function():
    import hbm.prediction  # noqa: F401  (the defining module hides nothing)

    assert "predict" in hbm.__all__
    assert isinstance(hbm.predict, types.FunctionType)
    from hbm import predict

    assert predict is hbm.predict


def test_hbm_predict_equals_fit_predict(fit):
    np.testing.assert_array_equal(hbm.predict(fit, seed=11)["y"], fit.predict(seed=11)["y"])
    new = {"g": ["c", "b"], "x": [0.5, -0.5]}
    np.testing.assert_array_equal(
        hbm.predict(fit, new, new_groups="mean", draws=50, seed=12)["y"],
        fit.predict(new, new_groups="mean", draws=50, seed=12)["y"],
    )
    converted = hbm.predict(fit, seed=13, arviz=True)
    np.testing.assert_array_equal(converted["posterior_predictive"]["y"].values,
                                  fit.predict(seed=13)["y"])
