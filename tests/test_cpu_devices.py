"""Every core by default: import hbm asks XLA for one CPU device per core, and
chain_method="auto" shards the chains over the local devices (recorded on the Fit)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import hbm
from hbm.cpu_devices import FLAG, resolve_chain_method, usable_cores
from hbm.models import eight_schools


def test_auto_resolves_by_the_local_devices():
    devices = len(jax.local_devices())  # 4 under tests/conftest.py
    assert devices == 4
    assert resolve_chain_method("auto", 4) == "sharded"
    assert resolve_chain_method("auto", 6) == "sharded"  # 2 devices, 3 chains each
    assert resolve_chain_method("auto", 3) == "vectorized"  # no even split
    assert resolve_chain_method("auto", 1) == "vectorized"
    for method in ("vectorized", "sequential", "sharded"):
        assert resolve_chain_method(method, 4) == method


def test_default_sample_is_sharded_and_says_so():
    model, data = eight_schools()
    # a fixed step size and metric: trajectories amplify rounding differences over
    # many adapted iterations (see test_sample.py for the three methods side by side)
    kwargs = dict(chains=2, warmup=0, step_size=0.4, draws=40, seed=5, progress=False)
    fit = hbm.sample(model, data, **kwargs)
    assert fit.info["chain_method"] == "sharded"
    assert fit.info["requested_chain_method"] == "auto"
    vectorized = hbm.sample(model, data, chain_method="vectorized", **kwargs)
    assert vectorized.info["chain_method"] == "vectorized"
    np.testing.assert_allclose(fit.posterior["theta"], vectorized.posterior["theta"],
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(fit.sample_stats["n_steps"],
                                  vectorized.sample_stats["n_steps"])


CHILD = textwrap.dedent("""
    import json, os
    import hbm, jax
    print(json.dumps({"devices": len(jax.local_devices()),
                      "flags": os.environ.get("XLA_FLAGS", "")}))
""")

STARTED_FIRST = textwrap.dedent("""
    import json, jax, jax.numpy as jnp
    jnp.zeros(1).block_until_ready()  # the CPU backend is running before hbm is imported
    import hbm
    print(json.dumps({"devices": len(jax.local_devices())}))
""")


def child(code=CHILD, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HBM_CPU_DEVICES")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_asks_for_one_device_per_core():
    got = child()
    assert got["devices"] == usable_cores()
    if usable_cores() > 1:
        assert f"{FLAG}={usable_cores()}" in got["flags"]


@pytest.mark.parametrize(("env", "devices"), [
    ({"HBM_CPU_DEVICES": "1"}, 1),                       # the opt-out
    ({"HBM_CPU_DEVICES": "3"}, 3),                       # a chosen number
    ({"XLA_FLAGS": f"{FLAG}=5"}, 5),                     # the user's own flag wins
])
def test_the_request_can_be_steered(env, devices):
    assert child(**env)["devices"] == devices


def test_a_running_backend_is_left_alone():
    assert child(STARTED_FIRST)["devices"] == 1


LINEAR_ALGEBRA = textwrap.dedent("""
    import json
    import hbm
    model, data = hbm.models.radon_varying_intercept()
    out = {}
    for method in ("sharded", "auto"):
        fit = hbm.sample(model, data, chains=4, warmup=40, draws=10, metric="dense",
                         chain_method=method, progress=False)
        out[method] = fit.info["chain_method"]
    print(json.dumps(out))
""")


def test_linear_algebra_with_several_devices_does_not_deadlock():
    """jaxlib's batched LAPACK calls wait on XLA's CPU thread pool; with one device per
    core, chains vectorized on each device deadlocked in a dense metric's Cholesky factor
    (radon, d = 89, two devices on two cores: the run never returned). Sharded chains
    that call LAPACK now run one after another on each device, and "auto" keeps them on
    one device. A regression shows as the child's timeout."""
    assert child(LINEAR_ALGEBRA, HBM_CPU_DEVICES="2") == {"sharded": "sharded",
                                                          "auto": "vectorized"}


def test_calls_linear_algebra_finds_lapack_in_the_gradient():
    import jax.numpy as jnp

    from hbm.inference.chains import calls_linear_algebra

    def gaussian_process(x):
        cov = jnp.exp(-jnp.subtract.outer(x, x) ** 2) + jnp.eye(x.shape[0])
        return -0.5 * jnp.sum(jnp.linalg.cholesky(cov))

    assert calls_linear_algebra(gaussian_process, jnp.ones(3))
    assert not calls_linear_algebra(lambda x: -0.5 * jnp.sum(x**2), jnp.ones(3))
    assert not calls_linear_algebra(
        lambda x: jax.lax.cond(x[0] > 0, jnp.sum, jnp.prod, x), jnp.ones(3))
    assert calls_linear_algebra(  # inside a control-flow branch
        lambda x: jax.lax.cond(x[0] > 0, lambda v: jnp.linalg.eigh(jnp.outer(v, v))[0].sum(),
                               jnp.sum, x), jnp.ones(3))
    assert resolve_chain_method("auto", 4, linear_algebra=True) == "vectorized"
    assert resolve_chain_method("sharded", 4, linear_algebra=True) == "sharded"
