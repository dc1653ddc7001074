"""Whole inference runs vectorized over many data sets: MAP and NUTS for simulation studies.

A simulation study fits the same model to hundreds of simulated data sets of the same
shapes. Here the data set is an *argument* of one compiled program, mapped with
``jax.vmap`` (data sets, then chains), so a study over a grid of true values compiles once
per shape and streams batches of data sets through it:

* :func:`build_batched_map`: L-BFGS (the pure loop of :mod:`hbm.samplers.optimize`) from
  several restarts per data set, the best finite restart kept, all on the device.
* :func:`build_batched_nuts`: per chain, the engine's warmup + sampling program
  (:func:`hbm.inference.engine.build_chain_program`, the one :func:`hbm.sample` runs,
  with its default warmup, and multinomial NUTS), vmapped over data sets and chains or,
  with ``lockstep_free=True``, as one lockstep-free loop
  (:func:`hbm.samplers.lockstep_free.run_lockstep_free_chains`); then the draws are
  reduced on the device
  to per-data-set summaries (:func:`summarize_draws`), so only
  ``O(data sets x parameters)`` numbers leave it, never the draws. Chains start from
  Stan's random initial points, moved in first where float32 cannot resolve their energy
  (:func:`hbm.samplers.far_tail.move_in`), as in :func:`hbm.sample`.

R-hat here is the classic split R-hat (Gelman et al. 2013, "Bayesian Data Analysis", 3rd
ed., section 11.4), cheap enough to compute inside the program; :mod:`hbm.diagnostics`
has the rank-normalized version (Vehtari et al. 2021) for single fits.

Random keys: data set ``s`` (global index) and chain ``c`` use
``fold_in(fold_in(key, s), c)``, so results do not depend on the batch size.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbm.errors import ConfigurationError
from hbm.samplers import far_tail

__all__ = [
    "ConstrainedLayout",
    "constrained_layout",
    "split_rhat",
    "summarize_draws",
    "DrawSummary",
    "BatchMAP",
    "build_batched_map",
    "build_batched_nuts",
    "build_chain_draws",
    "stack_datasets",
    "dataset_keys",
    "BatchNUTS",
    "REFILL",
]

#: Lockstep-free studies run an eighth of a batch's chains at once and refill the lanes:
#: every chain at once, the loop waits for the slowest chain (whose warmup can take twice
#: the median's gradients). On radon-sized data sets (``benchmarks/study.py``, 150 + 100
#: iterations, 1024 chains) the useful-leapfrog fraction is 0.61 with a quarter of the
#: chains at once, 0.80 with an eighth (3.2 data sets/s, the most) and 0.89 with a
#: sixteenth (2.7 data sets/s: fewer lanes, the same fixed cost per iteration).
REFILL = 8
#: ... but never fewer lanes than this (or all chains, if fewer): a loop iteration costs
#: about the same for a few lanes as for one, so a small batch gains nothing from refilling.
MIN_LANES = 64


class ConstrainedLayout(NamedTuple):
    """Where each parameter sits in the flat vector of constrained values."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    def slice(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + int(np.prod(self.shapes[i])))


def constrained_layout(bound) -> ConstrainedLayout:
    """The layout of :func:`_flat_constrained` for a bound model's parameters."""
    names, shapes, offsets = [], [], []
    offset = 0
    for node in bound.nodes:
        names.append(node.name)
        shapes.append(tuple(node.shape))
        offsets.append(offset)
        offset += int(np.prod(node.shape))
    return ConstrainedLayout(tuple(names), tuple(shapes), tuple(offsets), offset)


def _flat_constrained(bound, x, data):
    params = bound.constrain(x, data, deterministic=False)
    return jnp.concatenate([jnp.ravel(params[n.name]) for n in bound.nodes])


