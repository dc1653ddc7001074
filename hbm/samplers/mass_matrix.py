"""Mass-matrix estimators for warmup: Stan's Welford variance, the gradient-informed
diagonal and the low-rank-plus-diagonal metric of Seyboldt, Carlson & Carpenter.

Each estimator is a small optax-style piece, pure and per chain (``jit``/``vmap`` it
freely), returned as a :class:`MetricAdapter`:

* ``init(position) -> state`` (the position only fixes the dimension and dtype),
* ``update(state, position, logdensity_grad) -> state`` (every estimator takes the
  gradient; Stan's ignore it),
* ``final(state) -> inverse mass`` in a representation :func:`~hbm.samplers.metrics.metric_from`
  takes (1-D diagonal, 2-D dense, or :class:`~hbm.samplers.metrics.LowRankInverseMass`),
* ``initial(position, logdensity_grad) -> inverse mass``: the metric to start warmup with,
  of the same representation and shape as ``final``'s (a ``lax.scan`` carry needs one).

The estimators:

* :func:`diag_welford` (``"diag"``): Stan's regularized Welford variance of the draws
  (:func:`hbm.samplers.adaptation.welford_variance`).
* :func:`dense` (``"dense"``): Stan's regularized Welford covariance (``dense_mass=True``).
* :func:`diag_grad` (``"diag_grad"``): per coordinate ``sqrt(Var(x) / Var(grad log p))``.
  Among diagonal metrics it minimizes the sample Fisher divergence between the
  preconditioned target and a standard normal; for a Gaussian target it is exact
  (``Var(x_i) / Var(g_i) = sigma_i^4`` draw by draw when the target is diagonal) and it
  needs far fewer draws than the variance alone (Seyboldt, Carlson & Carpenter 2026,
  arXiv:2603.18845; nutpie's default "diagonal, gradient based" adaptation).
  Under overlapping windows it defers a switch while the chain is not drifting
  (:func:`welford_drift`), so that a stationary chain's window grows to every draw
  since it settled.
* :func:`lowrank` (``"lowrank"``): the same paper's diagonal-plus-low-rank metric. With
  ``D`` :func:`diag_grad`'s estimate (unshrunk) from every draw of the window, the
  buffer's draws and gradients are centered and scaled,
  ``x~ = D^{-1/2} (x - mean x)`` and ``g~ = D^{1/2} (g - mean g)``; on the subspace they
  span, the sample Fisher divergence is minimized by the SPD matrix ``S`` with
  ``S C_g S = C_x`` (``C_x``, ``C_g`` the regularized covariances of ``x~`` and ``g~``):
  the geometric mean ``S = C_g^{-1/2} (C_g^{1/2} C_x C_g^{1/2})^{1/2} C_g^{-1/2}``. The
  eigendirections of ``S`` whose eigenvalues lie outside ``[1/c, c]`` (at most
  ``max_rank`` of them, farthest from 1 on a log scale first) form the low-rank part; the
  others are set to 1. While the buffer holds no more draws than dimensions, ``C_x`` and
  ``C_g`` are singular and ``c`` is a much larger ``undersampled_cutoff``. Memory is
  bounded: a ring buffer keeps the last ``buffer_size`` draws and gradients. For a
  Gaussian target with exact gradients ``g = -Sigma^{-1} x`` the unregularized estimate
  is exact once the buffer holds more than ``d`` draws (``S C_g S = C_x`` is solved by
  the true scaled covariance).
  Under overlapping windows it defers a switch as :func:`diag_grad` does, so that a
  stationary chain's window grows to every draw since it settled: the diagonal rests on
  all of them, the low-rank part on the last ``buffer_size``.

:func:`initial_inverse_mass` is a gradient-informed first guess, ``1 / |grad log p|`` per
coordinate (clipped), so that the first trees are not as deep as a unit metric makes them
on badly scaled targets. :func:`overlapping` runs two estimators a window apart (the
"foreground" one in use and a "background" one that replaces it on a switch), for the
early-and-often schedule of :mod:`hbm.samplers.schedules`. :func:`build_metric_adapter`
builds an estimator by name.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from hbm.errors import ConfigurationError
from hbm.samplers.adaptation import WelfordState, welford_variance
from hbm.samplers.metrics import LowRankInverseMass

__all__ = [
    "METRIC_NAMES",
    "DiagGradState",
    "LowRankState",
    "MetricAdapter",
    "OverlappingAdapter",
    "OverlappingState",
    "build_metric_adapter",
    "dense",
    "diag_grad",
    "diag_welford",
    "fisher_optimal_covariance",
    "initial_inverse_mass",
    "lowrank",
    "overlapping",
    "welford_drift",
]

METRIC_NAMES = ("diag", "diag_grad", "lowrank", "dense")

# nutpie clips the gradient-based scales to a wide range; ours is narrower on purpose:
# the ratio of two variances from a handful of early draws can be off by many orders.
_RATIO_LOWER = 1e-10
_RATIO_UPPER = 1e10


class MetricAdapter(NamedTuple):
    """An inverse-mass-matrix estimator: ``init(position) -> state``,
    ``update(state, position, logdensity_grad) -> state``, ``final(state) -> inverse
    mass``, ``initial(position, logdensity_grad) -> inverse mass`` (see the module
    docstring), its ``name`` and, optionally, ``defer_switch(foreground, background) ->
    bool``: whether :func:`overlapping` should keep both estimators at a scheduled switch
    (``None``: always switch)."""

    init: Callable
    update: Callable
    final: Callable
    initial: Callable
    name: str
    defer_switch: Callable | None = None


# ------------------------------------------------------------------ first guess


def initial_inverse_mass(position, logdensity_grad, *, lower: float = 1e-3,
                         upper: float = 1e3):
    """A gradient-informed diagonal inverse mass to start warmup with.

    For a coordinate of scale ``sigma`` at a typical point (``|x - mean| ~ sigma``) the
    gradient of a Gaussian log density is about ``1 / sigma``, so ``1 / |g|`` is a scale
    estimate from one gradient (nutpie starts from the gradient the same way). It is
    clipped to ``[lower, upper]`` (a coordinate at its mode has a zero gradient) and
    non-finite values fall back to 1.

    Parameters
    ----------
    position
        Flat initial position (fixes shape and dtype).
    logdensity_grad
        Gradient of the log density at ``position``.
    lower, upper
        Clipping range of the guess.

    Returns
    -------
    1-D array: the diagonal of ``M^{-1}``.
    """
    if not 0.0 < lower <= upper:
        raise ConfigurationError(f"need 0 < lower <= upper, got lower={lower}, upper={upper}")
    dtype = jnp.result_type(position)
    grad = jnp.asarray(logdensity_grad, dtype)
    guess = jnp.clip(1.0 / jnp.abs(grad), lower, upper)
    return jnp.where(jnp.isfinite(guess), guess, jnp.ones_like(guess))


def _ones_initial(position, logdensity_grad):
    return jnp.ones(jnp.shape(position), jnp.result_type(position))


def _check_positive_int(name, value, minimum):
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_drift_tolerance(value):
    if not value >= 0.0:  # also NaN
        raise ConfigurationError(f"drift_tolerance must be >= 0, got {value}")


# ------------------------------------------------------------------ Stan's estimators


def _welford_adapter(dense_mass: bool, name: str, init_from_gradient: bool) -> MetricAdapter:
    welford_init, welford_update, welford_final = welford_variance(dense_mass)

    def init(position) -> WelfordState:
        position = jnp.asarray(position)
        return welford_init(position.shape[0], position.dtype)

    def update(state: WelfordState, position, logdensity_grad) -> WelfordState:
        return welford_update(state, position)

    def initial(position, logdensity_grad):
        diagonal = (initial_inverse_mass(position, logdensity_grad) if init_from_gradient
                    else _ones_initial(position, logdensity_grad))
        return jnp.diag(diagonal) if dense_mass else diagonal

    return MetricAdapter(init, update, welford_final, initial, name)


def diag_welford(*, init_from_gradient: bool = False) -> MetricAdapter:
    """Stan's diagonal estimate: the Welford variance of the draws, shrunk towards
    ``1e-3`` as ``(n / (n + 5)) var + 1e-3 (5 / (n + 5))``. Warmup starts from the unit
    metric (Stan) unless ``init_from_gradient``."""
    return _welford_adapter(False, "diag", init_from_gradient)


def dense(*, init_from_gradient: bool = False) -> MetricAdapter:
    """Stan's dense estimate (``dense_mass=True``): the Welford covariance, shrunk
    towards ``1e-3 I``."""
    return _welford_adapter(True, "dense", init_from_gradient)


# ------------------------------------------------------------------ gradient-based diagonal


class DiagGradState(NamedTuple):
    """Welford states of the draws and of the gradients (same count)."""

    draws: WelfordState
    grads: WelfordState


def _gradient_scale(mean_square_grad):
    """``1 / sqrt(mean(g^2))`` per coordinate (clipped; 1 without a nonzero finite
    gradient): the scale guess of :func:`initial_inverse_mass` from every gradient seen."""
    informative = jnp.isfinite(mean_square_grad) & (mean_square_grad > 0)
    safe = jnp.where(informative, mean_square_grad, 1.0)
    guess = jnp.clip(1.0 / jnp.sqrt(safe), _RATIO_LOWER, _RATIO_UPPER)
    return jnp.where(informative, guess, jnp.ones_like(guess))


def _diag_from_variances(draw_variance, grad_variance, count, mean_square_grad, shrink=True):
    ratio = jnp.sqrt(draw_variance / grad_variance)
    ratio = jnp.clip(ratio, _RATIO_LOWER, _RATIO_UPPER)
    usable = jnp.isfinite(ratio) & (draw_variance > 0) & (grad_variance > 0) & (count >= 2)
    # Stan's shrinkage of a windowed estimate towards 1e-3 (the "diag" metric's): a chain
    # that barely moved in one coordinate during a short window must not get a near-zero
    # inverse mass there, whose tiny steps would keep it from moving (a stuck chain)
    if shrink:
        n = jnp.asarray(count, ratio.dtype)
        ratio = (n / (n + 5.0)) * ratio + 1e-3 * (5.0 / (n + 5.0))
    # a coordinate the chain did not move in (every transition rejected, or a step size
    # collapsed far from the typical set) carries no scale information; 1 there can be
    # many orders too large where gradients are huge (hbm.models.epil, seed 2: a chain
    # that never left its initial point, |grad| up to 1e9), so the gradients' own scale
    return jnp.where(usable, ratio, _gradient_scale(mean_square_grad))


def _diag_grad_estimate(state: DiagGradState, shrink: bool):
    """``sqrt(Var(x) / Var(g))`` per coordinate from the two Welford states (the divisor,
    ``n`` or ``n - 1``, cancels in the ratio)."""
    count = jnp.maximum(state.grads.count, 1).astype(state.grads.mean.dtype)
    mean_square_grad = state.grads.mean**2 + state.grads.m2 / count
    return _diag_from_variances(state.draws.m2, state.grads.m2, state.draws.count,
                                mean_square_grad, shrink=shrink)


def _diag_grad_moments():
    """init and update of the Welford states of draws and gradients that
    :func:`diag_grad` and :func:`lowrank` estimate their diagonal from."""
    welford_init, welford_update, _ = welford_variance(False)

    def init(position) -> DiagGradState:
        position = jnp.asarray(position)
        state = welford_init(position.shape[0], position.dtype)
        return DiagGradState(state, state)

    def update(state: DiagGradState, position, logdensity_grad) -> DiagGradState:
        dtype = state.grads.mean.dtype
        return DiagGradState(welford_update(state.draws, jnp.asarray(position, dtype)),
                             welford_update(state.grads, jnp.asarray(logdensity_grad, dtype)))

    return init, update


def diag_grad(*, drift_tolerance: float = 3.0, init_from_gradient: bool = True
              ) -> MetricAdapter:
    """The gradient-informed diagonal: ``M^{-1}_ii = sqrt(Var(x_i) / Var(g_i))``.

    It minimizes, among diagonal metrics, the sample Fisher divergence of the
    preconditioned target from a standard normal (Seyboldt, Carlson & Carpenter 2026,
    arXiv:2603.18845). Streaming Welford variances of the draws and of the gradients; a
    coordinate without two draws or with a zero variance gets the gradients' own scale
    ``1 / sqrt(mean g^2)`` (1 without a nonzero gradient), and the estimate is
    clipped to ``[1e-10, 1e10]`` and then, from ``n`` draws, shrunk as Stan shrinks its
    windowed variances: ``(n / (n + 5)) * estimate + 1e-3 * 5 / (n + 5)`` (Stan
    Reference Manual, "HMC algorithm parameters"). Without it, a chain that barely moved
    in some coordinates during an early window of an early-and-often schedule could get
    inverse masses of 1e-8 there and stay stuck (``hbm.models.epil``, seed 2: one
    chain at step size 1.6e-6 and tree depth 10 for all of sampling).

    Under :func:`overlapping` windows a scheduled switch is deferred (both estimators
    keep their draws) while the younger window's draws have not moved from the older
    ones: :func:`welford_drift` of the draws below ``drift_tolerance``. A stationary
    chain's window then grows, by the schedule's steps, to every draw since the chain
    settled, as Stan's long final window does, while a drifting chain still forgets its
    early draws after one short window. Over the 14 float32 posteriors of
    ``benchmarks/adaptation.py`` (6 seeds) the median ESS per 1000 gradients went from
    1.24x to 1.29x Stan's adaptation; on posteriordb's seeds, whose hierarchical scale
    ``tau`` an 80-draw window estimates poorly, from 1.44 to 2.55, with the worst seed
    from 0.08 to 1.44 (``benchmarks/README.md``). ``drift_tolerance=0`` never defers.
    """
    _check_drift_tolerance(drift_tolerance)
    init, update = _diag_grad_moments()

    def final(state: DiagGradState):
        return _diag_grad_estimate(state, shrink=True)

    def initial(position, logdensity_grad):
        if init_from_gradient:
            return initial_inverse_mass(position, logdensity_grad)
        return _ones_initial(position, logdensity_grad)

    def defer_switch(foreground: DiagGradState, background: DiagGradState):
        return welford_drift(foreground.draws, background.draws) < drift_tolerance

    return MetricAdapter(init, update, final, initial, "diag_grad",
                         defer_switch if drift_tolerance > 0 else None)


# ------------------------------------------------------------------ low rank plus diagonal


class LowRankState(NamedTuple):
    """Ring buffers of the last ``buffer_size`` draws and gradients, and the Welford
    states of every draw and gradient of the window, which the diagonal is estimated
    from; ``count``, the number of draws seen, is theirs (row ``count % buffer_size`` is
    written next)."""

    draws: jax.Array
    grads: jax.Array
    moments: DiagGradState

    @property
    def count(self) -> jax.Array:
        return self.moments.draws.count


def _spd_sqrt_and_inverse_sqrt(matrix, floor):
    values, vectors = jnp.linalg.eigh(matrix)
    # eigenvalues below the known lower bound are rounding error (large in float32)
    values = jnp.maximum(values, floor)
    root = jnp.sqrt(values)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


def fisher_optimal_covariance(draw_covariance, grad_covariance, floor=0.0):
    """The SPD matrix ``S`` solving ``S grad_covariance S = draw_covariance``: the
    geometric mean ``C_g^{-1/2} (C_g^{1/2} C_x C_g^{1/2})^{1/2} C_g^{-1/2}`` of ``C_x`` and
    ``C_g^{-1}``, the covariance whose Gaussian minimizes the sample Fisher divergence
    (Seyboldt, Carlson & Carpenter 2026).

    ``floor`` is a known lower bound of both covariances' eigenvalues (the regularization
    ``gamma`` of ``C + gamma I``): computed eigenvalues below it (``floor**2`` for the
    middle product) are rounding error and are raised to it.
    """
    dtype = jnp.result_type(draw_covariance)
    floor = jnp.maximum(jnp.asarray(floor, dtype), jnp.finfo(dtype).tiny)
    grad_sqrt, grad_inverse_sqrt = _spd_sqrt_and_inverse_sqrt(grad_covariance, floor)
    middle = grad_sqrt @ draw_covariance @ grad_sqrt
    middle_sqrt, _ = _spd_sqrt_and_inverse_sqrt(0.5 * (middle + middle.T), floor**2)
    result = grad_inverse_sqrt @ middle_sqrt @ grad_inverse_sqrt
    return 0.5 * (result + result.T)


def _mean_squared_z(n_old, mean_old, ss_old, n_new, mean_new, ss_new):
    """Mean over coordinates of the squared two-sample z-score of the means of an older
    and a newer group of draws, from their counts, means and sums of squared deviations
    (pooled variance; a coordinate that does not vary counts 0; ``inf`` without two
    draws in each group)."""
    variance = (ss_old + ss_new) / jnp.maximum(n_old + n_new - 2.0, 1.0)
    squared_error = variance * (1.0 / jnp.maximum(n_old, 1.0) + 1.0 / jnp.maximum(n_new, 1.0))
    moved = squared_error > 0
    z2 = jnp.where(moved, (mean_old - mean_new) ** 2 / jnp.where(moved, squared_error, 1.0),
                   0.0)
    return jnp.where((n_old >= 2) & (n_new >= 2), jnp.mean(z2), jnp.inf)


def welford_drift(foreground: WelfordState, recent: WelfordState) -> jax.Array:
    """How far a chain's ``recent`` draws have moved from the draws before them, from two
    Welford states of the chain: ``foreground`` has seen every draw ``recent`` has, and
    earlier ones. The mean over coordinates of ``z_i^2``, ``z_i`` the difference of the
    two groups' means of coordinate ``i`` over its standard error (pooled within-group
    variance; a coordinate that does not vary counts 0). About 1 for independent draws of
    a stationary chain (more with autocorrelation), large while the chain drifts towards
    the typical set; ``inf`` without two older draws and two recent ones. The older
    draws' moments are those of ``foreground`` less ``recent``'s (Chan, Golub &
    LeVeque's pairwise update of the variance, run backwards)."""
    dtype = foreground.mean.dtype
    n_all = foreground.count.astype(dtype)
    n_new = recent.count.astype(dtype)
    n_old = n_all - n_new
    mean_old = (n_all * foreground.mean - n_new * recent.mean) / jnp.maximum(n_old, 1.0)
    delta = mean_old - recent.mean
    # rounding can leave a tiny negative remainder where a coordinate barely varies
    ss_old = jnp.maximum(
        foreground.m2 - recent.m2 - delta**2 * n_old * n_new / jnp.maximum(n_all, 1.0), 0.0)
    return _mean_squared_z(n_old, mean_old, ss_old, n_new, recent.mean, recent.m2)


def lowrank(max_rank: int = 32, *, buffer_size: int = 128, eigenvalue_cutoff: float = 2.0,
            undersampled_cutoff: float = 100.0, regularization: float = 1e-3,
            min_draws: int = 10, drift_tolerance: float = 3.0,
            init_from_gradient: bool = True) -> MetricAdapter:
    """Low-rank plus diagonal inverse mass matrix from draws and gradients.

    Parameters
    ----------
    max_rank
        Largest number of low-rank directions; the static ``k`` of the result is
        ``min(max_rank, d)`` and the rank in use is chosen by the data: the eigenvalues
        outside ``[1/c, c]``. 32 leaves room for posteriors with many strongly correlated
        coefficients: posteriordb's diamonds (``d = 26``) uses up to 20 directions, and
        its ESS per 1000 gradients went from 66.8 with a cap of 10 to 72.2 (3 seeds,
        ``benchmarks/adaptation.py``); the velocity and kinetic energy cost ``O(d k)``.
    buffer_size
        Number of most recent draws and gradients kept (memory ``2 * buffer_size * d``).
    eigenvalue_cutoff
        ``c >= 1``: eigenvalues of the scaled covariance within ``[1/c, c]`` are set to 1,
        once the buffer holds more draws than there are dimensions.
    undersampled_cutoff
        The cutoff while the buffer holds at most ``d`` draws. The sample covariances are
        then singular: a direction the draws span and the gradients do not gets an
        eigenvalue of about ``sqrt(var / regularization)`` that is noise, not geometry
        (``radon_varying_intercept_slope``, ``d = 176``, 128 draws: 2.95 ESS per 1000
        gradients with ``c = 2`` throughout, 4.22 with this at 100; mean of 3 seeds,
        ``benchmarks/adaptation.py``). 100 is the default of ``nuts-rs``'s
        ``LowRankSettings`` (nutpie 0.16.8 itself passes 2, with ``gamma = 1e-5``, no cap
        on the rank and an update after every draw) and gave the best median over the
        benchmark's posteriors (10 and 30 were tried); it costs small, strongly correlated
        posteriors whose early windows hold fewer draws than dimensions (diamonds,
        ``d = 26``: 82 with 10, 53-59 with 100; 98-104 with 2 or 10 and an update after
        every draw, but then the hierarchical posteriors lose, up to 45% with 2 and up to
        21% with 10; ``benchmarks/README.md``).
    regularization
        ``gamma > 0`` added to both scaled covariances (``C + gamma I``); in the scaled
        space the scales are about 1. Directions without data get eigenvalue 1. It shrinks
        an eigenvalue ``lambda`` to about ``sqrt((lambda + gamma) / (1 / lambda + gamma))``.
    min_draws
        Draws the buffer needs before the low-rank part is used; with fewer, ``final`` is
        the gradient-informed diagonal alone (a covariance from a handful of early, far
        from typical draws can throw a chain far out).
    drift_tolerance
        Under :func:`overlapping` windows, a scheduled switch is deferred (both estimators
        keep their draws) while the younger window's draws have not moved from the older
        ones: :func:`welford_drift` below this, as in :func:`diag_grad`. A stationary
        chain's window then grows, by the schedule's steps, to every draw since it
        settled, while a drifting chain still forgets its first draws after one short
        window. The diagonal is estimated from the whole window and the low-rank part
        from the buffer's last draws. Deferring only while the younger window holds at
        most ``d`` draws, with the diagonal from the buffer alone (until December 2026),
        left chains stuck in the necks of centered funnels: the worst of 6 seeds of
        ``benchmarks/adaptation.py`` went from 0.064 to 0.62 ESS per 1000 gradients on
        penicillin, 0.10 to 1.06 on posteriordb's seeds and 0.36 to 14 on surgical, and
        the median over its 14 float32 posteriors from 1.94x to 1.98x Stan's adaptation
        (``benchmarks/README.md``). ``0`` never defers.
    init_from_gradient
        Start warmup from :func:`initial_inverse_mass` (else the identity).

    Returns
    -------
    MetricAdapter whose ``final`` returns a :class:`~hbm.samplers.metrics.LowRankInverseMass`
    with ``min(max_rank, d)`` columns (inactive ones have eigenvalue 1).
    """
    max_rank = _check_positive_int("max_rank", max_rank, 1)
    buffer_size = _check_positive_int("buffer_size", buffer_size, 3)
    min_draws = _check_positive_int("min_draws", min_draws, 3)
    for name, value in (("eigenvalue_cutoff", eigenvalue_cutoff),
                        ("undersampled_cutoff", undersampled_cutoff)):
        if not value >= 1.0:
            raise ConfigurationError(f"{name} must be >= 1, got {value}")
    if not regularization > 0.0:
        raise ConfigurationError(f"regularization must be positive, got {regularization}")
    _check_drift_tolerance(drift_tolerance)
    moments_init, moments_update = _diag_grad_moments()
    log_cutoff = math.log(eigenvalue_cutoff)
    log_undersampled_cutoff = math.log(undersampled_cutoff)

    def init(position) -> LowRankState:
        position = jnp.asarray(position)
        zeros = jnp.zeros((buffer_size, position.shape[0]), position.dtype)
        return LowRankState(zeros, zeros, moments_init(position))

    def update(state: LowRankState, position, logdensity_grad) -> LowRankState:
        row = state.count % buffer_size
        dtype = state.draws.dtype
        draws = state.draws.at[row].set(jnp.asarray(position, dtype))
        grads = state.grads.at[row].set(jnp.asarray(logdensity_grad, dtype))
        return LowRankState(draws, grads,
                            moments_update(state.moments, position, logdensity_grad))

    def final(state: LowRankState) -> LowRankInverseMass:
        dim = state.draws.shape[1]
        dtype = state.draws.dtype
        num = jnp.minimum(state.count, buffer_size)
        weight = (jnp.arange(buffer_size) < num).astype(dtype)[:, None]
        n = jnp.maximum(num, 1).astype(dtype)
        draw_centered = weight * (state.draws - jnp.sum(weight * state.draws, 0) / n)
        grad_centered = weight * (state.grads - jnp.sum(weight * state.grads, 0) / n)
        # the paper's scaling (not shrunk) from every draw of the window, not only the
        # buffer's: where the window has grown past the buffer it is the steadier estimate
        diagonal = _diag_grad_estimate(state.moments, shrink=False)
        scale = jnp.sqrt(diagonal)
        draw_scaled = draw_centered / scale  # (N, d)
        grad_scaled = grad_centered * scale

        if 2 * min(buffer_size, dim) >= dim:
            basis = jnp.eye(dim, dtype=dtype)  # the data may span everything
        else:
            draw_basis = jnp.linalg.svd(draw_scaled.T, full_matrices=False)[0]
            grad_basis = jnp.linalg.svd(grad_scaled.T, full_matrices=False)[0]
            basis = jnp.linalg.qr(jnp.concatenate([draw_basis, grad_basis], axis=1))[0]
        width = basis.shape[1]
        draw_projected = draw_scaled @ basis
        grad_projected = grad_scaled @ basis
        identity = jnp.eye(width, dtype=dtype)
        draw_cov = draw_projected.T @ draw_projected / n + regularization * identity
        grad_cov = grad_projected.T @ grad_projected / n + regularization * identity
        values, vectors = jnp.linalg.eigh(
            fisher_optimal_covariance(draw_cov, grad_cov, regularization))

        distance = jnp.abs(jnp.log(values))
        rank = min(max_rank, dim)  # no more columns than dimensions
        order = jnp.argsort(-distance)[: min(rank, width)]
        keep = distance[order] > jnp.where(num > dim, log_cutoff, log_undersampled_cutoff)
        chosen_values = jnp.where(keep, values[order], 1.0)
        # one representation of the metric: columns left at eigenvalue 1 (which do not
        # act) are zero, and each kept column's largest entry is positive (eigenvectors
        # have no sign, and LAPACK's choice can differ with the batch size)
        chosen_vectors = basis @ vectors[:, order]
        largest = jnp.take_along_axis(
            chosen_vectors, jnp.argmax(jnp.abs(chosen_vectors), axis=0)[None], axis=0)
        chosen_vectors = jnp.where(keep, chosen_vectors * jnp.where(largest < 0, -1.0, 1.0),
                                   0.0).astype(dtype)
        pad = rank - chosen_values.shape[0]
        if pad > 0:
            chosen_values = jnp.concatenate([chosen_values, jnp.ones((pad,), dtype)])
            chosen_vectors = jnp.concatenate(
                [chosen_vectors, jnp.zeros((dim, pad), dtype)], axis=1
            )
        usable = (num >= min_draws) & jnp.all(jnp.isfinite(chosen_values)) & jnp.all(
            jnp.isfinite(chosen_vectors)
        )
        chosen_values = jnp.where(usable, chosen_values, 1.0)
        chosen_vectors = jnp.where(usable, chosen_vectors, 0.0)
        return LowRankInverseMass(diagonal, chosen_vectors, chosen_values)

    def initial(position, logdensity_grad) -> LowRankInverseMass:
        position = jnp.asarray(position)
        diagonal = (initial_inverse_mass(position, logdensity_grad) if init_from_gradient
                    else _ones_initial(position, logdensity_grad))
        dim = position.shape[0]
        rank = min(max_rank, dim)
        return LowRankInverseMass(
            diagonal, jnp.zeros((dim, rank), position.dtype),
            jnp.ones((rank,), position.dtype),
        )

    def defer_switch(foreground: LowRankState, background: LowRankState):
        return welford_drift(foreground.moments.draws,
                             background.moments.draws) < drift_tolerance

    return MetricAdapter(init, update, final, initial, "lowrank",
                         defer_switch if drift_tolerance > 0 else None)


# ------------------------------------------------------------------ two overlapping windows


class OverlappingState(NamedTuple):
    """The estimator in use (``foreground``) and the younger one (``background``)."""

    foreground: object
    background: object


class OverlappingAdapter(NamedTuple):
    """:class:`MetricAdapter` over an :class:`OverlappingState`, plus ``switch(state)``
    (the background replaces the foreground, a fresh background starts) and
    ``restart(state)`` (both fresh)."""

    init: Callable
    update: Callable
    final: Callable
    initial: Callable
    switch: Callable
    restart: Callable
    name: str


def overlapping(adapter: MetricAdapter) -> OverlappingAdapter:
    """Run two copies of ``adapter`` a window apart (nutpie's foreground and background
    estimators): both see every draw, ``final`` reads the foreground, and ``switch``
    forgets the draws older than the background's window (unless the adapter's
    ``defer_switch`` says to keep them for now, as :func:`diag_grad` and :func:`lowrank`
    do while the chain is stationary). With only ``restart`` (never ``switch``) it is Stan's
    single estimator restarted after each window."""

    def init(position) -> OverlappingState:
        state = adapter.init(position)
        return OverlappingState(state, state)

    def update(state: OverlappingState, position, logdensity_grad) -> OverlappingState:
        return OverlappingState(
            adapter.update(state.foreground, position, logdensity_grad),
            adapter.update(state.background, position, logdensity_grad),
        )

    def final(state: OverlappingState):
        return adapter.final(state.foreground)

    def switch(state: OverlappingState) -> OverlappingState:
        fresh = jax.tree.map(jnp.zeros_like, state.background)
        switched = OverlappingState(state.background, fresh)
        if adapter.defer_switch is None:
            return switched
        defer = adapter.defer_switch(state.foreground, state.background)
        return jax.tree.map(lambda kept, new: jnp.where(defer, kept, new), state, switched)

    def restart(state: OverlappingState) -> OverlappingState:
        fresh = jax.tree.map(jnp.zeros_like, state.background)
        return OverlappingState(fresh, fresh)

    return OverlappingAdapter(init, update, final, adapter.initial, switch, restart,
                              adapter.name)


# ------------------------------------------------------------------ by name


def build_metric_adapter(metric: str, **options) -> MetricAdapter:
    """The estimator called ``metric``: ``"diag"`` (:func:`diag_welford`), ``"diag_grad"``
    (:func:`diag_grad`), ``"lowrank"`` (:func:`lowrank`) or ``"dense"`` (:func:`dense`),
    with its keyword ``options``.

    Raises
    ------
    ConfigurationError
        Unknown ``metric`` or option, or an invalid option value.
    """
    builders = {"diag": diag_welford, "diag_grad": diag_grad, "lowrank": lowrank,
                "dense": dense}
    if not isinstance(metric, str) or metric not in builders:
        raise ConfigurationError(
            f"metric must be one of {', '.join(repr(n) for n in METRIC_NAMES)}, got {metric!r}"
        )
    builder = builders[metric]
    allowed = set(inspect.signature(builder).parameters)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(
            f"metric {metric!r} takes the options {sorted(allowed)}, got unknown {unknown}"
        )
    return builder(**options)
