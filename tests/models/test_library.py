"""Every library model builds, binds its data, and has a finite log density and gradient
at ``init`` points; parameter names and shapes follow the library's conventions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbm
from hbm import models
from hbm.errors import ConfigurationError, DataError

# name, options: every model once, and the alternative parameterizations / families
# (the correlated-effects models are written centered only; their parameterization is the
# model layer's reparam=)
CASES = [(name, {}) for name in models.MODELS] + [
    ("eight_schools", {"centered": False}),
    ("epil", {"family": "negbinomial"}),
]

# expected constrained shapes (prior parameters and deterministics) per case
SHAPES = {
    ("eight_schools", ()): {"mu": (), "tau": (), "theta": (8,)},
    ("eight_schools", (("centered", False),)): {"mu": (), "tau": (), "theta_z": (8,),
                                                "theta": (8,)},
    ("radon_pooled", ()): {"beta": (2,), "sigma": ()},
    ("radon_unpooled", ()): {"county_intercept": (85,), "beta": (1,), "sigma": ()},
    ("radon_varying_intercept", ()): {"beta": (2,), "sigma_county": (),
                                      "county_effect": (85,), "sigma": ()},
    ("radon_varying_slope", ()): {"beta": (2,), "sigma_county": (), "county_effect": (85,),
                                  "sigma": ()},
    ("radon_varying_intercept_slope", ()): {"beta": (2,), "sigma_county": (2,),
                                            "L_county": (2, 2), "county_effect": (85, 2),
                                            "sigma": ()},
    ("radon_uranium", ()): {"beta": (3,), "sigma_county": (), "county_effect": (85,),
                            "sigma": ()},
    ("sleepstudy", ()): {"beta": (2,), "sigma_subject": (2,), "L_subject": (2, 2),
                         "subject_effect": (18, 2), "sigma": ()},
    ("cbpp", ()): {"beta": (4,), "sigma_herd": (), "herd_effect": (15,)},
    ("epil", ()): {"beta": (6,), "sigma_subject": (), "subject_effect": (59,),
                   "sigma_obs": (), "obs_effect": (236,)},
    ("epil", (("family", "negbinomial"),)): {"beta": (6,), "sigma_subject": (),
                                             "subject_effect": (59,), "concentration": ()},
    ("penicillin", ()): {"mu": (), "sigma_plate": (), "sigma_sample": (),
                         "plate_effect": (24,), "sample_effect": (6,), "sigma": (),
                         "s_plate": (), "s_sample": (), "s_resid": ()},
    ("exam", ()): {"beta": (3,), "sigma_school": (), "school_effect": (65,), "sigma": ()},
    ("crt", ()): {"beta": (2,), "sigma_cluster": (), "cluster_effect": (20,), "sigma": (),
                  "icc": (), "design_effect": ()},
    ("measurement_error", ()): {"mu_x": (), "sigma_x": (), "x_true": (100,), "beta": (2,),
                                "sigma": ()},
    ("holzinger_swineford", ()): {"nu": (9,), "loading": (9,), "sigma": (9,),
                                  "L_factor": (3, 3), "factor_score": (301, 3),
                                  "factor_corr": (3, 3)},
    ("insteval", ()): {"beta": (2,), "sigma_s": (), "s_effect": (2972,), "sigma_d": (),
                       "d_effect": (1128,), "sigma_dept": (), "dept_effect": (14,),
                       "sigma": ()},
}


@functools.cache
def _bound(name, options=()):
    """(model, data, bound model, init point) of a case, built once per test session."""
    model, data = models.MODELS[name](**dict(options))
    bound = model.bind(data)
    return model, data, bound, bound.init(jax.random.key(1), num_tries=20)


def _case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def test_registry_lists_every_model():
    assert models.available() == models.MODELS
    assert models.available() is not models.MODELS
    assert set(models.MODELS) == {name for name, _ in SHAPES}
    for name, fn in models.MODELS.items():
        assert callable(fn) and getattr(models, name) is fn
        assert fn.__doc__ and ".. math::" in fn.__doc__, f"{name} docstring lacks the math"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_model_builds_binds_and_has_finite_density_at_init(case):
    name, options = case
    model, data, bound, x = _bound(name, tuple(sorted(options.items())))
    assert isinstance(model, hbm.Model)
    assert isinstance(data, dict)
    assert x.shape == (bound.size,)
    logdensity, grad = jax.jit(jax.value_and_grad(bound.logdensity))(x)
    assert np.isfinite(float(logdensity))
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
    # shapes of every parameter and deterministic, without running constrain eagerly
    shapes = jax.eval_shape(bound.constrain, x)
    expected = SHAPES[(name, tuple(sorted(options.items())))]
    assert {k: tuple(v.shape) for k, v in shapes.items()} == expected
    # dims name existing variables, and every named axis has coords of the right length
    for var, axes in model.dims.items():
        assert var in expected, f"dims for unknown variable {var}"
        assert len(axes) == len(expected[var])
        for axis, size in zip(axes, expected[var]):
            assert len(model.coords[axis]) == size, (var, axis)


@pytest.mark.parametrize("name", ["radon_varying_intercept", "sleepstudy", "epil"])
def test_integer_group_codes_cover_zero_to_n_groups(name):
    model, data = models.MODELS[name]()
    group = {"radon_varying_intercept": "county", "sleepstudy": "subject",
             "epil": "subject"}[name]
    codes = data[group]
    assert np.issubdtype(codes.dtype, np.integer)
    assert sorted(np.unique(codes)) == list(range(len(model.coords[group])))


def test_models_accept_a_data_frame_and_check_columns():
    df = hbm.datasets.load("sleepstudy")
    model, data = models.sleepstudy(df[df["Subject"].isin([308, 309, 310])])
    assert data["y"].shape == (30,)
    assert model.coords["subject"] == [308, 309, 310]
    with pytest.raises(DataError, match="Days"):
        models.sleepstudy(df.drop(columns="Days"))
    with pytest.raises(DataError):
        models.cbpp("not a frame")


def test_eight_schools_defaults_to_textbook_values_and_accepts_the_csv():
    _, data = models.eight_schools()
    np.testing.assert_array_equal(data["y"], [28, 8, -3, 7, -1, 1, 18, 12])
    np.testing.assert_array_equal(data["sigma"], [15, 10, 16, 11, 9, 11, 10, 18])
    model, data = models.eight_schools(hbm.datasets.load("eight_schools"))
    assert data["y"][0] == 28.39 and model.coords["school"][0] == "A"


def test_eight_schools_centered_and_noncentered_agree_on_theta():
    """The non-centered model's deterministic theta is mu + tau * theta_z."""
    _, _, bound, x = _bound("eight_schools", (("centered", False),))
    params = bound.constrain(x)
    np.testing.assert_allclose(params["theta"],
                               params["mu"] + params["tau"] * params["theta_z"], rtol=1e-12)