class DrawSummary(NamedTuple):
    """Per-element posterior summaries (each ``(k,)``; batched: ``(S, k)``)."""

    mean: jax.Array
    sd: jax.Array
    q05: jax.Array
    median: jax.Array
    q95: jax.Array
    rhat: jax.Array
    # rank-normalized split R-hat and bulk ESS (Vehtari et al. 2021), by
    # hbm.study_diagnostics; None where a DrawSummary is built without them
    rhat_rank: jax.Array | None = None
    ess_bulk: jax.Array | None = None


def split_rhat(draws: jax.Array) -> jax.Array:
    """Classic split R-hat of ``draws`` shaped ``(chains, n, k)`` -> ``(k,)``.

    Each chain is cut into halves (the middle draw of an odd ``n`` dropped);
    ``sqrt(((n'-1)/n' W + B/n') / W)`` over the ``2 chains`` halves of length ``n'``.
    """
    chains, n, k = draws.shape
    half = n // 2
    if half < 2:
        raise ConfigurationError("split R-hat needs at least 4 draws per chain")
    parts = jnp.concatenate([draws[:, :half], draws[:, n - half:]], axis=0)
    chain_means = parts.mean(axis=1)
    within = parts.var(axis=1, ddof=1).mean(axis=0)
    between = half * chain_means.var(axis=0, ddof=1)
    var_plus = (half - 1) / half * within + between / half
    return jnp.sqrt(var_plus / within)


def summarize_draws(draws: jax.Array) -> DrawSummary:
    """Mean, sd, 5/50/95% quantiles (linear interpolation, as ``numpy.quantile``) and
    split R-hat of ``draws`` shaped ``(chains, n, k)``, and the rank-normalized split
    R-hat and bulk ESS of :mod:`hbm.study_diagnostics`."""
    from hbm.study_diagnostics import ess_bulk, rank_normalized_rhat

    chains, n, k = draws.shape
    pooled = draws.reshape(chains * n, k)
    q05, median, q95 = jnp.quantile(pooled, jnp.asarray([0.05, 0.5, 0.95]), axis=0)
    return DrawSummary(pooled.mean(axis=0), pooled.std(axis=0, ddof=1), q05, median, q95,
                       split_rhat(draws), rank_normalized_rhat(draws), ess_bulk(draws))


def stack_datasets(datasets: list[dict]) -> dict:
    """List of same-shaped data dicts -> one dict of arrays with a leading data-set axis."""
    if not datasets:
        raise ConfigurationError("no data sets to stack")
    keys = set(datasets[0])
    for d in datasets[1:]:
        if set(d) != keys:
            raise ConfigurationError("every data set must have the same keys")
    return {k: np.stack([np.asarray(d[k]) for d in datasets]) for k in datasets[0]}


def _merge(shared, batched):
    data = dict(shared)
    data.update(batched)
    return data


class _Program:
    """A jitted batch program and the number of times it was traced (compiled)."""

    def __init__(self, jitted, traces):
        self._jitted = jitted
        self._traces = traces

    def __call__(self, keys, batched_data, shared_data):
        return self._jitted(keys, batched_data, shared_data)

    def traces(self) -> int:
        return self._traces[0]


# ------------------------------------------------------------------------------ MAP
class BatchMAP(NamedTuple):
    """Best restart per data set: ``position`` (S, d) unconstrained, ``constrained``
    (S, k) in :func:`constrained_layout` order, ``logdensity`` (S,), ``converged`` (S,),
    ``grad_norm`` (S,)."""

    position: jax.Array
    constrained: jax.Array
    logdensity: jax.Array
    converged: jax.Array
    grad_norm: jax.Array


