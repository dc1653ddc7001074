"""Posterior modes (MAP), Laplace approximations and boundary-mode detection.

The mode of a flat log density is found with L-BFGS (Nocedal 1980; Liu & Nocedal 1989,
"On the limited memory BFGS method for large scale optimization", Math. Programming 45)
with a zoom line search satisfying the strong Wolfe conditions (Nocedal & Wright 2006,
"Numerical Optimization", algorithms 3.5-3.6), as provided by optax. Several restarts
run vectorized; the best finite one is reported.

The Laplace approximation (Laplace 1774; Tierney & Kadane 1986, "Accurate
approximations for posterior moments and marginal densities", JASA 81) is the Gaussian
at the mode whose covariance is the inverse of the negative Hessian of the log density.

In hierarchical models the joint mode often does not exist: without the Jacobian of the
log transform, ``log p`` grows without bound as a group scale goes to zero with all group
effects equal to their mean (Gelman et al. 2013, "Bayesian Data Analysis", 3rd ed.,
section 5.5 and chapter 13). :func:`boundary_report` flags such modes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hbm.errors import ConfigurationError, InitializationError, SamplingError
from hbm.samplers.closures import as_pytree_function

__all__ = [
    "MAPResult",
    "BoundaryReport",
    "Minimized",
    "find_mode",
    "minimize",
    "DEFAULT_OPTIMIZER",
    "laplace_draws",
    "boundary_report",
    "BOUNDARY_THRESHOLD",
]

#: Unconstrained coordinates beyond this magnitude are reported as drifting to a
#: boundary (exp(-15) ~ 3e-7: a scale that small is a collapsed scale).
BOUNDARY_THRESHOLD = 15.0


class MAPResult(NamedTuple):
    """Outcome of :func:`find_mode`.

    Attributes
    ----------
    position : (d,) the best restart's final position.
    logdensity : its log density.
    converged : whether that restart reached ``||grad|| <= tol``.
    num_iterations : its number of L-BFGS iterations.
    all_positions : (restarts, d) final positions of every restart.
    all_logdensities : (restarts,) their log densities (``-inf`` where not finite).
    grad_norm : the best restart's final gradient norm.
    all_converged : (restarts,) convergence of every restart.
    """

    position: jax.Array
    logdensity: jax.Array
    converged: bool
    num_iterations: int
    all_positions: jax.Array
    all_logdensities: jax.Array
    grad_norm: jax.Array
    all_converged: jax.Array


class BoundaryReport(NamedTuple):
    """Coordinates (flat indices) of a mode that sits on a boundary, and why.

    ``indices`` is empty and ``reason`` is ``""`` when nothing suspicious was found.
    """

    indices: tuple[int, ...]
    reason: str


#: L-BFGS with optax's zoom line search.
DEFAULT_OPTIMIZER = optax.lbfgs()


class _Carry(NamedTuple):
    position: jax.Array
    opt_state: optax.OptState
    value: jax.Array  # of the minimized function, -logdensity
    grad: jax.Array
    iteration: jax.Array
    evaluations: jax.Array
    stopped: jax.Array  # stalled or the next point was not finite


class Minimized(NamedTuple):
    """Outcome of one :func:`minimize` run (batched under ``vmap``)."""

    position: jax.Array
    logdensity: jax.Array  # -inf where not finite
    grad_norm: jax.Array
    iterations: jax.Array
    converged: jax.Array  # grad_norm <= tol
    evaluations: jax.Array  # of the log density and its gradient, line searches included


def _evaluations_in_step(opt_state):
    """Log-density evaluations of the optimizer's last step: its line search's steps
    where it has one (optax's zoom line search), else the one the next step needs."""
    steps = optax.tree_utils.tree_get(opt_state, "num_linesearch_steps", None)
    return jnp.int32(1) if steps is None else jnp.asarray(steps, jnp.int32)


def minimize(x0, logdensity_fn, optimizer, max_iters, tol, target=None) -> Minimized:
    """One maximization of ``logdensity_fn`` from ``x0`` (pure: jit and vmap it).

    Steps to non-finite points are refused and the loop stops when it stalls, when the
    gradient norm is at most ``tol``, after ``max_iters`` iterations, or (with a
    ``target``) once the log density is at least ``target``.
    """
    negative = lambda x: -logdensity_fn(x)  # noqa: E731
    value_and_grad = optax.value_and_grad_from_state(negative)
    value0, grad0 = jax.value_and_grad(negative)(x0)

    def keep_going(carry: _Carry):
        going = (
            (carry.iteration < max_iters)
            & ~carry.stopped
            & jnp.isfinite(carry.value)
            & (jnp.linalg.norm(carry.grad) > tol)
        )
        return going if target is None else going & (-carry.value < target)

    def one_iteration(carry: _Carry) -> _Carry:
        updates, opt_state = optimizer.update(
            carry.grad,
            carry.opt_state,
            carry.position,
            value=carry.value,
            grad=carry.grad,
            value_fn=negative,
        )
        position = optax.apply_updates(carry.position, updates)
        value, grad = value_and_grad(position, state=opt_state)
        acceptable = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        acceptable &= jnp.all(jnp.isfinite(position))
        moved = jnp.any(position != carry.position)
        accept = lambda new, old: jnp.where(acceptable, new, old)  # noqa: E731
        return _Carry(
            position=accept(position, carry.position),
            opt_state=jax.tree_util.tree_map(accept, opt_state, carry.opt_state),
            value=accept(value, carry.value),
            grad=accept(grad, carry.grad),
            iteration=carry.iteration + 1,
            evaluations=carry.evaluations + _evaluations_in_step(opt_state),
            stopped=~acceptable | ~moved,
        )

    init = _Carry(
        position=x0,
        opt_state=optimizer.init(x0),
        value=value0,
        grad=grad0,
        iteration=jnp.zeros((), dtype=jnp.int32),
        evaluations=jnp.ones((), dtype=jnp.int32),
        stopped=jnp.zeros((), dtype=bool),
    )
    final = jax.lax.while_loop(keep_going, one_iteration, init)
    grad_norm = jnp.linalg.norm(final.grad)
    logdensity = jnp.where(jnp.isfinite(final.value), -final.value, -jnp.inf)
    return Minimized(final.position, logdensity, grad_norm, final.iteration,
                     grad_norm <= tol, final.evaluations)


@partial(jax.jit, static_argnames=("optimizer",))
def _minimize_all(init_positions, tol, max_iters, logdensity_fn, optimizer):
    run = partial(
        minimize,
        logdensity_fn=logdensity_fn,
        optimizer=optimizer,
        max_iters=max_iters,
        tol=tol,
    )
    return jax.vmap(run)(init_positions)


def find_mode(
    logdensity_fn: Callable,
    init_positions: jax.Array,
    *,
    optimizer: optax.GradientTransformationExtraArgs | None = None,
    max_iters: int = 2000,
    tol: float = 1e-8,
) -> MAPResult:
    """Maximize ``logdensity_fn`` from several starting points.

    Parameters
    ----------
    logdensity_fn : pure function ``(d,) -> scalar``, or a
        :class:`jax.tree_util.Partial` of one: the compiled loop is reused for the same
        function (and, for a ``Partial``, new bound arrays of the same shapes).
    init_positions : (restarts, d) starting points (a single (d,) point is accepted).
    optimizer : an optax optimizer whose ``update`` accepts ``value``, ``grad`` and
        ``value_fn`` (default ``optax.lbfgs()``, zoom line search).
    max_iters : maximum number of iterations per restart.
    tol : a restart stops, converged, when its gradient norm is ``<= tol``; it also stops
        (not converged) when a step leaves it in place or leads to a non-finite value.

    Returns
    -------
    MAPResult for the restart with the highest finite log density.

    Raises
    ------
    InitializationError
        If no restart has a finite log density.
    """
    init_positions = jnp.asarray(init_positions)
    if init_positions.ndim == 1:
        init_positions = init_positions[None, :]
    if init_positions.ndim != 2 or init_positions.shape[0] < 1:
        raise ConfigurationError(
            f"init_positions must have shape (restarts, d), got {init_positions.shape}"
        )
    if not jnp.issubdtype(init_positions.dtype, jnp.floating):
        init_positions = init_positions.astype(jnp.result_type(float))
    if isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)) or max_iters < 1:
        raise ConfigurationError(f"max_iters must be a positive integer, got {max_iters!r}")
    if not tol >= 0:
        raise ConfigurationError(f"tol must be >= 0, got {tol!r}")
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    runs = _minimize_all(
        init_positions, jnp.asarray(tol, dtype=init_positions.dtype),
        jnp.asarray(max_iters, dtype=jnp.int32), as_pytree_function(logdensity_fn), optimizer,
    )
    finite = np.isfinite(np.asarray(runs.logdensity))
    if not finite.any():
        raise InitializationError(
            "find_mode: the log density is not finite at any restart's final point; "
            "check the initial positions"
        )
    best = int(np.argmax(np.where(finite, np.asarray(runs.logdensity), -np.inf)))
    return MAPResult(
        position=runs.position[best],
        logdensity=runs.logdensity[best],
        converged=bool(runs.converged[best]),
        num_iterations=int(runs.iterations[best]),
        all_positions=runs.position,
        all_logdensities=runs.logdensity,
        grad_norm=runs.grad_norm[best],
        all_converged=runs.converged,
    )


