"""Compile once: a second find_map / advi call on new data of the same shapes compiles
nothing (counted with JAX's compilation events, not timed), and a second process loads
its programs from the persistent compilation cache that import hbm turns on."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.monitoring
import numpy as np
import pytest

import hbm

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _compiles.append(event) if event == COMPILE_EVENT
    else None)


def count_compiles(fn):
    before = len(_compiles)
    result = fn()
    return result, len(_compiles) - before


@pytest.fixture
def schools():
    model, data = hbm.models.eight_schools()
    other = dict(data, y=np.asarray(data["y"])[::-1] + 3.0)  # new data, same shapes
    return model, data, other


@pytest.mark.parametrize("kwargs", [dict(), dict(jacobian=True), dict(laplace=True, draws=200)])
def test_second_find_map_on_new_same_shaped_data_compiles_nothing(schools, kwargs):
    model, data, other = schools
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tau's classical MAP sits on the boundary
        first, compiled = count_compiles(lambda: hbm.find_map(model, data, seed=0, **kwargs))
        assert compiled > 0  # the counter sees compilations
        second, compiled = count_compiles(lambda: hbm.find_map(model, other, seed=1, **kwargs))
    assert compiled == 0
    # the new data was used, not the data of the compiled program
    assert not np.allclose(second.params["theta"], first.params["theta"])
    np.testing.assert_array_equal(second.observed_data["y"], other["y"])


@pytest.mark.parametrize("method", ["meanfield", "fullrank"])
def test_second_advi_on_new_same_shaped_data_compiles_nothing(schools, method):
    model, data, other = schools
    kwargs = dict(method=method, max_steps=400, draws=100, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short run: convergence and k-hat warnings
        first, _ = count_compiles(lambda: hbm.advi(model, data, seed=0, **kwargs))
        second, compiled = count_compiles(lambda: hbm.advi(model, other, seed=0, **kwargs))
    assert compiled == 0
    # same seed, different data: a different fit
    assert not np.allclose(second.info["mean"], first.info["mean"])


def test_new_data_gives_the_same_mode_as_a_fresh_model():
    # the cached program takes the data as an argument: a model that never saw the
    # first data set finds exactly the same mode for the second
    model, data = hbm.models.eight_schools()
    other = dict(data, y=np.asarray(data["y"]) * 0.5)
    hbm.find_map(model, data, seed=0, jacobian=True)
    reused = hbm.find_map(model, other, seed=3, jacobian=True)
    fresh_model, _ = hbm.models.eight_schools()
    fresh = hbm.find_map(fresh_model, other, seed=3, jacobian=True)
    np.testing.assert_array_equal(reused.info["unconstrained_mode"],
                                  fresh.info["unconstrained_mode"])


CHILD = textwrap.dedent("""
    import json, warnings
    warnings.simplefilter("ignore")
    import jax, jax.monitoring
    events = []
    jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
    import hbm
    model, data = hbm.models.eight_schools()
    hbm.find_map(model, data, seed=0, jacobian=True)
    print(json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                      "hits": events.count("/jax/compilation_cache/cache_hits"),
                      "misses": events.count("/jax/compilation_cache/cache_misses")}))
""")


def run_child(env_value, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    if env_value is None:
        env.pop("HBM_COMPILATION_CACHE", None)
    else:
        env["HBM_COMPILATION_CACHE"] = env_value
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_programs_from_the_persistent_cache(tmp_path):
    first = run_child(None, tmp_path)  # the default: on, in $XDG_CACHE_HOME/hbm/jax
    assert first["dir"] == str(tmp_path / "xdg" / "hbm" / "jax")
    assert first["misses"] > 0
    second = run_child(None, tmp_path)
    assert second["misses"] == 0 and second["hits"] == first["misses"]
    # a directory given by the variable, and the opt-out
    chosen = run_child(str(tmp_path / "mine"), tmp_path)
    assert chosen["dir"] == str(tmp_path / "mine") and chosen["misses"] > 0
    off = run_child("0", tmp_path)
    assert off["dir"] is None and off["hits"] == off["misses"] == 0