def build_batched_map(bound, *, jacobian: bool = False, restarts: int = 4,
                      max_iters: int = 2000, tol: float | None = None, radius: float = 2.0):
    """A compiled MAP search over a batch of data sets.

    Parameters
    ----------
    bound : :class:`~hbm.model.BoundModel`
        Bound to one data set of the right shapes (``reparam="centered"`` for the
        classical MAP, ``jacobian=False``).
    jacobian, restarts, max_iters, tol, radius
        As :func:`hbm.find_map`; restarts start uniformly in ``(-radius, radius)``.

    Returns
    -------
    run(keys (S,), batched_data, shared_data) -> BatchMAP, jitted; ``run.traces()`` counts
    how often it was traced (compiled).
    """
    from hbm.samplers.optimize import DEFAULT_OPTIMIZER, minimize

    restarts = int(restarts)
    if restarts < 1:
        raise ConfigurationError("restarts must be >= 1")
    if tol is None:
        tol = 1e-8 if jax.config.jax_enable_x64 else 1e-4
    traces = [0]

    def one_dataset(key, batched, shared):
        data = _merge(shared, batched)
        logdensity_fn = lambda x: bound.logdensity(x, data, jacobian=jacobian)  # noqa: E731
        dtype = jnp.result_type(float)
        inits = jax.random.uniform(key, (restarts, bound.size), dtype, -radius, radius)

        def from_start(x0):
            return minimize(x0, logdensity_fn, DEFAULT_OPTIMIZER, max_iters,
                            jnp.asarray(tol, dtype))

        runs = jax.vmap(from_start)(inits)
        best = jnp.argmax(jnp.where(jnp.isfinite(runs.logdensity), runs.logdensity, -jnp.inf))
        position = runs.position[best]
        return BatchMAP(position, _flat_constrained(bound, position, data),
                        runs.logdensity[best], runs.converged[best], runs.grad_norm[best])

    def run_traced(keys, batched, shared):
        traces[0] += 1
        return jax.vmap(one_dataset, in_axes=(0, 0, None))(keys, batched, shared)

    return _Program(jax.jit(run_traced), traces)


# ----------------------------------------------------------------------------- NUTS
class BatchNUTS(NamedTuple):
    """Per data set: :class:`DrawSummary` of the constrained parameters ``(S, k)``,
    ``divergences`` (S,) during sampling, ``mean_steps`` (S,) gradient evaluations per
    draw, ``step_size`` (S, chains); ``useful_leapfrog_fraction`` (S,): the batch's
    leapfrog steps over the gradient slots its loop evaluated (the same for every data
    set of a batch; lockstep: ``None``)."""

    summary: DrawSummary
    divergences: jax.Array
    mean_steps: jax.Array
    step_size: jax.Array
    useful_leapfrog_fraction: jax.Array | None = None


def build_chain_draws(bound, *, warmup: int = 1000, draws: int = 1000,
                      max_tree_depth: int = 10, target_accept: float = 0.8,
                      dense_mass: bool = False, radius: float = 2.0,
                      metric: str | None = None,
                      warmup_schedule: str | None = None) -> Callable:
    """One chain of the engine's NUTS run (warmup with ``hbm.sample``'s default metric
    and schedule unless given, then ``draws`` transitions) on
    the data passed to it: ``one_chain(key, data) -> (values (draws, k) constrained in
    :func:`constrained_layout` order, divergences, mean gradient evaluations per draw,
    step size)``. Pure: vmap it over chains and data sets."""
    from hbm.inference.engine import (build_chain_program, no_adaptation,
                                      schedule_for_chunks, slice_schedule)
    from hbm.inference.settings import (DEFAULT_METRIC, DEFAULT_WARMUP_SCHEDULE,
                                        KernelSettings)

    settings = KernelSettings(int(max_tree_depth), float(target_accept),
                              metric=metric or ("dense" if dense_mass else DEFAULT_METRIC),
                              warmup_schedule=warmup_schedule or DEFAULT_WARMUP_SCHEDULE)
    warmup, draws = int(warmup), int(draws)
    program = build_chain_program(lambda x, data, weights: bound.logdensity(x, data),
                                  settings)
    warmup_flags = slice_schedule(schedule_for_chunks(settings.warmup_schedule, warmup,
                                                      max(warmup, 1), settings.metric,
                                                      bound.size),
                                  0, warmup)

    def one_chain(key, data):
        init_key, search_key, warmup_key, draw_key = jax.random.split(key, 4)
        dtype = jnp.result_type(float)
        position = jax.random.uniform(init_key, (bound.size,), dtype, -radius, radius)
        position = far_tail.move_in(lambda x: bound.logdensity(x, data), position)[0]
        state = program.init(search_key, position, data, None, None)
        if warmup > 0:
            state, _ = program.run(state, warmup_key, 0, warmup, True, warmup_flags, data,
                                   None)
        state, out = program.run(state, draw_key, 0, draws, False, no_adaptation(draws),
                                 data, None)
        values = jax.vmap(lambda x: _flat_constrained(bound, x, data))(out["position"])
        return values, out["diverging"].sum(), out["n_steps"].mean(), state.step_size

    return one_chain


