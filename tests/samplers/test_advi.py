"""ADVI on flat log densities: exact properties, recovery of Gaussian posteriors,
convergence detection, draws and the Pareto k-hat check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from hbm.diagnostics import pareto_khat as psis_khat  # the one k-hat, used by hbm.advi
from hbm.errors import ConfigurationError, HbmError
from hbm.samplers.advi import (
    VariationalParams,
    advi_draws,
    advi_init,
    advi_step,
    default_optimizer,
    run_advi,
    scale_tril,
)

# Three independent conjugate normal models: x_k ~ N(m0_k, s0_k), y_ki ~ N(x_k, S).
PRIOR_MEAN = np.array([0.0, 1.0, -2.0])
PRIOR_SD = np.array([2.0, 1.0, 5.0])
NOISE_SD = 1.5
Y = np.array([[1.2, 0.3, 2.0, 1.1], [0.5, 0.7, 0.2, 0.9], [-3.0, -1.0, -2.5, -4.0]])
POST_PRECISION = 1 / PRIOR_SD**2 + Y.shape[1] / NOISE_SD**2
POST_MEAN = (PRIOR_MEAN / PRIOR_SD**2 + Y.sum(1) / NOISE_SD**2) / POST_PRECISION
POST_SD = POST_PRECISION**-0.5


def conjugate_logdensity(x):
    prior = -0.5 * jnp.sum(((x - PRIOR_MEAN) / PRIOR_SD) ** 2)
    return prior - 0.5 * jnp.sum(((Y - x[:, None]) / NOISE_SD) ** 2)


# A correlated 2-d Gaussian target.
TARGET_MEAN = np.array([1.0, -2.0])
TARGET_SD = np.array([1.0, 2.0])
RHO = 0.8
TARGET_COV = np.outer(TARGET_SD, TARGET_SD) * np.array([[1.0, RHO], [RHO, 1.0]])
TARGET_PRECISION = np.linalg.inv(TARGET_COV)


def gaussian_logdensity(x):
    centred = x - TARGET_MEAN
    return -0.5 * centred @ TARGET_PRECISION @ centred


@pytest.mark.parametrize("method", ["meanfield", "fullrank"])
def test_sticking_the_landing_gradient_vanishes_at_the_exact_posterior(method):
    # With q equal to the posterior, log p - log q is constant, so the path-derivative
    # gradient is exactly zero for every draw: the parameters do not move.
    optimizer = default_optimizer()
    state = advi_init(jnp.zeros(3), method, optimizer)
    if method == "meanfield":
        scale = jnp.log(jnp.asarray(POST_SD))
    else:
        scale = jnp.diag(jnp.log(jnp.asarray(POST_SD)))
    state = state._replace(params=VariationalParams(jnp.asarray(POST_MEAN), scale))
    step = jax.jit(
        advi_step, static_argnames=("logdensity_fn", "method", "optimizer", "mc_samples")
    )
    for seed in range(5):
        new_state, elbo = step(
            jax.random.key(seed), state, conjugate_logdensity, method=method,
            optimizer=optimizer, mc_samples=2,
        )
        for new, old in zip(new_state.params, state.params):
            np.testing.assert_allclose(new, old, rtol=0, atol=1e-12)
        # ... and the ELBO estimate is exactly the log normalizing constant.
        log_z = float(conjugate_logdensity(jnp.asarray(POST_MEAN))) + np.sum(
            np.log(POST_SD) + 0.5 * np.log(2 * np.pi)
        )
        np.testing.assert_allclose(elbo, log_z, rtol=1e-12)
        assert int(new_state.step) == 1


def test_step_with_non_finite_density_is_skipped():
    optimizer = default_optimizer()
    state = advi_init(jnp.array([0.5, -0.5]), "meanfield", optimizer)
    step = jax.jit(advi_step, static_argnames=("logdensity_fn", "method", "optimizer"))
    new_state, elbo = step(
        jax.random.key(0), state, lambda x: jnp.nan * jnp.sum(x), method="meanfield",
        optimizer=optimizer,
    )
    assert not np.isfinite(elbo)
    for new, old in zip(new_state.params, state.params):
        np.testing.assert_array_equal(new, old)
    assert int(new_state.step) == 1


def test_meanfield_with_sticking_the_landing_is_exact_on_a_gaussian_posterior():
    # The gradient noise vanishes at the optimum, which the Gaussian family contains,
    # so the iterates converge to the exact posterior, to rounding.
    for seed in range(2):
        result = run_advi(
            jax.random.key(seed), conjugate_logdensity, jnp.zeros(3),
            max_steps=2000, tol_rel_obj=0.0,
        )
        np.testing.assert_allclose(result.mean, POST_MEAN, rtol=0, atol=1e-8)
        np.testing.assert_allclose(result.sd, POST_SD, rtol=0, atol=1e-8)
        assert result.scale_tril is None


def test_meanfield_recovers_the_conjugate_posterior_within_monte_carlo_error():
    # Plain reparameterization gradients keep Monte Carlo noise at the optimum: the
    # returned (tail-averaged) estimates scatter around the exact posterior mean and sd.
    # Their spread over independent seeds gives the standard error; t-test each of the
    # six quantities at a Bonferroni-corrected level of 0.001 overall.
    num_seeds = 16
    errors = []
    for seed in range(num_seeds):
        result = run_advi(
            jax.random.key(100 + seed), conjugate_logdensity, jnp.zeros(3),
            max_steps=4000, tol_rel_obj=0.0, stick_the_landing=False,
        )
        assert result.num_steps == 4000 and not result.converged
        errors.append(np.concatenate([result.mean - POST_MEAN, result.sd - POST_SD]))
    errors = np.asarray(errors)
    spread = errors.std(axis=0, ddof=1)
    assert np.all(spread > 0)  # the noise really is there, so the test is meaningful
    t_stats = errors.mean(axis=0) / (spread / np.sqrt(num_seeds))
    critical = scipy.stats.t.ppf(1 - 0.001 / (2 * errors.shape[1]), df=num_seeds - 1)
    assert np.all(np.abs(t_stats) < critical), t_stats
    # The estimates are also precise: the seed-to-seed spread is small against the sds.
    assert np.all(spread < 0.2 * np.concatenate([POST_SD, POST_SD]))


def test_fullrank_recovers_the_correlation():
    result = run_advi(
        jax.random.key(1), gaussian_logdensity, jnp.zeros(2), method="fullrank",
        max_steps=3000, tol_rel_obj=0.0,
    )
    factor = np.asarray(result.scale_tril)
    assert np.allclose(factor, np.tril(factor)) and np.all(np.diag(factor) > 0)
    cov = factor @ factor.T
    correlation = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert abs(correlation - RHO) < 0.02
    np.testing.assert_allclose(result.sd, np.sqrt(np.diag(cov)), rtol=1e-12)
    np.testing.assert_allclose(scale_tril(result.params, "fullrank"), factor, rtol=1e-12)


def test_convergence_detection_stops_early_and_records_the_history():
    calls = []
    result = run_advi(
        jax.random.key(2), gaussian_logdensity, jnp.zeros(2), method="fullrank",
        max_steps=10000, chunk_size=100, eval_elbo=50,
        callback=lambda step, elbo: calls.append((step, elbo)),
    )
    assert result.converged
    assert result.num_steps < 10000
    assert result.num_steps % 100 == 0
    assert result.elbo_history.shape == (result.num_steps,)
    assert len(result.elbo_evaluations) == result.num_steps // 50
    assert [step for step, _ in calls] == list(range(50, result.num_steps + 1, 50))
    assert calls == list(result.elbo_evaluations)
    np.testing.assert_allclose(
        calls[-1][1], result.elbo_history[result.num_steps - 50 : result.num_steps].mean()
    )


def test_without_tolerance_it_runs_to_max_steps():
    result = run_advi(
        jax.random.key(3), gaussian_logdensity, jnp.zeros(2), max_steps=230,
        chunk_size=100, tol_rel_obj=0.0, learning_rate=0.1,
    )
    assert not result.converged
    assert result.num_steps == 230
    assert result.elbo_history.shape == (230,)
    assert result.learning_rate == 0.1


def test_chunks_are_compiled_once():
    def counting(counter):
        def logdensity(x):
            counter.append(1)  # runs only while JAX traces the function
            return gaussian_logdensity(x)
        return logdensity

    one_chunk, ten_chunks = [], []
    run_advi(jax.random.key(0), counting(one_chunk), jnp.zeros(2), max_steps=100,
             tol_rel_obj=0.0, learning_rate=0.1)
    run_advi(jax.random.key(0), counting(ten_chunks), jnp.zeros(2), max_steps=1000,
             tol_rel_obj=0.0, learning_rate=0.1)
    assert len(one_chunk) == len(ten_chunks) > 0


@pytest.mark.parametrize("method", ["meanfield", "fullrank"])
def test_advi_draws_log_q_is_the_gaussian_log_density(method):
    result = run_advi(
        jax.random.key(4), gaussian_logdensity, jnp.zeros(2), method=method,
        max_steps=200, tol_rel_obj=0.0,
    )
    draws, log_q = advi_draws(jax.random.key(5), result, 50)
    assert draws.shape == (50, 2) and log_q.shape == (50,)
    factor = np.asarray(scale_tril(result.params, method))
    expected = scipy.stats.multivariate_normal(np.asarray(result.mean), factor @ factor.T)
    np.testing.assert_allclose(log_q, expected.logpdf(np.asarray(draws)), rtol=1e-10)


def test_advi_draws_have_the_approximation_moments():
    result = run_advi(
        jax.random.key(6), gaussian_logdensity, jnp.zeros(2), method="fullrank",
        max_steps=300, tol_rel_obj=0.0,
    )
    n = 4000
    draws, _ = advi_draws(jax.random.key(7), result, n)
    factor = np.asarray(result.scale_tril)
    cov = factor @ factor.T
    z = (np.asarray(draws).mean(0) - np.asarray(result.mean)) / np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(z) < 3.5), z


def test_psis_khat_separates_good_and_bad_approximations():
    rng = np.random.default_rng(0)
    n, d = 4000, 2
    target = scipy.stats.multivariate_normal(np.zeros(d), np.eye(d))
    # Slightly too wide and shifted: bounded weights, k-hat well below 0.5.
    good = scipy.stats.multivariate_normal(np.full(d, 0.1), 1.2**2 * np.eye(d))
    draws = good.rvs(n, random_state=rng)
    assert psis_khat(target.logpdf(draws) - good.logpdf(draws)) < 0.5
    # Far too narrow: heavy-tailed weights, k-hat above 0.7.
    bad = scipy.stats.multivariate_normal(np.zeros(d), 0.3**2 * np.eye(d))
    draws = bad.rvs(n, random_state=rng)
    assert psis_khat(target.logpdf(draws) - bad.logpdf(draws)) > 0.7


def test_psis_khat_with_nan_is_infinite():
    assert psis_khat(np.array([0.0, np.nan, 1.0] * 100)) == np.inf


@pytest.mark.parametrize(
    "kwargs",
    [dict(method="lowrank"), dict(max_steps=0), dict(mc_samples=0), dict(chunk_size=-1),
     dict(eval_elbo=0), dict(tol_rel_obj=-1.0), dict(learning_rate=0.0),
     dict(learning_rate=0.1, optimizer=default_optimizer())],
)
def test_invalid_configuration(kwargs):
    with pytest.raises(ConfigurationError) as info:
        run_advi(jax.random.key(0), gaussian_logdensity, jnp.zeros(2), **kwargs)
    assert isinstance(info.value, HbmError)


def test_position_must_be_flat():
    with pytest.raises(ConfigurationError):
        advi_init(jnp.zeros((2, 2)), "meanfield")


# A small hierarchical model, non-centered: mu ~ N(0, 5), tau ~ HalfNormal(2) (on the
# log scale, Jacobian included), z_j ~ N(0, 1), y_ji ~ N(mu + tau z_j, 1): two
# observations per group, so mu, tau and the z_j are strongly correlated a posteriori.
_HIER_Y = np.array(
    [[0.3, 1.9], [2.8, 1.6], [-0.9, 0.4], [3.1, 2.2],
     [1.0, -0.2], [4.0, 3.3], [-1.5, -0.6], [2.1, 0.9]]
)


def hierarchical_logdensity(x):
    mu, log_tau, z = x[0], x[1], x[2:]
    tau = jnp.exp(log_tau)
    log_prior = -0.5 * (mu / 5.0) ** 2 - 0.5 * (tau / 2.0) ** 2 + log_tau - 0.5 * z @ z
    residual = _HIER_Y - mu - tau * z[:, None]
    return log_prior - 0.5 * jnp.sum(residual**2) - 0.5 * _HIER_Y.size * np.log(2 * np.pi)


def test_fullrank_elbo_beats_meanfield_on_a_correlated_hierarchical_model():
    # Full-rank starts from the mean-field fit, so its ELBO cannot be worse; here the
    # correlations make it strictly better. ELBOs from 4000 independent draws of each
    # approximation; z-test of the difference against its Monte Carlo standard error.
    d = 2 + _HIER_Y.shape[0]
    results, elbos, variances = {}, {}, {}
    for method in ("meanfield", "fullrank"):
        result = run_advi(
            jax.random.key(0), hierarchical_logdensity, jnp.zeros(d), method=method
        )
        assert result.converged and result.num_steps <= 5000, result.num_steps
        draws, log_q = advi_draws(jax.random.key(1), result, 4000)
        log_w = np.asarray(jax.vmap(hierarchical_logdensity)(draws) - log_q)
        results[method] = result
        elbos[method], variances[method] = log_w.mean(), log_w.var(ddof=1) / log_w.size
    fullrank = results["fullrank"]
    assert 0 < fullrank.meanfield_steps < fullrank.num_steps
    assert fullrank.elbo_history.shape == (fullrank.num_steps,)
    z = (elbos["fullrank"] - elbos["meanfield"]) / np.sqrt(sum(variances.values()))
    assert z > 3.0, (elbos, z)
    factor = np.asarray(fullrank.scale_tril)
    assert np.abs(np.tril(factor, -1)).max() > 0.05  # it did learn correlations


def test_fullrank_factor_is_row_scaled_unit_triangular():
    raw = jnp.array([[np.log(2.0), 9.0, 9.0], [0.5, np.log(3.0), 9.0], [-1.0, 0.25, 0.0]])
    expected = np.array([[2.0, 0, 0], [1.5, 3.0, 0], [-1.0, 0.25, 1.0]])
    params = VariationalParams(jnp.zeros(3), raw)
    np.testing.assert_allclose(scale_tril(params, "fullrank"), expected, rtol=1e-14)


def test_fullrank_init_from_meanfield_scales():
    log_sd = jnp.log(jnp.array([0.5, 2.0, 3.0]))
    state = advi_init(jnp.ones(3), "fullrank", init_log_sd=log_sd)
    np.testing.assert_allclose(
        scale_tril(state.params, "fullrank"), np.diag([0.5, 2.0, 3.0]), rtol=1e-14
    )
    with pytest.raises(ConfigurationError):
        advi_init(jnp.ones(3), "fullrank", init_log_sd=jnp.zeros(2))
