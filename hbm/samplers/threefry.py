"""The random numbers of a NUTS trajectory, bit for bit ``jax.random``'s, made cheap on CPU.

The trajectory's randomness is indexed, not streamed (see :mod:`hbm.samplers.trajectory`):
doubling ``j`` of a tree with key ``k`` uses ``depth_keys(k, j)``, its direction is
:func:`direction_from_key` of the first, leaf ``i`` of its subtree draws
``uniform(fold_in(leaf_key, i))`` and its merge ``uniform`` of the third. JAX lowers its
Threefry-2x32 hash to a rolled five-iteration loop on CPU, several kernel launches per
call, and a transition makes a dozen such calls besides its leaves. :func:`leaf_uniform`
and :func:`depth_draws` compute the same values with an unrolled Threefry-2x32 (Salmon et
al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), bit for bit ``jax.random``'s
(see :func:`_use_fast`); so do :func:`split`, :func:`fold_in` and :func:`normal` for a
transition's keys and momentum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["depth_draws", "depth_keys", "direction_from_key", "draws_by_depth", "fold_in",
           "leaf_uniform", "normal", "split"]


def depth_keys(key, depth):
    """The direction, leaf and merge keys of doubling number ``depth``."""
    direction_key, leaf_key, merge_key = jax.random.split(jax.random.fold_in(key, depth), 3)
    return direction_key, leaf_key, merge_key


def direction_from_key(direction_key):
    """A doubling's direction (``True``: right), ``uniform(key, float32) < 1/2``: what
    ``jax.random.bernoulli`` does, with its dtype fixed (``bernoulli``'s default ``p``
    is float32 in some JAX versions and the default float type in others)."""
    return jax.random.uniform(direction_key, dtype=jnp.float32) < np.float32(0.5)


def _use_fast(key) -> bool:
    """Whether the unrolled hash stands in for ``jax.random``: for a raw ``uint32[2]``
    Threefry key under JAX's partitionable key derivation (the default since JAX 0.5),
    whose counters the functions here reproduce. Typed keys and the legacy derivation
    (``jax_threefry_partitionable=False``) get ``jax.random`` itself. The values are
    checked against ``jax.random`` by the tests (``tests/samplers/test_threefry.py``, and
    the iterative tree against the recursive reference), not at run time: a compiled
    check of all of them costs 2-3 s of a first process. Were a future JAX to derive its
    bits differently, these would still be Threefry random numbers, only not
    ``jax.random``'s."""
    return (jnp.asarray(key).dtype == jnp.uint32 and tuple(jnp.shape(key)) == (2,)
            and bool(jax.config.jax_threefry_partitionable))


# ------------------------------------------------------------------ the unrolled hash
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x, distance):
    return (x << np.uint32(distance)) | (x >> np.uint32(32 - distance))


@jax.jit
def _threefry2x32(key0, key1, count0, count1):
    """The Threefry-2x32 block cipher with 20 rounds, unrolled (uint32 in, uint32 out).
    Jitted so that a program traces and lowers its 80 operations once per shape, not at
    every one of a transition's dozen calls (a tenth of a second of a cached start)."""
    key0, key1, count0, count1 = (jnp.asarray(a, jnp.uint32)
                                  for a in (key0, key1, count0, count1))
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = count0 + keys[0], count1 + keys[1]
    for block in range(5):
        for distance in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, distance) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _hash(key, counter):
    """The hash of the counter ``(0, counter)`` under ``key``: ``fold_in(key, counter)``
    and ``split(key)[counter]`` of a raw Threefry key, as a pair of words."""
    key = jnp.asarray(key, jnp.uint32)
    counter = jnp.asarray(counter).astype(jnp.uint32)
    return _threefry2x32(key[0], key[1], jnp.zeros_like(counter), counter)


def _bits_to_unit_float(bits_hi, bits_lo, dtype):
    """Uniform on [0, 1) from 64 random bits, as ``jax.random.uniform`` maps them."""
    if jnp.dtype(dtype) == jnp.float64:
        bits = (bits_hi.astype(jnp.uint64) << np.uint64(32)) | bits_lo.astype(jnp.uint64)
        mantissa = (bits >> np.uint64(12)) | np.uint64(0x3FF0000000000000)
        return lax.bitcast_convert_type(mantissa, jnp.float64) - 1.0
    bits = bits_hi ^ bits_lo
    mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)
    return lax.bitcast_convert_type(mantissa, jnp.float32).astype(dtype) - 1.0


def _fast_leaf_uniform(leaf_key, index, dtype):
    return _fast_unit_uniform(*_hash(leaf_key, index), dtype)