@jax.jit
def _precision_and_factor(logdensity_fn, mode):
    """The negative Hessian at ``mode`` (symmetrized) and its Cholesky factor."""
    precision = -jax.hessian(logdensity_fn)(mode)
    precision = 0.5 * (precision + precision.T)
    return precision, jnp.linalg.cholesky(precision)


def laplace_draws(
    key: jax.Array, logdensity_fn: Callable, mode: jax.Array, num_draws: int
) -> tuple[jax.Array, jax.Array]:
    """Draws from the Laplace approximation ``N(mode, (-H)^-1)``, ``H`` the Hessian.

    Returns
    -------
    draws : (num_draws, d)
    cov : (d, d) the covariance ``(-H)^-1``.

    Raises
    ------
    SamplingError
        If the Hessian at ``mode`` is not negative definite (or not finite).
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ConfigurationError(f"num_draws must be a positive integer, got {num_draws!r}")
    mode = jnp.asarray(mode)
    if mode.ndim != 1:
        raise ConfigurationError(f"mode must be a 1-D position, got shape {mode.shape}")
    precision, factor = _precision_and_factor(as_pytree_function(logdensity_fn), mode)
    if not bool(jnp.all(jnp.isfinite(factor))):
        eigenvalues = np.linalg.eigvalsh(np.asarray(precision)) if bool(
            jnp.all(jnp.isfinite(precision))
        ) else None
        detail = (
            f"smallest eigenvalue of the negative Hessian {eigenvalues.min():.3g}"
            if eigenvalues is not None
            else "the Hessian is not finite"
        )
        raise SamplingError(
            "Laplace approximation impossible: the Hessian of the log density at the "
            f"mode is not negative definite ({detail}); the mode may lie on a boundary "
            "or the posterior may be improper"
        )
    d = mode.shape[0]
    identity = jnp.eye(d, dtype=precision.dtype)
    # precision = L L^T, so L^-T eps has covariance (L L^T)^-1.
    cov = jax.scipy.linalg.cho_solve((factor, True), identity)
    eps = jax.random.normal(key, (num_draws, d), dtype=precision.dtype)
    offsets = jax.scipy.linalg.solve_triangular(factor.T, eps.T, lower=False).T
    return mode + offsets, cov


def boundary_report(
    result_or_position: MAPResult | jax.Array,
    logdensity_fn: Callable | None = None,
    *,
    threshold: float = BOUNDARY_THRESHOLD,
    probe_iters: int = 50,
    min_gain: float = 1.0,
    finite_limits: tuple | None = None,
) -> BoundaryReport:
    """Detect a mode on the boundary of the parameter space.

    Two signs are checked:

    * drift: unconstrained coordinates with ``|x| > threshold`` in a direction in which
      their transform reaches a finite edge of the support (e.g. the log of a group
      scale heading to ``-inf``; an identity-transformed location of 252 is not on a
      boundary);
    * unbounded growth (needs ``logdensity_fn``): ``probe_iters`` more L-BFGS
      iterations from the position raise the log density by more than ``min_gain``
      while the gradient norm stays above ``sqrt(tol)`` of a converged run (1e-4);
      the coordinates reported are those that moved by more than 1 during the probe, or,
      when none did (the growth comes from steep directions near a collapsed scale, e.g.
      group effects of a centered hierarchy shrinking with their scale near 0), those
      already beyond ``threshold / 2`` in a direction that reaches an edge of the
      support.

    Parameters
    ----------
    result_or_position : a :class:`MAPResult` or a (d,) unconstrained position.
    logdensity_fn : the log density the mode was found for, to probe for growth.
    finite_limits : optional pair of (d,) boolean masks (see
        :meth:`hbm.model.BoundModel.finite_limits`): whether sending each coordinate to
        ``-inf`` / ``+inf`` reaches a finite edge of the support. Without them every
        direction counts (the kernel does not know the transforms).

    Returns
    -------
    BoundaryReport ; flat indices (ascending) into the unconstrained vector; the
    caller maps them to parameter names.
    """
    if isinstance(result_or_position, MAPResult):
        position = result_or_position.position
    else:
        position = result_or_position
    position = np.asarray(position, dtype=np.float64)
    if position.ndim != 1:
        raise ConfigurationError(f"expected a 1-D position, got shape {position.shape}")

    if finite_limits is None:
        below = above = np.ones(position.shape, bool)
    else:
        below, above = (np.asarray(m, bool) for m in finite_limits)
        if below.shape != position.shape or above.shape != position.shape:
            raise ConfigurationError(f"finite_limits must be two masks of shape "
                                     f"{position.shape}, got {below.shape} and {above.shape}")

    def toward_edge(i, direction):
        return bool(below[i]) if direction < 0 else bool(above[i])

    indices: set[int] = set()
    reasons = []
    far = np.flatnonzero(~(np.abs(position) <= threshold))
    drifted = np.array([int(i) for i in far
                        if np.isnan(position[i]) or toward_edge(i, position[i])], dtype=int)
    if drifted.size:
        indices.update(int(i) for i in drifted)
        reasons.append(
            f"unconstrained coordinates {drifted.tolist()} drifted beyond |x| > "
            f"{threshold:g} (e.g. a log scale heading to -inf)"
        )
    if logdensity_fn is not None and np.all(np.isfinite(position)):
        start = jnp.asarray(position)
        start_logdensity = float(logdensity_fn(start))
        probe = find_mode(logdensity_fn, start[None, :], max_iters=probe_iters, tol=0.0)
        gain = float(probe.logdensity) - start_logdensity
        if gain > min_gain and float(probe.grad_norm) > 1e-4:
            step = np.asarray(probe.position) - position
            moved = np.flatnonzero(np.abs(step) > 1.0)
            # coordinates heading to an edge of the support; if none is, the density grows
            # without bound in the interior directions, and those are what is reported
            at_edge = np.array([int(i) for i in moved if toward_edge(i, step[i])], dtype=int)
            moved = at_edge if at_edge.size else moved
            if not moved.size:
                moved = np.array([int(i) for i in np.flatnonzero(np.abs(position) >
                                                                 threshold / 2)
                                  if toward_edge(i, position[i])], dtype=int)
            indices.update(int(i) for i in moved)
            reasons.append(
                f"the log density looks unbounded: {probe_iters} more iterations raised "
                f"it by {gain:.3g} with the gradient norm still {float(probe.grad_norm):.3g}"
                + (f", moving coordinates {moved.tolist()}" if moved.size else "")
            )
    return BoundaryReport(tuple(sorted(indices)), "; ".join(reasons))
