"""Tests for hbm.results.Fit: construction, access, ArviZ conversion and summary."""

import json
import types
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from hbm import results as fit_module
from hbm.diagnostics import arviz_major_version, load_arviz
from hbm.errors import ConfigurationError, DataError, HbmError
from hbm.results import METHODS, Fit, UnknownVariableError

CHAINS, DRAWS = 2, 50


def group_names(converted):
    """Groups of an InferenceData (ArviZ 0.x) or DataTree (ArviZ >= 1)."""
    if hasattr(converted, "groups") and callable(converted.groups):
        return [name.strip("/") for name in converted.groups()]
    return list(converted.children)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_arrays(rng):
    posterior = {
        "mu": rng.normal(size=(CHAINS, DRAWS)),
        "tau": rng.lognormal(size=(CHAINS, DRAWS)),
        "theta": rng.normal(size=(CHAINS, DRAWS, 3)),
        "Sigma": rng.normal(size=(CHAINS, DRAWS, 2, 2)),
    }
    stats = {
        "diverging": np.zeros((CHAINS, DRAWS), dtype=bool),
        "tree_depth": np.full((CHAINS, DRAWS), 3),
        "n_steps": np.full((CHAINS, DRAWS), 7),
        "step_size": np.full((CHAINS, DRAWS), 0.4),
        "energy": rng.normal(size=(CHAINS, DRAWS)),
        "lp": rng.normal(size=(CHAINS, DRAWS)),
        "acceptance_rate": rng.uniform(size=(CHAINS, DRAWS)),
    }
    stats["diverging"][1, 3] = True
    return posterior, stats


def full_fit(rng, **kwargs):
    posterior, stats = make_arrays(rng)
    defaults = dict(
        method="nuts",
        dims={"theta": ("school",), "Sigma": ("row",), "y": ("school",)},
        coords={"school": ["A", "B", "C"]},
        log_likelihood={"y": rng.normal(size=(CHAINS, DRAWS, 3))},
        observed_data={"y": np.array([1.0, 2.0, 3.0])},
        info={
            "reparam": {"theta": "noncentered", "eta": [0.5, 1.0]},
            "times": {"warmup": 1.5, "sampling": 2.0},
            "nested": {"a": {"b": 1}},
            "max_tree_depth": 10,
            "target_accept": 0.8,
            "num_steps": 1234,
            "adapted": True,
            "warmup_step_sizes": [0.4, 0.5],
            "mass_matrix": np.eye(2),
            "elbo_history": np.zeros(100),
            "nothing": None,
        },
        warmup_sample_stats={"step_size": np.ones((CHAINS, 20))},
    )
    defaults.update(kwargs)
    return Fit(posterior, stats, **defaults), posterior, stats


# ------------------------------------------------------------- construction
def test_attributes(rng):
    fit, posterior, stats = full_fit(rng)
    assert fit.method == "nuts"
    assert (fit.num_chains, fit.num_draws) == (CHAINS, DRAWS)
    assert fit.fallback_reason is None and fit.partial is False
    assert fit.var_names == ["mu", "tau", "theta", "Sigma"]
    assert fit.info["target_accept"] == 0.8
    assert fit.max_tree_depth == 10
    np.testing.assert_array_equal(fit["theta"], posterior["theta"])
    np.testing.assert_array_equal(fit.sample_stats["energy"], stats["energy"])
    assert "mu" in fit and "nope" not in fit


def test_partial_and_fallback_from_info_or_arguments(rng):
    posterior, _ = make_arrays(rng)
    fit = Fit(posterior, None, method="advi", info={"partial": True, "fallback_reason": "r"})
    assert fit.partial is True and fit.fallback_reason == "r"
    fit = Fit(posterior, None, method="advi", fallback_reason="divergences", partial=True)
    assert fit.partial is True and fit.fallback_reason == "divergences"
    assert Fit(posterior, None, method="laplace").sample_stats == {}


def test_accepts_jax_arrays(rng):
    fit = Fit({"mu": jnp.zeros((2, 5))}, {"lp": jnp.ones((2, 5))}, method="nuts")
    assert isinstance(fit["mu"], np.ndarray) and isinstance(fit.sample_stats["lp"], np.ndarray)


def test_unknown_variable(rng):
    fit, _, _ = full_fit(rng)
    with pytest.raises(UnknownVariableError, match="available"):
        fit["sigma"]
    assert issubclass(UnknownVariableError, HbmError)
    assert issubclass(UnknownVariableError, KeyError)


