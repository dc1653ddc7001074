"""Radon models: data coding and a hand-written log density check."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import hbm
from hbm import models


@pytest.fixture(scope="module")
def radon_df():
    return hbm.datasets.load("radon_mn")


def test_floor_is_the_basement_column_as_is(radon_df, varying_intercept):
    """HLMdiag's ``basement`` is Gelman and Hill's floor (0 = basement): ~17% ones."""
    data = varying_intercept[0]
    np.testing.assert_array_equal(data["floor"], radon_df["basement"].to_numpy())
    assert data["floor"].sum() == 153
    np.testing.assert_array_equal(data["y"], radon_df["log.radon"].to_numpy())


def test_county_codes_and_labels(radon_df):
    model, data = models.radon_varying_intercept()
    np.testing.assert_array_equal(data["county"], radon_df["county"].to_numpy() - 1)
    labels = model.coords["county"]
    assert len(labels) == 85 and labels[0] == "AITKIN" and labels[-1] == "YELLOW MEDICINE"
    assert labels == sorted(labels)


def test_uranium_is_one_value_per_county(radon_df):
    _, data = models.radon_uranium()
    assert data["log_uranium"].shape == (85,)
    np.testing.assert_array_equal(data["log_uranium"][data["county"]],
                                  radon_df["uranium"].to_numpy())
    bad = radon_df.copy()
    bad.loc[0, "uranium"] += 1.0
    with pytest.raises(hbm.DataError):
        models.radon_uranium(bad)


@pytest.fixture(scope="module")
def varying_intercept():
    """The model, its data, and its centered and non-centered bindings."""
    model, data = models.radon_varying_intercept()
    return data, model.bind(data, reparam="centered"), model.bind(data, reparam="noncentered")


def _point(n_county, seed=3):
    rng = np.random.default_rng(seed)
    beta = np.array([1.3, -0.6])
    sigma_county, sigma = 0.35, 0.75
    eta = rng.normal(0.0, 0.4, n_county)
    return beta, sigma_county, eta, sigma


def test_varying_intercept_log_density_matches_formula(varying_intercept):
    """Flat centered log density = log prior + log likelihood + log-Jacobian of exp."""
    data, bound, _ = varying_intercept
    assert bound.param_names == ["beta", "sigma_county", "county_effect", "sigma"]
    y, x, j = data["y"], data["floor"], data["county"]
    beta, sigma_county, eta, sigma = _point(85)
    flat = np.concatenate([beta, [np.log(sigma_county)], eta, [np.log(sigma)]])

    # the priors of the docstring, recomputed from the data
    sd_y, sd_x = np.std(y, ddof=1), np.std(x, ddof=1)
    expected = (
        stats.norm.logpdf(beta[0], np.mean(y), 2.5 * sd_y)
        + stats.norm.logpdf(beta[1], 0.0, 2.5 * sd_y / sd_x)
        + stats.halfnorm.logpdf(sigma_county, scale=sd_y) + np.log(sigma_county)
        + stats.norm.logpdf(eta, 0.0, sigma_county).sum()
        + stats.halfnorm.logpdf(sigma, scale=sd_y) + np.log(sigma)
        + stats.norm.logpdf(y, beta[0] + beta[1] * x + eta[j], sigma).sum()
    )
    got = float(bound.logdensity(jnp.asarray(flat)))
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_varying_intercept_noncentered_differs_by_the_jacobian(varying_intercept):
    """Non-centered coordinates z = eta / sigma_county: density gains 85 log sigma_county."""
    _, centered, noncentered = varying_intercept
    beta, sigma_county, eta, sigma = _point(85, seed=4)
    flat_c = np.concatenate([beta, [np.log(sigma_county)], eta, [np.log(sigma)]])
    flat_nc = np.concatenate([beta, [np.log(sigma_county)], eta / sigma_county, [np.log(sigma)]])
    np.testing.assert_allclose(
        float(noncentered.logdensity(jnp.asarray(flat_nc))),
        float(centered.logdensity(jnp.asarray(flat_c))) + 85 * np.log(sigma_county),
        rtol=1e-10,
    )


def test_varying_intercept_slope_effects_have_the_lkj_covariance():
    """Non-centered county_effect = z @ (diag(sigma) L)^T, row by row."""
    model, data = models.radon_varying_intercept_slope()
    bound = model.bind(data, reparam="noncentered")
    x = jnp.linspace(-1.0, 1.0, bound.size)
    p = bound.constrain(x)
    tril = np.asarray(p["sigma_county"])[:, None] * np.asarray(p["L_county"])
    z = np.asarray(bound.unravel(x)["county_effect"])  # the non-centered coordinates
    np.testing.assert_allclose(p["county_effect"], z @ tril.T, rtol=1e-12)
    np.testing.assert_allclose(np.sum(np.asarray(p["L_county"]) ** 2, axis=1), 1.0,
                               rtol=1e-12)
