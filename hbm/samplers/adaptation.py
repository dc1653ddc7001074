"""Stan's windowed warmup: step-size search, dual averaging and mass-matrix estimation.

* :func:`find_reasonable_step_size`: Stan's heuristic (Hoffman & Gelman 2014, Algorithm 4):
  double or halve the step size until the acceptance probability of a single leapfrog step
  from a fresh momentum crosses 0.8.
* :func:`dual_averaging`: Nesterov's primal-dual averaging of ``log(step_size)`` towards a
  target mean acceptance statistic (Nesterov 2009; Hoffman & Gelman 2014, section 3.2).
* :func:`welford_variance`: Welford's streaming (co)variance with Stan's regularization
  towards ``1e-3`` times the identity.
* :func:`build_schedule`: Stan's windows: an initial fast buffer, slow windows doubling in
  length where the mass matrix is estimated, and a final fast buffer (Stan Reference Manual,
  "HMC algorithm parameters", automatic parameter tuning).
* :func:`warmup_init`, :func:`warmup_step`, :func:`warmup_final`: the per-chain warmup
  transition the driver scans over. At the end of each slow window the inverse mass matrix
  is replaced by the regularized estimate, the step-size heuristic is re-run from the
  current step size and dual averaging restarts with ``mu = log(10 * step_size)``, as in
  Stan's ``adapt_diag_e_nuts::transition``. The last warmup iteration switches to the
  averaged step size ``exp(log_step_size_avg)``.

Every piece is pure and per chain; pieces follow optax's ``(init, update, final)`` shape.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hbm.errors import ConfigurationError
from hbm.samplers.integrators import IntegratorState, velocity_verlet
from hbm.samplers.metrics import gaussian_euclidean
from hbm.samplers.nuts import HMCState, NUTSInfo, init as hmc_init

__all__ = [
    "find_reasonable_step_size",
    "DualAveragingState",
    "dual_averaging",
    "WelfordState",
    "welford_variance",
    "welford_estimate",
    "Schedule",
    "build_schedule",
    "WarmupState",
    "warmup_init",
    "warmup_adapt",
    "warmup_step",
    "warmup_final",
    "metric_estimator",
    "stan_flags",
]

_LOG_TARGET_ONE_STEP = float(np.log(0.8))
_MAX_STEP_SIZE = 1e7
_MIN_STEP_SIZE = 1e-12
_MAX_SEARCH_ITERATIONS = 100
_COLLAPSE_FACTOR = 100.0


# ---------------------------------------------------------------- step-size heuristic


def _one_step_log_acceptance(key, state: HMCState, logdensity_fn, metric, step_size):
    step = velocity_verlet(logdensity_fn, metric.kinetic_energy, metric.velocity)
    momentum = metric.sample_momentum(key, state.position)
    start = IntegratorState(state.position, momentum, state.logdensity, state.logdensity_grad)
    energy0 = -state.logdensity + metric.kinetic_energy(momentum)
    end = step(start, step_size)
    energy = -end.logdensity + metric.kinetic_energy(end.momentum)
    energy = jnp.where(jnp.isnan(energy), jnp.inf, energy)
    return energy0 - energy


def _search_step_size(key, state, logdensity_fn, inverse_mass_matrix, initial, active):
    metric = gaussian_euclidean(inverse_mass_matrix)
    dtype = jnp.result_type(state.position)
    initial = jnp.asarray(initial, dtype)
    # direction 0 = not yet known (first evaluation), +1 = doubling, -1 = halving.

    def cond(carry):
        iteration, step_size, direction, done = carry
        return ~done

    def body(carry):
        iteration, step_size, direction, done = carry
        log_accept = _one_step_log_acceptance(
            jax.random.fold_in(key, iteration), state, logdensity_fn, metric, step_size
        )
        above = log_accept > _LOG_TARGET_ONE_STEP
        below = log_accept < _LOG_TARGET_ONE_STEP
        first = direction == 0
        direction = jnp.where(first, jnp.where(above, 1, -1), direction)
        # Stan: the first evaluation only picks the direction; later ones stop on crossing.
        crossed = ~first & jnp.where(direction == 1, ~above, ~below)
        new_step_size = jnp.where(direction == 1, 2.0 * step_size, 0.5 * step_size)
        step_size = jnp.where(first | crossed, step_size, new_step_size)
        out_of_range = (step_size > _MAX_STEP_SIZE) | (step_size < _MIN_STEP_SIZE)
        done = crossed | out_of_range | (iteration + 1 >= _MAX_SEARCH_ITERATIONS)
        return iteration + 1, step_size, direction, done

    carry = (jnp.int32(0), initial, jnp.int32(0), ~jnp.asarray(active))
    _, step_size, _, _ = lax.while_loop(cond, body, carry)
    return jnp.clip(step_size, _MIN_STEP_SIZE, _MAX_STEP_SIZE)


def find_reasonable_step_size(
    key, state: HMCState, logdensity_fn: Callable, inverse_mass_matrix, initial=1.0
):
    """Stan's initial step-size heuristic.

    A first one-step trial from a fresh momentum decides whether to double (acceptance
    above 0.8) or halve; the step size then doubles or halves, with a fresh momentum per
    trial, until the one-step acceptance ``exp(H0 - H)`` crosses 0.8. The result is kept
    within ``[1e-12, 1e7]``.

    Parameters
    ----------
    key
        PRNG key (trial ``k`` uses ``fold_in(key, k)``).
    state
        Current :class:`~hbm.samplers.nuts.HMCState`.
    logdensity_fn, inverse_mass_matrix
        Target and metric.
    initial
        Starting step size.

    Returns
    -------
    step size (scalar array)
    """
    return _search_step_size(key, state, logdensity_fn, inverse_mass_matrix, initial, True)


# ---------------------------------------------------------------- dual averaging


class DualAveragingState(NamedTuple):
    """Dual-averaging state: current and averaged ``log(step_size)``, the averaged
    acceptance gap ``s_bar``, the iteration count and the shrinkage point ``mu``."""

    log_step_size: jax.Array
    log_step_size_avg: jax.Array
    gradient_avg: jax.Array
    count: jax.Array
    mu: jax.Array


def dual_averaging(target: float = 0.8, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
    """Nesterov dual averaging of ``log(step_size)`` (Stan's ``stepsize_adaptation``).

    Returns
    -------
    (init(step_size) -> state, update(state, acceptance_rate) -> state, final(state) -> step_size)
        ``init`` sets ``mu = log(10 * step_size)``; ``exp(state.log_step_size)`` is the step
        size to use next; ``final`` returns the averaged step size.
    """
    if not 0.0 < target < 1.0:
        raise ConfigurationError(f"target acceptance must lie in (0, 1), got {target}")

    def init(step_size) -> DualAveragingState:
        log_step_size = jnp.log(jnp.asarray(step_size))
        zero = jnp.zeros_like(log_step_size)
        return DualAveragingState(
            log_step_size, zero, zero, jnp.zeros((), jnp.int32), jnp.log(10.0) + log_step_size
        )

    def update(state: DualAveragingState, acceptance_rate) -> DualAveragingState:
        acceptance_rate = jnp.asarray(acceptance_rate, state.log_step_size.dtype)
        acceptance_rate = jnp.where(jnp.isnan(acceptance_rate), 0.0, acceptance_rate)
        acceptance_rate = jnp.minimum(acceptance_rate, 1.0)
        count = state.count + 1
        t = count.astype(state.log_step_size.dtype)
        eta = 1.0 / (t + t0)
        gradient_avg = (1.0 - eta) * state.gradient_avg + eta * (target - acceptance_rate)
        log_step_size = state.mu - gradient_avg * jnp.sqrt(t) / gamma
        weight = t ** (-kappa)
        log_step_size_avg = (1.0 - weight) * state.log_step_size_avg + weight * log_step_size
        return DualAveragingState(log_step_size, log_step_size_avg, gradient_avg, count, state.mu)

    def final(state: DualAveragingState):
        return jnp.exp(state.log_step_size_avg)

    return init, update, final


# ---------------------------------------------------------------- Welford


class WelfordState(NamedTuple):
    """Streaming mean and sum of squared deviations (a vector, or a matrix if dense)."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def welford_estimate(state: WelfordState):
    """The unbiased sample variance (or covariance), ``m2 / (n - 1)``, unregularized."""
    denominator = jnp.maximum(state.count - 1, 1).astype(state.mean.dtype)
    return state.m2 / denominator


def welford_variance(dense: bool = False):
    """Welford's streaming variance (``dense=False``) or covariance (``dense=True``).

    Returns
    -------
    (init(d) -> state, update(state, x) -> state, final(state) -> regularized estimate)
        ``final`` is Stan's ``(n / (n + 5)) * S + 1e-3 * (5 / (n + 5)) * I``.
    """

    def init(dim: int, dtype=None) -> WelfordState:
        dtype = dtype or jnp.zeros(()).dtype
        m2_shape = (dim, dim) if dense else (dim,)
        return WelfordState(
            jnp.zeros((), jnp.int32), jnp.zeros((dim,), dtype), jnp.zeros(m2_shape, dtype)
        )

    def update(state: WelfordState, x) -> WelfordState:
        count = state.count + 1
        delta = x - state.mean
        mean = state.mean + delta / count.astype(state.mean.dtype)
        if dense:
            m2 = state.m2 + jnp.outer(x - mean, delta)
        else:
            m2 = state.m2 + (x - mean) * delta
        return WelfordState(count, mean, m2)

    def final(state: WelfordState):
        n = state.count.astype(state.mean.dtype)
        estimate = welford_estimate(state)
        shrink = 1e-3 * (5.0 / (n + 5.0))
        identity = jnp.eye(state.mean.shape[0], dtype=state.mean.dtype) if dense else 1.0
        return (n / (n + 5.0)) * estimate + shrink * identity

    return init, update, final


# ---------------------------------------------------------------- schedule


class Schedule(NamedTuple):
    """Per warmup iteration: ``stage`` (0 fast, 1 slow) and ``window_end`` (a slow window
    closes after this iteration's transition)."""

    stage: np.ndarray
    window_end: np.ndarray


def build_schedule(
    num_warmup: int, initial_buffer: int = 75, first_window: int = 25, final_buffer: int = 50
) -> Schedule:
    """Stan's warmup windows.

    When the three stages do not fit (``initial_buffer + first_window + final_buffer >
    num_warmup``) they are rescaled to 15% / 75% / 10% of ``num_warmup``; below 20
    iterations only the step size is adapted. Slow windows double in length, and a window
    whose successor would not fit before the final buffer is stretched to reach it.

    Returns
    -------
    Schedule of NumPy arrays of length ``num_warmup``.
    """
    if int(num_warmup) != num_warmup or num_warmup < 0:
        raise ConfigurationError(f"num_warmup must be a non-negative integer, got {num_warmup}")
    for name, value in (
        ("initial_buffer", initial_buffer),
        ("first_window", first_window),
        ("final_buffer", final_buffer),
    ):
        if int(value) != value or value < 0:
            raise ConfigurationError(f"{name} must be a non-negative integer, got {value}")
    num_warmup = int(num_warmup)
    stage = np.zeros(num_warmup, np.int32)
    window_end = np.zeros(num_warmup, bool)
    if num_warmup < 20:
        return Schedule(stage, window_end)
    if initial_buffer + first_window + final_buffer > num_warmup:
        initial_buffer = int(0.15 * num_warmup)
        final_buffer = int(0.1 * num_warmup)
        first_window = num_warmup - (initial_buffer + final_buffer)
    last_slow = num_warmup - final_buffer - 1
    window_size = first_window
    next_end = initial_buffer + window_size - 1
    for i in range(num_warmup):
        if initial_buffer <= i < num_warmup - final_buffer:
            stage[i] = 1
        if i == next_end:
            window_end[i] = True
            if next_end == last_slow:
                continue
            window_size *= 2
            next_end = i + window_size
            if next_end != last_slow and next_end + 2 * window_size >= num_warmup - final_buffer:
                next_end = last_slow
    return Schedule(stage, window_end)


# ---------------------------------------------------------------- warmup transition


class WarmupState(NamedTuple):
    """Per-chain warmup state. ``inverse_mass_matrix`` is the metric's representation (a
    diagonal, a dense matrix or a :class:`~hbm.samplers.metrics.LowRankInverseMass`);
    ``metric_state`` is the estimator's state."""

    hmc_state: HMCState
    step_size: jax.Array
    inverse_mass_matrix: object
    da_state: DualAveragingState
    metric_state: object
    iteration: jax.Array


class _SingleEstimator(NamedTuple):
    """One estimator restarted after each window (Stan); ``switch`` does nothing."""

    init: Callable
    update: Callable
    final: Callable
    initial: Callable
    switch: Callable
    restart: Callable
    name: str


def metric_estimator(metric: str = "diag", schedule: str = "stan", **options):
    """The estimator of ``metric`` (:func:`hbm.samplers.mass_matrix.build_metric_adapter`)
    with ``switch``/``restart``: two overlapping copies where ``schedule`` switches
    estimators (``"early"``), one copy restarted after each window otherwise."""
    from hbm.samplers import mass_matrix

    adapter = mass_matrix.build_metric_adapter(metric, **options)
    if schedule == "early":
        return mass_matrix.overlapping(adapter)

    def restart(state):
        return jax.tree.map(jnp.zeros_like, state)

    return _SingleEstimator(adapter.init, adapter.update, adapter.final, adapter.initial,
                            lambda state: state, restart, adapter.name)


def _default_estimator(dense_mass: bool, estimator):
    if estimator is not None:
        return estimator
    return metric_estimator("dense" if dense_mass else "diag")


def stan_flags(stage, window_end):
    """Stan's window schedule ``(stage, window_end)`` as the per-iteration flags of
    :class:`hbm.samplers.schedules.WarmupSchedule`."""
    from hbm.samplers.schedules import WarmupSchedule

    stage, window_end = jnp.asarray(stage), jnp.asarray(window_end)
    return WarmupSchedule(adapt_step_size=jnp.ones_like(window_end),
                          accumulate_metric=stage == 1,
                          switch_estimator=jnp.zeros_like(window_end),
                          update_metric=window_end, restart_estimator=window_end,
                          restart_step_size=window_end,
                          symmetric_acceptance=jnp.zeros_like(window_end))


def warmup_init(
    key,
    position,
    logdensity_fn: Callable,
    *,
    dense_mass: bool = False,
    initial_step_size=None,
    target_accept: float = 0.8,
    estimator=None,
) -> WarmupState:
    """Start warmup at ``position`` with the estimator's initial metric (Stan's: the unit
    metric) and the heuristic step size.

    Parameters
    ----------
    key
        PRNG key for the step-size search.
    position
        Flat initial position.
    logdensity_fn
        Target log density.
    dense_mass
        Without ``estimator``: Stan's dense (True) or diagonal (False) estimate.
    initial_step_size
        If given, used as is; otherwise :func:`find_reasonable_step_size` from 1.0.
    estimator
        A :func:`metric_estimator` (default: Stan's, by ``dense_mass``).
    """
    estimator = _default_estimator(dense_mass, estimator)
    hmc_state = hmc_init(position, logdensity_fn)
    dtype = jnp.result_type(hmc_state.position)
    inverse_mass_matrix = estimator.initial(hmc_state.position, hmc_state.logdensity_grad)
    if initial_step_size is None:
        step_size = find_reasonable_step_size(key, hmc_state, logdensity_fn, inverse_mass_matrix)
    else:
        step_size = jnp.asarray(initial_step_size, dtype)
    da_init, _, _ = dual_averaging(target_accept)
    return WarmupState(
        hmc_state,
        step_size,
        inverse_mass_matrix,
        da_init(step_size),
        estimator.init(hmc_state.position),
        jnp.zeros((), jnp.int32),
    )


def _select(predicate, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(predicate, a, b), on_true, on_false)


def warmup_adapt(
    key,
    warmup_state: WarmupState,
    hmc_state: HMCState,
    info: NUTSInfo,
    logdensity_fn: Callable,
    flags,
    is_last,
    *,
    target_accept: float = 0.8,
    estimator,
) -> WarmupState:
    """The adaptation updates after one warmup transition that produced ``hmc_state``.

    ``flags`` is this iteration's row of a :class:`hbm.samplers.schedules.WarmupSchedule`,
    applied in its documented order: dual averaging (on the transition's symmetric
    acceptance statistic where the row's ``symmetric_acceptance`` is set, else on Stan's),
    feeding the estimator (position and gradient), switching estimators, a new metric,
    restarting the estimator, and a new step-size search with dual averaging restarted
    at ``mu = log(10 * step_size)`` (as in Stan's ``adapt_diag_e_nuts::transition``).
    ``is_last`` (the last warmup iteration) switches to the averaged step size unless the
    search just ran. The flags are arguments, so the compiled update does not depend on
    the length of warmup.

    At a switch of estimators (the early schedule) the step size is searched from the
    current one, and dual averaging restarts there only if the search's step size is
    over 100x the current one. Dual averaging remembers: a chain whose step size
    collapsed in a bad early stretch (a transient metric of range 1e11 from 10 draws)
    would need about as many iterations again to recover, while its metric, estimated
    from draws that barely move, stays bad (``hbm.models.sleepstudy`` with
    ``metric="lowrank"``, seed 0: one chain at step size 1e-6 for good). A healthy
    chain's step size is never that far below the one-step heuristic's, so its draws
    are unchanged.
    """
    da_init, da_update, da_final = dual_averaging(target_accept)
    statistic = jnp.where(flags.symmetric_acceptance, info.symmetric_acceptance_rate,
                          info.acceptance_rate)
    da_state = _select(flags.adapt_step_size, da_update(warmup_state.da_state, statistic),
                       warmup_state.da_state)
    step_size = jnp.where(flags.adapt_step_size, jnp.exp(da_state.log_step_size),
                          warmup_state.step_size)
    metric_state = _select(
        flags.accumulate_metric,
        estimator.update(warmup_state.metric_state, hmc_state.position,
                         hmc_state.logdensity_grad),
        warmup_state.metric_state,
    )
    metric_state = _select(flags.switch_estimator, estimator.switch(metric_state),
                           metric_state)
    inverse_mass_matrix = jax.lax.cond(flags.update_metric, estimator.final,
                                       lambda _: warmup_state.inverse_mass_matrix,
                                       metric_state)
    metric_state = _select(flags.restart_estimator, estimator.restart(metric_state),
                           metric_state)
    restart = flags.restart_step_size
    # at a switch of estimators, a step size the heuristic finds far larger than the
    # current one means dual averaging has collapsed (it remembers a bad early stretch):
    # restart it there
    check = flags.switch_estimator & ~restart
    searched = _search_step_size(
        key, hmc_state, logdensity_fn, inverse_mass_matrix, step_size, restart | check
    )
    restart = restart | (check & (searched > _COLLAPSE_FACTOR * step_size))
    step_size = jnp.where(restart, searched, step_size)
    da_state = _select(restart, da_init(step_size), da_state)
    step_size = jnp.where(is_last & ~restart, da_final(da_state), step_size)
    return WarmupState(
        hmc_state, step_size, inverse_mass_matrix, da_state, metric_state,
        warmup_state.iteration + 1
    )


def warmup_step(
    key,
    warmup_state: WarmupState,
    logdensity_fn: Callable,
    schedule_arrays,
    *,
    kernel: Callable,
    target_accept: float = 0.8,
    dense_mass: bool = False,
    estimator=None,
) -> tuple[WarmupState, NUTSInfo]:
    """One warmup iteration: a NUTS transition, then the adaptation updates
    (:func:`warmup_adapt`).

    Parameters
    ----------
    key
        PRNG key of this iteration.
    warmup_state
        Current state; ``iteration`` indexes ``schedule_arrays``.
    logdensity_fn
        Target log density.
    schedule_arrays
        Stan's :class:`Schedule` (from :func:`build_schedule`) or a
        :class:`hbm.samplers.schedules.WarmupSchedule`.
    kernel
        Transition from :func:`~hbm.samplers.nuts.build_kernel`.
    target_accept, dense_mass, estimator
        Adaptation settings (static), as :func:`warmup_init`.

    Returns
    -------
    (WarmupState, NUTSInfo)
    """
    estimator = _default_estimator(dense_mass, estimator)
    if isinstance(schedule_arrays, Schedule):
        schedule_arrays = stan_flags(schedule_arrays.stage, schedule_arrays.window_end)
    kernel_key, search_key = jax.random.split(key)
    i = warmup_state.iteration
    num_warmup = jnp.shape(schedule_arrays.adapt_step_size)[0]
    flags = jax.tree.map(lambda a: jnp.asarray(a)[i], schedule_arrays)
    hmc_state, info = kernel(
        kernel_key,
        warmup_state.hmc_state,
        logdensity_fn,
        warmup_state.step_size,
        warmup_state.inverse_mass_matrix,
    )
    new_state = warmup_adapt(
        search_key, warmup_state, hmc_state, info, logdensity_fn, flags,
        i == num_warmup - 1, target_accept=target_accept, estimator=estimator,
    )
    return new_state, info


def warmup_final(warmup_state: WarmupState):
    """The adapted ``(step_size, inverse_mass_matrix)``."""
    return warmup_state.step_size, warmup_state.inverse_mass_matrix
