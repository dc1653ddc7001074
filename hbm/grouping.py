"""Group-indexed effects: ``values[index]`` with a gradient that stays fast on sorted data.

A hierarchical model reads each observation's group effect with a gather,
``effect[group]``; reverse-mode autodiff turns that gather into a scatter-add of the
per-observation cotangents into the groups. XLA's CPU backend runs a scatter-add as one
sequential loop over the updates, so when consecutive observations belong to the same
group -- data sorted by group, as most data sets are stored (radon by county, InstEval by
student) -- each update reads the value the previous one has just written and the loop
runs at the latency of that dependency chain rather than at the throughput of the
processor: measured 3-4x slower than the same scatter on shuffled data at 50,000
observations (``benchmarks/gradient_forms.py``).

:func:`take_groups` computes the same gather, but its transpose scatters into ``lanes``
interleaved accumulators per group (observation ``i`` adds into lane ``i mod lanes``) and
then sums the lanes, which breaks the chain whatever the order of the data. With
``lanes=1`` (the default for small data) it is the plain scatter-add. The value is
exactly ``values[index]``; the gradient equals the plain gather's up to the rounding of a
reordered sum (exactly, with ``lanes=1``).

Works under ``jit``, ``vmap`` (over values, index or both), ``grad`` and ``jax.hessian``
(forward-over-reverse); forward-mode ``jax.jvp`` of the op itself is not defined (it is a
``jax.custom_vjp``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hbm.errors import ConfigurationError, DataError

__all__ = ["take_groups"]


#: Below this many index entries the gradient uses one lane (the plain scatter-add): on
#: radon-sized data (919 observations) the scatter costs about a microsecond either way
#: and the lane sum is one more kernel; at 50,000 sorted observations four lanes made the
#: scatter about 3x faster (benchmarks/gradient_forms.py).
AUTO_LANES_FROM = 4096


def take_groups(values, index, *, lanes: int | None = None):
    """``values[index]`` along the first axis, with a lane-split scatter as its gradient.

    Parameters
    ----------
    values : array, shape (J, ...)
        One row per group (effects, or anything computed per group).
    index : integer array, any shape
        Group codes in ``0..J-1``. A concrete (host) index is checked; a traced one is
        clamped into range (unlike plain indexing, a negative code does not wrap), so
        check it on the host: :class:`hbm.Model` does this for data keys that index
        parameters.
    lanes : int, optional
        Accumulators per group in the gradient's scatter-add; 1 gives the plain one.
        Default: 4 when ``index`` has at least ``AUTO_LANES_FROM`` entries, else 1.

    Returns
    -------
    array, shape ``index.shape + values.shape[1:]``

    Raises
    ------
    DataError
        If ``index`` is not of integer dtype, or, when concrete, holds a code outside
        ``0..J-1``; if ``values`` is a scalar.
    ConfigurationError
        If ``lanes`` is not a positive integer.
    """
    values = jnp.asarray(values)
    if values.ndim == 0:
        raise DataError("take_groups: 'values' must have a group axis (got a scalar)")
    if lanes is None:
        lanes = 4 if np.size(index) >= AUTO_LANES_FROM else 1
    if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1:
        raise ConfigurationError(f"take_groups: 'lanes' must be a positive integer, got {lanes}")
    _check_index(index, values.shape[0])
    return _take(values, jnp.asarray(index), int(lanes), values.shape[0])


def _check_index(index, num_groups: int):
    dtype = getattr(index, "dtype", None)
    if dtype is None:
        index = np.asarray(index)
        dtype = index.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise DataError(f"take_groups: 'index' must hold integer group codes, got dtype {dtype}")
    try:
        codes = np.asarray(index)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced: clamped in the op, checked by whoever holds the data
    bad = (codes < 0) | (codes >= num_groups)
    if np.any(bad):
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"take_groups: 'index' holds {codes[first].item()} at position {first}, but "
            f"'values' has {num_groups} groups (valid codes 0..{num_groups - 1}); "
            f"{int(np.sum(bad))} code(s) out of range")


# Both directions are written with lax, which reads the raw codes (jnp indexing would add
# a select that wraps negative codes, one more pass over the index on every gradient):
# out-of-range codes are clamped, in the gather and in the scatter alike, so that the
# gradient is the exact transpose of the value even for a bad traced index. The gather
# sees the raw codes, so hbm.Model's host check of data-dependent indices still applies.
@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _take(values, index, lanes, num_groups):
    return _gather(values, index)


def _take_fwd(values, index, lanes, num_groups):
    return _gather(values, index), index


def _take_bwd(lanes, num_groups, index, cotangent):
    row_shape = cotangent.shape[index.ndim:]
    updates = cotangent.reshape((index.size,) + row_shape)
    index = index.reshape(-1)
    if lanes == 1:
        zeros = jnp.zeros((num_groups,) + row_shape, cotangent.dtype)
        return _scatter_add(zeros, index, updates), None
    # lane i mod lanes of each group; a clamped flat code stays in its clamped group
    lane = jnp.arange(index.shape[0], dtype=index.dtype) % lanes
    zeros = jnp.zeros((num_groups * lanes,) + row_shape, cotangent.dtype)
    partial_sums = _scatter_add(zeros, index * lanes + lane, updates)
    return partial_sums.reshape((num_groups, lanes) + row_shape).sum(axis=1), None


_take.defvjp(_take_fwd, _take_bwd)


def _gather(values, index):
    """``values[index]`` along axis 0, codes clamped into range."""
    rows = values.ndim - 1
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=tuple(range(index.ndim, index.ndim + rows)),
        collapsed_slice_dims=(0,), start_index_map=(0,))
    return jax.lax.gather(values, index[..., None], dims, (1,) + values.shape[1:],
                          mode=jax.lax.GatherScatterMode.CLIP)


def _scatter_add(target, index, updates):
    """``target`` plus each row of ``updates`` added at row ``index`` (1-D, clamped)."""
    rows = target.ndim - 1
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=tuple(range(1, 1 + rows)), inserted_window_dims=(0,),
        scatter_dims_to_operand_dims=(0,))
    return jax.lax.scatter_add(target, index[:, None], updates, dims,
                               mode=jax.lax.GatherScatterMode.CLIP)
