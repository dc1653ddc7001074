"""The NUTS -> ADVI fallback policy: every branch and every threshold boundary."""

import math

import pytest

from hbm.errors import ConfigurationError, HbmError
from hbm.fallback import NUTSDiagnostics, fallback_reason

HEALTHY = NUTSDiagnostics(
    initialized=True,
    step_size=0.3,
    warmup_divergent_fraction=0.0,
    seconds_per_warmup_iteration=0.01,
)


def test_healthy_nuts_needs_no_fallback():
    assert fallback_reason(HEALTHY, num_draws=1000) is None
    assert fallback_reason(HEALTHY, num_draws=1000, time_budget=100.0) is None


def test_cannot_start():
    diag = HEALTHY._replace(initialized=False, step_size=float("nan"))
    reason = fallback_reason(diag, num_draws=1000)
    assert reason is not None and "cannot start" in reason


def test_cannot_start_takes_precedence_over_every_other_reason():
    diag = NUTSDiagnostics(False, 1e-12, 0.9, 100.0)
    assert "cannot start" in fallback_reason(diag, num_draws=1000, time_budget=1.0)


@pytest.mark.parametrize(
    ("step_size", "falls_back"),
    [(1e-8, False), (math.nextafter(1e-8, 0.0), True), (1e-9, True), (1.01e-8, False)],
)
def test_step_size_boundary(step_size, falls_back):
    reason = fallback_reason(HEALTHY._replace(step_size=step_size), num_draws=10)
    assert (reason is not None) == falls_back
    if falls_back:
        assert "step size collapsed" in reason


def test_custom_min_step_size():
    diag = HEALTHY._replace(step_size=1e-4)
    assert fallback_reason(diag, num_draws=10, min_step_size=1e-4) is None
    assert "collapsed" in fallback_reason(diag, num_draws=10, min_step_size=1.01e-4)


@pytest.mark.parametrize("step_size", [0.0, -0.1, float("nan"), float("inf")])
def test_non_positive_or_non_finite_step_size(step_size):
    reason = fallback_reason(HEALTHY._replace(step_size=step_size), num_draws=10)
    assert reason is not None and "step size" in reason


@pytest.mark.parametrize(
    ("fraction", "falls_back"),
    [(0.2, False), (math.nextafter(0.2, 1.0), True), (0.19, False), (0.5, True),
     (1.0, True), (float("nan"), True)],
)
def test_divergent_fraction_boundary(fraction, falls_back):
    diag = HEALTHY._replace(warmup_divergent_fraction=fraction)
    reason = fallback_reason(diag, num_draws=10)
    assert (reason is not None) == falls_back
    if falls_back:
        assert "diverged" in reason


def test_step_size_checked_before_divergences():
    diag = HEALTHY._replace(step_size=1e-10, warmup_divergent_fraction=0.9)
    assert "step size" in fallback_reason(diag, num_draws=10)


@pytest.mark.parametrize(
    ("seconds", "budget", "falls_back"),
    [(0.01, 10.0, False),        # 0.01 s x 1000 draws = 10 s: exactly the budget
     (0.0101, 10.0, True),       # 10.1 s
     (0.01, 9.99, True),
     (0.01, None, False),        # no budget: never a reason
     (None, 1e-6, False),        # not measured: no prediction
     (float("nan"), 10.0, True)],
)
def test_time_budget_boundary(seconds, budget, falls_back):
    diag = HEALTHY._replace(seconds_per_warmup_iteration=seconds)
    reason = fallback_reason(diag, num_draws=1000, time_budget=budget)
    assert (reason is not None) == falls_back
    if falls_back:
        assert "time budget" in reason


def test_divergences_checked_before_time():
    diag = HEALTHY._replace(warmup_divergent_fraction=0.5, seconds_per_warmup_iteration=10.0)
    assert "diverged" in fallback_reason(diag, num_draws=1000, time_budget=1.0)


def test_zero_draws_predict_zero_time():
    diag = HEALTHY._replace(seconds_per_warmup_iteration=1e6)
    assert fallback_reason(diag, num_draws=0, time_budget=1.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_draws=-1), dict(num_draws=1.5), dict(num_draws=True),
     dict(num_draws=10, time_budget=0.0), dict(num_draws=10, time_budget=-1.0),
     dict(num_draws=10, min_step_size=0.0),
     dict(num_draws=10, max_divergent_fraction=1.5),
     dict(num_draws=10, max_divergent_fraction=-0.1)],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ConfigurationError) as info:
        fallback_reason(HEALTHY, **kwargs)
    assert isinstance(info.value, HbmError)


def test_diagnostics_default_seconds_is_none():
    diag = NUTSDiagnostics(True, 0.5, 0.0)
    assert diag.seconds_per_warmup_iteration is None
    assert fallback_reason(diag, num_draws=10, time_budget=1.0) is None
