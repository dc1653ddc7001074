"""Automatic differentiation variational inference (ADVI) on a flat log density.

The posterior over the unconstrained vector ``x`` (length ``d``) is approximated by a
Gaussian ``q(x) = N(mean, L L^T)``: mean-field (``L`` diagonal, parameterized by
``log_sd``) or full-rank (``L`` lower triangular with a positive diagonal stored on the
log scale). The evidence lower bound

    ELBO(q) = E_q[log p(x)] + H[q]

is maximized with a stochastic optimizer (optax) on reparameterization gradients,
``x = mean + L eps`` with ``eps ~ N(0, I)`` (Kucukelbir et al. 2017). By default the
gradient is the "sticking the landing" path-derivative estimator (Roeder, Wu & Duvenaud
2017): the score term of ``log q`` is dropped, so the gradient variance vanishes when
``q`` equals the posterior. The step size is chosen by a short search over candidate
learning rates, in the spirit of Stan's ``eta`` adaptation, and convergence is detected
Stan-style from the relative change of the ELBO, averaged over windows of ``eval_elbo``
steps, kept in a circular buffer. The returned mean and scale are Polyak-Ruppert tail
averages of the iterates over the last chunk of steps.

The quality of the fitted approximation can be checked with Pareto-smoothed importance
sampling (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR 25(72);
Yao et al. 2018, "Yes, but did it work?: Evaluating variational inference"):
``hbm.diagnostics.pareto_khat(log p - log q)`` above 0.7 means the approximation is
unreliable.

References
----------
Kucukelbir, Tran, Ranganath, Gelman & Blei (2017). Automatic differentiation variational
inference. JMLR 18(14).
Roeder, Wu & Duvenaud (2017). Sticking the landing: simple, lower-variance gradient
estimators for variational inference. NeurIPS.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hbm.errors import ConfigurationError, SamplingError
from hbm.samplers.closures import as_pytree_function

__all__ = [
    "METHODS",
    "VariationalParams",
    "ADVIState",
    "ADVIResult",
    "default_optimizer",
    "advi_init",
    "advi_step",
    "elbo_estimate",
    "scale_tril",
    "run_advi",
    "advi_draws",
]

METHODS = ("meanfield", "fullrank")

#: Learning rates (eta) tried by the step-size search, largest first, as in Stan.
LEARNING_RATE_CANDIDATES = (100.0, 10.0, 1.0, 0.1, 0.01)

#: Draws of the ELBO estimate that compares the learning-rate candidates.
SEARCH_ELBO_SAMPLES = 500

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class VariationalParams(NamedTuple):
    """Parameters of the Gaussian approximation.

    Attributes
    ----------
    mean : (d,) array
    scale : (d,) array of log standard deviations (meanfield), or a (d, d) array ``R``
        (fullrank) giving the Cholesky factor ``L = diag(exp(diag(R))) (I + tril(R, -1))``:
        the diagonal holds the log of ``L``'s diagonal and the strictly lower triangle
        the dimensionless off-diagonal of its unit lower-triangular part (row ``i`` of
        ``L`` is row ``i`` of ``I + tril(R, -1)`` times ``exp(R_ii)``).
    """

    mean: jax.Array
    scale: jax.Array


class ADVIState(NamedTuple):
    """State of the ADVI optimization: variational parameters, optimizer state, step."""

    params: VariationalParams
    opt_state: optax.OptState
    step: jax.Array


class ADVIResult(NamedTuple):
    """Outcome of :func:`run_advi`.

    Attributes
    ----------
    method : "meanfield" or "fullrank".
    mean : (d,) mean of the approximation (tail-averaged iterate).
    sd : (d,) marginal standard deviations.
    scale_tril : (d, d) lower-triangular factor ``L`` of the covariance ``L L^T`` for
        fullrank; ``None`` for meanfield (its factor is ``diag(sd)``).
    params : the tail-averaged :class:`VariationalParams` the above are computed from.
    elbo_history : (num_steps,) per-step ELBO estimates.
    elbo_evaluations : ((step, windowed ELBO), ...) at every ``eval_elbo`` steps.
    num_steps : number of optimization steps taken (after the learning-rate search).
    converged : whether the relative-ELBO-change criterion was met before ``max_steps``.
    learning_rate : the learning rate used (by the full-rank stage for fullrank), or
        ``None`` for a user-supplied optimizer.
    meanfield_steps : steps of the mean-field stage (all of them for meanfield; the
        warm start, included in ``num_steps``, for fullrank).
    """

    method: str
    mean: jax.Array
    sd: jax.Array
    scale_tril: jax.Array | None
    params: VariationalParams
    elbo_history: np.ndarray
    elbo_evaluations: tuple
    num_steps: int
    converged: bool
    learning_rate: float | None
    meanfield_steps: int = 0


# ----------------------------------------------------------------------------------------
# The Gaussian family


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigurationError(f"ADVI method must be one of {METHODS}, got {method!r}")


def scale_tril(params: VariationalParams, method: str) -> jax.Array:
    """The lower-triangular factor ``L`` (covariance ``L L^T``) of the approximation."""
    _check_method(method)
    if method == "meanfield":
        return jnp.diag(jnp.exp(params.scale))
    return _fullrank_factor(params.scale)


def _fullrank_factor(raw: jax.Array) -> jax.Array:
    """``L = diag(exp(diag(raw))) (I + tril(raw, -1))``: rows scaled by positive sds.

    The strictly lower triangle is dimensionless (unit lower-triangular factor), so the
    same step size suits every entry whatever the scales of the coordinates.
    """
    unit = jnp.tril(raw, -1) + jnp.eye(raw.shape[-1], dtype=raw.dtype)
    return jnp.exp(jnp.diag(raw))[:, None] * unit


def _log_diag(params: VariationalParams, method: str) -> jax.Array:
    return params.scale if method == "meanfield" else jnp.diag(params.scale)


def _marginal_sd(params: VariationalParams, method: str) -> jax.Array:
    if method == "meanfield":
        return jnp.exp(params.scale)
    factor = _fullrank_factor(params.scale)
    return jnp.sqrt(jnp.sum(factor**2, axis=1))


def _transform(params: VariationalParams, eps: jax.Array, method: str) -> jax.Array:
    """Map standard normal draws ``eps`` (n, d) to draws of q."""
    if method == "meanfield":
        return params.mean + eps * jnp.exp(params.scale)
    return params.mean + eps @ _fullrank_factor(params.scale).T


def _log_q(params: VariationalParams, z: jax.Array, method: str) -> jax.Array:
    """Log density of q at draws ``z`` (n, d)."""
    d = params.mean.shape[-1]
    centred = z - params.mean
    if method == "meanfield":
        white = centred * jnp.exp(-params.scale)
    else:
        factor = _fullrank_factor(params.scale)
        white = jax.scipy.linalg.solve_triangular(factor, centred.T, lower=True).T
    return (
        -0.5 * jnp.sum(white**2, axis=-1)
        - jnp.sum(_log_diag(params, method))
        - d * _HALF_LOG_2PI
    )


def _entropy(params: VariationalParams, method: str) -> jax.Array:
    d = params.mean.shape[-1]
    return jnp.sum(_log_diag(params, method)) + d * (0.5 + _HALF_LOG_2PI)


# ----------------------------------------------------------------------------------------
# Optimizer, init, one step


def _row_step_scale(leaf: jax.Array) -> jax.Array | float:
    """Step multiplier: ``1 / sqrt(d)`` off the diagonal of a (d, d) leaf, else 1.

    Per-coordinate normalized steps move each of the up to ``d - 1`` off-diagonal
    entries of a row of the full-rank factor by about the same amount; with their
    independent signs the row moves by ``sqrt(d)`` times a diagonal step, which makes
    a learning rate that suits the mean and the log-sds far too large for the factor.
    Dividing the off-diagonal steps by ``sqrt(d)`` balances the two.
    """
    if leaf.ndim != 2:
        return 1.0
    d = leaf.shape[-1]
    off = jnp.tril(jnp.ones(leaf.shape, dtype=bool), -1)
    return jnp.where(off, 1.0 / math.sqrt(d), 1.0).astype(leaf.dtype)


class _StepSizeSequenceState(NamedTuple):
    count: jax.Array
    mean_square: optax.Params


def adaptive_step_size_sequence(
    learning_rate: float, tau: float = 1.0, alpha: float = 0.1, outlier: float = 0.01
) -> optax.GradientTransformation:
    """The step-size sequence of Kucukelbir et al. (2017), section 3.3, as optax.

    Per coordinate, ``rho_k = eta * k^(-1/2 + 1e-16) / (tau + sqrt(max(s_(k-1),
    outlier * g_k^2)))`` with ``s_k = alpha * g_k^2 + (1 - alpha) * s_(k-1)`` and
    ``s_0 = g_1^2``: adaptive to the
    gradient scale like RMSprop, but decaying (Robbins-Monro) and damped by ``tau`` when
    gradients vanish, so it stays stable near an exact optimum (where Adam's normalized
    steps would keep jumping). The updates descend, i.e. they are ``-rho_k * g_k``.
    On a (d, d) leaf (the full-rank factor) the off-diagonal steps are further divided
    by ``sqrt(d)`` (see :func:`_row_step_scale`).
    Unlike Stan (which scales step ``k`` by ``s_k``), the current gradient enters the
    scale only when it is an outlier, so that the step size hardly correlates with the
    gradient and the noisy iteration is not biased by it.
    """

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return _StepSizeSequenceState(jnp.zeros((), dtype=jnp.int32), zeros)

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        first = count == 1
        # Step k is scaled by s_(k-1), not s_k: a step size that depends on the
        # current gradient biases the fixed point of the noisy iteration (large
        # gradients are damped more than small ones). Only outliers, with
        # outlier * g_k^2 > s_(k-1), are damped, which bounds every step by
        # eta * k^(-1/2) / sqrt(outlier) (Stan: eta * k^(-1/2) / sqrt(alpha)).
        previous = jax.tree_util.tree_map(
            lambda g, s: jnp.where(first, g**2, s), updates, state.mean_square
        )
        mean_square = jax.tree_util.tree_map(
            lambda g, s: alpha * g**2 + (1.0 - alpha) * s, updates, previous
        )
        scale = jax.tree_util.tree_map(
            lambda g, s: jnp.maximum(s, outlier * g**2), updates, previous
        )
        decay = count.astype(jnp.result_type(float)) ** (-0.5 + 1e-16)
        new_updates = jax.tree_util.tree_map(
            lambda g, s: -learning_rate * decay * _row_step_scale(g) * g / (tau + jnp.sqrt(s)),
            updates,
            scale,
        )
        return new_updates, _StepSizeSequenceState(count, mean_square)

    return optax.GradientTransformation(init, update)


#: The default optimizer: the step-size sequence of Kucukelbir et al. (2017) with the
#: learning rate (eta) a hyperparameter stored in the optimizer state, so one compiled
#: chunk serves every learning rate.
_DEFAULT_OPTIMIZER = optax.inject_hyperparams(adaptive_step_size_sequence)(
    learning_rate=1.0
)


def default_optimizer() -> optax.GradientTransformation:
    """The default ADVI optimizer, :func:`adaptive_step_size_sequence` (Stan's).

    Its learning rate lives in the optimizer state (set by :func:`run_advi`); the same
    object is returned every time so that compiled chunks are reused.
    """
    return _DEFAULT_OPTIMIZER


def _with_learning_rate(state: ADVIState, learning_rate: float) -> ADVIState:
    opt_state = state.opt_state
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, dtype=hyper["learning_rate"].dtype)
    return state._replace(opt_state=opt_state._replace(hyperparams=hyper))


def advi_init(
    position: jax.Array,
    method: str = "meanfield",
    optimizer: optax.GradientTransformation | None = None,
    *,
    init_log_sd: float | jax.Array = 0.0,
) -> ADVIState:
    """Start ADVI at ``mean = position`` with standard deviations ``exp(init_log_sd)``.

    Parameters
    ----------
    position : (d,) array, the initial mean (unconstrained).
    method : "meanfield" or "fullrank".
    optimizer : optax transformation; ``None`` uses :func:`default_optimizer`.
    init_log_sd : log of the initial standard deviations, a scalar (Stan uses 0) or a
        (d,) array (e.g. a mean-field fit's, to start full-rank from it with no
        correlations).
    """
    _check_method(method)
    position = jnp.asarray(position)
    if position.ndim != 1:
        raise ConfigurationError(
            f"ADVI needs a flat 1-D position, got shape {position.shape}"
        )
    if not jnp.issubdtype(position.dtype, jnp.floating):
        position = position.astype(jnp.result_type(float))
    d = position.shape[0]
    log_sd = jnp.asarray(init_log_sd, dtype=position.dtype)
    if log_sd.ndim > 1 or log_sd.size not in (1, d):
        raise ConfigurationError(
            f"init_log_sd must be a scalar or have shape ({d},), got {log_sd.shape}"
        )
    log_sd = jnp.broadcast_to(log_sd.reshape(-1) if log_sd.ndim else log_sd, (d,))
    if method == "meanfield":
        scale = log_sd
    else:
        scale = jnp.diag(log_sd)
    params = VariationalParams(position, scale)
    optimizer = default_optimizer() if optimizer is None else optimizer
    return ADVIState(params, optimizer.init(params), jnp.zeros((), dtype=jnp.int32))


def _negative_elbo_surrogate(
    params: VariationalParams,
    key: jax.Array,
    logdensity_fn: Callable,
    method: str,
    mc_samples: int,
    stick_the_landing: bool,
) -> jax.Array:
    """Minus an unbiased ELBO estimate whose gradient is the chosen estimator."""
    d = params.mean.shape[-1]
    eps = jax.random.normal(key, (mc_samples, d), dtype=params.mean.dtype)
    z = _transform(params, eps, method)
    log_p = jax.vmap(logdensity_fn)(z)
    if stick_the_landing:
        # Path derivative: q's parameters are frozen in log q, only z carries gradient.
        log_q = _log_q(jax.lax.stop_gradient(params), z, method)
        elbo = jnp.mean(log_p - log_q)
    else:
        elbo = jnp.mean(log_p) + _entropy(params, method)
    return -elbo


def advi_step(
    key: jax.Array,
    state: ADVIState,
    logdensity_fn: Callable,
    *,
    method: str,
    optimizer: optax.GradientTransformation,
    mc_samples: int = 1,
    stick_the_landing: bool = True,
) -> tuple[ADVIState, jax.Array]:
    """One stochastic-gradient step on the ELBO.

    A step whose ELBO estimate or gradient is not finite (a draw outside the support,
    overflow) is skipped: parameters and optimizer state are left unchanged.

    Returns
    -------
    (new_state, elbo_estimate) ; the estimate is at the parameters before the step.
    """
    loss, grads = jax.value_and_grad(_negative_elbo_surrogate)(
        state.params, key, logdensity_fn, method, mc_samples, stick_the_landing
    )
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
    )
    grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    params = jax.tree_util.tree_map(keep, new_params, state.params)
    opt_state = jax.tree_util.tree_map(keep, new_opt_state, state.opt_state)
    return ADVIState(params, opt_state, state.step + 1), -loss


def elbo_estimate(
    key: jax.Array,
    params: VariationalParams,
    logdensity_fn: Callable,
    *,
    method: str,
    num_samples: int = 100,
) -> jax.Array:
    """Monte Carlo estimate of the ELBO, ``mean(log p(z)) + H[q]`` with ``z ~ q``."""
    return _elbo_estimate_jit(key, params, as_pytree_function(logdensity_fn), method,
                              num_samples)


@partial(jax.jit, static_argnames=("method", "num_samples"))
def _elbo_estimate_jit(key, params, logdensity_fn, method, num_samples):
    d = params.mean.shape[-1]
    eps = jax.random.normal(key, (num_samples, d), dtype=params.mean.dtype)
    log_p = jax.vmap(logdensity_fn)(_transform(params, eps, method))
    return jnp.mean(log_p) + _entropy(params, method)


# ----------------------------------------------------------------------------------------
# The driver loop: compiled chunks, convergence checks in Python


@partial(
    jax.jit,
    static_argnames=(
        "method",
        "optimizer",
        "mc_samples",
        "stick_the_landing",
        "num_steps",
    )
)
def _run_chunk(
    key, state, logdensity_fn, method, optimizer, mc_samples, stick_the_landing, num_steps
):
    """``num_steps`` ADVI steps in one ``lax.scan``; also the mean of the iterates."""

    def body(carry, step_key):
        st, total = carry
        st, elbo = advi_step(
            step_key,
            st,
            logdensity_fn,
            method=method,
            optimizer=optimizer,
            mc_samples=mc_samples,
            stick_the_landing=stick_the_landing,
        )
        total = jax.tree_util.tree_map(jnp.add, total, st.params)
        return (st, total), elbo

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    keys = jax.random.split(key, num_steps)
    (state, total), elbos = jax.lax.scan(body, (state, zeros), keys)
    averaged = jax.tree_util.tree_map(lambda t: t / num_steps, total)
    return state, elbos, averaged


def _usable(params: VariationalParams, method: str) -> bool:
    """Finite parameters with finite, positive standard deviations."""
    finite = all(np.all(np.isfinite(np.asarray(p))) for p in params)
    sd = np.asarray(_marginal_sd(params, method))
    return bool(finite and np.all(np.isfinite(sd)) and np.all(sd > 0))


def _search_learning_rate(
    key, start, logdensity_fn, method, mc_samples, stick_the_landing, num_steps,
    common_random_numbers=False,
) -> float:
    """Pick the candidate learning rate whose short run from ``start`` (an
    :class:`ADVIState` of the default optimizer) reaches the highest ELBO.

    With ``common_random_numbers`` every candidate sees the same draws and the ELBOs
    are estimated from ``SEARCH_ELBO_SAMPLES`` draws, so that small differences (the
    full-rank stage starts near its optimum) are not swamped by Monte Carlo noise;
    otherwise each candidate has its own draws and 100 (Stan's search).
    """
    optimizer = default_optimizer()
    best_rate, best_elbo = None, -np.inf
    num_samples = SEARCH_ELBO_SAMPLES if common_random_numbers else 100
    for rate in LEARNING_RATE_CANDIDATES:
        if common_random_numbers:
            run_key, eval_key = jax.random.split(key)
        else:
            key, run_key, eval_key = jax.random.split(key, 3)
        state = _with_learning_rate(start, rate)
        state, _, _ = _run_chunk(
            run_key, state, logdensity_fn, method, optimizer, mc_samples,
            stick_the_landing, num_steps,
        )
        if not _usable(state.params, method):
            continue
        elbo = float(
            elbo_estimate(
                eval_key, state.params, logdensity_fn, method=method,
                num_samples=num_samples,
            )
        )
        if np.isfinite(elbo) and elbo > best_elbo:
            best_rate, best_elbo = rate, elbo
    if best_rate is None:
        raise SamplingError(
            "ADVI learning-rate search failed: every candidate learning rate "
            f"{LEARNING_RATE_CANDIDATES} gave a non-finite ELBO"
        )
    return best_rate


def _relative_change(current: float, previous: float) -> float:
    if current == previous:
        return 0.0
    return abs((current - previous) / current) if current != 0 else math.inf


#: Windows over which the full-rank refinement must have stopped improving (see
#: :func:`run_advi`).
STALL_WINDOWS = 5


class _Trace(NamedTuple):
    """ELBO bookkeeping shared by the stages of one run (mutable lists)."""

    history: list  # per-chunk arrays of per-step ELBO estimates
    evaluations: list  # (step, windowed ELBO)
    window_variances: list  # squared standard error of each windowed ELBO


def _stalled(trace: _Trace, first: int, windows: int) -> bool:
    """Whether the windowed ELBO gained no more than two standard errors over the last
    ``windows`` evaluations, counting only evaluations from index ``first`` on."""
    if len(trace.evaluations) - first < windows + 1:
        return False
    current, previous = trace.evaluations[-1][1], trace.evaluations[-1 - windows][1]
    se = math.sqrt(trace.window_variances[-1] + trace.window_variances[-1 - windows])
    # Allowance for rounding: with an exact fit every estimate is the same number.
    rounding = 16 * np.finfo(np.float64).eps * abs(current)
    return current - previous <= 2.0 * se + rounding


def _optimize(
    key, state, logdensity_fn, trace: _Trace, *, method, optimizer, mc_samples,
    stick_the_landing, max_steps, chunk_size, tol_rel_obj, eval_elbo, buffer_size,
    stall_windows, callback,
):
    """Run compiled chunks from ``state`` until convergence or ``max_steps`` more steps.

    Appends to ``trace`` (whose step count is continued) and returns
    ``(state, averaged_params, steps_taken, converged)``.
    """
    start = sum(len(h) for h in trace.history)
    first_evaluation = len(trace.evaluations)
    next_eval = (start // eval_elbo + 1) * eval_elbo
    relative_changes: deque[float] = deque(maxlen=buffer_size)
    done, converged, averaged = 0, False, state.params
    while done < max_steps and not converged:
        steps = min(chunk_size, max_steps - done)
        key, chunk_key = jax.random.split(key)
        state, elbos, averaged = _run_chunk(
            chunk_key, state, logdensity_fn, method, optimizer, mc_samples,
            stick_the_landing, steps,
        )
        trace.history.append(np.asarray(elbos))
        done += steps
        if not (_usable(state.params, method) and _usable(averaged, method)):
            raise SamplingError(
                f"ADVI diverged: the variational parameters became non-finite by step "
                f"{start + done}; try a smaller learning_rate or a better initial position"
            )
        elbo_trace = np.concatenate(trace.history)
        while next_eval <= start + done:
            window = elbo_trace[next_eval - eval_elbo : next_eval]
            window = window[np.isfinite(window)]
            current = float(np.mean(window)) if window.size else -math.inf
            variance = float(np.var(window) / window.size) if window.size else math.inf
            if trace.evaluations and np.isfinite(current):
                relative_changes.append(_relative_change(current, trace.evaluations[-1][1]))
            trace.evaluations.append((next_eval, current))
            trace.window_variances.append(variance)
            if relative_changes and (
                np.mean(relative_changes) < tol_rel_obj
                or np.median(relative_changes) < tol_rel_obj
            ):
                converged = stall_windows is None or _stalled(
                    trace, first_evaluation, stall_windows
                )
            if callback is not None:
                callback(next_eval, current)
            next_eval += eval_elbo
    return state, averaged, done, converged


def run_advi(
    key: jax.Array,
    logdensity_fn: Callable,
    position: jax.Array,
    *,
    method: str = "meanfield",
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    max_steps: int = 10000,
    mc_samples: int = 1,
    stick_the_landing: bool = True,
    chunk_size: int = 100,
    tol_rel_obj: float = 0.01,
    eval_elbo: int = 100,
    callback: Callable[[int, float], None] | None = None,
) -> ADVIResult:
    """Fit a Gaussian approximation to ``exp(logdensity_fn)`` by ADVI.

    Full-rank ADVI runs in two stages: a mean-field fit (at most half of ``max_steps``)
    whose mean and standard deviations start the full-rank fit with no correlations, so
    that full-rank starts at the mean-field ELBO and only has to learn the correlations
    (and adjust the rest), which a cold start from a unit covariance does poorly.

    Parameters
    ----------
    key : JAX random key.
    logdensity_fn : pure function ``(d,) -> scalar``, the unconstrained log density
        (Jacobians included). It is a static argument of the compiled chunk, so pass the
        same object on repeated calls to reuse the compilation.
    position : (d,) initial mean.
    method : "meanfield" (diagonal covariance) or "fullrank".
    optimizer : optax transformation (used by both full-rank stages). ``None`` uses
        :func:`default_optimizer` (the step-size sequence of Kucukelbir et al. 2017)
        with ``learning_rate``; if that is also ``None``, it is chosen (per stage) among
        ``LEARNING_RATE_CANDIDATES`` by the highest ELBO after ``chunk_size`` steps from
        the stage's starting point (Stan's eta search).
    max_steps : maximum number of optimization steps (after the searches), both stages
        together.
    mc_samples : Monte Carlo draws per gradient estimate.
    stick_the_landing : use the path-derivative gradient (Roeder et al. 2017).
    chunk_size : steps per compiled ``lax.scan`` chunk; also the length of the
        tail over which the returned parameters are averaged.
    tol_rel_obj : convergence threshold on the relative ELBO change (Stan's default).
    eval_elbo : every this many steps, the mean of the per-step ELBO estimates over the
        last ``eval_elbo`` steps is compared with the previous one; the relative changes
        go into a circular buffer of ``max(int(0.1 * max_steps / eval_elbo), 2)``
        entries, and a stage has converged when their mean or median is below
        ``tol_rel_obj`` (Stan's rule) and, in addition, the windowed ELBO has stalled:
        it gained at most two standard errors over the last ``STALL_WINDOWS``
        evaluations of the stage. Stan's rule alone stops early when the ELBO is large
        in magnitude (1% of -1000 is 10 nats) and never fires in the full-rank stage,
        which starts near its optimum. Convergence is acted upon at the end of the
        running chunk; ``tol_rel_obj=0`` runs to ``max_steps``.
    callback : called as ``callback(num_steps_done, windowed_elbo)`` at every
        evaluation (e.g. to drive a progress bar), over both stages.

    Returns
    -------
    ADVIResult
    """
    _check_method(method)
    for name, value in (
        ("max_steps", max_steps),
        ("mc_samples", mc_samples),
        ("chunk_size", chunk_size),
        ("eval_elbo", eval_elbo),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    if not tol_rel_obj >= 0:
        raise ConfigurationError(f"tol_rel_obj must be >= 0, got {tol_rel_obj!r}")
    if learning_rate is not None and not learning_rate > 0:
        raise ConfigurationError(f"learning_rate must be > 0, got {learning_rate!r}")
    if optimizer is not None and learning_rate is not None:
        raise ConfigurationError("pass either an optimizer or a learning_rate, not both")

    logdensity_fn = as_pytree_function(logdensity_fn)  # an argument of the compiled chunks
    search = optimizer is None and learning_rate is None
    user_rate = None if learning_rate is None else float(learning_rate)
    optimizer = default_optimizer() if optimizer is None else optimizer
    uses_rate = optimizer is default_optimizer()

    def start_state(stage_key, stage_method, mean, log_sd):
        state = advi_init(mean, stage_method, optimizer, init_log_sd=log_sd)
        if not uses_rate:
            return state, None
        rate = user_rate
        if search:
            rate = _search_learning_rate(
                stage_key, state, logdensity_fn, stage_method, mc_samples,
                stick_the_landing, chunk_size,
                common_random_numbers=stage_method == "fullrank",
            )
        return _with_learning_rate(state, rate), float(rate)

    buffer_size = max(int(0.1 * max_steps / eval_elbo), 2)
    trace = _Trace([], [], [])
    common = dict(
        optimizer=optimizer, mc_samples=mc_samples, stick_the_landing=stick_the_landing,
        chunk_size=chunk_size, tol_rel_obj=tol_rel_obj, eval_elbo=eval_elbo,
        buffer_size=buffer_size, callback=callback,
    )
    key, search_key, run_key = jax.random.split(key, 3)
    state, rate = start_state(search_key, "meanfield", position, 0.0)
    stage_steps = max_steps if method == "meanfield" else max(max_steps // 2, 1)
    state, averaged, done, converged = _optimize(
        run_key, state, logdensity_fn, trace, method="meanfield", max_steps=stage_steps,
        stall_windows=STALL_WINDOWS, **common,
    )
    meanfield_steps = done
    if method == "fullrank":
        # Warm start: the mean-field fit with no correlations has the same ELBO.
        key, search_key, run_key = jax.random.split(key, 3)
        state, rate = start_state(search_key, "fullrank", averaged.mean, averaged.scale)
        averaged, converged = state.params, False
        if done < max_steps:
            state, averaged, steps, converged = _optimize(
                run_key, state, logdensity_fn, trace, method="fullrank",
                max_steps=max_steps - done, stall_windows=STALL_WINDOWS, **common,
            )
            done += steps

    return ADVIResult(
        method=method,
        mean=averaged.mean,
        sd=_marginal_sd(averaged, method),
        scale_tril=None if method == "meanfield" else _fullrank_factor(averaged.scale),
        params=averaged,
        elbo_history=np.concatenate(trace.history),
        elbo_evaluations=tuple(trace.evaluations),
        num_steps=done,
        converged=converged,
        learning_rate=rate,
        meanfield_steps=meanfield_steps,
    )


# ----------------------------------------------------------------------------------------
# Using the approximation


def advi_draws(
    key: jax.Array, result: ADVIResult, num_draws: int
) -> tuple[jax.Array, jax.Array]:
    """Draws from the fitted approximation and their log density under it.

    Returns
    -------
    draws : (num_draws, d) unconstrained draws.
    log_q : (num_draws,) ``log q(draw)``.
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ConfigurationError(f"num_draws must be a positive integer, got {num_draws!r}")
    params, method = result.params, result.method
    eps = jax.random.normal(key, (num_draws, params.mean.shape[-1]), dtype=params.mean.dtype)
    draws = _transform(params, eps, method)
    return draws, _log_q(params, draws, method)
