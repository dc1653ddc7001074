"""NUTS kernel invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError
from hbm.samplers import HMCState, NUTSInfo, build_kernel, init

from ._helpers import correlated_gaussian


def _gaussian():
    logdensity, _ = correlated_gaussian(dim=4, seed=2)
    return logdensity


def test_tiny_step_size_reaches_max_tree_depth():
    logdensity = _gaussian()
    kernel = build_kernel(max_tree_depth=6)
    state = init(jnp.array([0.5, -0.2, 1.0, 0.3]), logdensity)
    new, info = jax.jit(kernel, static_argnums=2)(
        jax.random.PRNGKey(0), state, logdensity, 1e-6, jnp.ones(4)
    )
    assert int(info.tree_depth) == 6
    assert int(info.num_steps) == 2**6 - 1
    assert not bool(info.is_divergent) and not bool(info.is_turning)
    np.testing.assert_allclose(info.acceptance_rate, 1.0, atol=1e-9)
    assert float(jnp.max(jnp.abs(new.position - state.position))) < 1e-3


def test_huge_step_size_diverges_at_once_and_stays_put():
    logdensity = _gaussian()
    kernel = build_kernel()
    state = init(jnp.array([0.5, -0.2, 1.0, 0.3]), logdensity)
    new, info = kernel(jax.random.PRNGKey(1), state, logdensity, 1e6, jnp.ones(4))
    assert bool(info.is_divergent)
    assert int(info.num_steps) == 1
    assert int(info.tree_depth) == 0  # Stan's convention: no doubling was merged
    np.testing.assert_array_equal(new.position, state.position)
    np.testing.assert_array_equal(new.logdensity, state.logdensity)
    np.testing.assert_array_equal(new.logdensity_grad, state.logdensity_grad)
    assert float(info.energy_error) == 0.0


def test_nan_density_is_divergent():
    logdensity = lambda x: jnp.where(x[0] > 0.6, jnp.nan, -0.5 * jnp.sum(x**2))
    kernel = build_kernel()
    state = init(jnp.array([0.5, 0.0]), logdensity)
    _, infos = jax.jit(jax.vmap(lambda k: kernel(k, state, logdensity, 0.5, jnp.ones(2))))(
        jax.random.split(jax.random.PRNGKey(2), 32)
    )
    assert bool(jnp.any(infos.is_divergent))


def test_state_is_consistent_and_vmap_matches_loop():
    logdensity = _gaussian()
    kernel = build_kernel()
    keys = jax.random.split(jax.random.PRNGKey(3), 6)
    positions = jax.random.normal(jax.random.PRNGKey(4), (6, 4))
    step = lambda k, x: kernel(k, init(x, logdensity), logdensity, 0.4, jnp.ones(4))
    batched_state, batched_info = jax.jit(jax.vmap(step))(keys, positions)
    assert isinstance(batched_state, HMCState) and isinstance(batched_info, NUTSInfo)
    for c in range(6):
        state, info = jax.jit(step)(keys[c], positions[c])
        np.testing.assert_allclose(state.position, batched_state.position[c], rtol=1e-12)
        assert int(info.num_steps) == int(batched_info.num_steps[c])
        value, grad = jax.value_and_grad(logdensity)(state.position)
        np.testing.assert_allclose(state.logdensity, value, rtol=1e-12)
        np.testing.assert_allclose(state.logdensity_grad, grad, rtol=1e-12, atol=1e-14)
    assert bool(jnp.all((batched_info.acceptance_rate >= 0) & (batched_info.acceptance_rate <= 1)))
    assert bool(jnp.all(batched_info.num_steps >= 2**batched_info.tree_depth - 1))


def test_float32_positions_keep_their_dtype():
    logdensity = lambda x: -0.5 * jnp.sum(x**2)
    kernel = build_kernel()
    state = init(jnp.ones(3, jnp.float32), logdensity)
    new, info = jax.jit(kernel, static_argnums=2)(
        jax.random.PRNGKey(0), state, logdensity, jnp.float32(0.5), jnp.ones(3, jnp.float32)
    )
    assert new.position.dtype == jnp.float32
    assert new.logdensity.dtype == jnp.float32


@pytest.mark.parametrize("depth", [0, -1, 2.5])
def test_bad_configuration_raises(depth):
    with pytest.raises(ConfigurationError):
        build_kernel(max_tree_depth=depth)
    with pytest.raises(ConfigurationError):
        build_kernel(divergence_threshold=0.0)