def test_invalid_options_raise_configuration_error():
    with pytest.raises(ConfigurationError):
        models.epil(family="gaussian")
    with pytest.raises(ConfigurationError):
        models.sleepstudy(lkj_concentration=0.0)
    with pytest.raises(ConfigurationError):
        models.cbpp(group_scale=-1.0)
    with pytest.raises(ConfigurationError):
        models.crt(hbm.datasets.load("cbpp"), icc=0.1)


def test_epil_treatment_coding():
    _, data = models.epil()
    df = hbm.datasets.load("epil")
    np.testing.assert_array_equal(data["trt"], (df["trt"] == "progabide").to_numpy())
    assert data["trt"].sum() == 4 * 31  # 31 of the 59 patients took progabide


def test_penicillin_finite_population_sds():
    _, data, bound, x = _bound("penicillin")
    p = bound.constrain(x)
    a, b = np.asarray(p["plate_effect"]), np.asarray(p["sample_effect"])
    resid = data["y"] - (p["mu"] + a[data["plate"]] + b[data["sample"]])
    np.testing.assert_allclose(p["s_plate"], np.std(a, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(p["s_sample"], np.std(b, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(p["s_resid"], np.std(resid, ddof=1), rtol=1e-12)


def test_holzinger_swineford_standardizes_tests_and_reports_correlation():
    _, data, bound, x = _bound("holzinger_swineford")
    np.testing.assert_allclose(data["x"].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(data["x"].std(axis=0, ddof=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(data["factor"], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    p = bound.constrain(x)
    corr = np.asarray(p["factor_corr"])
    np.testing.assert_allclose(np.diag(corr), 1.0, rtol=1e-12)
    np.testing.assert_allclose(corr, corr.T, rtol=1e-12)
    assert np.all(np.asarray(p["loading"]) > 0)
    # bound non-centered (the default): the sampled coordinates z give scores z @ L^T
    z = np.asarray(bound.unravel(x)["factor_score"])
    np.testing.assert_allclose(p["factor_score"], z @ np.asarray(p["L_factor"]).T,
                               rtol=1e-12)


@pytest.mark.parametrize("name", ["radon_varying_intercept_slope", "sleepstudy",
                                  "holzinger_swineford"])
def test_centered_option_is_deprecated_and_the_model_is_centered(name):
    with pytest.warns(DeprecationWarning, match="reparam"):
        model, _ = models.MODELS[name](centered=False)
    plain, _ = models.MODELS[name]()
    assert model.param_names == plain.param_names
    assert not any(k.endswith("_z") for k in model.param_names)
