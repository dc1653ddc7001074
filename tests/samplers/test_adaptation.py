"""Warmup pieces: step-size heuristic, dual averaging, Welford, Stan's schedule, warmup."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError
from hbm.samplers import (
    Schedule,
    build_kernel,
    build_schedule,
    dual_averaging,
    find_reasonable_step_size,
    init,
    warmup_final,
    warmup_init,
    warmup_step,
    welford_estimate,
    welford_variance,
)

from ._helpers import scale_spread_gaussian


def test_step_size_heuristic_scales_with_the_target():
    # Same key => same standard-normal momenta. With a unit metric, scaling the target by
    # 8 (a power of two) and starting from 8x the initial step scales every trial exactly,
    # so the result scales exactly;
    # with the metric matched to the scale the problem is unchanged, so is the result.
    key = jax.random.PRNGKey(0)
    start = jnp.array([0.3, -0.5, 0.1])

    def search(scale, inverse_mass, initial=1.0):
        logdensity = lambda x: -0.5 * jnp.sum((x / scale) ** 2)
        state = init(start * scale, logdensity)
        search_fn = jax.jit(find_reasonable_step_size, static_argnums=2)
        return float(search_fn(key, state, logdensity, inverse_mass, initial))

    base = search(1.0, jnp.ones(3))
    assert search(8.0, jnp.ones(3), initial=8.0) == 8.0 * base
    assert search(8.0, jnp.full(3, 64.0)) == base
    assert 0.25 <= base <= 4.0
    assert np.log2(base) == np.round(np.log2(base))  # doubled or halved from 1


def test_step_size_heuristic_halves_when_too_large():
    logdensity = lambda x: -0.5 * jnp.sum((x / 1e-3) ** 2)
    state = init(jnp.array([1e-3, -1e-3]), logdensity)
    step_size = float(find_reasonable_step_size(jax.random.PRNGKey(1), state, logdensity, jnp.ones(2)))
    assert 1e-5 < step_size < 1e-2


def test_dual_averaging_converges_to_target():
    target = 0.8
    da_init, da_update, da_final = dual_averaging(target)
    acceptance = lambda step_size: jnp.exp(-step_size)  # decreasing in the step size
    state = da_init(1.0)

    def body(state, _):
        state = da_update(state, acceptance(jnp.exp(state.log_step_size)))
        return state, None

    state, _ = jax.lax.scan(body, state, None, length=5000)
    np.testing.assert_allclose(float(da_final(state)), -np.log(target), rtol=1e-2)
    assert int(state.count) == 5000


def test_dual_averaging_first_update_matches_formula():
    da_init, da_update, _ = dual_averaging(0.8, gamma=0.05, t0=10.0, kappa=0.75)
    state = da_update(da_init(0.5), 0.3)
    mu = np.log(10 * 0.5)
    s_bar = (0.8 - 0.3) / 11.0
    np.testing.assert_allclose(state.log_step_size, mu - s_bar / 0.05, rtol=1e-12)
    np.testing.assert_allclose(state.log_step_size_avg, mu - s_bar / 0.05, rtol=1e-12)
    with pytest.raises(ConfigurationError):
        dual_averaging(1.5)


@pytest.mark.parametrize("dense", [False, True])
def test_welford_matches_numpy_then_regularizes(dense):
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(57, 4)) * np.array([0.1, 1.0, 3.0, 10.0]) + 5.0
    w_init, w_update, w_final = welford_variance(dense)
    state = w_init(4)
    for x in samples:
        state = w_update(state, jnp.asarray(x))
    expected = np.cov(samples, rowvar=False) if dense else np.var(samples, axis=0, ddof=1)
    np.testing.assert_allclose(welford_estimate(state), expected, rtol=1e-12)
    np.testing.assert_allclose(state.mean, samples.mean(axis=0), rtol=1e-13)
    n = 57
    identity = np.eye(4) if dense else np.ones(4)
    np.testing.assert_allclose(
        w_final(state), n / (n + 5) * expected + 1e-3 * 5 / (n + 5) * identity, rtol=1e-12
    )


def _windows(schedule):
    ends = np.flatnonzero(schedule.window_end)
    starts = np.concatenate([[np.flatnonzero(schedule.stage)[0]], ends[:-1] + 1])
    return list(zip(starts.tolist(), ends.tolist()))


def test_schedule_for_1000_matches_stan():
    schedule = build_schedule(1000)
    assert _windows(schedule) == [(75, 99), (100, 149), (150, 249), (250, 449), (450, 949)]
    assert np.all(schedule.stage[:75] == 0) and np.all(schedule.stage[950:] == 0)
    assert np.all(schedule.stage[75:950] == 1)


@pytest.mark.parametrize(
    "num_warmup, windows",
    [
        (100, [(15, 89)]),  # 15% / 75% / 10%
        (149, [(22, 134)]),  # int(0.15 * 149) = 22, int(0.1 * 149) = 14
        (150, [(75, 99)]),
        (200, [(75, 99), (100, 149)]),
        (500, [(75, 99), (100, 149), (150, 249), (250, 449)]),
    ],
)
def test_schedule_small_warmups_scale_like_stan(num_warmup, windows):
    schedule = build_schedule(num_warmup)
    assert len(schedule.stage) == num_warmup
    assert _windows(schedule) == windows
    first, last = windows[0][0], windows[-1][1]
    assert np.all(schedule.stage[first : last + 1] == 1)
    assert schedule.stage.sum() == last + 1 - first


def test_schedule_without_metric_adaptation_below_20():
    schedule = build_schedule(19)
    assert not schedule.stage.any() and not schedule.window_end.any()
    with pytest.raises(ConfigurationError):
        build_schedule(-1)


def test_warmup_finds_diagonal_mass_of_scale_spread_gaussian():
    logdensity, scales = scale_spread_gaussian(100)
    num_warmup = 1000
    schedule = build_schedule(num_warmup)
    schedule_arrays = Schedule(jnp.asarray(schedule.stage), jnp.asarray(schedule.window_end))
    kernel = build_kernel()

    @jax.jit
    def run(key, position):
        init_key, warmup_key = jax.random.split(key)
        state = warmup_init(init_key, position, logdensity, dense_mass=False)

        def body(state, iteration_key):
            state, info = warmup_step(
                iteration_key, state, logdensity, schedule_arrays,
                kernel=kernel, target_accept=0.8, dense_mass=False,
            )
            return state, (state.hmc_state.position, info.acceptance_rate)

        return jax.lax.scan(body, state, jax.random.split(warmup_key, num_warmup))

    position = jax.random.uniform(jax.random.PRNGKey(1), (100,), minval=-2, maxval=2)
    state, (positions, acceptance) = run(jax.random.PRNGKey(0), position)
    step_size, inverse_mass = warmup_final(state)
    positions = np.asarray(positions)

    # exactly Stan's estimator on the last slow window (iterations 450..949)
    window = positions[450:950]
    n = len(window)
    expected = n / (n + 5) * window.var(axis=0, ddof=1) + 1e-3 * 5 / (n + 5)
    np.testing.assert_allclose(inverse_mass, expected, rtol=1e-9)

    # and that estimate is the true variance up to Monte Carlo error (ESS of x^2)
    centered_squares = (window - window.mean(axis=0)) ** 2
    ess = np.array([az.ess(centered_squares[None, :, k], method="bulk") for k in range(100)])
    mcse = centered_squares.std(axis=0, ddof=1) / np.sqrt(ess)
    truth = n / (n + 5) * scales**2 + 1e-3 * 5 / (n + 5)
    z = (np.asarray(inverse_mass) - truth) / (n / (n + 5) * mcse)
    assert np.all(np.abs(z) < 4.5), z  # Bonferroni-aware for 100 coordinates
    assert 0.1 < float(step_size) < 2.0
    assert np.isfinite(float(step_size))


@pytest.mark.parametrize("current, restarted", [(1e-9, True), (0.5, False)])
def test_a_collapsed_step_size_restarts_dual_averaging_at_a_switch(current, restarted):
    """At a switch of estimators (the early schedule), dual averaging is restarted from
    the heuristic's step size only when that is over 100x the current one: a chain whose
    step size collapsed in a bad early stretch recovers; a healthy one is left alone."""
    from types import SimpleNamespace

    from hbm.samplers.adaptation import metric_estimator, warmup_adapt
    from hbm.samplers.schedules import WarmupSchedule

    logdensity = lambda x: -0.5 * jnp.sum(x**2)
    estimator = metric_estimator("diag_grad", "early")
    da_init, _, _ = dual_averaging(0.8)
    state = warmup_init(jax.random.PRNGKey(0), jnp.array([0.3, -0.2, 0.5]), logdensity,
                        initial_step_size=current, estimator=estimator)
    state = state._replace(da_state=da_init(current)._replace(count=jnp.asarray(50)))
    off = jnp.asarray(False)
    flags = WarmupSchedule(off, off, jnp.asarray(True), off, off, off, off)
    key = jax.random.PRNGKey(3)
    info = SimpleNamespace(acceptance_rate=jnp.asarray(0.0),
                           symmetric_acceptance_rate=jnp.asarray(0.0))
    after = warmup_adapt(key, state, state.hmc_state, info, logdensity, flags, off,
                         estimator=estimator)
    searched = find_reasonable_step_size(key, state.hmc_state, logdensity,
                                         state.inverse_mass_matrix, current)
    if restarted:
        assert float(after.step_size) == float(searched) > 100 * current
        for got, want in zip(after.da_state, da_init(searched)):
            np.testing.assert_array_equal(got, want)
    else:
        assert float(after.step_size) == current
        for got, want in zip(after.da_state, state.da_state):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("symmetric", [False, True])
def test_dual_averaging_reads_the_statistic_the_schedule_names(symmetric):
    """``warmup_adapt`` feeds dual averaging the symmetric acceptance statistic where
    the schedule's ``symmetric_acceptance`` flag is set, Stan's elsewhere."""
    from types import SimpleNamespace

    from hbm.samplers.adaptation import metric_estimator, warmup_adapt
    from hbm.samplers.schedules import WarmupSchedule

    logdensity = lambda x: -0.5 * jnp.sum(x**2)
    estimator = metric_estimator("diag_grad", "early")
    _, da_update, _ = dual_averaging(0.8)
    state = warmup_init(jax.random.PRNGKey(0), jnp.array([0.3, -0.2]), logdensity,
                        initial_step_size=0.5, estimator=estimator)
    off, on = jnp.asarray(False), jnp.asarray(True)
    flags = WarmupSchedule(on, off, off, off, off, off, jnp.asarray(symmetric))
    info = SimpleNamespace(acceptance_rate=jnp.asarray(0.9),
                           symmetric_acceptance_rate=jnp.asarray(0.2))
    after = warmup_adapt(jax.random.PRNGKey(1), state, state.hmc_state, info, logdensity,
                         flags, off, estimator=estimator)
    expected = da_update(state.da_state, 0.2 if symmetric else 0.9)
    for got, want in zip(after.da_state, expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(after.step_size, jnp.exp(expected.log_step_size))
