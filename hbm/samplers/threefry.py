"""The random numbers of a NUTS trajectory, bit for bit ``jax.random``'s, made cheap on CPU.

The trajectory's randomness is indexed, not streamed (see :mod:`hbm.samplers.trajectory`):
doubling ``j`` of a tree with key ``k`` uses ``depth_keys(k, j)``, its direction is
``bernoulli`` of the first, leaf ``i`` of its subtree draws ``uniform(fold_in(leaf_key,
i))`` and its merge ``uniform`` of the third. JAX lowers its Threefry-2x32 hash to a
rolled five-iteration loop on CPU, several kernel launches per call, and a transition
makes a dozen such calls besides its leaves. :func:`leaf_uniform` and :func:`depth_draws`
compute the same values with an unrolled Threefry-2x32 (Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3"): a one-off check per JAX version, backend, dtype and
key scheme compares them with ``jax.random`` and falls back to it should they differ.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["depth_draws", "depth_keys", "draws_by_depth", "fold_in", "leaf_uniform", "normal", "split"]


def depth_keys(key, depth):
    """The direction, leaf and merge keys of doubling number ``depth``."""
    direction_key, leaf_key, merge_key = jax.random.split(jax.random.fold_in(key, depth), 3)
    return direction_key, leaf_key, merge_key


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x, distance):
    return (x << np.uint32(distance)) | (x >> np.uint32(32 - distance))


def _threefry2x32(key0, key1, count0, count1):
    """The Threefry-2x32 block cipher with 20 rounds, unrolled (uint32 in, uint32 out)."""
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = count0 + keys[0], count1 + keys[1]
    for block in range(5):
        for distance in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, distance) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


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
    key = jnp.asarray(leaf_key, jnp.uint32)
    zero = jnp.zeros((), jnp.uint32)
    folded0, folded1 = _threefry2x32(key[0], key[1], zero, jnp.asarray(index).astype(jnp.uint32))
    bits_hi, bits_lo = _threefry2x32(folded0, folded1, zero, zero)
    return jnp.maximum(_bits_to_unit_float(bits_hi, bits_lo, dtype), 0.0).astype(dtype)


def _jax_leaf_uniform(leaf_key, index, dtype):
    return jax.random.uniform(jax.random.fold_in(leaf_key, index), dtype=dtype)


@functools.lru_cache(maxsize=None)
def _fast_leaf_uniform_agrees(dtype_name: str, key_shape: tuple, partitionable: bool) -> bool:
    """Whether the unrolled hash reproduces ``jax.random`` here: checked once per process,
    and remembered across processes per JAX version and backend
    (:func:`hbm.compilation_cache.remembered`: the check costs a few tenths of a second of
    tracing and lowering, a good part of a cached process's start)."""
    if key_shape != (2,):
        return False
    from hbm.compilation_cache import remembered

    return remembered(f"leaf_uniform_agrees {dtype_name} partitionable={partitionable}",
                      lambda: _check_fast_leaf_uniform(dtype_name))


def _check_fast_leaf_uniform(dtype_name: str) -> bool:
    def both(key, index):
        return (_jax_leaf_uniform(key, index, dtype_name),
                _fast_leaf_uniform(key, index, dtype_name))

    try:
        # one compiled comparison over a grid of keys and indices (eagerly, op by op, the
        # unrolled hash costs seconds); evaluated now even when called while tracing
        with jax.ensure_compile_time_eval():
            keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 1, 12345)])
            indices = jnp.array([0, 1, 2, 7, 1000], jnp.int32)
            grid = jax.jit(jax.vmap(jax.vmap(both, (None, 0)), (0, None)))
            expected, actual = grid(keys, indices)
            return bool(np.all(np.asarray(expected) == np.asarray(actual)))
    except Exception:  # noqa: BLE001 - any incompatibility means: use jax.random
        return False


def leaf_uniform(leaf_key, index, dtype):
    """``jax.random.uniform(jax.random.fold_in(leaf_key, index), dtype=dtype)``, fast."""
    dtype = jnp.dtype(dtype)
    key_shape = tuple(jnp.shape(leaf_key))
    use_fast = (
        jnp.asarray(leaf_key).dtype == jnp.uint32
        and _fast_leaf_uniform_agrees(dtype.name, key_shape, bool(jax.config.jax_threefry_partitionable))
    )
    if use_fast:
        return _fast_leaf_uniform(leaf_key, index, dtype)
    return _jax_leaf_uniform(leaf_key, index, dtype)


