"""NUTS with Stan's warmup on known posteriors: z-tests against the ESS-based MCSE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.inference.engine import run_nuts

from ._helpers import ess_z_scores, scale_spread_gaussian

NUM_CHAINS = 4


def _sample(logdensity, dim, seed, num_warmup, num_draws, **options):
    keys = jax.random.split(jax.random.PRNGKey(seed), NUM_CHAINS)
    starts = jax.random.uniform(jax.random.PRNGKey(seed + 1), (NUM_CHAINS, dim), minval=-2, maxval=2)
    run = jax.vmap(lambda k, x: run_nuts(k, logdensity, x, num_warmup, num_draws, **options))
    return run(keys, starts)


def _assert_moments(draws, mean, variance, threshold):
    z_mean, ess = ess_z_scores(draws, mean)
    centered = lambda x: (x - np.asarray(mean)) ** 2
    z_var, _ = ess_z_scores(draws, variance, centered)
    assert np.all(ess > 100), ess
    assert np.all(np.abs(z_mean) < threshold), z_mean
    assert np.all(np.abs(z_var) < threshold), z_var


def test_standard_normal_10d():
    logdensity = lambda x: -0.5 * jnp.sum(x**2)
    draws, infos, step_size, inverse_mass = _sample(logdensity, 10, 0, 500, 1000)
    assert draws.shape == (NUM_CHAINS, 1000, 10)
    assert not bool(jnp.any(infos.is_divergent))
    _assert_moments(draws, np.zeros(10), np.ones(10), 4.0)


def test_correlated_gaussian_with_dense_mass():
    rho = 0.99
    cov = np.array([[1.0, rho], [rho, 1.0]])
    precision = jnp.asarray(np.linalg.inv(cov))
    logdensity = lambda x: -0.5 * x @ precision @ x
    draws, infos, step_size, inverse_mass = _sample(logdensity, 2, 10, 500, 1000, dense_mass=True)
    assert inverse_mass.shape == (NUM_CHAINS, 2, 2)
    # the adapted dense metric captures the correlation
    correlation = inverse_mass[:, 0, 1] / jnp.sqrt(inverse_mass[:, 0, 0] * inverse_mass[:, 1, 1])
    assert bool(jnp.all(correlation > 0.9)), correlation
    _assert_moments(draws, np.zeros(2), np.ones(2), 4.0)
    # and the covariance itself: E[x0 x1] = rho
    z_cross, _ = ess_z_scores(draws, [rho], lambda x: x[..., :1] * x[..., 1:])
    assert abs(float(z_cross[0])) < 4.0, z_cross


def test_scale_spread_gaussian_100d_with_diagonal_adaptation():
    logdensity, scales = scale_spread_gaussian(100)
    draws, infos, step_size, inverse_mass = _sample(logdensity, 100, 20, 1000, 1000)
    standardized = np.asarray(draws) / scales
    _assert_moments(standardized, np.zeros(100), np.ones(100), 4.5)  # Bonferroni, 200 tests
    assert not bool(jnp.any(infos.is_divergent))


@pytest.mark.parametrize("metric, schedule", [("diag_grad", "early"), ("lowrank", "early"),
                                              ("lowrank", "stan"), ("dense", "early")])
def test_correlated_scaled_gaussian_with_every_metric_and_schedule(metric, schedule):
    """Each metric estimator and warmup schedule leaves the target invariant: moments of
    a correlated, badly scaled 6-d Gaussian within MCSE (z-test), no divergences."""
    dim = 6
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scales = np.array([0.1, 0.5, 1.0, 2.0, 5.0, 10.0])
    cov = q @ np.diag(scales**2) @ q.T
    precision = jnp.asarray(np.linalg.inv(cov))
    logdensity = lambda x: -0.5 * x @ precision @ x
    draws, infos, _, _ = _sample(logdensity, dim, 30, 400, 800, metric=metric,
                                 warmup_schedule=schedule)
    assert not bool(jnp.any(infos.is_divergent))
    standardized = np.asarray(draws) @ np.linalg.inv(np.linalg.cholesky(cov)).T
    _assert_moments(standardized, np.zeros(dim), np.ones(dim), 4.0)
