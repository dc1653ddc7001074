"""Euclidean metric: formulas, momentum distribution, U-turn criterion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError, HbmError
from hbm.samplers import gaussian_euclidean

DENSE = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])


def test_diagonal_formulas():
    inverse_mass = jnp.array([0.5, 2.0, 4.0])
    p = jnp.array([1.0, -2.0, 0.5])
    metric = gaussian_euclidean(inverse_mass)
    np.testing.assert_allclose(metric.velocity(p), [0.5, -4.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(metric.kinetic_energy(p), 0.5 * (0.5 + 8.0 + 1.0), rtol=1e-15)


def test_dense_formulas():
    p = jnp.array([1.0, -2.0, 0.5])
    metric = gaussian_euclidean(jnp.asarray(DENSE))
    np.testing.assert_allclose(metric.velocity(p), DENSE @ np.asarray(p), rtol=1e-14)
    np.testing.assert_allclose(
        metric.kinetic_energy(p), 0.5 * np.asarray(p) @ DENSE @ np.asarray(p), rtol=1e-14
    )


@pytest.mark.parametrize("inverse_mass", [np.array([0.25, 1.0, 9.0]), DENSE])
def test_momentum_covariance_is_mass_matrix(inverse_mass):
    metric = gaussian_euclidean(jnp.asarray(inverse_mass))
    num = 20000
    keys = jax.random.split(jax.random.PRNGKey(0), num)
    p = np.asarray(jax.vmap(lambda k: metric.sample_momentum(k, jnp.zeros(3)))(keys))
    mass = np.linalg.inv(np.diag(inverse_mass) if inverse_mass.ndim == 1 else inverse_mass)
    # zero-mean Gaussian: Var(p_i p_j) = M_ii M_jj + M_ij^2
    second_moment = p.T @ p / num
    standard_error = np.sqrt((np.outer(np.diag(mass), np.diag(mass)) + mass**2) / num)
    z = (second_moment - mass) / standard_error
    assert np.all(np.abs(z[np.triu_indices(3)]) < 4.0), z


def test_check_turning():
    metric = gaussian_euclidean(jnp.ones(2))
    rho = jnp.array([1.0, 0.0])
    assert not metric.check_turning(jnp.array([1.0, 0.5]), jnp.array([0.5, -1.0]), rho)
    assert metric.check_turning(jnp.array([-1.0, 0.5]), jnp.array([0.5, -1.0]), rho)
    assert metric.check_turning(jnp.array([1.0, 0.5]), jnp.array([0.0, 1.0]), rho)  # = 0 turns
    assert metric.check_turning(jnp.array([jnp.nan, 0.5]), jnp.array([1.0, 0.0]), rho)


def test_bad_shape_raises():
    with pytest.raises(ConfigurationError):
        gaussian_euclidean(jnp.ones((2, 2, 2)))
    assert issubclass(ConfigurationError, HbmError)


# ---------------------------------------------------------------- representations, low rank

from hbm.samplers import build_kernel, init  # noqa: E402
from hbm.samplers.metrics import (  # noqa: E402
    LowRankInverseMass,
    lowrank_identity,
    metric_from,
    to_dense_inverse_mass,
)


def _random_lowrank(seed, dim=7, rank=4):
    """A LowRankInverseMass with three active orthonormal columns and one inactive column
    (eigenvalue exactly 1) holding an arbitrary, non-orthogonal vector."""
    rng = np.random.default_rng(seed)
    vectors = np.linalg.qr(rng.normal(size=(dim, rank)))[0]
    vectors[:, -1] = rng.normal(size=dim)  # inactive: must be ignored
    values = np.array([25.0, 0.04, 3.0, 1.0])[:rank]
    diagonal = np.exp(rng.normal(size=dim))
    inverse_mass = LowRankInverseMass(jnp.asarray(diagonal), jnp.asarray(vectors),
                                      jnp.asarray(values))
    active = vectors[:, :3]
    dense = np.sqrt(diagonal)[:, None] * (
        np.eye(dim) + active @ np.diag(values[:3] - 1.0) @ active.T
    ) * np.sqrt(diagonal)[None, :]
    return inverse_mass, dense


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lowrank_formulas_match_dense(seed):
    inverse_mass, dense = _random_lowrank(seed)
    np.testing.assert_allclose(to_dense_inverse_mass(inverse_mass), dense, rtol=1e-13,
                               atol=1e-13)
    metric = metric_from(inverse_mass)
    rng = np.random.default_rng(100 + seed)
    for _ in range(3):
        p = rng.normal(size=dense.shape[0])
        np.testing.assert_allclose(metric.velocity(jnp.asarray(p)), dense @ p, rtol=1e-12,
                                   atol=1e-13)
        np.testing.assert_allclose(metric.kinetic_energy(jnp.asarray(p)), 0.5 * p @ dense @ p,
                                   rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_lowrank_momentum_is_a_square_root_of_the_mass_matrix(seed):
    # sample_momentum(key) = A z with z = jax.random.normal(key, shape, dtype), A linear.
    # Recover A from d keys (Z invertible) and check A A^T = M = (M^{-1})^{-1} exactly, i.e.
    # the momentum covariance A Cov(z) A^T is the mass matrix, with no sampling error.
    inverse_mass, dense = _random_lowrank(seed)
    dim = dense.shape[0]
    metric = metric_from(inverse_mass)
    position = jnp.zeros(dim)
    keys = jax.random.split(jax.random.PRNGKey(seed), dim)
    z = np.stack([np.asarray(jax.random.normal(k, (dim,), position.dtype)) for k in keys], 1)
    p = np.stack([np.asarray(metric.sample_momentum(k, position)) for k in keys], 1)
    linear_map = p @ np.linalg.inv(z)
    np.testing.assert_allclose(linear_map @ linear_map.T, np.linalg.inv(dense), rtol=1e-9,
                               atol=1e-10)
    # and the velocity of a momentum draw is M^{-1} A z = A^{-T} z
    np.testing.assert_allclose(dense @ linear_map, np.linalg.inv(linear_map).T, rtol=1e-9,
                               atol=1e-10)


def test_metric_from_dispatches_on_the_representation():
    p = jnp.array([1.0, -2.0, 0.5])
    key = jax.random.PRNGKey(3)
    diagonal = jnp.array([0.5, 2.0, 4.0])
    for inverse_mass in (diagonal, jnp.asarray(DENSE)):
        a, b = metric_from(inverse_mass), gaussian_euclidean(inverse_mass)
        np.testing.assert_array_equal(a.velocity(p), b.velocity(p))
        np.testing.assert_array_equal(a.sample_momentum(key, p), b.sample_momentum(key, p))
    # a low-rank metric with only inactive columns is the diagonal metric
    unit = lowrank_identity(3, 2, diagonal=diagonal)
    a, b = metric_from(unit), gaussian_euclidean(diagonal)
    np.testing.assert_allclose(a.velocity(p), b.velocity(p), rtol=1e-15)
    np.testing.assert_allclose(a.kinetic_energy(p), b.kinetic_energy(p), rtol=1e-15)
    np.testing.assert_allclose(a.sample_momentum(key, p), b.sample_momentum(key, p), rtol=1e-15)
    # gaussian_euclidean hands a LowRankInverseMass on, so today's kernel accepts it
    inverse_mass, dense = _random_lowrank(0)
    np.testing.assert_allclose(gaussian_euclidean(inverse_mass).velocity(jnp.ones(7)),
                               dense @ np.ones(7), rtol=1e-12)


def test_nuts_kernel_runs_with_a_lowrank_metric():
    inverse_mass, dense = _random_lowrank(1)
    precision = np.linalg.inv(dense)

    def logdensity(x):
        return -0.5 * x @ jnp.asarray(precision) @ x

    kernel = jax.jit(build_kernel(2), static_argnums=2)
    state = init(jnp.ones(7), logdensity)
    state, info = kernel(jax.random.PRNGKey(0), state, logdensity, 0.5, inverse_mass)
    assert np.all(np.isfinite(np.asarray(state.position)))
    assert np.isfinite(float(info.energy)) and not bool(info.is_divergent)


def test_lowrank_bad_shapes_raise():
    with pytest.raises(ConfigurationError, match="eigenvectors"):
        metric_from(LowRankInverseMass(jnp.ones(3), jnp.zeros((2, 2)), jnp.ones(2)))
    with pytest.raises(ConfigurationError, match="rank"):
        lowrank_identity(3, 0)
