"""Hostile input: every invalid model, data set or argument is refused eagerly with the
matching :class:`hbm.HbmError` subclass and a message naming the culprit, never a raw
JAX, NumPy or Python error. A property-based test throws random hostile inputs at
``hbm.Model(...).bind`` and ``hbm.sample``."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hbm
from hbm import dist
from hbm.errors import (ConfigurationError, DataError, HbmError, InitializationError,
                        ModelError)

TINY = dict(chains=1, warmup=0, step_size=0.1, draws=2, chunk_size=2, progress=False)


def normal_model():
    return hbm.Model(prior={"mu": dist.Normal(0.0, 1.0), "sigma": dist.HalfNormal(1.0)},
                     likelihood=lambda p, d: {"y": dist.Normal(p["mu"], p["sigma"])})


def group_model(coords=True):
    """Varying intercepts a[g] over 4 groups; with coords the codes follow the coords
    convention, without them the general indexing check applies."""
    return hbm.Model(
        prior={"a": dist.Normal(0.0, 1.0).expand((4,)), "sigma": dist.HalfNormal(1.0)},
        likelihood=lambda p, d: {"y": dist.Normal(p["a"][d["group"]], p["sigma"])},
        coords={"group": ["w", "x", "y", "z"]} if coords else None)


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_data_names_key_and_index(bad):
    y = np.array([0.1, 0.2, bad, 0.4])
    with pytest.raises(DataError, match=r"'y'.*NaN or inf.*\(2,\)"):
        normal_model().bind({"y": y})
    with pytest.raises(DataError, match=r"'y'.*NaN or inf"):
        normal_model().bind({"y": jnp.asarray(y)})  # jax arrays too


def test_count_likelihood_refuses_non_integers_and_negatives():
    model = hbm.Model(prior={"rate": dist.Gamma(2.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Poisson(p["rate"])})
    with pytest.raises(DataError, match=r"'y'.*integers.*Poisson.*\(1,\)"):
        model.bind({"y": np.array([1.0, 2.5, 3.0])})
    with pytest.raises(DataError, match=r"'y'.*outside the support.*\(1,\): -2"):
        model.bind({"y": np.array([1, -2, 3])})
    assert model.bind({"y": np.array([1.0, 2.0])}).size == 1  # whole floats are fine


def test_integer_data_for_continuous_likelihood_is_converted():
    bound = normal_model().bind({"y": np.array([1, 2, 3])})
    assert jnp.issubdtype(bound.data["y"].dtype, jnp.floating)
    np.testing.assert_array_equal(np.asarray(bound.data["y"]), [1.0, 2.0, 3.0])


def test_complex_and_string_data_are_refused():
    with pytest.raises(DataError, match="'y'.*complex"):
        normal_model().bind({"y": np.array([1 + 2j, 3.0])})
    with pytest.raises(DataError, match="'y'.*not numeric"):
        normal_model().bind({"y": np.array(["a", "b"])})
    with pytest.raises(DataError, match="'y'.*not a numeric array"):
        normal_model().bind({"y": [[1.0, 2.0], [3.0]]})


def test_empty_observations_are_refused():
    with pytest.raises(DataError, match=r"'y' has no observations.*\(0,\)"):
        normal_model().bind({"y": np.zeros(0)})


@pytest.mark.parametrize("scale", [0.0, -2.0])
def test_bad_scale_constants(scale):
    with pytest.raises(ModelError, match=r"prior node 'mu'.*'scale' must be positive"):
        hbm.Model(prior={"mu": dist.Normal(0.0, scale)}).bind({})
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], scale)})
    with pytest.raises(ModelError, match=r"likelihood of 'y'.*'scale' must be positive"):
        model.bind({"y": np.ones(3)})
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], d["s"])})
    with pytest.raises(ModelError, match=r"likelihood of 'y'.*'scale'"):
        model.bind({"y": np.ones(3), "s": np.array([1.0, scale, 1.0])})


# ----------------------------------------------------------------------- group codes
def test_group_codes_follow_the_coords_convention():
    model = group_model()
    bound = model.bind({"y": np.zeros(3), "group": np.array([0, 3, 1])})
    assert bound.size == 5
    with pytest.raises(DataError, match=r"'group'.*4 labels.*0\.\.3.*holds 4 at index \(1,\)"):
        model.bind({"y": np.zeros(3), "group": np.array([0, 4, 1])})
    with pytest.raises(DataError, match=r"'group'.*0\.\.3.*holds -1 at index \(2,\)"):
        model.bind({"y": np.zeros(3), "group": np.array([0, 1, -1])})
    with pytest.raises(DataError, match=r"'group'.*non-integer value 1\.5 at index \(1,\)"):
        model.bind({"y": np.zeros(3), "group": np.array([0.0, 1.5, 2.0])})
    bound = model.bind({"y": np.zeros(3), "group": np.array([0.0, 1.0, 2.0])})
    assert jnp.issubdtype(bound.data["group"].dtype, jnp.integer)
    np.testing.assert_array_equal(np.asarray(bound.data["group"]), [0, 1, 2])


def test_out_of_bounds_index_data_without_coords():
    model = group_model(coords=False)
    model.bind({"y": np.zeros(3), "group": np.array([0, 3, 1])})
    with pytest.raises(DataError, match=r"'group' indexes an axis of length 4.*holds 7 at "
                                        r"index \(1,\).*0\.\.3"):
        model.bind({"y": np.zeros(3), "group": np.array([0, 7, 1])})
    with pytest.raises(DataError, match=r"'group'.*negative value -1 at index \(2,\)"):
        model.bind({"y": np.zeros(3), "group": np.array([0, 1, -1])})


def test_out_of_bounds_index_in_two_dimensional_and_jitted_indexing():
    model = hbm.Model(
        prior={"a": dist.Normal(0.0, 1.0).expand((4, 3)), "sigma": dist.HalfNormal(1.0)},
        likelihood=lambda p, d: {"y": dist.Normal(
            jax.jit(lambda a, g, h: a[g, h])(p["a"], d["g"], d["h"]) + p["a"][d["k"], 0],
            p["sigma"])})
    ok = {"y": np.zeros(3), "g": np.array([0, 1, 3]), "h": np.array([0, 1, 2]), "k": 2}
    model.bind(ok)
    with pytest.raises(DataError, match=r"'h' indexes an axis of length 3.*holds 3"):
        model.bind({**ok, "h": np.array([0, 3, 2])})
    with pytest.raises(DataError, match=r"'k' indexes an axis of length 4.*holds 9"):
        model.bind({**ok, "k": 9})


# ----------------------------------------------------------------------- arguments
@pytest.mark.parametrize("name, value", [("chains", 0), ("chains", -1), ("draws", 0),
                                         ("warmup", -1), ("chains", 1.5), ("draws", "10"),
                                         ("seed", -3), ("seed", 2**64), ("thin", 0),
                                         ("chains", 10**30), ("draws", 2**40),
                                         ("target_accept", "high"), ("step_size", [0.1]),
                                         ("chain_method", ["vectorized"]),
                                         ("reparam", np.zeros(2))])
def test_bad_sample_arguments(name, value):
    kwargs = {**TINY, name: value}
    with pytest.raises(ConfigurationError, match=name):
        hbm.sample(normal_model(), {"y": np.ones(3)}, **kwargs)


def test_warmup_zero_needs_a_step_size():
    with pytest.raises(ConfigurationError, match="step_size"):
        hbm.sample(normal_model(), {"y": np.ones(3)}, **{**TINY, "step_size": None})


def test_logdensity_nan_everywhere_names_the_terms():
    # finite only at mu = 0 (where bind's eager check looks), NaN everywhere else
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(jnp.sqrt(-p["mu"] ** 2), 1.0)})
    bound = model.bind({"y": np.ones(3)})
    with pytest.raises(InitializationError, match=r"non-finite terms: \['y'\]"):
        bound.init(jax.random.PRNGKey(0))
    with pytest.raises(InitializationError, match="'y'"):
        hbm.sample(model, {"y": np.ones(3)}, **TINY)


def test_init_dicts_with_wrong_names_shapes_or_support():
    model, data = normal_model(), {"y": np.ones(3)}
    with pytest.raises(ModelError, match=r"unknown parameters \['nu'\]"):
        hbm.sample(model, data, init={"nu": 1.0}, **TINY)
    with pytest.raises(ModelError, match=r"init\['mu'\] has shape \(2,\), expected \(\)"):
        hbm.sample(model, data, init={"mu": [1.0, 2.0]}, **TINY)
    with pytest.raises(ModelError, match=r"init\['sigma'\] lies outside the support"):
        hbm.sample(model, data, init={"sigma": -1.0}, **TINY)
    with pytest.raises(ModelError, match=r"init\['mu'\] is not a numeric array"):
        hbm.sample(model, data, init={"mu": "zero"}, **TINY)
    bound = model.bind(data)
    with pytest.raises(ModelError, match=r"init\['sigma'\] lies outside the support"):
        bound.check_init({"sigma": 0.0})
    with pytest.raises(ModelError, match=r"unknown parameters \['nu'\]"):
        bound.check_init({"nu": 0.0})


def test_user_function_errors_name_the_node():
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0),
                             "b": lambda p, d: dist.Normal(p["mu"], "wide")})
    with pytest.raises(ModelError, match=r"prior node 'b' failed.*TypeError"):
        model.bind({})
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"] + d["x"] @ d["x"], 1.0)})
    with pytest.raises(ModelError, match=r"the likelihood failed"):
        model.bind({"y": np.ones(3), "x": np.ones(3)[:, None]})


def test_nan_gradient_region_counts_as_divergences():
    """The log density is finite everywhere but its gradient is NaN for mu > 1 (the
    classic jnp.where pitfall); the posterior puts much mass there. NUTS must finish,
    count the NaN-gradient trajectories as divergent and keep only finite draws."""
    def likelihood(p, d):
        mu = p["mu"]
        loc = mu + jnp.where(mu > 1.0, 0.0, 0.0 * jnp.sqrt(1.0 - mu))
        return {"y": dist.Normal(loc, 1.0)}

    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)}, likelihood=likelihood)
    data = {"y": np.full(4, 1.5)}
    bound = model.bind(data)
    g = jax.grad(bound.logdensity)(jnp.array([1.5]))
    assert bool(jnp.isnan(g).all()) and bool(jnp.isfinite(bound.logdensity(jnp.array([1.5]))))
    with pytest.warns(hbm.HbmWarning, match="divergent"):
        fit = hbm.sample(model, data, chains=1, warmup=0, step_size=0.5, draws=100,
                         chunk_size=100, progress=False, seed=1)
    assert int(np.sum(fit.sample_stats["diverging"])) > 0
    assert np.all(np.isfinite(fit.posterior["mu"]))


# --------------------------------------------------------------- property-based test
HOSTILE_VALUES = st.one_of(
    st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0, -1.0, 3, True, None,
                     "abc", b"xy", 1 + 1j, [], [[]], [1.0, [2.0]], {}, {"a": 1.0}, (1.0,),
                     object()]),
    st.builds(lambda n, v: np.full(n, v),
              st.integers(0, 4), st.sampled_from([np.nan, np.inf, -5.0, 0.5, 1e300, 7])),
    st.builds(lambda shape, dtype: np.zeros(shape, dtype=dtype),
              st.lists(st.integers(0, 3), max_size=3).map(tuple),
              st.sampled_from([np.float64, np.int32, np.bool_, np.complex64, "U3", object,
                               "datetime64[s]"])),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
)
DATA_KEYS = st.sampled_from(["y", "group", "s", "extra", 3])


def _model_under_test(kind, bad):
    """A small model whose data, constants or prior parameters get the hostile value."""
    if kind == "normal":
        return normal_model()
    if kind == "groups":
        return group_model()
    if kind == "groups_no_coords":
        return group_model(coords=False)
    if kind == "prior_scale":
        return hbm.Model(prior={"mu": dist.Normal(0.0, 1.0),
                                "b": lambda p, d: dist.Normal(p["mu"], bad)})
    if kind == "lik_scale":
        return hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                         likelihood=lambda p, d: {"y": dist.Normal(p["mu"], bad)})
    if kind == "poisson":
        return hbm.Model(prior={"rate": lambda p, d: dist.Gamma(bad, 1.0)},
                         likelihood=lambda p, d: {"y": dist.Poisson(p["rate"])})
    raise AssertionError(kind)


def _bind_or_hbm_error(model, data, reparam="noncentered"):
    try:
        return model.bind(data, reparam=reparam)
    except HbmError:
        return None


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["normal", "groups", "groups_no_coords", "prior_scale",
                             "lik_scale", "poisson"]),
       key=DATA_KEYS, value=HOSTILE_VALUES,
       base=st.sampled_from([{"y": np.ones(3), "group": np.array([0, 1, 3])},
                             {"y": np.array([1, 2, 3]), "group": np.array([0.0, 2.0, 3.0])},
                             {"y": np.ones((2, 3)), "group": np.array([0, 1, 2])}, {}, None,
                             [1.0], "data"]),
       reparam=st.sampled_from(["noncentered", "centered", "auto", "", None, 3,
                                {"a": 0.5}, {"a": "abc"}, {"a": [0.1, 0.2]}, {"zz": 1},
                                {"a": np.nan}, {"sigma": 0.5}, ["centered"]]))
def test_hostile_models_and_data_raise_only_hbm_errors(kind, key, value, base, reparam):
    model = _model_under_test(kind, value)
    data = dict(base) if isinstance(base, dict) else base
    if isinstance(data, dict):
        data[key] = value
    try:
        bound = model.bind(data, reparam=reparam)
    except HbmError:
        return
    # whatever was accepted is usable: finite density at an initial point or an
    # InitializationError, never a crash
    try:
        x = bound.init(jax.random.PRNGKey(0), num_tries=5)
    except HbmError:
        return
    assert x.shape == (bound.size,)
    assert math.isfinite(float(bound.logdensity(x)))


SAMPLE_MODEL = normal_model()  # one object, so the tiny NUTS program compiles once
SAMPLE_DATA = {"y": np.array([0.3, -0.2, 1.1])}
ARG_VALUES = {
    "chains": st.sampled_from([1, 0, -2, 1.0, "1", None, True, 10**30]),
    "draws": st.sampled_from([2, 0, -1, 2.5, None, np.int64(2)]),
    "warmup": st.sampled_from([0, -1, 0.0, "0", None]),
    "seed": st.sampled_from([0, 7, -1, 2**70, 1.5, "s", None, np.int32(3)]),
    "step_size": st.sampled_from([0.1, 0.0, -0.1, np.nan, np.inf, "x", None, [0.1]]),
    "target_accept": st.sampled_from([0.8, 0.0, 1.0, np.nan, "x", None]),
    "reparam": st.sampled_from(["noncentered", "auto", "bogus", 1, None, np.zeros(1),
                                {"mu": 0.5}]),
    "chain_method": st.sampled_from(["vectorized", "nope", None, ["vectorized"]]),
    "init": st.sampled_from([None, {"mu": 0.1}, {"mu": np.nan}, {"sigma": -1.0},
                             {"nu": 1.0}, {"mu": "a"}, {"mu": [1.0, 2.0]}, [0.1], "init"]),
}


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({}, optional=ARG_VALUES))
def test_hostile_sample_arguments_raise_only_hbm_errors(overrides):
    kwargs = {**TINY, **overrides}
    try:
        fit = hbm.sample(SAMPLE_MODEL, SAMPLE_DATA, **kwargs)
    except HbmError:
        return
    assert fit.posterior["mu"].shape == (1, 2)
    assert np.all(np.isfinite(fit.posterior["mu"]))
