"""Data simulators of the library (cluster randomized trial, measurement error), and the
models built on them. Distributional checks are exact tests (F, chi-square, z) at fixed
seeds; a check fails when its two-sided p-value is below 1e-3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import hbm
from hbm import models

ALPHA = 1e-3


def _two_sided(cdf_value):
    return 2.0 * min(cdf_value, 1.0 - cdf_value)


def test_simulate_crt_shapes_and_assignment():
    df = models.simulate_crt(0, n_clusters=12, cluster_size=7, icc=0.1, effect=0.3)
    assert list(df.columns) == ["cluster", "treatment", "y"]
    assert len(df) == 84
    assert df.groupby("cluster").size().tolist() == [7] * 12
    per_cluster = df.groupby("cluster")["treatment"].agg(["min", "max"])
    assert (per_cluster["min"] == per_cluster["max"]).all()
    assert per_cluster["min"].sum() == 6
    sizes = [3, 5, 8, 2]
    df = models.simulate_crt(1, n_clusters=4, cluster_size=sizes, icc=0.0, effect=0.0,
                             treated_fraction=0.25)
    assert df.groupby("cluster").size().tolist() == sizes
    assert df.groupby("cluster")["treatment"].first().sum() == 1


def test_simulate_crt_seeds_and_keys():
    a = models.simulate_crt(5, n_clusters=6, cluster_size=4)
    b = models.simulate_crt(5, n_clusters=6, cluster_size=4)
    c = models.simulate_crt(6, n_clusters=6, cluster_size=4)
    k = models.simulate_crt(jax.random.key(5), n_clusters=6, cluster_size=4)
    np.testing.assert_array_equal(a["y"], b["y"])
    np.testing.assert_array_equal(a["y"], k["y"])
    assert not np.array_equal(a["y"], c["y"])


@pytest.mark.parametrize("bad", [dict(icc=1.0), dict(icc=-0.1), dict(n_clusters=1),
                                 dict(cluster_size=0), dict(cluster_size=2.5),
                                 dict(treated_fraction=0.0), dict(total_sd=0.0)])
def test_simulate_crt_rejects_bad_settings(bad):
    with pytest.raises(hbm.ConfigurationError):
        models.simulate_crt(0, **{"n_clusters": 10, "cluster_size": 5, **bad})
    with pytest.raises(hbm.ConfigurationError):
        models.simulate_crt("seed")


def test_simulate_crt_icc_total_sd_and_effect():
    """Balanced one-way ANOVA within arms: exact F and chi-square laws."""
    k, m, icc, total_sd, effect = 400, 20, 0.2, 2.0, 0.5
    df = models.simulate_crt(11, n_clusters=k, cluster_size=m, icc=icc, effect=effect,
                             intercept=1.0, total_sd=total_sd)
    var_between, var_within = icc * total_sd**2, (1 - icc) * total_sd**2
    y = df["y"].to_numpy()
    cluster = df["cluster"].to_numpy()
    cluster_mean = df.groupby("cluster")["y"].mean().to_numpy()
    arm = df.groupby("cluster")["treatment"].first().to_numpy()
    arm_mean = np.array([cluster_mean[arm == a].mean() for a in (0, 1)])
    ssw = np.sum((y - cluster_mean[cluster]) ** 2)
    ssb = m * np.sum((cluster_mean - arm_mean[arm]) ** 2)
    df_w, df_b = k * (m - 1), k - 2
    # within-cluster variance: SSW / var_within ~ chi2(df_w)
    assert _two_sided(stats.chi2.cdf(ssw / var_within, df_w)) > ALPHA
    # ICC: (MSB / MSW) * var_within / (var_within + m var_between) ~ F(df_b, df_w)
    f = (ssb / df_b) / (ssw / df_w) * var_within / (var_within + m * var_between)
    assert _two_sided(stats.f.cdf(f, df_b, df_w)) > ALPHA
    # treatment effect: difference of arm means, exact normal standard error
    n1, n0 = arm.sum(), k - arm.sum()
    se = np.sqrt((var_between + var_within / m) * (1 / n1 + 1 / n0))
    z = (arm_mean[1] - arm_mean[0] - effect) / se
    assert _two_sided(stats.norm.cdf(z)) > ALPHA


def test_crt_model_deterministics():
    model, data = models.crt(n_clusters=8, cluster_size=5, icc=0.1, effect=0.2)
    assert data["y"].shape == (40,)
    bound = model.bind(data)
    p = bound.constrain(jnp.linspace(-1.0, 1.0, bound.size))
    between, within = float(p["sigma_cluster"]) ** 2, float(p["sigma"]) ** 2
    icc = between / (between + within)
    np.testing.assert_allclose(p["icc"], icc, rtol=1e-12)
    np.testing.assert_allclose(p["design_effect"], 1 + (5 - 1) * icc, rtol=1e-12)


def test_crt_model_checks_its_data():
    df = models.simulate_crt(0, n_clusters=4, cluster_size=3)
    df.loc[0, "treatment"] = 1 - df.loc[0, "treatment"]
    with pytest.raises(hbm.DataError, match="constant within"):
        models.crt(df)


def test_simulate_measurement_error_laws():
    n, intercept, slope, sigma, x_mean, x_sd, me_sd = 2000, 0.5, 1.5, 0.7, 1.0, 2.0, 0.4
    df = models.simulate_measurement_error(
        3, n, intercept=intercept, slope=slope, sigma=sigma, x_mean=x_mean, x_sd=x_sd,
        measurement_sd=me_sd)
    assert list(df.columns) == ["x_obs", "x_se", "y", "x_true"]
    assert len(df) == n and np.all(df["x_se"] == me_sd)
    x = df["x_true"].to_numpy()
    z_x = (x.mean() - x_mean) / (x_sd / np.sqrt(n))
    assert _two_sided(stats.norm.cdf(z_x)) > ALPHA
    assert _two_sided(stats.chi2.cdf(np.sum((x - x_mean) ** 2) / x_sd**2, n)) > ALPHA
    err = df["x_obs"].to_numpy() - x
    assert _two_sided(stats.chi2.cdf(np.sum(err**2) / me_sd**2, n)) > ALPHA
    resid = df["y"].to_numpy() - intercept - slope * x
    assert _two_sided(stats.chi2.cdf(np.sum(resid**2) / sigma**2, n)) > ALPHA


def test_measurement_error_model_data_and_options():
    model, data = models.measurement_error(n=30, slope=2.0)
    assert set(data) == {"x_obs", "x_se", "y"}
    assert data["y"].shape == (30,)
    assert model.param_names == ["mu_x", "sigma_x", "x_true", "beta", "sigma"]
    df = models.simulate_measurement_error(0, 10)
    with pytest.raises(hbm.ConfigurationError):
        models.measurement_error(df, n=10)
    df.loc[0, "x_se"] = 0.0
    with pytest.raises(hbm.DataError):
        models.measurement_error(df)
