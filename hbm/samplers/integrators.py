"""Symplectic integrators for Hamiltonian dynamics.

The velocity Verlet (leapfrog) scheme advances a point of phase space ``(x, p)`` under the
Hamiltonian ``H(x, p) = -log pi(x) + K(p)`` by a half step in momentum, a full step in
position and a second half step in momentum. It is symplectic and time reversible, and its
energy error is of order ``step_size**2`` (Leimkuhler & Reich 2004, "Simulating
Hamiltonian Dynamics"; Neal 2011, "MCMC using Hamiltonian dynamics").

The state carries the log density and its gradient at the current position, so one step
costs exactly one gradient evaluation.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["IntegratorState", "velocity_verlet"]


class IntegratorState(NamedTuple):
    """A point of phase space with the log density and its gradient at ``position``."""

    position: jax.Array
    momentum: jax.Array
    logdensity: jax.Array
    logdensity_grad: jax.Array


def velocity_verlet(
    logdensity_fn: Callable[[jax.Array], jax.Array],
    kinetic_energy_fn: Callable[[jax.Array], jax.Array],
    velocity_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[IntegratorState, jax.Array], IntegratorState]:
    """Build one velocity Verlet (leapfrog) step.

    Parameters
    ----------
    logdensity_fn
        Log density of the target on a flat position vector.
    kinetic_energy_fn
        Kinetic energy ``K(p)``; its gradient is the velocity ``dx/dt``.
    velocity_fn
        Optional closed form of ``grad K`` (e.g. ``M^{-1} p``); saves an autodiff pass.

    Returns
    -------
    step(state, step_size) -> IntegratorState
        A negative ``step_size`` integrates backwards in time.
    """
    velocity = velocity_fn if velocity_fn is not None else jax.grad(kinetic_energy_fn)
    value_and_grad = jax.value_and_grad(logdensity_fn)

    def step(state: IntegratorState, step_size) -> IntegratorState:
        half = 0.5 * step_size
        momentum_half = state.momentum + half * state.logdensity_grad
        position = state.position + step_size * velocity(momentum_half)
        logdensity, logdensity_grad = value_and_grad(position)
        momentum = momentum_half + half * logdensity_grad
        return IntegratorState(position, momentum, logdensity, logdensity_grad)

    return step
