"""MAP by L-BFGS, the Laplace approximation, and boundary-mode detection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError, InitializationError, SamplingError
from hbm.samplers.optimize import MAPResult, boundary_report, find_mode, laplace_draws

# Normal-normal hierarchy with known variances: mu ~ N(0, 10), theta_j ~ N(mu, TAU),
# y_j ~ N(theta_j, SIGMA_j). The joint density of (mu, theta) is Gaussian: its mode solves
# the linear system  precision @ x = b.
Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
TAU = 5.0
J = Y.size


def normal_normal_logdensity(x):
    mu, theta = x[0], x[1:]
    return (
        -0.5 * (mu / 10.0) ** 2
        - 0.5 * jnp.sum(((theta - mu) / TAU) ** 2)
        - 0.5 * jnp.sum(((Y - theta) / SIGMA) ** 2)
    )


def normal_normal_mode():
    precision = np.zeros((J + 1, J + 1))
    precision[0, 0] = 1 / 100 + J / TAU**2
    precision[0, 1:] = precision[1:, 0] = -1 / TAU**2
    precision[1:, 1:] = np.diag(1 / TAU**2 + 1 / SIGMA**2)
    b = np.concatenate([[0.0], Y / SIGMA**2])
    return np.linalg.solve(precision, b)


MEAN = np.array([1.0, -2.0, 0.5])
COV = np.array([[1.0, 0.8, 0.3], [0.8, 2.0, -0.5], [0.3, -0.5, 1.5]])
PRECISION = np.linalg.inv(COV)


def gaussian_logdensity(x):
    centred = x - MEAN
    return -0.5 * centred @ PRECISION @ centred


def test_map_of_the_normal_normal_model_from_random_restarts():
    inits = 5.0 * jax.random.normal(jax.random.key(0), (6, J + 1))
    result = find_mode(normal_normal_logdensity, inits)
    expected = normal_normal_mode()
    assert isinstance(result, MAPResult)
    assert result.converged and float(result.grad_norm) <= 1e-8
    assert result.all_positions.shape == (6, J + 1)
    assert result.all_logdensities.shape == (6,)
    assert 0 < result.num_iterations < 2000
    np.testing.assert_allclose(result.position, expected, rtol=0, atol=1e-5)
    # every restart agrees
    np.testing.assert_allclose(
        result.all_positions, np.broadcast_to(expected, (6, J + 1)), rtol=0, atol=1e-5
    )
    assert np.all(result.all_converged)
    np.testing.assert_allclose(
        result.logdensity, normal_normal_logdensity(jnp.asarray(expected)), rtol=1e-12
    )


def test_map_of_a_correlated_gaussian():
    inits = 3.0 * jax.random.normal(jax.random.key(1), (5, 3))
    result = find_mode(gaussian_logdensity, inits)
    np.testing.assert_allclose(result.all_positions, np.broadcast_to(MEAN, (5, 3)),
                               rtol=0, atol=1e-5)
    assert result.converged
    # a single (d,) starting point is accepted too
    single = find_mode(gaussian_logdensity, jnp.zeros(3))
    np.testing.assert_allclose(single.position, MEAN, rtol=0, atol=1e-5)
    assert single.all_positions.shape == (1, 3)


def test_laplace_is_exact_on_a_gaussian():
    n = 4000
    draws, cov = laplace_draws(jax.random.key(2), gaussian_logdensity, jnp.asarray(MEAN), n)
    np.testing.assert_allclose(cov, COV, rtol=0, atol=1e-8)
    draws = np.asarray(draws)
    assert draws.shape == (n, 3)
    # z-tests: the mean against its exact standard error, and each covariance entry
    # against the standard error of the mean of the products of centred draws.
    z_mean = (draws.mean(0) - MEAN) / np.sqrt(np.diag(COV) / n)
    centred = draws - MEAN
    products = centred[:, :, None] * centred[:, None, :]
    z_cov = (products.mean(0) - COV) / (products.std(0, ddof=1) / np.sqrt(n))
    assert np.all(np.abs(z_mean) < 3.5), z_mean
    assert np.all(np.abs(z_cov) < 3.5), z_cov


def test_laplace_raises_when_the_hessian_is_not_negative_definite():
    saddle = lambda x: 0.5 * x[0] ** 2 - 0.5 * x[1] ** 2  # noqa: E731
    with pytest.raises(SamplingError, match="not negative definite"):
        laplace_draws(jax.random.key(0), saddle, jnp.zeros(2), 10)


# Eight schools without the Jacobian of log tau: x = (mu, log tau, theta_1..8). With all
# theta_j = mu the density grows like -J * log tau as tau -> 0: no mode exists.
EIGHT_Y = Y
EIGHT_SIGMA = SIGMA


def eight_schools_no_jacobian(x):
    mu, log_tau, theta = x[0], x[1], x[2:]
    return (
        -0.5 * (mu / 5.0) ** 2
        - jnp.sum(0.5 * ((theta - mu) * jnp.exp(-log_tau)) ** 2 + log_tau)
        - 0.5 * jnp.sum(((EIGHT_Y - theta) / EIGHT_SIGMA) ** 2)
    )


def test_boundary_mode_of_eight_schools_without_jacobian_is_reported():
    inits = jax.random.normal(jax.random.key(3), (1, J + 2))
    result = find_mode(eight_schools_no_jacobian, inits, max_iters=500)
    assert not result.converged
    report = boundary_report(result)
    assert report.indices == (1,)
    assert "drifted" in report.reason


def test_unbounded_growth_is_reported_before_the_drift_threshold():
    # On the ridge theta_j = mu at log tau = -3: |x| is small, but the log density keeps
    # rising as log tau decreases.
    position = jnp.concatenate([jnp.array([2.0, -3.0]), jnp.full(J, 2.0)])
    report = boundary_report(position, eight_schools_no_jacobian)
    assert report.indices == (1,)
    assert "unbounded" in report.reason
    assert boundary_report(position).indices == ()  # without the density: no signal


def test_interior_mode_is_not_reported():
    result = find_mode(gaussian_logdensity, jnp.zeros((1, 3)))
    assert boundary_report(result, gaussian_logdensity) == ((), "")


def test_drift_threshold_boundary():
    x = np.array([15.0, -15.0, 0.0])
    assert boundary_report(x).indices == ()
    x = np.array([15.0, -15.000001, np.inf])
    assert boundary_report(x).indices == (1, 2)


def test_no_finite_start_raises():
    with pytest.raises(InitializationError):
        find_mode(lambda x: -jnp.inf * jnp.sum(x**2 + 1.0), jnp.ones((2, 3)))


@pytest.mark.parametrize(
    ("inits", "kwargs"),
    [(jnp.zeros((2, 2, 2)), {}), (jnp.zeros((0, 3)), {}), (jnp.zeros((1, 3)), {"max_iters": 0}),
     (jnp.zeros((1, 3)), {"tol": -1.0})],
)
def test_invalid_configuration(inits, kwargs):
    with pytest.raises(ConfigurationError):
        find_mode(gaussian_logdensity, inits, **kwargs)