def _fast_unit_uniform(key0, key1, dtype):
    """``jax.random.uniform(key, dtype=dtype)`` of the key ``(key0, key1)``, unrolled."""
    zero = jnp.zeros((), jnp.uint32)
    bits_hi, bits_lo = _threefry2x32(key0, key1, zero, zero)
    return jnp.maximum(_bits_to_unit_float(bits_hi, bits_lo, dtype), 0.0).astype(dtype)


def _fast_depth_draws(key, depth, dtype):
    """:func:`_jax_depth_draws` with the unrolled hash: ``fold_in`` and ``split`` of a
    Threefry key are the hash of the counters ``(0, depth)`` and ``(0, 0..2)``."""
    key = jnp.asarray(key, jnp.uint32)
    zero = jnp.zeros((), jnp.uint32)
    folded = _threefry2x32(key[0], key[1], zero, jnp.asarray(depth).astype(jnp.uint32))
    direction, leaf, merge = (_threefry2x32(*folded, zero, np.uint32(i)) for i in range(3))
    bernoulli_dtype = jnp.result_type(float)  # jax.random.bernoulli's p = 0.5
    go_right = _fast_unit_uniform(*direction, bernoulli_dtype) < jnp.asarray(0.5,
                                                                            bernoulli_dtype)
    return go_right, jnp.stack(leaf), _fast_unit_uniform(*merge, dtype)


def _jax_depth_draws(key, depth, dtype):
    direction_key, leaf_key, merge_key = depth_keys(key, depth)
    return (jax.random.bernoulli(direction_key), leaf_key,
            jax.random.uniform(merge_key, dtype=dtype))


@functools.lru_cache(maxsize=None)
def _fast_depth_draws_agree(dtype_name: str, key_shape: tuple, partitionable: bool,
                            x64: bool) -> bool:
    """Whether the unrolled hash reproduces ``jax.random``'s depth draws here (checked
    once per process, remembered across processes as for the leaf uniforms)."""
    if key_shape != (2,):
        return False
    from hbm.compilation_cache import remembered

    return remembered(f"depth_draws_agree {dtype_name} partitionable={partitionable} "
                      f"x64={x64}", lambda: _check_fast_depth_draws(dtype_name))


def _check_fast_depth_draws(dtype_name: str) -> bool:
    def both(key, depth):
        return (_jax_depth_draws(key, depth, dtype_name),
                _fast_depth_draws(key, depth, dtype_name))

    try:
        with jax.ensure_compile_time_eval():
            keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 1, 12345, 2**31 + 7)])
            depths = jnp.arange(12, dtype=jnp.int32)
            grid = jax.jit(jax.vmap(jax.vmap(both, (None, 0)), (0, None)))
            expected, actual = grid(keys, depths)
            return all(np.array_equal(np.asarray(e), np.asarray(a))
                       for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)))
    except Exception:  # noqa: BLE001 - any incompatibility means: use jax.random
        return False


def depth_draws(key, depth, dtype):
    """The direction (``True``: right), leaf key and merge uniform of doubling ``depth``:
    ``bernoulli`` and ``uniform`` of the direction and merge keys of :func:`depth_keys`
    (bit for bit), computed with an unrolled hash where it reproduces ``jax.random``
    (JAX's own Threefry is a rolled loop of several kernels on CPU, four per doubling)."""
    dtype = jnp.dtype(dtype)
    use_fast = (
        jnp.asarray(key).dtype == jnp.uint32
        and _fast_depth_draws_agree(dtype.name, tuple(jnp.shape(key)),
                                    bool(jax.config.jax_threefry_partitionable),
                                    bool(jax.config.jax_enable_x64))
    )
    if use_fast:
        return _fast_depth_draws(key, depth, dtype)
    return _jax_depth_draws(key, depth, dtype)


def draws_by_depth(key, max_tree_depth: int, dtype):
    """:func:`depth_draws` of every depth ``0 .. max_tree_depth - 1`` as arrays over the
    depths (one batched hash for a whole transition)."""
    depths = jnp.arange(max_tree_depth, dtype=jnp.int32)
    return jax.vmap(lambda depth: depth_draws(key, depth, dtype))(depths)


def _fast_split(key, num: int):
    """``jax.random.split(key, num)`` of a raw Threefry key with partitionable splitting:
    key ``i`` is the hash of the counter ``(0, i)``."""
    key = jnp.asarray(key, jnp.uint32)
    zero = jnp.zeros((), jnp.uint32)
    return jnp.stack([jnp.stack(_threefry2x32(key[0], key[1], zero, np.uint32(i)))
                      for i in range(num)])