def _jax_leaf_uniform(leaf_key, index, dtype):
    return jax.random.uniform(jax.random.fold_in(leaf_key, index), dtype=dtype)


def leaf_uniform(leaf_key, index, dtype):
    """``jax.random.uniform(jax.random.fold_in(leaf_key, index), dtype=dtype)``, fast."""
    dtype = jnp.dtype(dtype)
    if _use_fast(leaf_key):
        return _fast_leaf_uniform(leaf_key, index, dtype)
    return _jax_leaf_uniform(leaf_key, index, dtype)


def _fast_unit_uniform(key0, key1, dtype):
    """``jax.random.uniform(key, dtype=dtype)`` of the key ``(key0, key1)``, unrolled."""
    zero = jnp.zeros((), jnp.uint32)
    bits_hi, bits_lo = _threefry2x32(key0, key1, zero, zero)
    return jnp.maximum(_bits_to_unit_float(bits_hi, bits_lo, dtype), 0.0).astype(dtype)


def _fast_depth_draws(key, depth, dtype):
    """:func:`_jax_depth_draws` with the unrolled hash."""
    folded = jnp.stack(_hash(key, depth))
    direction, leaf, merge = (_hash(folded, i) for i in range(3))
    go_right = _fast_unit_uniform(*direction, jnp.float32) < np.float32(0.5)
    return go_right, jnp.stack(leaf), _fast_unit_uniform(*merge, dtype)


def _jax_depth_draws(key, depth, dtype):
    direction_key, leaf_key, merge_key = depth_keys(key, depth)
    return (direction_from_key(direction_key), leaf_key,
            jax.random.uniform(merge_key, dtype=dtype))


def depth_draws(key, depth, dtype):
    """The direction (``True``: right), leaf key and merge uniform of doubling ``depth``:
    :func:`direction_from_key` and ``uniform`` of the direction and merge keys of
    :func:`depth_keys`, bit for bit, with the unrolled hash (see :func:`_use_fast`)."""
    dtype = jnp.dtype(dtype)
    if _use_fast(key):
        return _fast_depth_draws(key, depth, dtype)
    return _jax_depth_draws(key, depth, dtype)


def draws_by_depth(key, max_tree_depth: int, dtype):
    """:func:`depth_draws` of every depth ``0 .. max_tree_depth - 1`` as arrays over the
    depths (one batched hash for a whole transition)."""
    depths = jnp.arange(max_tree_depth, dtype=jnp.int32)
    return jax.vmap(lambda depth: depth_draws(key, depth, dtype))(depths)


def _fast_split(key, num: int):
    """``jax.random.split(key, num)`` of a raw Threefry key: key ``i`` hashes ``(0, i)``."""
    return jnp.stack([jnp.stack(_hash(key, i)) for i in range(num)])


def _fast_fold_in(key, data):
    """``jax.random.fold_in(key, data)`` of a raw Threefry key (32-bit ``data``)."""
    return jnp.stack(_hash(key, data))


def split(key, num: int = 2):
    """``jax.random.split(key, num)``, bit for bit (see :func:`_use_fast`)."""
    return _fast_split(key, num) if _use_fast(key) else jax.random.split(key, num)


def fold_in(key, data):
    """``jax.random.fold_in(key, data)``, bit for bit (see :func:`_use_fast`)."""
    return _fast_fold_in(key, data) if _use_fast(key) else jax.random.fold_in(key, data)


def _fast_normal(key, size: int, dtype):
    """``jax.random.normal(key, (size,), dtype)`` of a raw Threefry key with partitionable
    bits: element ``i`` hashes the counter ``(0, i)``; then JAX's own map from bits to
    ``uniform(nextafter(-1, 0), 1)`` and ``sqrt(2) erfinv``."""
    dtype = jnp.dtype(dtype)
    unit = _bits_to_unit_float(*_hash(key, jnp.arange(size, dtype=jnp.uint32)), dtype)
    low = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    high = np.array(1.0, dtype)
    uniform = lax.max(jnp.asarray(low, dtype), unit * (high - low) + low)
    return lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(uniform))


def normal(key, shape, dtype):
    """``jax.random.normal(key, shape, dtype)``, bit for bit, with the unrolled hash for
    a vector (see :func:`_use_fast`)."""
    dtype = jnp.dtype(dtype)
    shape = tuple(shape)
    if len(shape) == 1 and _use_fast(key):
        return _fast_normal(key, shape[0], dtype)
    return jax.random.normal(key, shape, dtype)
