"""Bringing chains in from the far tail before warmup, where float32 cannot run HMC.

A floating-point log density of magnitude ``L`` is known to about ``eps * L`` only
(``eps = 2**-23`` in float32): at ``log p = -1e8`` a float32 energy is a multiple of 8.
There NUTS's energy errors are rounding noise; step-size adaptation reads the noise as
rejections and shrinks the step size, and a chain can stay where it started
(``hbm.models.epil``, seed 2, ``metric="lowrank"``: one chain of four at ``log p =
-1.1e8`` and step size 6e-8 for all 2000 iterations). Random initial points (uniform in
``(-2, 2)`` on the unconstrained space, Stan's rule) land that far out on weakly
identified models with log links or small scales: sleepstudy, kidiq and epil start at
``-1e6`` to ``-1e10``.

So each chain whose initial log density is below ``-RESOLUTION / eps`` is first moved
uphill by L-BFGS (:func:`hbm.samplers.optimize.minimize`) until it is not (or for at
most ``max_iterations`` iterations): the energy's rounding is then at most about
``RESOLUTION`` times a small factor (float32 log densities of the benchmark models round
to a median 0.4 and a 99th percentile of 1.6-8.2 ``eps |log p|``, benchmarks/README).
The descent stops as soon as the threshold is crossed, usually far from the mode, so it
does not pull a hierarchical model into the neck of its funnel; only a model whose
typical set itself lies beyond the threshold (in float32, ``|log p| > 131072``: some
1e5 observations) is moved towards its mode, for at most ``MAX_ITERATIONS``
iterations. MCMC's validity does not depend on the initial point. In float64 the
threshold is ``2**46``, about 7e13, so float64 runs are unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RESOLUTION", "MAX_ITERATIONS", "FarTailDescent", "far_tail_threshold", "move_in",
           "descend_from_far_tail"]

#: The largest ``eps * |log p|`` at which a chain starts warmup without a descent.
RESOLUTION = 2.0**-6
#: L-BFGS iterations a descent may take.
MAX_ITERATIONS = 200


class FarTailDescent(NamedTuple):
    """Initial positions after the descent, and per chain the L-BFGS iterations and the
    log-density evaluations it took (0 for chains that started close enough)."""

    positions: jax.Array
    iterations: np.ndarray
    evaluations: np.ndarray


def far_tail_threshold(dtype) -> float:
    """``RESOLUTION / eps``: chains with ``log p`` below minus this descend first
    (131072 in float32)."""
    return RESOLUTION / float(jnp.finfo(dtype).eps)


def move_in(logdensity_fn, position, max_iterations: int = MAX_ITERATIONS):
    """One chain, traceable (jit and vmap it): ``(position, iterations, evaluations)``,
    ``position`` moved uphill by L-BFGS while its log density is below
    ``-far_tail_threshold``, returned exactly (with zero counts) otherwise.

    In float64 the threshold (about 7e13) is beyond any initial log density, so the
    descent is not even traced: a compiled program keeps float64 runs as they were.
    """
    from hbm.samplers.optimize import DEFAULT_OPTIMIZER, minimize  # imports optax

    position = jnp.asarray(position)
    dtype = position.dtype
    if jnp.finfo(dtype).eps < 2.0**-30:
        zero = jnp.zeros((), jnp.int32)
        return position, zero, zero
    target = jnp.asarray(-far_tail_threshold(dtype), dtype)
    result = minimize(position, logdensity_fn, DEFAULT_OPTIMIZER, max_iterations,
                      jnp.asarray(0.0, dtype), target=target)
    # with tol 0 a chain below the threshold takes at least one iteration; one above it
    # takes none and keeps its position (the loop never ran)
    far = result.iterations > 0
    return result.position, result.iterations, jnp.where(far, result.evaluations, 0)


@jax.jit
def _move_in_all(logdensity_fn, positions):
    return jax.vmap(move_in, in_axes=(None, 0))(logdensity_fn, positions)


def descend_from_far_tail(logdensity_fn, positions, logdensities) -> FarTailDescent:
    """Move the chains whose ``logdensities`` lie below ``-far_tail_threshold`` uphill
    until they do not (:func:`move_in`); the others keep their positions exactly.

    ``logdensity_fn`` is a pure ``(d,) -> scalar`` function or a
    :class:`jax.tree_util.Partial` of one (the compiled descent is then reused for new
    same-shaped data); ``positions`` is ``(chains, d)``. The compiled program runs only
    when some chain needs it.
    """
    from hbm.samplers.closures import as_pytree_function

    positions = jnp.asarray(positions)
    far = np.asarray(logdensities) < -far_tail_threshold(positions.dtype)
    if not far.any():
        zeros = np.zeros(positions.shape[0], np.int64)
        return FarTailDescent(positions, zeros, zeros)
    moved, iterations, evaluations = _move_in_all(as_pytree_function(logdensity_fn), positions)
    return FarTailDescent(moved, np.asarray(iterations, np.int64),
                          np.asarray(evaluations, np.int64))