def build_batched_nuts(bound, *, chains: int = 4, warmup: int = 1000, draws: int = 1000,
                       max_tree_depth: int = 10, target_accept: float = 0.8,
                       dense_mass: bool = False, radius: float = 2.0,
                       lockstep_free: bool = False, refill: int = 1) -> Callable:
    """A compiled NUTS run (warmup, sampling, on-device summaries) over a batch of data sets.

    With ``lockstep_free`` every chain of every data set advances its own trajectory one
    leapfrog step per iteration of one shared loop
    (:func:`hbm.samplers.lockstep_free.run_lockstep_free_chains`) instead of ``vmap``
    over data sets and chains, where each transition waits for the longest tree of the
    batch; same keys, same decisions (to floating-point rounding). With ``refill`` ``k > 1``
    only ``1/k`` of the batch's chains run at once (but at least :data:`MIN_LANES`), and a
    lane whose chain has made its last transition takes the next chain not yet started:
    the loop then waits for the slowest chains only once per batch, not once per lane
    (:data:`REFILL` is a good choice for studies).

    Parameters
    ----------
    bound : :class:`~hbm.model.BoundModel`
        Bound to one data set of the right shapes, in the parameterization to sample.
    chains, warmup, draws
        Chains per data set, warmup iterations (``hbm.sample``'s default adaptation) and
        kept draws.
    max_tree_depth, target_accept, dense_mass
        As :func:`hbm.sample`.
    radius
        Chains start uniformly in ``(-radius, radius)`` on the unconstrained space.

    Returns
    -------
    run(keys (S,), batched_data, shared_data) -> BatchNUTS, jitted; ``run.traces()``
    counts how often it was traced (compiled).
    """
    chains, warmup, draws = int(chains), int(warmup), int(draws)
    if chains < 1 or warmup < 0 or draws < 4:
        raise ConfigurationError("need chains >= 1, warmup >= 0 and draws >= 4")
    refill = int(refill)
    if refill < 1:
        raise ConfigurationError(f"refill must be an integer >= 1, got {refill}")
    if lockstep_free:
        return _build_lockstep_free_nuts(
            bound, chains=chains, warmup=warmup, draws=draws, max_tree_depth=max_tree_depth,
            target_accept=target_accept, dense_mass=dense_mass, radius=radius,
            refill=refill)
    one_chain = build_chain_draws(bound, warmup=warmup, draws=draws,
                                  max_tree_depth=max_tree_depth, target_accept=target_accept,
                                  dense_mass=dense_mass, radius=radius)
    traces = [0]

    def one_dataset(key, batched, shared):
        data = _merge(shared, batched)
        keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(chains))
        values, divergent, steps, step_size = jax.vmap(one_chain, in_axes=(0, None))(
            keys, data)
        return BatchNUTS(summarize_draws(values), divergent.sum(), steps.mean(), step_size)

    def run_traced(keys, batched, shared):
        traces[0] += 1
        return jax.vmap(one_dataset, in_axes=(0, 0, None))(keys, batched, shared)

    return _Program(jax.jit(run_traced), traces)


