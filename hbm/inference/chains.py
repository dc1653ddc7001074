"""Placing chains: vectorized on one device, sequential, or sharded across devices.

A per-chain function is mapped over the leading (chain) axis of its mapped arguments.
Every placement runs the same per-chain program with the same keys, so each chain's
draws do not depend on where it runs (up to floating-point rounding of vectorized
arithmetic). ``"auto"`` is resolved by :func:`hbm.cpu_devices.resolve_chain_method`.

Linear algebra and several CPU devices. jaxlib runs a *batched* LAPACK call (a vmapped
``cholesky``, ``eigh``, ...) as tasks on XLA's CPU thread pool and blocks until they are
done; with one host device per core, every pool thread can be one device's program
blocked in such a call, and the process deadlocks. Programs that call LAPACK (a dense or
low-rank metric; a model with a Cholesky factor or an eigendecomposition, see
:func:`calls_linear_algebra`) therefore run their chains one after another on each device
when sharded (``lax.map``: each call unbatched), and ``"auto"`` keeps them vectorized on
one device.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from hbm.cpu_devices import resolve_chain_method

__all__ = ["LINEAR_ALGEBRA_PRIMITIVES", "calls_linear_algebra", "chain_mapper",
           "resolve_chain_method"]

#: jax primitives that the CPU backend runs as LAPACK calls
LINEAR_ALGEBRA_PRIMITIVES = frozenset({
    "cholesky", "eigh", "eig", "svd", "qr", "householder_product", "lu",
    "triangular_solve", "schur", "hessenberg", "tridiagonal", "tridiagonal_solve",
    "geqp3",
})


def _primitives(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _primitives(inner)


def calls_linear_algebra(fn, *args) -> bool:
    """Whether ``fn(*args)`` or its gradient calls a LAPACK-backed primitive
    (:data:`LINEAR_ALGEBRA_PRIMITIVES`); traced, not run."""
    jaxpr = jax.make_jaxpr(jax.value_and_grad(fn))(*args)
    return any(name in LINEAR_ALGEBRA_PRIMITIVES for name in _primitives(jaxpr.jaxpr))


def _sequential(f, in_axes):
    def run(*args):
        mapped = [a for a, ax in zip(args, in_axes) if ax == 0]
        fixed = {i: a for i, (a, ax) in enumerate(zip(args, in_axes)) if ax != 0}

        def one(xs):
            it = iter(xs)
            return f(*[fixed[i] if i in fixed else next(it) for i in range(len(args))])

        return jax.lax.map(one, tuple(mapped))

    return run


def chain_mapper(chain_method: str, num_chains: int, *, linear_algebra: bool = False):
    """``mapper(f, in_axes)``: ``f`` mapped over the chains (``in_axes`` entries are 0 for
    per-chain arguments and ``None`` for shared ones) by ``chain_method``: "vectorized"
    (``jax.vmap``), "sequential" (``lax.map``) or "sharded" (each local device runs its
    share of the chains, vectorized, or one after another if ``linear_algebra``: see the
    module docstring; ``jax.shard_map``)."""
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
        vf = _sequential(f, in_axes) if linear_algebra else jax.vmap(f, in_axes=in_axes)
        in_specs = tuple(spec("chains") if ax == 0 else spec() for ax in in_axes)
        return jax.shard_map(vf, mesh=mesh, in_specs=in_specs, out_specs=spec("chains"),
                             check_vma=False)

    return mapper