def _fast_fold_in(key, data):
    """``jax.random.fold_in(key, data)`` of a raw Threefry key (32-bit ``data``)."""
    key = jnp.asarray(key, jnp.uint32)
    zero = jnp.zeros((), jnp.uint32)
    return jnp.stack(_threefry2x32(key[0], key[1], zero, jnp.asarray(data).astype(jnp.uint32)))


@functools.lru_cache(maxsize=None)
def _fast_keys_agree(key_shape: tuple, partitionable: bool) -> bool:
    if key_shape != (2,):
        return False
    from hbm.compilation_cache import remembered

    return remembered(f"fold_in_split_agree partitionable={partitionable}", _check_fast_keys)


def _check_fast_keys() -> bool:
    def both(key, data):
        return ((jax.random.fold_in(key, data), jax.random.split(key, 2),
                 jax.random.split(key, 3)),
                (_fast_fold_in(key, data), _fast_split(key, 2), _fast_split(key, 3)))

    try:
        with jax.ensure_compile_time_eval():
            keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 1, 12345, 2**31 + 7)])
            data = jnp.array([0, 1, 2, 999, 2**31 - 1], jnp.int32)
            expected, actual = jax.jit(jax.vmap(jax.vmap(both, (None, 0)), (0, None)))(
                keys, data)
            return all(np.array_equal(np.asarray(e), np.asarray(a))
                       for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)))
    except Exception:  # noqa: BLE001 - any incompatibility means: use jax.random
        return False


def _use_fast_keys(key) -> bool:
    return (jnp.asarray(key).dtype == jnp.uint32
            and _fast_keys_agree(tuple(jnp.shape(key)),
                                 bool(jax.config.jax_threefry_partitionable)))


def split(key, num: int = 2):
    """``jax.random.split(key, num)``, bit for bit, with the unrolled hash where it agrees."""
    return _fast_split(key, num) if _use_fast_keys(key) else jax.random.split(key, num)


def fold_in(key, data):
    """``jax.random.fold_in(key, data)``, bit for bit, with the unrolled hash where it
    agrees."""
    return _fast_fold_in(key, data) if _use_fast_keys(key) else jax.random.fold_in(key, data)


def _fast_normal(key, size: int, dtype):
    """``jax.random.normal(key, (size,), dtype)`` of a raw Threefry key with partitionable
    bits: element ``i`` hashes the counter ``(0, i)``; then JAX's own map from bits to
    ``uniform(nextafter(-1, 0), 1)`` and ``sqrt(2) erfinv``."""
    key = jnp.asarray(key, jnp.uint32)
    dtype = jnp.dtype(dtype)
    counts = jnp.arange(size, dtype=jnp.uint32)
    bits_hi, bits_lo = _threefry2x32(key[0], key[1], jnp.zeros_like(counts), counts)
    unit = _bits_to_unit_float(bits_hi, bits_lo, dtype)
    low = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    high = np.array(1.0, dtype)
    uniform = lax.max(jnp.asarray(low, dtype), unit * (high - low) + low)
    return lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(uniform))


@functools.lru_cache(maxsize=None)
def _fast_normal_agrees(dtype_name: str, key_shape: tuple, partitionable: bool) -> bool:
    if key_shape != (2,):
        return False
    from hbm.compilation_cache import remembered

    return remembered(f"normal_agrees {dtype_name} partitionable={partitionable}",
                      lambda: _check_fast_normal(dtype_name))


def _check_fast_normal(dtype_name: str) -> bool:
    try:
        with jax.ensure_compile_time_eval():
            keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 1, 12345, 2**31 + 7)])
            for size in (1, 3, 10, 257):
                expected, actual = jax.jit(jax.vmap(lambda k: (
                    jax.random.normal(k, (size,), dtype_name),
                    _fast_normal(k, size, dtype_name))))(keys)
                if not np.array_equal(np.asarray(expected), np.asarray(actual)):
                    return False
            return True
    except Exception:  # noqa: BLE001 - any incompatibility means: use jax.random
        return False


def normal(key, shape, dtype):
    """``jax.random.normal(key, shape, dtype)``, bit for bit, with the unrolled hash for
    a vector where it agrees."""
    dtype = jnp.dtype(dtype)
    shape = tuple(shape)
    if (len(shape) == 1 and jnp.asarray(key).dtype == jnp.uint32
            and _fast_normal_agrees(dtype.name, tuple(jnp.shape(key)),
                                    bool(jax.config.jax_threefry_partitionable))):
        return _fast_normal(key, shape[0], dtype)
    return jax.random.normal(key, shape, dtype)
