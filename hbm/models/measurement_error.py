"""Errors in variables: regression on a covariate measured with known error.

The true covariate is latent; its noisy measurement and the outcome are both modelled,
so the slope is not attenuated towards zero as in a naive regression on the measurement
(Richardson and Gilks 1993, "Conditional independence models for epidemiological studies
with covariate measurement error", Stat. Med. 12; the Stan User's Guide, "Measurement
error and meta-analysis").
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from hbm import dist
from hbm.errors import ConfigurationError, DataError
from hbm.models._common import build, frame, numeric, population_prior, scale
from hbm.models._simulate import as_key


def simulate_measurement_error(
    key_or_seed,
    n: int = 100,
    *,
    intercept: float = 0.0,
    slope: float = 1.0,
    sigma: float = 0.5,
    x_mean: float = 0.0,
    x_sd: float = 1.0,
    measurement_sd: float = 0.5,
) -> pd.DataFrame:
    """Simulate ``x ~ Normal(x_mean, x_sd)``, ``x_obs ~ Normal(x, measurement_sd)``,
    ``y ~ Normal(intercept + slope x, sigma)``.

    Returns
    -------
    pandas.DataFrame
        Columns ``x_obs``, ``x_se`` (the known measurement sd), ``y`` and ``x_true``
        (the latent value, for checking recovery; the model does not read it).
    """
    n = int(n)
    if n < 2:
        raise ConfigurationError("n must be at least 2")
    for name, value in (("sigma", sigma), ("x_sd", x_sd), ("measurement_sd", measurement_sd)):
        if not value > 0:
            raise ConfigurationError(f"{name} must be positive, got {value}")
    key_x, key_obs, key_y = jax.random.split(as_key(key_or_seed), 3)
    x_true = x_mean + x_sd * np.asarray(jax.random.normal(key_x, (n,)))
    x_obs = x_true + measurement_sd * np.asarray(jax.random.normal(key_obs, (n,)))
    y = intercept + slope * x_true + sigma * np.asarray(jax.random.normal(key_y, (n,)))
    return pd.DataFrame(
        {"x_obs": x_obs, "x_se": np.full(n, float(measurement_sd)), "y": y, "x_true": x_true}
    )


def measurement_error(df=None, **simulate_options):
    """Linear regression on a latent covariate observed with known standard error.

    .. math::

        x_i &\\sim \\mathrm{Normal}(\\mu_x, \\sigma_x), \\qquad
        x^{obs}_i \\sim \\mathrm{Normal}(x_i, s_i), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\beta_1 x_i, \\sigma).

    Priors (scaled to the data): ``mu_x ~ Normal(mean(x_obs), 2.5 sd(x_obs))``,
    ``sigma_x ~ HalfNormal(sd(x_obs))``, ``beta[0] ~ Normal(mean(y), 2.5 sd(y))``,
    ``beta[1] ~ Normal(0, 2.5 sd(y) / sd(x_obs))``, ``sigma ~ HalfNormal(sd(y))``.

    Parameters
    ----------
    df : pandas.DataFrame, optional
        Columns ``x_obs``, ``x_se`` (> 0), ``y``. When ``None``,
        ``simulate_measurement_error(**simulate_options)`` (seed 0 unless given).

    Returns
    -------
    (Model, dict)
        Data ``{"x_obs", "x_se", "y"}``; parameters ``mu_x``, ``sigma_x``, ``x_true``
        (obs), ``beta`` (intercept, slope), ``sigma``.
    """
    if df is None:
        df = simulate_measurement_error(**{"key_or_seed": 0, **simulate_options})
    elif simulate_options:
        raise ConfigurationError(
            f"simulation options {sorted(simulate_options)} given together with a data frame"
        )
    df = frame(df, "measurement_error", ["x_obs", "x_se", "y"])
    x_obs, x_se, y = numeric(df, "x_obs"), numeric(df, "x_se"), numeric(df, "y")
    if np.any(x_se <= 0):
        raise DataError("measurement standard errors 'x_se' must be positive")
    n = len(y)
    sd_x, sd_y = scale(x_obs), scale(y)
    design = np.column_stack([np.ones(n), x_obs])
    data = {"x_obs": x_obs, "x_se": x_se, "y": y}
    model = build(
        prior={
            "mu_x": dist.Normal(float(np.mean(x_obs)), 2.5 * sd_x),
            "sigma_x": dist.HalfNormal(sd_x),
            "x_true": lambda p, d: dist.Normal(p["mu_x"], p["sigma_x"]).expand((n,)),
            "beta": population_prior(design, float(np.mean(y)), sd_y),
            "sigma": dist.HalfNormal(sd_y),
        },
        likelihood=lambda p, d: {
            "x_obs": dist.Normal(p["x_true"], d["x_se"]),
            "y": dist.Normal(p["beta"][0] + p["beta"][1] * p["x_true"], p["sigma"]),
        },
        dims={"x_true": ("obs",), "beta": ("term",)},
        coords={"obs": list(range(n)), "term": ["intercept", "slope"]},
    )
    return model, data
