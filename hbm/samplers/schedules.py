"""Warmup schedules as arrays of per-iteration flags.

A schedule says, for every warmup iteration, what the adaptation does after that
iteration's NUTS transition. It is a :class:`WarmupSchedule` of boolean NumPy arrays of
length ``num_warmup``, so a compiled ``lax.scan`` over warmup indexes it with the
iteration number and no Python runs in the loop. After the transition of iteration ``i``
the engine applies, in this order:

1. ``adapt_step_size[i]``: one dual-averaging update from the acceptance statistic:
   Stan's mean of ``min(1, exp(H0 - H))`` over the trajectory's leaves, or, where
   ``symmetric_acceptance[i]``, the mean of ``2 / (1 + exp(|H0 - H|))``
   (:func:`hbm.samplers.trajectory.leaf_acceptance`);
2. ``accumulate_metric[i]``: feed ``(position, logdensity_grad)`` to the metric estimator
   (an :func:`hbm.samplers.mass_matrix.overlapping` pair);
3. ``switch_estimator[i]``: the background estimator replaces the foreground one and a
   fresh background starts (draws older than the background's window are forgotten;
   the gradient-based estimators defer this while the chain no longer drifts, the
   low-rank one only while the background holds at most ``d`` draws, see
   :func:`hbm.samplers.mass_matrix.diag_grad` and :func:`~hbm.samplers.mass_matrix.lowrank`);
4. ``update_metric[i]``: the inverse mass matrix becomes the estimator's ``final``;
5. ``restart_estimator[i]``: both estimators start afresh;
6. ``restart_step_size[i]``: re-run the step-size heuristic with the new metric and restart
   dual averaging at ``mu = log(10 step_size)``.

The last warmup iteration switches to the averaged step size (unless ``restart_step_size``
is set there), as :mod:`hbm.samplers.adaptation` does.

Two schedules:

* ``"stan"`` (:func:`stan_schedule`): Stan's windows from
  :func:`hbm.samplers.adaptation.build_schedule`: a fast initial buffer (step size only),
  slow windows doubling in length at whose ends the metric is replaced by the window's
  estimate, the estimator restarts and the step size is searched again, and a fast final
  buffer (Stan Reference Manual, "HMC algorithm parameters").
* ``"early"`` (:func:`early_schedule`): the metric is estimated early and often, after the
  idea of nutpie's adaptation (Seyboldt, nutpie documentation "Adaptation" and
  ``nuts-rs``'s ``GlobalStrategy``; Seyboldt, Carlson & Carpenter 2026,
  arXiv:2603.18845): after ``first_update`` draws the metric is re-estimated every
  ``update_every`` iterations from the foreground estimator; two estimators overlap, and
  whenever the background has seen ``switch_every`` draws it replaces the foreground, so
  the metric rests on the recent draws only (between one and two windows of them, more
  where the estimator defers a switch of a stationary chain, see step 3) and the first,
  far-from-typical draws are soon forgotten. The windows are short
  (``early_switch_every``) during the first ``early_fraction`` of warmup and long
  (``late_switch_every``) after; no switch happens that would leave the last window
  shorter than its length; the final ``final_fraction`` of warmup adapts the step size
  only. From ``symmetric_from`` of warmup on (by metric, :data:`EARLY_SYMMETRIC_FROM`),
  dual averaging adapts the symmetric acceptance statistic, which nuts-rs uses late in
  warmup. The step size is searched again at the first metric update; at later switches
  dual averaging restarts only where the search finds a step size over 100x the current
  one (a step size that collapsed in a bad early stretch; see
  :func:`hbm.samplers.adaptation.warmup_adapt`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from hbm.errors import ConfigurationError
from hbm.samplers.adaptation import build_schedule

__all__ = [
    "CHEAP_DECOMPOSITION_DIM",
    "EARLY_SYMMETRIC_FROM",
    "EARLY_UPDATE_EVERY",
    "SCHEDULE_NAMES",
    "WarmupSchedule",
    "build_warmup_schedule",
    "early_schedule",
    "early_update_every",
    "stan_schedule",
]

SCHEDULE_NAMES = ("stan", "early")

#: The early schedule's ``update_every`` per metric when the dimension is not given.
#: Updating a diagonal metric costs O(d) and it is done after every draw, as nutpie does;
#: the dense and low-rank estimates need eigendecompositions (O(d^3), or O(d (2B)^2) on a
#: buffer of B draws), so without the dimension they are refreshed every 10 draws (and at
#: every switch of estimators). See :func:`early_update_every`.
EARLY_UPDATE_EVERY = {"diag": 1, "diag_grad": 1, "lowrank": 10, "dense": 10}

#: Up to this dimension the low-rank estimate is refreshed after every draw, as nutpie
#: does; above it, every ``(d / 64)^3`` draws (at most 10), so that its O(d^3)
#: eigendecompositions cost about as much per warmup iteration as at ``d = 64``.
CHEAP_DECOMPOSITION_DIM = 64

#: The early schedule's ``symmetric_from`` per metric: the fraction of warmup after which
#: dual averaging adapts the symmetric acceptance statistic (1: never). Chosen by
#: ``benchmarks/adaptation.py``, median ESS per gradient over its 14 float32 posteriors
#: relative to Stan's adaptation, seeds 0-5:
#:
#: * ``diag_grad``: 1.29x with Stan's statistic throughout, 1.30x with the symmetric one
#:   from 82% of warmup (late only, like nuts-rs), 1.34x from the start (with a chain
#:   stuck in the neck of the centered funnels ``seeds`` and ``surgical``) and 1.34x from
#:   30%, the end of the short windows (no stuck chain);
#: * ``lowrank``: 1.94x with Stan's statistic, 1.93x from 30% (penicillin fixed, but
#:   stuck chains on ``seeds`` and eight schools -12%), 1.88x from 82% (seeds 0-2, against
#:   1.92x), so it keeps Stan's.
#:
#: ``diag`` and ``dense`` were not measured with it and keep Stan's statistic.
EARLY_SYMMETRIC_FROM = {"diag": 1.0, "diag_grad": 0.3, "lowrank": 1.0, "dense": 1.0}


def early_update_every(metric: str | None, dim: int | None = None) -> int:
    """Iterations between metric updates of the early schedule for ``metric`` on a
    ``dim``-dimensional target.

    The low-rank metric is refreshed after every draw up to ``d = 64`` and every
    ``min(10, ceil((d / 64)^3))`` draws above. It pays where short early windows must
    resolve strongly correlated directions: on posteriordb's diamonds (``d = 26``, 24
    correlated coefficients) refreshing after every draw instead of every 10 cut warmup
    from 3.0x to 2.4x the sampling gradients and on nes2000 (``d = 10``) from 2.8x to
    1.2x (``benchmarks/adaptation.py``, means of 3 seeds); at ``d = 176`` (the radon
    intercept + slope model) it made warmup 5x slower in seconds for +5% ESS per
    gradient. The dense metric keeps 10 and the diagonal ones 1.
    """
    every = EARLY_UPDATE_EVERY.get(metric, 1)
    if metric == "lowrank" and dim is not None:
        every = min(every, max(1, math.ceil((dim / CHEAP_DECOMPOSITION_DIM) ** 3)))
    return every


class WarmupSchedule(NamedTuple):
    """Boolean flags per warmup iteration (see the module docstring for their order)."""

    adapt_step_size: np.ndarray
    accumulate_metric: np.ndarray
    switch_estimator: np.ndarray
    update_metric: np.ndarray
    restart_estimator: np.ndarray
    restart_step_size: np.ndarray
    symmetric_acceptance: np.ndarray


def _check_num_warmup(num_warmup):
    if isinstance(num_warmup, bool) or int(num_warmup) != num_warmup or num_warmup < 0:
        raise ConfigurationError(f"num_warmup must be a non-negative integer, got {num_warmup!r}")
    return int(num_warmup)


def _empty(num_warmup: int) -> WarmupSchedule:
    off = np.zeros(num_warmup, bool)
    return WarmupSchedule(np.ones(num_warmup, bool), off, off.copy(), off.copy(), off.copy(),
                          off.copy(), off.copy())


def stan_schedule(num_warmup: int, *, initial_buffer: int = 75, first_window: int = 25,
                  final_buffer: int = 50) -> WarmupSchedule:
    """Stan's windowed schedule (:func:`~hbm.samplers.adaptation.build_schedule`) as flags:
    accumulate in the slow windows; at each window end update the metric, restart the
    estimator and search the step size again."""
    num_warmup = _check_num_warmup(num_warmup)
    windows = build_schedule(num_warmup, initial_buffer, first_window, final_buffer)
    window_end = np.asarray(windows.window_end, bool)
    return WarmupSchedule(
        adapt_step_size=np.ones(num_warmup, bool),
        accumulate_metric=np.asarray(windows.stage) == 1,
        switch_estimator=np.zeros(num_warmup, bool),
        update_metric=window_end.copy(),
        restart_estimator=window_end.copy(),
        restart_step_size=window_end.copy(),
        symmetric_acceptance=np.zeros(num_warmup, bool),
    )


def early_schedule(num_warmup: int, *, first_update: int = 5, update_every: int = 1,
                   early_switch_every: int = 10, late_switch_every: int = 80,
                   early_fraction: float = 0.3, final_fraction: float = 0.1,
                   symmetric_from: float = 1.0) -> WarmupSchedule:
    """The early-and-often schedule (see the module docstring).

    Parameters
    ----------
    num_warmup
        Number of warmup iterations; below 20 only the step size is adapted.
    first_update
        Draws the foreground estimator needs before the metric is first estimated.
    update_every
        Iterations between metric updates (a switch also updates).
    early_switch_every, late_switch_every
        Draws the background estimator collects before it replaces the foreground,
        during the first ``early_fraction`` of warmup and after.
    early_fraction, final_fraction
        Fractions of warmup with short windows and, at the end, with a fixed metric. The
        final 10% was chosen by ``benchmarks/adaptation.py``: over its 13 float32
        posteriors the median ESS per gradient of ``diag_grad`` relative to Stan's
        adaptation was 1.26x with 15%, 1.32x with 8% and 5%, 1.36x with 10%.
    symmetric_from
        Fraction of warmup after which dual averaging adapts the step size to the
        symmetric acceptance statistic instead of Stan's (``1``, the default, never; ``0``
        always; :func:`build_warmup_schedule` takes it from :data:`EARLY_SYMMETRIC_FROM`).
    """
    num_warmup = _check_num_warmup(num_warmup)
    for name, value in (("first_update", first_update), ("update_every", update_every),
                        ("early_switch_every", early_switch_every),
                        ("late_switch_every", late_switch_every)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("early_fraction", early_fraction),
                        ("final_fraction", final_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigurationError(f"{name} must lie in [0, 1), got {value!r}")
    if not 0.0 <= symmetric_from <= 1.0:
        raise ConfigurationError(f"symmetric_from must lie in [0, 1], got {symmetric_from!r}")
    if early_fraction + final_fraction > 1.0:
        raise ConfigurationError(
            f"early_fraction + final_fraction must be <= 1, got {early_fraction} + "
            f"{final_fraction}"
        )
    schedule = _empty(num_warmup)
    schedule.symmetric_acceptance[int(math.ceil(symmetric_from * num_warmup)):] = True
    if num_warmup < 20:
        return schedule
    metric_end = num_warmup - int(final_fraction * num_warmup)  # first step-size-only index
    early_end = int(early_fraction * num_warmup)
    foreground = background = 0
    last_update = None
    for i in range(metric_end):
        schedule.accumulate_metric[i] = True
        foreground += 1
        background += 1
        switch_every = early_switch_every if i < early_end else late_switch_every
        too_late = i + switch_every >= metric_end
        switched = background >= switch_every and not too_late
        if switched:
            schedule.switch_estimator[i] = True
            foreground, background = background, 0
        due = last_update is None or i - last_update >= update_every
        if foreground >= first_update and (switched or due):
            schedule.update_metric[i] = True
            if last_update is None:
                schedule.restart_step_size[i] = True
            last_update = i
    return schedule


def build_warmup_schedule(name: str, num_warmup: int, *, metric: str | None = None,
                          dim: int | None = None, **options) -> WarmupSchedule:
    """The schedule called ``name`` (``"stan"`` or ``"early"``) for ``num_warmup``
    iterations, with its keyword ``options``. Given the ``metric`` it adapts (and the
    target's dimension ``dim``), the early schedule's ``update_every`` defaults to
    :func:`early_update_every`'s and its ``symmetric_from`` to
    :data:`EARLY_SYMMETRIC_FROM`'s.

    Raises
    ------
    ConfigurationError
        Unknown ``name`` or option, or an invalid value.
    """
    builders = {"stan": stan_schedule, "early": early_schedule}
    if not isinstance(name, str) or name not in builders:
        raise ConfigurationError(
            f"warmup_schedule must be one of {', '.join(repr(n) for n in SCHEDULE_NAMES)}, "
            f"got {name!r}"
        )
    if name == "early" and metric is not None:
        options.setdefault("update_every", early_update_every(metric, dim))
        options.setdefault("symmetric_from", EARLY_SYMMETRIC_FROM.get(metric, 1.0))
    try:
        return builders[name](num_warmup, **options)
    except TypeError as error:  # an unknown keyword
        raise ConfigurationError(f"warmup_schedule {name!r}: {error}") from None
