"""Data mistakes are reported by data key: float group codes, arrays of the wrong length."""

import jax
import numpy as np
import pytest

import hbm
from hbm import dist
from hbm.errors import DataError, ModelError


def varying_intercepts():
    return hbm.Model(
        prior={"alpha": dist.Normal(0.0, 1.0).expand((3,)), "sigma": dist.HalfNormal(1.0)},
        likelihood=lambda p, d: {"y": dist.Normal(p["alpha"][d["county"]], p["sigma"])})


def eight_schools():
    return hbm.Model(
        prior={"mu": dist.Normal(0.0, 5.0), "tau": dist.HalfCauchy(5.0),
               "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand(d["y"].shape)},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"], d["sigma"])})


# ------------------------------------------------------------------ float group codes
def test_whole_number_float_codes_name_the_key_and_suggest_astype():
    data = {"y": np.ones(4), "county": np.array([0.0, 1.0, 2.0, 1.0])}
    with pytest.raises(DataError, match=r"data key 'county' indexes a parameter in the "
                                        r"likelihood.*float64.*integer group codes.*"
                                        r"astype\(int\)"):
        varying_intercepts().bind(data)
    # the advice works
    varying_intercepts().bind({**data, "county": data["county"].astype(int)})


def test_fractional_float_codes_name_the_first_bad_value():
    data = {"y": np.ones(4), "county": np.array([0.0, 1.5, 2.0, 1.0])}
    with pytest.raises(DataError, match=r"'county'.*integer group codes.*non-integer value "
                                        r"1\.5 at index \(1,\)") as info:
        varying_intercepts().bind(data)
    assert "astype" not in str(info.value)


def test_float_codes_in_a_prior_node_and_under_jit_and_as_a_scalar():
    model = hbm.Model(
        prior={"mu": dist.Normal(0.0, 1.0).expand((3,)),
               "theta": lambda p, d: dist.Normal(p["mu"][d["g"]], 1.0)},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"], 1.0)})
    with pytest.raises(DataError, match=r"'g' indexes a parameter in prior node 'theta'"):
        model.bind({"y": np.ones(2), "g": np.array([0.0, 2.0])})
    model = hbm.Model(
        prior={"a": dist.Normal(0.0, 1.0).expand((4,))},
        likelihood=lambda p, d: {"y": dist.Normal(
            jax.jit(lambda a, g: a[g])(p["a"], d["g"]) + p["a"][d["k"]], 1.0)})
    ok = {"y": np.ones(2), "g": np.array([0, 3]), "k": 1}
    model.bind(ok)
    with pytest.raises(DataError, match=r"data key 'g' indexes"):
        model.bind({**ok, "g": np.array([0.0, 3.0])})
    with pytest.raises(DataError, match=r"data key 'k' indexes"):
        model.bind({**ok, "k": 1.0})


def test_float_data_that_does_not_index_is_not_blamed():
    # a float parameter as an index is a model error, not a data error
    model = hbm.Model(prior={"a": dist.Normal(0.0, 1.0).expand((3,)),
                             "s": dist.HalfNormal(1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["a"][p["s"]], d["x"])})
    with pytest.raises(ModelError, match="the likelihood failed.*Indexer") as info:
        model.bind({"y": np.ones(2), "x": np.ones(2)})
    assert not isinstance(info.value, DataError)


# ------------------------------------------------------------------- wrong lengths
def test_wrong_length_names_the_keys_and_the_expected_shape():
    data = {"y": np.arange(10.0), "sigma": np.ones(8)}
    with pytest.raises(ModelError, match=r"data key 'sigma' has shape \(8,\), but the "
                                         r"likelihood works with shape \(10,\).*data key "
                                         r"'y'.*Incompatible shapes"):
        eight_schools().bind(data)


def test_several_keys_of_the_wrong_length_are_named_together():
    model = hbm.Model(
        prior={"mu": dist.Normal(0.0, 5.0),
               "theta": lambda p, d: dist.Normal(p["mu"], 1.0).expand(d["y"].shape)},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"] + d["x"], d["sigma"])})
    data = {"y": np.arange(10.0), "x": np.zeros(8), "sigma": np.ones(8)}
    with pytest.raises(ModelError, match=r"data keys 'x', 'sigma' have shape \(8,\).*"
                                         r"shape \(10,\)"):
        model.bind(data)


def test_observed_key_of_the_wrong_length_names_the_keys_of_the_model_shape():
    model = hbm.Model(
        prior={"mu": dist.Normal(0.0, 5.0), "tau": dist.HalfCauchy(5.0),
               "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand(
                   d["sigma"].shape)},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"], d["sigma"])})
    with pytest.raises(DataError, match=r"'y' has shape \(8,\), which does not broadcast to "
                                        r"the data's shape \(10,\); data key 'sigma' and "
                                        r"parameter 'theta' have shape \(8,\)"):
        model.bind({"y": np.arange(10.0), "sigma": np.ones(8)})
