"""The one NUTS engine: the compiled warmup + sampling program of a log density.

Every NUTS run in hbm (:func:`hbm.sample`, :func:`hbm.resume`, the many-data-set runs of
:mod:`hbm.batch` and :func:`run_nuts` for raw log densities) is built from the per-chain
program made here by :func:`build_chain_program`:

* ``init(key, position, data, weights, step_size)`` starts warmup
  (:func:`hbm.samplers.adaptation.warmup_init`) at ``position``.
* ``run(state, chain_key, start, total, adapt, flags, data, weights, stop=None)`` runs
  iterations ``start`` up to ``min(total, stop, start + len(flags))`` (exclusive) of a
  phase of ``total`` iterations as one loop (a dynamic count: one compiled program
  serves chunks of any length up to ``len(flags)``). ``adapt`` is an *unbatched* flag:
  True runs the adaptation after each transition (``flags`` is the slice of the warmup
  schedule, a :class:`~hbm.samplers.schedules.WarmupSchedule`, these iterations read),
  False samples with the adapted step size and metric. Warmup and sampling are therefore
  one compiled program. Iterations at or beyond ``total`` are not run: the state is left
  unchanged and their outputs are zeros (the last chunk of a phase is padded).

The random key of iteration ``i`` is ``fold_in(chain_key, i)``, so draws do not depend on
the chunk size, the placement of the chains, or on whether a run was interrupted and
resumed. The log density is ``logdensity(x, data, weights)``: data (and the partial
centering weights of :mod:`hbm.reparam`) are arguments all the way down, so a program is
compiled once per model structure, data shapes and :class:`KernelSettings`.

The NUTS transition takes its integrator and metric as arguments
(:func:`hbm.samplers.nuts.build_kernel`); the metric's estimator
(:func:`hbm.samplers.adaptation.metric_estimator`: ``"diag"``, ``"diag_grad"``,
``"lowrank"``, ``"dense"``) and the warmup schedule (:mod:`hbm.samplers.schedules`:
``"stan"``, ``"early"``) come from :class:`KernelSettings`.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbm.inference.chains import chain_mapper
from hbm.inference.settings import KernelSettings
from hbm.samplers import adaptation
from hbm.samplers import nuts as nuts_kernel
from hbm.samplers import threefry
from hbm.samplers.integrators import velocity_verlet
from hbm.samplers.metrics import metric_from
from hbm.samplers.schedules import WarmupSchedule, build_warmup_schedule

__all__ = [
    "ChainProgram",
    "build_chain_program",
    "schedule_for_chunks",
    "no_adaptation",
    "slice_schedule",
    "Programs",
    "compile_programs",
    "run_nuts",
]

#: The per-iteration statistics a chain program returns besides the position.
STATISTICS = ("lp", "diverging", "tree_depth", "n_steps", "energy", "acceptance_rate",
              "step_size", "is_turning", "energy_error")


class ChainProgram(NamedTuple):
    """The per-chain functions of a NUTS run (see the module docstring)."""

    init: Callable
    run: Callable


def build_chain_program(logdensity: Callable, settings: KernelSettings = KernelSettings(), *,
                        integrator: Callable = velocity_verlet,
                        metric: Callable = metric_from) -> ChainProgram:
    """The per-chain warmup + sampling program of ``logdensity(x, data, weights)``.

    Parameters
    ----------
    logdensity
        Flat log density; ``data`` and ``weights`` are passed through unchanged.
    settings
        Tree depth, adaptation target, given initial step size, metric estimator and
        warmup schedule.
    integrator, metric
        Passed to :func:`hbm.samplers.nuts.build_kernel`.
    """
    kernel = nuts_kernel.build_kernel(settings.max_tree_depth, integrator=integrator,
                                      metric=metric)
    target_accept = settings.target_accept
    estimator = adaptation.metric_estimator(settings.metric, settings.warmup_schedule)

    def init(key, position, data, weights, step_size):
        return adaptation.warmup_init(
            key, position, lambda x: logdensity(x, data, weights),
            target_accept=target_accept, estimator=estimator,
            initial_step_size=step_size if settings.given_step_size else None)

    def run(state, chain_key, start, total, adapt, flags, data, weights, stop=None):
        logdensity_fn = partial(_at, logdensity, data, weights)
        flags = jax.tree.map(jnp.asarray, WarmupSchedule(*flags))

        def transition(state, i, it):
            kernel_key, adapt_key = threefry.split(threefry.fold_in(chain_key, it))
            hmc, info = kernel(kernel_key, state.hmc_state, logdensity_fn, state.step_size,
                               state.inverse_mass_matrix)
            new = jax.lax.cond(
                adapt,
                lambda: adaptation.warmup_adapt(
                    adapt_key, state, hmc, info, logdensity_fn,
                    jax.tree.map(lambda a: a[i], flags), it == total - 1,
                    target_accept=target_accept, estimator=estimator),
                lambda: state._replace(hmc_state=hmc, iteration=state.iteration + 1))
            out = dict(position=hmc.position, lp=hmc.logdensity,
                       diverging=info.is_divergent, tree_depth=info.tree_depth,
                       n_steps=info.num_steps, energy=info.energy,
                       acceptance_rate=info.acceptance_rate, step_size=state.step_size,
                       is_turning=info.is_turning, energy_error=info.energy_error)
            return new, out

        # a loop of min(len(flags), total - start) iterations writing into preallocated
        # outputs, not a scan whose every iteration is a conditional on ``it < total``:
        # a conditional copies the whole state in and out (about a tenth of a small
        # model's sampling time on CPU)
        length = jnp.shape(flags.adapt_step_size)[0]
        outputs = _zero_outputs(length, state.hmc_state.position, state.step_size)

        def body(i, carry):
            state, outputs = carry
            state, out = transition(state, i, start + i)
            return state, jax.tree.map(
                lambda stack, row: jax.lax.dynamic_update_index_in_dim(stack, row, i, 0),
                outputs, out)

        end = total if stop is None else jnp.minimum(total, stop)
        count = jnp.clip(jnp.asarray(end) - start, 0, length)
        return jax.lax.fori_loop(0, count, body, (state, outputs))

    return ChainProgram(init, run)


def _zero_outputs(length: int, position, step_size) -> dict:
    """Zeroed per-iteration outputs of ``run`` (what ``transition`` returns, stacked)."""
    real = jnp.result_type(step_size)
    shapes = dict(position=(jnp.shape(position), jnp.result_type(position)),
                  lp=((), real), diverging=((), jnp.bool_), tree_depth=((), jnp.int32),
                  n_steps=((), jnp.int32), energy=((), real), acceptance_rate=((), real),
                  step_size=((), real), is_turning=((), jnp.bool_), energy_error=((), real))
    return {name: jnp.zeros((length,) + shape, dtype) for name, (shape, dtype) in shapes.items()}


def _at(logdensity, data, weights, x):
    return logdensity(x, data, weights)


def schedule_for_chunks(name: str, num_iterations: int, chunk_size: int,
                        metric: str | None = None, dim: int | None = None) -> WarmupSchedule:
    """The warmup schedule ``name`` of ``num_iterations`` (for ``metric`` on a
    ``dim``-dimensional target) padded (with no-op iterations) so that every chunk of
    ``chunk_size`` can slice its part."""
    schedule = build_warmup_schedule(name, num_iterations, metric=metric, dim=dim)
    pad = (-num_iterations) % chunk_size + chunk_size
    return WarmupSchedule(*(np.concatenate([a, np.zeros(pad, bool)]) for a in schedule))


def no_adaptation(num_iterations: int) -> WarmupSchedule:
    """All-false flags (the sampling phase reads none)."""
    return WarmupSchedule(*(np.zeros(num_iterations, bool) for _ in WarmupSchedule._fields))


def slice_schedule(schedule: WarmupSchedule, start: int, stop: int) -> WarmupSchedule:
    return WarmupSchedule(*(a[start:stop] for a in schedule))


# ----------------------------------------------------------- programs of a bound model
class Programs(NamedTuple):
    """The compiled programs of a NUTS run of a bound model, mapped over chains:
    ``init`` and ``chunk`` (:class:`ChainProgram`), and ``emit``: a sampling chunk's
    output -> thinned constrained draws, statistics and pointwise log likelihood, computed
    on the device so only those leave it."""

    init: Callable
    chunk: Callable
    emit: Callable


def compile_programs(bound, settings: KernelSettings, *, num_chains: int, chain_method: str,
                     store_log_likelihood: bool, integrator: Callable = velocity_verlet,
                     metric: Callable = metric_from, linear_algebra: bool = False
                     ) -> Programs:
    """The jitted, chain-mapped programs of ``bound`` (a :class:`~hbm.model.BoundModel`);
    its data and weights are arguments, so new same-shaped data does not recompile.
    ``linear_algebra``: the program calls LAPACK (:func:`~hbm.inference.chains.chain_mapper`
    then maps sharded chains one after another on each device)."""
    program = build_chain_program(bound.logdensity, settings, integrator=integrator,
                                  metric=metric)
    mapper = chain_mapper(chain_method, num_chains, linear_algebra=linear_algebra)

    def emit_one(out, data, weights, count, thin):
        kept = {k: v[thin - 1::thin] for k, v in out.items()
                if k not in ("is_turning", "energy_error")}
        if thin > 1:  # chunks hold whole thinning windows
            kept["diverging"] = out["diverging"].reshape(-1, thin).any(-1)
            kept["n_steps"] = out["n_steps"].reshape(-1, thin).sum(-1)

        def one(x):
            params = bound.constrain(x, data, weights)
            loglik = bound.log_likelihood(params, data) if store_log_likelihood else {}
            return params, loglik

        # only the ``count // thin`` rows the chunk filled are constrained
        positions = kept.pop("position")
        shapes = jax.eval_shape(one, positions[0])
        stacked = jax.tree.map(lambda a: jnp.zeros(positions.shape[:1] + a.shape, a.dtype),
                               shapes)

        def body(i, stacked):
            return jax.tree.map(
                lambda stack, row: jax.lax.dynamic_update_index_in_dim(stack, row, i, 0),
                stacked, one(positions[i]))

        params, loglik = jax.lax.fori_loop(0, count // thin, body, stacked)
        return params, kept, loglik

    init = jax.jit(mapper(program.init, (0, 0, None, None, None)))
    chunk = jax.jit(mapper(program.run, (0, 0, None, None, None, None, None, None, None)))
    emit = jax.jit(lambda out, data, weights, count, thin: jax.vmap(
        partial(emit_one, thin=thin), in_axes=(0, None, None, None))(out, data, weights,
                                                                     count),
        static_argnums=4)
    return Programs(init, chunk, emit)


# ------------------------------------------------------------- raw log densities
def run_nuts(key, logdensity_fn: Callable, position, num_warmup: int, num_draws: int, *,
             dense_mass: bool = False, target_accept: float = 0.8, max_tree_depth: int = 10,
             metric: str | None = None, warmup_schedule: str = "stan"):
    """Warm up (Stan's windows) and sample one chain of NUTS on a flat log density, with
    the engine's program (jitted; vmap it over chains).

    Returns
    -------
    (draws (num_draws, d), NUTSInfo stacked over draws (without momenta and the
    symmetric acceptance statistic, which only warmup reads), step_size,
    inverse_mass_matrix)
    """
    from hbm.errors import ConfigurationError

    if int(num_draws) != num_draws or num_draws < 1:
        raise ConfigurationError(f"num_draws must be a positive integer, got {num_draws}")
    if int(num_warmup) != num_warmup or num_warmup < 0:
        raise ConfigurationError(f"num_warmup must be a non-negative integer, got "
                                 f"{num_warmup}")
    settings = KernelSettings(int(max_tree_depth), float(target_accept),
                              metric=metric or ("dense" if dense_mass else "diag"),
                              warmup_schedule=warmup_schedule)
    return _run_nuts(key, jnp.asarray(position), logdensity_fn, int(num_warmup),
                     int(num_draws), settings)


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _run_nuts(key, position, logdensity_fn, num_warmup, num_draws, settings):
    program = build_chain_program(lambda x, data, weights: logdensity_fn(x), settings)
    init_key, warmup_key, draw_key = jax.random.split(key, 3)
    state = program.init(init_key, position, None, None, None)
    if num_warmup > 0:
        flags = slice_schedule(schedule_for_chunks(settings.warmup_schedule, num_warmup,
                                                   num_warmup, settings.metric,
                                                   position.shape[0]),
                               0, num_warmup)
        state, _ = program.run(state, warmup_key, 0, num_warmup, True, flags, None, None)
    state, out = program.run(state, draw_key, 0, num_draws, False, no_adaptation(num_draws),
                             None, None)
    info = nuts_kernel.NUTSInfo(
        momentum=None, is_divergent=out["diverging"], is_turning=out["is_turning"],
        energy=out["energy"], tree_depth=out["tree_depth"], num_steps=out["n_steps"],
        acceptance_rate=out["acceptance_rate"], symmetric_acceptance_rate=None,
        energy_error=out["energy_error"])
    return out["position"], info, state.step_size, state.inverse_mass_matrix
