"""Warmup schedules as per-iteration flags: Stan's windows and the early-and-often one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError
from hbm.samplers import build_schedule
from hbm.samplers.schedules import (
    EARLY_SYMMETRIC_FROM,
    WarmupSchedule,
    build_warmup_schedule,
    early_schedule,
    stan_schedule,
)


def _replay(schedule):
    """Replay the flags with two window counters, as the engine's overlapping estimators
    would see them; return the foreground size at each metric update."""
    foreground = background = 0
    sizes = []
    for i in range(len(schedule.adapt_step_size)):
        if schedule.accumulate_metric[i]:
            foreground, background = foreground + 1, background + 1
        if schedule.switch_estimator[i]:
            foreground, background = background, 0
        if schedule.update_metric[i]:
            sizes.append(foreground)
        if schedule.restart_estimator[i]:
            foreground = background = 0
    return np.array(sizes)


@pytest.mark.parametrize("num_warmup", [1000, 150, 30])
def test_stan_schedule_is_build_schedule(num_warmup):
    windows = build_schedule(num_warmup)
    schedule = build_warmup_schedule("stan", num_warmup)
    assert isinstance(schedule, WarmupSchedule)
    assert all(len(flags) == num_warmup and flags.dtype == bool for flags in schedule)
    np.testing.assert_array_equal(schedule.accumulate_metric, windows.stage == 1)
    for flags in (schedule.update_metric, schedule.restart_estimator,
                  schedule.restart_step_size):
        np.testing.assert_array_equal(flags, windows.window_end)
    assert schedule.adapt_step_size.all() and not schedule.switch_estimator.any()
    assert not schedule.symmetric_acceptance.any()  # Stan's statistic throughout
    # each update uses exactly the draws of its window
    ends = np.flatnonzero(windows.window_end)
    starts = np.concatenate([[np.flatnonzero(windows.stage == 1)[0]], ends[:-1] + 1])
    np.testing.assert_array_equal(_replay(schedule), ends - starts + 1)


def test_stan_schedule_default_windows():
    schedule = stan_schedule(1000)
    np.testing.assert_array_equal(np.flatnonzero(schedule.update_metric),
                                  [99, 149, 249, 449, 949])


def test_early_schedule_structure():
    num_warmup = 1000
    schedule = early_schedule(num_warmup)
    metric_end, early_end = 1000 - 100, 300
    assert schedule.adapt_step_size.all()
    # the last 10% adapt the step size only
    for flags in (schedule.accumulate_metric, schedule.switch_estimator,
                  schedule.update_metric, schedule.restart_step_size):
        assert not flags[metric_end:].any()
    assert schedule.accumulate_metric[:metric_end].all()
    assert not schedule.restart_estimator.any()
    # the first estimate after 5 draws, then at every iteration; one step-size search
    updates = np.flatnonzero(schedule.update_metric)
    np.testing.assert_array_equal(updates, np.arange(4, metric_end))
    np.testing.assert_array_equal(np.flatnonzero(schedule.restart_step_size), [4])
    # switches every 10 draws early, every 80 after, none that leaves a short last window
    switches = np.flatnonzero(schedule.switch_estimator)
    gaps = np.diff(switches)
    assert switches[0] == 9
    assert set(gaps[switches[1:] < early_end]) == {10}
    assert set(gaps[switches[:-1] >= early_end]) == {80}
    assert switches[-1] + 80 >= metric_end - 80
    # the metric rests on the recent draws only: at least 5, at most three windows
    sizes = _replay(schedule)
    assert sizes.min() >= 5 and sizes.max() <= 3 * 80
    assert sizes[updates < early_end].max() <= 3 * 10 + 10


def test_early_schedule_refreshes_costly_metrics_less_often():
    """Diagonal metrics are re-estimated after every draw; the dense and low-rank ones,
    whose update needs eigendecompositions, every 10 draws and at every switch."""
    from hbm.samplers.schedules import EARLY_UPDATE_EVERY

    cheap = build_warmup_schedule("early", 1000, metric="diag_grad")
    np.testing.assert_array_equal(cheap.update_metric, early_schedule(1000).update_metric)
    for metric in ("lowrank", "dense"):
        assert EARLY_UPDATE_EVERY[metric] == 10
        costly = build_warmup_schedule("early", 1000, metric=metric)
        updates = np.flatnonzero(costly.update_metric)
        assert updates[0] == 4 and np.diff(updates).max() == 10
        assert set(np.flatnonzero(costly.switch_estimator)) <= set(updates)
        for field in ("accumulate_metric", "switch_estimator", "restart_step_size"):
            np.testing.assert_array_equal(getattr(costly, field), getattr(cheap, field))
    explicit = build_warmup_schedule("early", 1000, metric="lowrank", update_every=1)
    np.testing.assert_array_equal(explicit.update_metric, cheap.update_metric)
    stan = build_warmup_schedule("stan", 1000, metric="lowrank")
    np.testing.assert_array_equal(stan.update_metric, stan_schedule(1000).update_metric)


def test_low_rank_updates_after_every_draw_where_cheap():
    """The low-rank metric is refreshed after every draw up to d = 64, then every
    ceil((d / 64)^3) draws, at most 10; the dense and diagonal metrics ignore d."""
    from hbm.samplers.schedules import early_update_every

    assert [early_update_every("lowrank", d) for d in (1, 26, 64, 65, 89, 128, 176, 303)] \
        == [1, 1, 1, 2, 3, 8, 10, 10]
    assert early_update_every("lowrank") == 10
    assert early_update_every("dense", 5) == 10
    assert early_update_every("diag_grad", 500) == early_update_every("diag", 500) == 1
    small = build_warmup_schedule("early", 1000, metric="lowrank", dim=26)
    np.testing.assert_array_equal(small, build_warmup_schedule("early", 1000, metric="diag"))
    large = build_warmup_schedule("early", 1000, metric="lowrank", dim=89)
    np.testing.assert_array_equal(
        large, build_warmup_schedule("early", 1000, metric="lowrank", update_every=3))


def test_short_warmup_adapts_the_step_size_only():
    metric_flags = ("accumulate_metric", "switch_estimator", "update_metric",
                    "restart_estimator", "restart_step_size")
    for name in ("stan", "early"):
        schedule = build_warmup_schedule(name, 19)
        assert schedule.adapt_step_size.all()
        assert not any(getattr(schedule, flags).any() for flags in metric_flags)
        assert all(len(flags) == 0 for flags in build_warmup_schedule(name, 0))


def test_schedule_drives_a_compiled_scan():
    schedule = build_warmup_schedule("early", 200)
    flags = WarmupSchedule(*(jnp.asarray(f) for f in schedule))

    def body(counts, i):
        accumulate, update = flags.accumulate_metric[i], flags.update_metric[i]
        return counts + jnp.array([accumulate, update], jnp.int32), None

    counts, _ = jax.jit(lambda: jax.lax.scan(body, jnp.zeros(2, jnp.int32),
                                             jnp.arange(200)))()
    np.testing.assert_array_equal(counts, [schedule.accumulate_metric.sum(),
                                           schedule.update_metric.sum()])


@pytest.mark.parametrize("num_warmup, symmetric_from, first", [
    (1000, 0.3, 300), (1000, 0.82, 820), (333, 0.5, 167), (19, 0.3, 6), (100, 0.0, 0),
    (100, 1.0, 100)])
def test_early_schedule_switches_to_the_symmetric_statistic(num_warmup, symmetric_from,
                                                            first):
    """Dual averaging adapts Stan's statistic before ``symmetric_from`` of warmup and the
    symmetric one from there to the end; nothing else in the schedule depends on it."""
    schedule = early_schedule(num_warmup, symmetric_from=symmetric_from)
    np.testing.assert_array_equal(schedule.symmetric_acceptance,
                                  np.arange(num_warmup) >= first)
    never = early_schedule(num_warmup, symmetric_from=1.0)
    for field in WarmupSchedule._fields[:-1]:
        np.testing.assert_array_equal(getattr(schedule, field), getattr(never, field))


def test_the_symmetric_statistic_is_chosen_per_metric():
    """``build_warmup_schedule`` takes ``symmetric_from`` from ``EARLY_SYMMETRIC_FROM``
    by metric (Stan's statistic throughout without a metric and in Stan's schedule); an
    explicit option wins."""
    assert set(EARLY_SYMMETRIC_FROM) == {"diag", "diag_grad", "lowrank", "dense"}
    for metric, fraction in EARLY_SYMMETRIC_FROM.items():
        schedule = build_warmup_schedule("early", 500, metric=metric)
        np.testing.assert_array_equal(schedule.symmetric_acceptance,
                                      np.arange(500) >= np.ceil(fraction * 500))
        assert not build_warmup_schedule("stan", 500, metric=metric).symmetric_acceptance.any()
    assert EARLY_SYMMETRIC_FROM["diag_grad"] < 1.0  # the default metric uses it
    assert not build_warmup_schedule("early", 500).symmetric_acceptance.any()
    explicit = build_warmup_schedule("early", 500, metric="lowrank", symmetric_from=0.5)
    np.testing.assert_array_equal(explicit.symmetric_acceptance, np.arange(500) >= 250)


def test_bad_schedules_raise():
    with pytest.raises(ConfigurationError, match="warmup_schedule"):
        build_warmup_schedule("nutpie", 100)
    with pytest.raises(ConfigurationError, match="warmup_schedule"):
        build_warmup_schedule("early", 100, window=3)
    with pytest.raises(ConfigurationError, match="num_warmup"):
        build_warmup_schedule("early", -1)
    with pytest.raises(ConfigurationError, match="num_warmup"):
        build_warmup_schedule("stan", 10.5)
    with pytest.raises(ConfigurationError, match="first_update"):
        early_schedule(100, first_update=0)
    with pytest.raises(ConfigurationError, match="final_fraction"):
        early_schedule(100, final_fraction=1.0)
    with pytest.raises(ConfigurationError, match="early_fraction"):
        early_schedule(100, early_fraction=0.8, final_fraction=0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigurationError, match="symmetric_from"):
            early_schedule(100, symmetric_from=bad)
