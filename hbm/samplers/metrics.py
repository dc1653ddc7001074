"""Euclidean metrics for Hamiltonian Monte Carlo.

With a constant mass matrix ``M`` the momentum is Gaussian, ``p ~ N(0, M)``, the kinetic
energy is ``K(p) = p^T M^{-1} p / 2`` and the velocity is ``p_sharp = M^{-1} p``. The
generalized no-U-turn criterion (Betancourt 2013, "Generalizing the No-U-Turn Sampler to
Riemannian Manifolds"; Betancourt 2017, "A Conceptual Introduction to Hamiltonian Monte
Carlo", appendix A.4.2) declares a trajectory turning when the summed momentum ``rho`` no
longer points along the velocity at either end: ``p_sharp_left . rho <= 0`` or
``p_sharp_right . rho <= 0``.

The metric is parameterized by the *inverse* mass matrix, as adapted during warmup: a 1-D
array is the diagonal, a 2-D array a dense matrix.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from hbm.errors import ConfigurationError

__all__ = ["Metric", "gaussian_euclidean"]


class Metric(NamedTuple):
    """The functions of a Euclidean metric.

    Attributes
    ----------
    sample_momentum : (key, position) -> momentum, a draw from ``N(0, M)``.
    kinetic_energy : (momentum) -> ``p^T M^{-1} p / 2``.
    velocity : (momentum) -> ``M^{-1} p``.
    check_turning : (velocity_left, velocity_right, momentum_sum) -> bool, True when the
        generalized U-turn criterion says the trajectory between the two ends turns.
    """

    sample_momentum: Callable
    kinetic_energy: Callable
    velocity: Callable
    check_turning: Callable


def _check_turning(velocity_left, velocity_right, momentum_sum):
    # The criterion persists while both projections are strictly positive; a NaN fails it.
    persists = (jnp.dot(velocity_left, momentum_sum) > 0) & (
        jnp.dot(velocity_right, momentum_sum) > 0
    )
    return jnp.logical_not(persists)


def gaussian_euclidean(inverse_mass_matrix: jax.Array) -> Metric:
    """Euclidean metric with Gaussian momentum.

    Parameters
    ----------
    inverse_mass_matrix
        1-D (diagonal of ``M^{-1}``) or 2-D (dense ``M^{-1}``, symmetric positive definite).

    Returns
    -------
    Metric
    """
    inverse_mass_matrix = jnp.asarray(inverse_mass_matrix)
    ndim = inverse_mass_matrix.ndim
    if ndim == 1:
        mass_sqrt = 1.0 / jnp.sqrt(inverse_mass_matrix)

        def velocity(momentum):
            return inverse_mass_matrix * momentum

        def sample_momentum(key, position):
            z = jax.random.normal(key, jnp.shape(position), jnp.result_type(position))
            return mass_sqrt * z

    elif ndim == 2:
        # M^{-1} = L L^T  =>  p = L^{-T} z has covariance L^{-T} L^{-1} = M.
        chol = jnp.linalg.cholesky(inverse_mass_matrix)

        def velocity(momentum):
            return inverse_mass_matrix @ momentum

        def sample_momentum(key, position):
            z = jax.random.normal(key, jnp.shape(position), jnp.result_type(position))
            return jsl.solve_triangular(chol, z, lower=True, trans="T")

    else:
        raise ConfigurationError(
            f"inverse_mass_matrix must be 1-D or 2-D, got shape {inverse_mass_matrix.shape}"
        )

    def kinetic_energy(momentum):
        return 0.5 * jnp.dot(momentum, velocity(momentum))

    return Metric(sample_momentum, kinetic_energy, velocity, _check_turning)
