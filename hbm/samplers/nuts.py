"""The multinomial No-U-Turn Sampler transition kernel.

One transition draws a momentum ``p ~ N(0, M)``, builds a NUTS trajectory (see
:mod:`hbm.samplers.trajectory`) and returns its multinomially sampled point (Hoffman &
Gelman 2014, "The No-U-Turn Sampler"; Betancourt 2017, "A Conceptual Introduction to
Hamiltonian Monte Carlo"). The kernel is a pure function of a key, a state and the tunable
values (step size, inverse mass matrix); algorithmic choices are closed over.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from hbm.errors import ConfigurationError
from hbm.samplers import threefry
from hbm.samplers.integrators import IntegratorState, velocity_verlet
from hbm.samplers.metrics import gaussian_euclidean
from hbm.samplers.trajectory import build_trajectory

__all__ = ["HMCState", "NUTSInfo", "init", "build_kernel", "transition_outcome"]


class HMCState(NamedTuple):
    """Position with its log density and gradient (so no transition recomputes them)."""

    position: jax.Array
    logdensity: jax.Array
    logdensity_grad: jax.Array


class NUTSInfo(NamedTuple):
    """Diagnostics of one NUTS transition.

    Attributes
    ----------
    momentum : the momentum drawn at the start of the transition.
    is_divergent : a leapfrog step had energy error above the threshold (or NaN).
    is_turning : the trajectory stopped on a U-turn.
    energy : Hamiltonian at the returned point (Stan's ``energy__``).
    tree_depth : number of doublings merged into the trajectory (Stan's ``treedepth__``).
    num_steps : leapfrog steps (= gradient evaluations) taken, rejected subtree included.
    acceptance_rate : mean of ``min(1, exp(H0 - H))`` over those steps (Stan's
        ``accept_stat__``), the statistic dual averaging adapts.
    symmetric_acceptance_rate : mean of ``2 / (1 + exp(|H0 - H|))`` over those steps,
        which dual averaging adapts instead where the warmup schedule says so
        (:func:`hbm.samplers.trajectory.leaf_acceptance`).
    energy_error : ``H(returned point) - H0``.
    """

    momentum: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array
    energy: jax.Array
    tree_depth: jax.Array
    num_steps: jax.Array
    acceptance_rate: jax.Array
    symmetric_acceptance_rate: jax.Array
    energy_error: jax.Array


def init(position, logdensity_fn: Callable) -> HMCState:
    """Evaluate the log density and its gradient at ``position``."""
    position = jnp.asarray(position)
    logdensity, logdensity_grad = jax.value_and_grad(logdensity_fn)(position)
    dtype = jnp.result_type(position)
    return HMCState(position, jnp.asarray(logdensity, dtype), jnp.asarray(logdensity_grad, dtype))


def build_kernel(max_tree_depth: int = 10, divergence_threshold: float = 1000.0, *,
                 integrator: Callable = velocity_verlet, metric: Callable = gaussian_euclidean):
    """Build the NUTS transition kernel.

    Parameters
    ----------
    max_tree_depth
        Maximum number of trajectory doublings (>= 1).
    divergence_threshold
        Energy error above which a leapfrog step counts as divergent.
    integrator
        ``integrator(logdensity_fn, kinetic_energy, velocity) -> step``, a symplectic
        integrator (default :func:`~hbm.samplers.integrators.velocity_verlet`).
    metric
        ``metric(inverse_mass_matrix) -> Metric`` (default
        :func:`~hbm.samplers.metrics.gaussian_euclidean`).

    Returns
    -------
    kernel(key, state, logdensity_fn, step_size, inverse_mass_matrix) -> (HMCState, NUTSInfo)
    """
    if int(max_tree_depth) != max_tree_depth or max_tree_depth < 1:
        raise ConfigurationError(f"max_tree_depth must be an integer >= 1, got {max_tree_depth}")
    if not divergence_threshold > 0:
        raise ConfigurationError(
            f"divergence_threshold must be positive, got {divergence_threshold}"
        )
    max_tree_depth = int(max_tree_depth)
    divergence_threshold = float(divergence_threshold)

    def kernel(key, state: HMCState, logdensity_fn, step_size, inverse_mass_matrix):
        metric_fns = metric(inverse_mass_matrix)
        step_fn = integrator(logdensity_fn, metric_fns.kinetic_energy, metric_fns.velocity)
        momentum_key, tree_key = threefry.split(key)
        momentum = metric_fns.sample_momentum(momentum_key, state.position)
        initial_state = IntegratorState(
            state.position, momentum, state.logdensity, state.logdensity_grad
        )
        result = build_trajectory(
            tree_key,
            initial_state,
            step_fn,
            metric_fns,
            step_size,
            max_tree_depth=max_tree_depth,
            divergence_threshold=divergence_threshold,
        )
        return transition_outcome(state, momentum, result, metric_fns)

    return kernel


def transition_outcome(state: HMCState, momentum, result, metric) -> tuple[HMCState, NUTSInfo]:
    """The new state and the :class:`NUTSInfo` of a transition from ``state`` with
    ``momentum`` whose finished trajectory is ``result``
    (:class:`~hbm.samplers.trajectory.TrajectoryResult`)."""
    proposal = result.proposal
    initial_energy = -state.logdensity + metric.kinetic_energy(momentum)
    new_state = HMCState(proposal.position, proposal.logdensity, proposal.logdensity_grad)
    info = NUTSInfo(
        momentum=momentum,
        is_divergent=result.is_divergent,
        is_turning=result.is_turning,
        energy=proposal.energy,
        tree_depth=result.tree_depth,
        num_steps=result.num_steps,
        acceptance_rate=result.sum_acceptance / jnp.maximum(result.num_steps, 1),
        symmetric_acceptance_rate=(result.sum_symmetric_acceptance
                                   / jnp.maximum(result.num_steps, 1)),
        energy_error=proposal.energy - initial_energy,
    )
    return new_state, info
