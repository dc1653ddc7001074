"""Cluster randomized trials: a simulator and the random-intercept analysis model.

Whole clusters (clinics, schools, villages) are randomized to treatment; outcomes within
a cluster are correlated through a cluster effect. The intraclass correlation is
``icc = sigma_cluster^2 / (sigma_cluster^2 + sigma^2)`` and the variance of a
treatment-effect estimate is inflated by the design effect ``1 + (m - 1) icc`` for
clusters of size ``m`` (Donner and Klar 2000, "Design and Analysis of Cluster
Randomization Trials in Health Research"; Kish 1965, "Survey Sampling").
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from hbm import dist
from hbm.errors import ConfigurationError, DataError
from hbm.models._common import build, frame, group_codes, numeric, population_prior, scale
from hbm.models._simulate import as_key


def simulate_crt(
    key_or_seed,
    n_clusters: int = 20,
    cluster_size=30,
    icc: float = 0.05,
    effect: float = 0.3,
    *,
    intercept: float = 0.0,
    total_sd: float = 1.0,
    treated_fraction: float = 0.5,
) -> pd.DataFrame:
    """Simulate a two-arm parallel cluster randomized trial with a Gaussian outcome.

    ``y_ij = intercept + effect * treatment_j + u_j + e_ij`` with ``u_j ~ Normal(0,
    sqrt(icc) total_sd)`` and ``e_ij ~ Normal(0, sqrt(1 - icc) total_sd)``, so that the
    intraclass correlation is ``icc``. ``round(treated_fraction * n_clusters)`` clusters,
    chosen at random, are treated.

    Parameters
    ----------
    key_or_seed : int or jax PRNG key
    n_clusters : int
        Number of clusters (>= 2).
    cluster_size : int or sequence of int
        A common size, or one size per cluster.
    icc : float
        Intraclass correlation in ``[0, 1)``.
    effect : float
        The treatment effect (difference in means).

    Returns
    -------
    pandas.DataFrame
        Columns ``cluster`` (0..n_clusters-1), ``treatment`` (0/1), ``y``; one row per
        individual, clusters in order.
    """
    n_clusters = int(n_clusters)
    if n_clusters < 2:
        raise ConfigurationError("n_clusters must be at least 2")
    try:
        requested = np.broadcast_to(np.asarray(cluster_size, dtype=np.float64), (n_clusters,))
    except ValueError as e:
        raise ConfigurationError("cluster_size must be an int or one size per cluster") from e
    if np.any(requested < 1) or np.any(requested != np.round(requested)):
        raise ConfigurationError("cluster_size must be positive integers")
    sizes = requested.astype(np.int64)
    if not 0.0 <= float(icc) < 1.0:
        raise ConfigurationError(f"icc must lie in [0, 1), got {icc}")
    if not total_sd > 0:
        raise ConfigurationError("total_sd must be positive")
    n_treated = int(round(float(treated_fraction) * n_clusters))
    if not 0 < n_treated < n_clusters:
        raise ConfigurationError("treated_fraction must leave both arms non-empty")
    key_assign, key_cluster, key_noise = jax.random.split(as_key(key_or_seed), 3)
    order = np.asarray(jax.random.permutation(key_assign, n_clusters))
    treated = np.zeros(n_clusters)
    treated[order[:n_treated]] = 1.0
    cluster_sd = np.sqrt(float(icc)) * total_sd
    resid_sd = np.sqrt(1.0 - float(icc)) * total_sd
    u = cluster_sd * np.asarray(jax.random.normal(key_cluster, (n_clusters,)))
    cluster = np.repeat(np.arange(n_clusters), sizes)
    e = resid_sd * np.asarray(jax.random.normal(key_noise, (cluster.size,)))
    y = intercept + effect * treated[cluster] + u[cluster] + e
    treatment = treated[cluster].astype(np.int64)
    return pd.DataFrame({"cluster": cluster, "treatment": treatment, "y": y})


def crt(df=None, **simulate_options):
    """Random-intercept analysis of a cluster randomized trial.

    .. math::

        u_j &\\sim \\mathrm{Normal}(0, \\sigma_{cluster}), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\beta_1 \\mathrm{treatment}_i + u_{j[i]},
            \\sigma),

    with deterministic ``icc = sigma_cluster^2 / (sigma_cluster^2 + sigma^2)`` and
    ``design_effect = 1 + (m - 1) icc``, ``m`` the mean cluster size. Priors (scaled to
    the data): ``beta[0] ~ Normal(mean(y), 2.5 sd(y))``, ``beta[1] ~ Normal(0, 2.5 sd(y)
    / sd(treatment))``; ``sigma_cluster, sigma ~ HalfNormal(sd(y))``.

    Parameters
    ----------
    df : pandas.DataFrame, optional
        Columns ``cluster``, ``treatment`` (0/1, constant within a cluster), ``y``. When
        ``None``, ``simulate_crt(**simulate_options)`` with seed 0 unless given.

    Returns
    -------
    (Model, dict)
        Data ``{"y", "treatment", "cluster"}``; parameters ``beta`` (intercept,
        treatment), ``sigma_cluster``, ``cluster_effect``, ``sigma``.
    """
    if df is None:
        options = {"key_or_seed": 0, **simulate_options}
        df = simulate_crt(**options)
    elif simulate_options:
        raise ConfigurationError(
            f"simulation options {sorted(simulate_options)} given together with a data frame"
        )
    df = frame(df, "crt", ["cluster", "treatment", "y"])
    y = numeric(df, "y")
    treatment = numeric(df, "treatment")
    if not set(np.unique(treatment)) <= {0.0, 1.0}:
        raise DataError("treatment must be 0/1")
    cluster, labels = group_codes(df["cluster"])
    if (pd.Series(treatment).groupby(cluster).nunique() > 1).any():
        raise DataError("treatment must be constant within each cluster")
    n_cluster = len(labels)
    mean_size = len(y) / n_cluster
    sd_y = scale(y)
    design = np.column_stack([np.ones_like(y), treatment])
    data = {"y": y, "treatment": treatment, "cluster": cluster}

    def icc(p, d):
        between = p["sigma_cluster"] ** 2
        return between / (between + p["sigma"] ** 2)

    model = build(
        prior={
            "beta": population_prior(design, float(np.mean(y)), sd_y),
            "sigma_cluster": dist.HalfNormal(sd_y),
            "cluster_effect": lambda p, d: dist.Normal(0.0, p["sigma_cluster"]).expand(
                (n_cluster,)
            ),
            "sigma": dist.HalfNormal(sd_y),
        },
        likelihood=lambda p, d: {
            "y": dist.Normal(
                p["beta"][0] + p["beta"][1] * d["treatment"] + p["cluster_effect"][d["cluster"]],
                p["sigma"],
            )
        },
        dims={"beta": ("term",), "cluster_effect": ("cluster",)},
        coords={"term": ["intercept", "treatment"], "cluster": labels},
        deterministic={
            "icc": icc,
            "design_effect": lambda p, d: 1.0 + (mean_size - 1.0) * icc(p, d),
        },
    )
    return model, data