def test_invalid_inputs_raise(rng):
    posterior, stats = make_arrays(rng)
    with pytest.raises(ConfigurationError):
        Fit(posterior, stats, method="hmc")
    with pytest.raises(DataError):
        Fit({}, None, method="nuts")
    with pytest.raises(DataError):
        Fit({"mu": np.zeros(5)}, None, method="nuts")
    with pytest.raises(DataError):
        Fit({"mu": np.zeros((2, 5)), "tau": np.zeros((2, 4))}, None, method="nuts")
    with pytest.raises(DataError):
        Fit({"mu": np.zeros((2, 5))}, {"lp": np.zeros((3, 5))}, method="nuts")
    with pytest.raises(DataError):
        Fit({"mu": np.zeros((2, 5))}, None, method="nuts", log_likelihood={"y": np.zeros(5)})
    with pytest.raises(DataError, match="names 2 axes"):
        Fit({"theta": np.zeros((2, 5, 3))}, None, method="nuts", dims={"theta": ("a", "b")})
    with pytest.raises(DataError, match="labels"):
        Fit(
            {"theta": np.zeros((2, 5, 3))},
            None,
            method="nuts",
            dims={"theta": ("school",)},
            coords={"school": ["A", "B"]},
        )
    with pytest.raises(DataError):
        Fit({"mu": np.zeros((2, 5))}, None, method="nuts", warmup_sample_stats={"e": np.zeros(5)})
    assert set(METHODS) == {"nuts", "advi", "laplace", "map"}


def test_repr_is_short_summary(rng):
    fit, _, _ = full_fit(rng, fallback_reason="too many divergences", partial=True)
    text = repr(fit)
    assert text.startswith("Fit(method='nuts', chains=2, draws=50")
    assert "theta(3,)" in text and "Sigma(2, 2)" in text and "mu" in text
    assert "divergences=1" in text
    assert "fallback_reason='too many divergences'" in text and "partial=True" in text
    assert "\n" not in text


# --------------------------------------------------------------------- ArviZ
def test_to_arviz_groups_shapes_and_values(rng):
    arviz = load_arviz()
    fit, posterior, stats = full_fit(rng)
    idata = fit.to_arviz()
    if arviz_major_version(arviz) >= 1:
        import xarray

        assert isinstance(idata, xarray.DataTree)
    else:
        assert isinstance(idata, arviz.InferenceData)
    groups = set(group_names(idata))
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert group in groups
    assert "warmup_sample_stats" in groups
    for name, values in posterior.items():
        np.testing.assert_array_equal(idata["posterior"][name].values, values)
    for name, values in stats.items():
        np.testing.assert_array_equal(idata["sample_stats"][name].values, values)
    assert idata["sample_stats"]["diverging"].dtype == bool
    assert idata["log_likelihood"]["y"].shape == (CHAINS, DRAWS, 3)
    np.testing.assert_array_equal(idata["observed_data"]["y"].values, [1.0, 2.0, 3.0])
    assert idata["warmup_sample_stats"]["step_size"].shape == (CHAINS, 20)


def test_to_arviz_dims_and_coords(rng):
    fit, _, _ = full_fit(rng)
    idata = fit.to_arviz()
    assert idata["posterior"]["mu"].dims == ("chain", "draw")
    assert idata["posterior"]["theta"].dims == ("chain", "draw", "school")
    assert list(idata["posterior"]["school"].values) == ["A", "B", "C"]
    # A prefix of the axes named, the rest get ArviZ's default names.
    assert idata["posterior"]["Sigma"].dims == ("chain", "draw", "row", "Sigma_dim_1")
    assert idata["log_likelihood"]["y"].dims == ("chain", "draw", "school")
    assert idata["observed_data"]["y"].dims == ("school",)
    assert list(idata["posterior"]["chain"].values) == [0, 1]
    assert idata["posterior"].sizes["draw"] == DRAWS


def test_to_arviz_attrs_hold_simple_info(rng):
    fit, _, _ = full_fit(rng, fallback_reason="why")
    idata = fit.to_arviz()
    for attrs in (idata["posterior"].attrs, idata["sample_stats"].attrs):
        assert attrs["hbm_method"] == "nuts"
        assert attrs["inference_library"] == "hbm"
        assert json.loads(attrs["hbm_reparam"]) == {"theta": "noncentered", "eta": [0.5, 1.0]}
        assert json.loads(attrs["hbm_times"]) == {"warmup": 1.5, "sampling": 2.0}
        assert attrs["hbm_target_accept"] == 0.8
        assert attrs["hbm_num_steps"] == 1234
        assert attrs["hbm_adapted"] == 1
        assert attrs["hbm_partial"] == 0
        assert attrs["hbm_fallback_reason"] == "why"
        assert list(attrs["hbm_warmup_step_sizes"]) == [0.4, 0.5]
        for skipped in ("hbm_mass_matrix", "hbm_elbo_history", "hbm_nothing", "hbm_nested"):
            assert skipped not in attrs


def test_to_arviz_without_optional_groups(rng):
    posterior, _ = make_arrays(rng)
    idata = Fit(posterior, None, method="advi").to_arviz()
    assert group_names(idata) == ["posterior"]
    assert idata["posterior"].attrs["hbm_method"] == "advi"
    assert idata["posterior"]["theta"].dims == ("chain", "draw", "theta_dim_0")


