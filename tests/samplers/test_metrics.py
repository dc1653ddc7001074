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
