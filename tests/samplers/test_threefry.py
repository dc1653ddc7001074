"""hbm.samplers.threefry: the unrolled hash gives jax.random's keys and normals bit for
bit (the library does not check this at run time: these tests are the check, on every
JAX that CI installs), and is the path taken here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.samplers import threefry

KEYS = jax.random.split(jax.random.PRNGKey(2024), 32)
PARTITIONABLE = bool(jax.config.jax_threefry_partitionable)


def test_fold_in_and_split_equal_jax_random():
    data = jnp.array([0, 1, 7, 1000, 2**31 - 1], jnp.int32)

    @jax.jit
    def both(keys):
        def one(key, d):
            return ((threefry.fold_in(key, d), threefry.split(key), threefry.split(key, 3)),
                    (jax.random.fold_in(key, d), jax.random.split(key),
                     jax.random.split(key, 3)))
        return jax.vmap(jax.vmap(one, (None, 0)), (0, None))(keys, data)

    got, expected = both(KEYS)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert threefry._use_fast(KEYS[0]) == PARTITIONABLE
    # the fast functions themselves, not only the dispatcher
    np.testing.assert_array_equal(threefry._fast_split(KEYS[3], 4),
                                  jax.random.split(KEYS[3], 4))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("size", [1, 10, 175])
def test_normal_equals_jax_random(dtype, size):
    got = jax.jit(jax.vmap(lambda k: threefry.normal(k, (size,), dtype)))(KEYS)
    fast = jax.jit(jax.vmap(lambda k: threefry._fast_normal(k, size, dtype)))(KEYS)
    expected = jax.jit(jax.vmap(lambda k: jax.random.normal(k, (size,), dtype)))(KEYS)
    assert got.dtype == expected.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(fast, expected)


def test_other_shapes_and_typed_keys_fall_back_to_jax_random():
    key = KEYS[0]
    np.testing.assert_array_equal(threefry.normal(key, (3, 4), jnp.float64),
                                  jax.random.normal(key, (3, 4), jnp.float64))
    typed = jax.random.key(5)
    np.testing.assert_array_equal(jax.random.key_data(threefry.split(typed)),
                                  jax.random.key_data(jax.random.split(typed)))
    np.testing.assert_array_equal(jax.random.key_data(threefry.fold_in(typed, 3)),
                                  jax.random.key_data(jax.random.fold_in(typed, 3)))
