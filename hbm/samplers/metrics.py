"""Euclidean metrics for Hamiltonian Monte Carlo.

With a constant mass matrix ``M`` the momentum is Gaussian, ``p ~ N(0, M)``, the kinetic
energy is ``K(p) = p^T M^{-1} p / 2`` and the velocity is ``p_sharp = M^{-1} p``. The
generalized no-U-turn criterion (Betancourt 2013, "Generalizing the No-U-Turn Sampler to
Riemannian Manifolds"; Betancourt 2017, "A Conceptual Introduction to Hamiltonian Monte
Carlo", appendix A.4.2) declares a trajectory turning when the summed momentum ``rho`` no
longer points along the velocity at either end: ``p_sharp_left . rho <= 0`` or
``p_sharp_right . rho <= 0``.

The metric is parameterized by the *inverse* mass matrix, as adapted during warmup: a 1-D
array is the diagonal, a 2-D array a dense matrix, and a :class:`LowRankInverseMass` a
diagonal with a low-rank correction,

.. math::

    M^{-1} = D^{1/2} \\bigl(I + U (\\Lambda - I) U^\\top\\bigr) D^{1/2},

with ``D`` diagonal (positive), ``U`` (``d x k``) with orthonormal columns and ``Lambda``
(``k``) positive eigenvalues: the form that minimizes the sample Fisher divergence over
"diagonal plus low rank" metrics (Seyboldt, Carlson & Carpenter 2026, arXiv:2603.18845; the
metric of nutpie). A
column whose eigenvalue is exactly 1 contributes nothing, so a fixed number of columns
(a static shape, as ``lax.scan`` needs) can hold a rank chosen by the data. Because
``U^T U = I`` on the active columns,

.. math::

    M = D^{-1/2} \\bigl(I + U (\\Lambda^{-1} - I) U^\\top\\bigr) D^{-1/2}, \\qquad
    M^{1/2}\\text{-factor } A = D^{-1/2} \\bigl(I + U (\\Lambda^{-1/2} - I) U^\\top\\bigr),
    \\; A A^\\top = M,

so the velocity ``M^{-1} p``, the kinetic energy and a momentum draw ``p = A z`` cost
``O(d k)`` and never build a ``d x d`` matrix. :func:`metric_from` dispatches on the
representation; :func:`gaussian_euclidean` accepts all three.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from hbm.errors import ConfigurationError
from hbm.samplers import threefry

__all__ = [
    "LowRankInverseMass",
    "Metric",
    "gaussian_euclidean",
    "lowrank_identity",
    "metric_from",
    "to_dense_inverse_mass",
]


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


class LowRankInverseMass(NamedTuple):
    """A diagonal-plus-low-rank inverse mass matrix (a pytree).

    ``M^{-1} = D^{1/2} (I + U (Lambda - I) U^T) D^{1/2}`` with ``D = diag(diagonal)``,
    ``U = eigenvectors`` and ``Lambda = diag(eigenvalues)``.

    Attributes
    ----------
    diagonal : (d,) positive
        ``D``: with no active column the metric is exactly the diagonal metric
        ``gaussian_euclidean(diagonal)``.
    eigenvectors : (d, k)
        ``U``; the columns with an eigenvalue different from 1 must be orthonormal.
    eigenvalues : (k,) positive
        ``Lambda``: eigenvalues of ``D^{-1/2} M^{-1} D^{-1/2}``; a column with eigenvalue
        exactly 1 is inactive (its vector is ignored).
    """

    diagonal: jax.Array
    eigenvectors: jax.Array
    eigenvalues: jax.Array


def lowrank_identity(dim: int, rank: int, dtype=None, diagonal=None) -> LowRankInverseMass:
    """A :class:`LowRankInverseMass` with ``rank`` inactive columns: ``M^{-1} = D`` (the
    identity unless ``diagonal`` is given)."""
    if int(rank) != rank or rank < 1:
        raise ConfigurationError(f"rank must be an integer >= 1, got {rank}")
    rank = int(rank)
    dtype = dtype or jnp.zeros(()).dtype
    if diagonal is None:
        diagonal = jnp.ones((dim,), dtype)
    return LowRankInverseMass(
        jnp.asarray(diagonal, dtype), jnp.zeros((dim, rank), dtype), jnp.ones((rank,), dtype)
    )


def _lowrank_metric(inverse_mass: LowRankInverseMass) -> Metric:
    diagonal = jnp.asarray(inverse_mass.diagonal)
    vectors = jnp.asarray(inverse_mass.eigenvectors)
    values = jnp.asarray(inverse_mass.eigenvalues)
    if diagonal.ndim != 1 or vectors.ndim != 2 or values.ndim != 1:
        raise ConfigurationError(
            "LowRankInverseMass needs diagonal (d,), eigenvectors (d, k) and eigenvalues (k,), "
            f"got shapes {diagonal.shape}, {vectors.shape}, {values.shape}"
        )
    if vectors.shape != (diagonal.shape[0], values.shape[0]):
        raise ConfigurationError(
            f"LowRankInverseMass eigenvectors must have shape (d, k) = "
            f"({diagonal.shape[0]}, {values.shape[0]}), got {vectors.shape}"
        )
    sqrt_diagonal = jnp.sqrt(diagonal)
    # inactive columns (eigenvalue 1) get weight 0 in every formula below
    velocity_weight = values - 1.0
    momentum_weight = 1.0 / jnp.sqrt(values) - 1.0

    def velocity(momentum):
        q = sqrt_diagonal * momentum
        return sqrt_diagonal * (q + vectors @ (velocity_weight * (vectors.T @ q)))

    def sample_momentum(key, position):
        z = threefry.normal(key, jnp.shape(position), jnp.result_type(position))
        return (z + vectors @ (momentum_weight * (vectors.T @ z))) / sqrt_diagonal

    def kinetic_energy(momentum):
        q = sqrt_diagonal * momentum
        projection = vectors.T @ q
        return 0.5 * (jnp.dot(q, q) + jnp.dot(velocity_weight * projection, projection))

    return Metric(sample_momentum, kinetic_energy, velocity, _check_turning)


def to_dense_inverse_mass(inverse_mass) -> jax.Array:
    """The ``d x d`` inverse mass matrix of any representation (for tests and reports;
    the samplers never build it for the diagonal and low-rank forms)."""
    if isinstance(inverse_mass, LowRankInverseMass):
        sqrt_diagonal = jnp.sqrt(inverse_mass.diagonal)
        vectors = inverse_mass.eigenvectors
        inner = jnp.eye(vectors.shape[0], dtype=vectors.dtype) + (
            vectors * (inverse_mass.eigenvalues - 1.0)
        ) @ vectors.T
        return sqrt_diagonal[:, None] * inner * sqrt_diagonal[None, :]
    inverse_mass = jnp.asarray(inverse_mass)
    if inverse_mass.ndim == 1:
        return jnp.diag(inverse_mass)
    if inverse_mass.ndim == 2:
        return inverse_mass
    raise ConfigurationError(
        f"inverse_mass must be 1-D, 2-D or a LowRankInverseMass, got shape {inverse_mass.shape}"
    )


def metric_from(inverse_mass) -> Metric:
    """The Euclidean-Gaussian metric of an inverse mass matrix in any representation.

    Parameters
    ----------
    inverse_mass
        A 1-D array (diagonal of ``M^{-1}``), a 2-D array (dense ``M^{-1}``) or a
        :class:`LowRankInverseMass` (``O(d k)`` operations).

    Returns
    -------
    Metric
    """
    if isinstance(inverse_mass, LowRankInverseMass):
        return _lowrank_metric(inverse_mass)
    return gaussian_euclidean(inverse_mass)


def gaussian_euclidean(inverse_mass_matrix: jax.Array) -> Metric:
    """Euclidean metric with Gaussian momentum.

    Parameters
    ----------
    inverse_mass_matrix
        1-D (diagonal of ``M^{-1}``) or 2-D (dense ``M^{-1}``, symmetric positive definite);
        a :class:`LowRankInverseMass` is handed to :func:`metric_from`.

    Returns
    -------
    Metric
    """
    if isinstance(inverse_mass_matrix, LowRankInverseMass):
        return _lowrank_metric(inverse_mass_matrix)
    inverse_mass_matrix = jnp.asarray(inverse_mass_matrix)
    ndim = inverse_mass_matrix.ndim
    if ndim == 1:
        mass_sqrt = 1.0 / jnp.sqrt(inverse_mass_matrix)

        def velocity(momentum):
            return inverse_mass_matrix * momentum

        def sample_momentum(key, position):
            z = threefry.normal(key, jnp.shape(position), jnp.result_type(position))
            return mass_sqrt * z

    elif ndim == 2:
        # M^{-1} = L L^T  =>  p = L^{-T} z has covariance L^{-T} L^{-1} = M.
        chol = jnp.linalg.cholesky(inverse_mass_matrix)

        def velocity(momentum):
            return inverse_mass_matrix @ momentum

        def sample_momentum(key, position):
            z = threefry.normal(key, jnp.shape(position), jnp.result_type(position))
            return jsl.solve_triangular(chol, z, lower=True, trans="T")

    else:
        raise ConfigurationError(
            f"inverse_mass_matrix must be 1-D or 2-D, got shape {inverse_mass_matrix.shape}"
        )

    def kinetic_energy(momentum):
        return 0.5 * jnp.dot(momentum, velocity(momentum))

    return Metric(sample_momentum, kinetic_energy, velocity, _check_turning)
