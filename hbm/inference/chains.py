"""Placing chains: vectorized on one device, sequential, or sharded across devices.

A per-chain function is mapped over the leading (chain) axis of its mapped arguments.
Every placement runs the same per-chain program with the same keys, so each chain's
draws do not depend on where it runs (up to floating-point rounding of vectorized
arithmetic). ``"auto"`` is resolved by :func:`hbm.cpu_devices.resolve_chain_method`.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from hbm.cpu_devices import resolve_chain_method

__all__ = ["chain_mapper", "resolve_chain_method"]


def _sequential(f, in_axes):
    def run(*args):
        mapped = [a for a, ax in zip(args, in_axes) if ax == 0]
        fixed = {i: a for i, (a, ax) in enumerate(zip(args, in_axes)) if ax != 0}

        def one(xs):
            it = iter(xs)
            return f(*[fixed[i] if i in fixed else next(it) for i in range(len(args))])

        return jax.lax.map(one, tuple(mapped))

    return run


def chain_mapper(chain_method: str, num_chains: int):
    """``mapper(f, in_axes)``: ``f`` mapped over the chains (``in_axes`` entries are 0 for
    per-chain arguments and ``None`` for shared ones) by ``chain_method``: "vectorized"
    (``jax.vmap``), "sequential" (``lax.map``) or "sharded" (each local device runs its
    share of the chains, vectorized; ``jax.shard_map``)."""
    if chain_method == "vectorized":
        return lambda f, in_axes: jax.vmap(f, in_axes=in_axes)
    if chain_method == "sequential":
        return _sequential
    if chain_method != "sharded":
        raise ValueError(f"unresolved chain method {chain_method!r}")
    devices = jax.devices()
    n_dev = len(devices)
    if num_chains % n_dev != 0:
        n_dev = math.gcd(num_chains, n_dev)
        devices = devices[:n_dev]
    mesh = jax.sharding.Mesh(np.array(devices), ("chains",))
    spec = jax.sharding.PartitionSpec

    def mapper(f, in_axes):
        vf = jax.vmap(f, in_axes=in_axes)
        in_specs = tuple(spec("chains") if ax == 0 else spec() for ax in in_axes)
        return jax.shard_map(vf, mesh=mesh, in_specs=in_specs, out_specs=spec("chains"),
                             check_vma=False)

    return mapper