def test_to_arviz_round_trips_through_netcdf(rng, tmp_path):
    arviz = load_arviz()
    fit, _, _ = full_fit(rng)
    path = tmp_path / "fit.nc"
    fit.to_arviz().to_netcdf(str(path))
    loaded = arviz.from_netcdf(str(path))
    np.testing.assert_array_equal(loaded["posterior"]["theta"].values, fit["theta"])
    assert loaded["posterior"].attrs["hbm_method"] == "nuts"


def test_to_arviz_uses_datatree_api_for_arviz_1(rng, monkeypatch):
    """The ArviZ >= 1 branch: one dict of groups, attrs per group and at the root."""
    calls = {}

    def from_dict(data, **kwargs):
        calls["data"], calls["kwargs"] = data, kwargs
        return "datatree"

    fake = types.SimpleNamespace(__version__="1.0.0", from_dict=from_dict)
    monkeypatch.setattr(fit_module, "load_arviz", lambda: fake)
    fit, posterior, _ = full_fit(rng)
    assert fit.to_arviz() == "datatree"
    data, kwargs = calls["data"], calls["kwargs"]
    assert set(data) == {
        "posterior",
        "sample_stats",
        "log_likelihood",
        "observed_data",
        "warmup_sample_stats",
    }
    np.testing.assert_array_equal(data["posterior"]["theta"], posterior["theta"])
    assert kwargs["dims"]["theta"] == ["school"]
    assert kwargs["coords"] == {"school": ["A", "B", "C"]}
    assert kwargs["save_warmup"] is True
    assert kwargs["attrs"]["/"]["hbm_method"] == "nuts"
    assert kwargs["attrs"]["posterior"]["hbm_method"] == "nuts"
    assert set(kwargs["attrs"]) == {"/", *data}


def test_summary_for_arviz_1_passes_ci_arguments(rng, monkeypatch):
    calls = {}

    def summary(data, **kwargs):
        calls.update(kwargs)
        return "frame"

    fake = types.SimpleNamespace(
        __version__="1.2.0", from_dict=lambda data, **kwargs: "tree", summary=summary
    )
    monkeypatch.setattr(fit_module, "load_arviz", lambda: fake)
    fit, _, _ = full_fit(rng)
    assert fit.summary(var_names="mu", hdi_prob=0.9) == "frame"
    assert calls == {"var_names": ["mu"], "ci_prob": 0.9, "ci_kind": "hdi", "round_to": "none"}


# ------------------------------------------------------------------- summary
def test_summary_columns_and_index_with_coords(rng):
    fit, posterior, _ = full_fit(rng)
    table = fit.summary()
    if arviz_major_version(load_arviz()) >= 1:  # ArviZ 1.x's names and order
        expected = ["mean", "sd", "hdi94_lb", "hdi94_ub", "ess_bulk", "ess_tail", "r_hat",
                    "mcse_mean", "mcse_sd"]
    else:
        expected = ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk",
                    "ess_tail", "r_hat"]
    assert list(table.columns) == expected
    assert list(table.index) == [
        "mu",
        "tau",
        "theta[A]",
        "theta[B]",
        "theta[C]",
        "Sigma[0, 0]",
        "Sigma[0, 1]",
        "Sigma[1, 0]",
        "Sigma[1, 1]",
    ]
    np.testing.assert_allclose(table.loc["theta[B]", "mean"], posterior["theta"][..., 1].mean())
    np.testing.assert_allclose(table.loc["mu", "sd"], posterior["mu"].std(ddof=1), rtol=1e-3)


def test_summary_without_coords_var_names_and_hdi_prob(rng):
    posterior, stats = make_arrays(rng)
    fit = Fit(posterior, stats, method="nuts")
    table = fit.summary(var_names=["theta"], hdi_prob=0.9)
    assert list(table.index) == ["theta[0]", "theta[1]", "theta[2]"]
    bounds = (["hdi90_lb", "hdi90_ub"] if arviz_major_version(load_arviz()) >= 1
              else ["hdi_5%", "hdi_95%"])
    assert all(column in table.columns for column in bounds)
    assert list(fit.summary(var_names="mu").index) == ["mu"]
    with pytest.raises(UnknownVariableError):
        fit.summary(var_names=["nope"])
    with pytest.raises(ConfigurationError):
        fit.summary(hdi_prob=1.5)


def test_summary_single_chain_has_nan_rhat(rng):
    draws = rng.normal(size=(1, 400))
    fit = Fit({"mu": draws}, None, method="laplace")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = fit.summary()
    assert np.isnan(table.loc["mu", "r_hat"])
    np.testing.assert_allclose(table.loc["mu", "mean"], draws.mean())


def test_warn_and_diagnostics_delegate(rng):
    fit, _, _ = full_fit(rng)
    messages = fit.diagnostics()
    assert any(m.startswith("1 of 100 transitions") for m in messages)
    with pytest.warns(UserWarning):
        assert fit.warn() == messages