def _build_lockstep_free_nuts(bound, *, chains, warmup, draws, max_tree_depth, target_accept,
                              dense_mass, radius, refill) -> Callable:
    """:func:`build_batched_nuts` without lockstep: members are (data set, chain) pairs,
    keyed and started exactly as :func:`build_chain_draws` keys and starts its chain."""
    from hbm.inference.engine import build_chain_program, schedule_for_chunks, slice_schedule
    from hbm.inference.settings import (DEFAULT_METRIC, DEFAULT_WARMUP_SCHEDULE,
                                        KernelSettings)
    from hbm.samplers.adaptation import metric_estimator
    from hbm.samplers.lockstep_free import run_lockstep_free_chains

    settings = KernelSettings(int(max_tree_depth), float(target_accept),
                              metric="dense" if dense_mass else DEFAULT_METRIC,
                              warmup_schedule=DEFAULT_WARMUP_SCHEDULE)
    program = build_chain_program(lambda x, data, weights: bound.logdensity(x, data),
                                  settings)
    estimator = metric_estimator(settings.metric, settings.warmup_schedule)
    flags = slice_schedule(schedule_for_chunks(settings.warmup_schedule, warmup,
                                               max(warmup, 1), settings.metric, bound.size),
                           0, warmup)
    traces = [0]

    def run_traced(keys, batched, shared):
        traces[0] += 1
        num_datasets = keys.shape[0]
        dtype = jnp.result_type(float)
        chain_keys = jax.vmap(lambda key: jax.vmap(lambda c: jax.random.fold_in(key, c))(
            jnp.arange(chains)))(keys).reshape((num_datasets * chains,) + keys.shape[1:])
        init_keys, search_keys, warmup_keys, draw_keys = jnp.moveaxis(
            jax.vmap(lambda key: jax.random.split(key, 4))(chain_keys), 1, 0)
        member_data = jax.tree.map(lambda a: jnp.repeat(a, chains, axis=0), batched)

        def logdensity(x, member):
            return bound.logdensity(x, _merge(shared, member))

        positions = jax.vmap(lambda key, member: far_tail.move_in(
            lambda x: logdensity(x, member),
            jax.random.uniform(key, (bound.size,), dtype, -radius, radius))[0])(
                init_keys, member_data)
        initial = jax.vmap(lambda key, x, member: program.init(
            key, x, _merge(shared, member), None, None))(search_keys, positions, member_data)
        result = run_lockstep_free_chains(
            warmup_keys, draw_keys, initial, logdensity, warmup, draws, flags,
            estimator=estimator, max_tree_depth=settings.max_tree_depth,
            target_accept=settings.target_accept, data=member_data,
            slots=max(-(-num_datasets * chains // refill),
                      min(num_datasets * chains, MIN_LANES)))
        values = jax.vmap(lambda xs, member: jax.vmap(
            lambda x: _flat_constrained(bound, x, _merge(shared, member)))(xs))(
            result.positions, member_data)
        per_dataset = (num_datasets, chains)
        values = values.reshape(per_dataset + values.shape[1:])
        divergent = result.infos.is_divergent.sum(-1).reshape(per_dataset)
        steps = result.infos.num_steps.mean(-1).reshape(per_dataset)
        return BatchNUTS(jax.vmap(summarize_draws)(values), divergent.sum(-1),
                         steps.mean(-1), result.chains.step_size.reshape(per_dataset),
                         jnp.full((num_datasets,), result.useful_leapfrog_fraction))

    return _Program(jax.jit(run_traced), traces)


def dataset_keys(seed: int, start: int, count: int):
    """Keys of data sets ``start .. start + count - 1`` for a study seeded with ``seed``."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(start, start + count))
