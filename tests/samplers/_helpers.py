"""Targets shared by the sampler tests (flat log densities, float64)."""

import jax
import jax.numpy as jnp
import numpy as np


def correlated_gaussian(dim=5, seed=0):
    """Zero-mean Gaussian with a random dense covariance; returns (logdensity, cov)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.2 * np.eye(dim)
    precision = jnp.asarray(np.linalg.inv(cov))

    def logdensity(x):
        return -0.5 * x @ precision @ x

    return logdensity, cov


def funnel(dim=5):
    """Neal's funnel: v ~ N(0, 3^2), x_k | v ~ N(0, exp(v))."""

    def logdensity(z):
        v, x = z[0], z[1:]
        log_v = -0.5 * (v / 3.0) ** 2
        log_x = -0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * (dim - 1) * v
        return log_v + log_x

    return logdensity


def logistic_regression(num_obs=40, num_features=3, seed=1):
    """Posterior of a logistic regression (intercept + features) on simulated data,
    with N(0, 2^2) priors on the coefficients."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_obs, num_features))
    design = jnp.asarray(np.column_stack([np.ones(num_obs), features]))
    beta = rng.normal(size=num_features + 1)
    y = jnp.asarray(rng.random(num_obs) < 1 / (1 + np.exp(-(np.asarray(design) @ beta))), float)

    def logdensity(b):
        eta = design @ b
        return jnp.sum(y * eta - jnp.logaddexp(0.0, eta)) - 0.5 * jnp.sum((b / 2.0) ** 2)

    return logdensity


def scale_spread_gaussian(dim=100):
    """Independent Gaussian with standard deviations log-spaced over 1e-2 .. 1e1."""
    scales = np.logspace(-2, 1, dim)
    scales_jnp = jnp.asarray(scales)

    def logdensity(x):
        return -0.5 * jnp.sum((x / scales_jnp) ** 2)

    return logdensity, scales


def ess_z_scores(draws, truth, function=lambda x: x):
    """z = (mean - truth) / (sd / sqrt(ess)) per coordinate of ``function(draws)``.

    ``draws`` has shape (chain, draw, d); the ESS is ArviZ's bulk ESS of ``function(draws)``.
    """
    import arviz as az

    values = np.asarray(function(np.asarray(draws)))
    ess = np.asarray(az.ess(values, method="bulk")) if values.ndim == 2 else np.array(
        [az.ess(values[..., k], method="bulk") for k in range(values.shape[-1])]
    )
    mean = values.mean(axis=(0, 1))
    sd = values.std(axis=(0, 1), ddof=1)
    return (mean - np.asarray(truth)) / (sd / np.sqrt(ess)), ess
