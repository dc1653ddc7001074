"""NUTS drivers: :func:`sample` and :func:`resume`.

A run goes through phases: with ``reparam="auto"`` a short "probe" warmup in the
non-centered parameterization (whose draws choose per-element centering weights, see
:mod:`hbm.reparam`), then "warmup" and "sampling". Each phase runs the engine's compiled
chunk program (:mod:`hbm.inference.engine`) chunk after chunk, so draws reach the host
(and the progress bar moves) between chunks while nothing but compiled code runs per
iteration; after every chunk the run can be checkpointed
(:mod:`hbm.inference.checkpointing`) and resumed with the same draws as an uninterrupted
run. Settings are one frozen :class:`~hbm.inference.settings.SampleSettings`; what changes
from chunk to chunk is the :class:`NUTSRun` record.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from hbm.draws import DrawBuffer
from hbm.errors import ConfigurationError, HbmError, ModelError, SamplingError
from hbm.inference import checkpointing, engine
from hbm.inference.chains import calls_linear_algebra, resolve_chain_method
from hbm.inference.common import (bind, cached, check_model, data_signature,
                                  logdensity_closure, observed, observed_keys, progress_bar,
                                  reparam_signature)
from hbm.inference.settings import SampleSettings
from hbm.model import BoundModel, Model
from hbm.samplers import far_tail

__all__ = ["sample", "resume", "NUTSRun", "MAX_LOG_LIKELIHOOD_SIZE", "AUTO_REPARAM_MIN_WARMUP"]

#: Pointwise log likelihoods are stored for LOO only below this many numbers.
MAX_LOG_LIKELIHOOD_SIZE = 20_000_000
#: ``reparam="auto"`` needs this much warmup (else it samples non-centered).
AUTO_REPARAM_MIN_WARMUP = 150


@dataclasses.dataclass
class NUTSRun:
    """What a NUTS run carries from chunk to chunk: its fixed parts (model, bound model,
    settings, programs, keys, phases) and its progress (phase, iterations done in it,
    sampler state, centering weights, draws, statistics)."""

    model: Model
    bound: BoundModel
    settings: SampleSettings
    programs: engine.Programs
    chain_method: str
    auto: bool
    bind_reparam: object
    log_likelihood: bool
    keys: dict
    phases: list
    buffer: DrawBuffer
    weights: dict
    phase: str
    done: int = 0
    state: object = None
    probe_positions: np.ndarray | None = None
    positions: jax.Array | None = None
    stats: dict = dataclasses.field(default_factory=lambda: {"divergences": 0,
                                                             "gradients": 0})
    times: dict = dataclasses.field(default_factory=dict)
    chunk_times: list = dataclasses.field(default_factory=list)
    seconds_per_iteration: float | None = None  # measured, for automatic chunk lengths

    def state_shapes(self):
        """The shapes and dtypes of the chains' sampler state, as a tree (to rebuild it
        from a checkpoint's leaves)."""
        return jax.eval_shape(
            lambda x: self.programs.init(self.keys["warmup"], x, self.bound.data,
                                         self.weights, jnp.asarray(1.0, x.dtype)),
            jax.ShapeDtypeStruct((self.settings.chains, self.bound.size),
                                 jnp.result_type(float)))


def _random_initial_positions(run: NUTSRun):
    """Stan's random initial points, each chain too far out for float32 moved in first
    (:mod:`hbm.samplers.far_tail`); the descent's log-density evaluations are counted as
    warmup gradients and recorded per chain."""
    bound, chains = run.bound, run.settings.chains
    positions, logdensities = bound.init_many(run.keys["init"], chains, with_logdensity=True)
    descent = far_tail.descend_from_far_tail(logdensity_closure(bound), positions,
                                             logdensities)
    run.stats["far_tail_iterations"] = descent.iterations.tolist()
    run.stats["gradients"] += int(descent.evaluations.sum())
    return descent.positions


def _initial_positions(bound: BoundModel, key, num_chains, init):
    if not isinstance(init, dict):
        raise ConfigurationError("init must be a dict parameter name -> value (one value for "
                                 "all chains, or a leading chain axis)")
    unknown = set(init) - set(bound.param_names)
    if unknown:
        raise ModelError(f"init names unknown parameters {sorted(unknown)}; the model's "
                         f"parameters are {bound.param_names}")
    random_start = bound.init_many(key, num_chains)
    positions = []
    for c in range(num_chains):
        params = bound.constrain(random_start[c], deterministic=False)
        for name, value in init.items():
            shape = bound.param_shapes[name]
            try:
                value = jnp.asarray(np.asarray(value, dtype=float), dtype=jnp.result_type(float))
            except (TypeError, ValueError) as e:
                raise ModelError(f"init['{name}'] is not a numeric array: {e}") from e
            if value.shape == (num_chains,) + tuple(shape) and value.shape != tuple(shape):
                value = value[c]
            if value.shape != tuple(shape):
                raise ModelError(f"init['{name}'] has shape {value.shape}, expected {shape} "
                                 f"or {(num_chains,) + tuple(shape)}")
            params[name] = value
        # supports may depend on other parameters: check them at the merged values
        supports = bound.supports(params)
        for name in init:
            support = supports.get(name)
            if support is not None and not bool(jnp.all(support.check(params[name]))):
                raise ModelError(f"init['{name}'] lies outside the support ({support}) of "
                                 f"parameter '{name}'")
        x = bound.unconstrain(params)
        lp, g = jax.value_and_grad(bound.logdensity)(x)
        if not (bool(jnp.isfinite(lp)) and bool(jnp.all(jnp.isfinite(g)))):
            raise ModelError(f"the log density or its gradient is not finite at init (chain {c})")
        positions.append(x)
    return jnp.stack(positions)



def sample(model: Model, data=None, *, chains: int = 4, warmup: int = 1000, draws: int = 1000,
           seed: int = 0, target_accept: float = 0.8, max_tree_depth: int = 10,
           dense_mass: bool = False, reparam="auto", chain_method: str = "auto",
           init=None, progress=True, thin: int = 1, step_size: float | None = None,
           chunk_size: int | None = None, log_likelihood: bool | None = None,
           checkpoint: str | None = None, store: str | None = None,
           metric: str | None = None, warmup_schedule: str | None = None,
           _after_warmup=None):
    """Draw from the posterior with the No-U-Turn Sampler.

    Parameters
    ----------
    model, data
        The :class:`~hbm.Model` and its data (a dict of arrays).
    chains, warmup, draws, thin
        Number of chains; warmup iterations; kept draws per chain; keep every ``thin``-th.
    seed
        Integer seed; the same seed gives the same draws.
    target_accept, max_tree_depth
        Dual-averaging target, NUTS tree depth limit.
    metric
        The mass matrix and how warmup estimates it (:mod:`hbm.samplers.mass_matrix`):
        ``"diag_grad"`` (default: per coordinate ``sqrt(Var x / Var grad log p)`` from
        draws and gradients, Seyboldt, Carlson & Carpenter 2026, as nutpie does),
        ``"diag"`` (Stan's: the regularized variance of the draws), ``"lowrank"`` (low
        rank plus diagonal from draws and gradients; costs O(d k) per leapfrog; for
        strongly correlated posteriors) or ``"dense"`` (the dense covariance;
        ``dense_mass=True`` is the same). Recorded as ``fit.info["metric"]``.
    warmup_schedule
        ``"early"`` (default: the metric is re-estimated early and often from two
        overlapping windows of recent draws, after nutpie; :mod:`hbm.samplers.schedules`)
        or ``"stan"`` (Stan's doubling windows). Recorded as
        ``fit.info["warmup_schedule"]``. The defaults were chosen by
        ``benchmarks/adaptation.py``; ``metric="diag", warmup_schedule="stan"`` is
        Stan's (and BlackJAX's and NumPyro's) adaptation.
    dense_mass
        ``True`` is ``metric="dense"``.
    reparam
        ``"auto"`` (default: per-element centering weights learned in warmup, see
        :mod:`hbm.reparam`; with less than 150 warmup iterations it samples
        non-centered), ``"centered"``, ``"noncentered"``, or a dict per node (see
        :meth:`Model.bind`).
    chain_method
        ``"auto"`` (default): ``"sharded"`` where there are several local devices that
        share the chains evenly (on a CPU, ``import hbm`` makes one device per core, see
        :mod:`hbm.cpu_devices`), else ``"vectorized"``; the choice is
        ``fit.info["chain_method"]``. ``"vectorized"`` (vmap on one device),
        ``"sequential"`` (``lax.map``) or ``"sharded"`` (vectorized on each of the local
        devices) force one. Each chain's draws come from its own keys whatever the
        placement; placements agree to floating-point rounding.
    init
        Optional dict of initial values (constrained), one per parameter or per chain;
        the others are drawn as Stan does (uniform in ``(-2, 2)`` on the unconstrained
        space). Without ``init``, a chain drawn so far out that float32 cannot resolve its
        energy (``log p < -2**17``) is first moved uphill by L-BFGS until it can
        (:mod:`hbm.samplers.far_tail`; ``fit.info["far_tail_iterations"]``, its
        gradients counted in ``warmup_gradient_evaluations``); float64 runs never are.
    step_size
        Initial step size (required when ``warmup=0``).
    chunk_size
        Iterations per chunk (progress updates, host transfers and checkpoints happen
        between chunks). By default chosen as it runs: chunks of about a quarter of a
        second, at most 1000 iterations and about 64 MiB of draws on the device, so
        that a fast model does not spend its time between chunks. Draws do not depend on
        it.
    log_likelihood
        Store the pointwise log likelihood (for LOO); by default when it is not huge.
    checkpoint
        A directory: after every chunk the full sampler state and the draws so far are
        written there atomically (:mod:`hbm.checkpoint`); :func:`resume` continues.
    store
        A directory: the draws are written there chunk by chunk as ``.npy`` files
        (``posterior.<name>.npy``, ``sample_stats.<name>.npy``, ...) and the returned Fit
        reads them memory-mapped, so a run may hold more draws than fit in memory.

    Returns
    -------
    Fit
        Interrupted with Ctrl-C during sampling, the draws completed so far, with
        ``fit.partial`` set.
    """
    settings = SampleSettings.validated(
        chains=chains, warmup=warmup, draws=draws, thin=thin, seed=seed,
        target_accept=target_accept, max_tree_depth=max_tree_depth, dense_mass=dense_mass,
        chain_method=chain_method, chunk_size=chunk_size, step_size=step_size,
        log_likelihood=log_likelihood, reparam=reparam, store=store, metric=metric,
        warmup_schedule=warmup_schedule)
    if checkpoint is not None:
        from hbm import checkpoint as ckpt

        ckpt.check_new(checkpoint)
    run = _prepare_run(model, data, settings, reparam)
    run.positions = (_random_initial_positions(run) if init is None else
                     _initial_positions(run.bound, run.keys["init"], settings.chains, init))
    return _execute(run, progress=progress, checkpoint=checkpoint, after_warmup=_after_warmup)



def resume(path, model: Model, *, progress=True, previous: bool = False, checkpoint=True):
    """Continue a run from its checkpoint directory ``path`` (written by
    ``sample(..., checkpoint=path)``). The model cannot be stored on disk (it is Python
    code), so it is passed again; the data, settings and sampler state come from the
    checkpoint. With the same seed the continued run gives the same draws as an
    uninterrupted one. ``previous=True`` resumes from the checkpoint before the last (for
    when the last is damaged). Further chunks keep checkpointing to ``path`` unless
    ``checkpoint=False``."""
    from hbm import checkpoint as ckpt

    check_model(model)
    meta, state, draws = ckpt.load(path, previous=previous)
    settings = SampleSettings.from_meta(meta["settings"])
    data = checkpointing.restore_arrays(state, "data")
    reparam = meta["bind_reparam"]
    if settings.reparam == "auto":
        reparam = "auto"  # rebuilds the same phases; the chosen weights come from the state
    elif isinstance(reparam, dict):
        reparam = {k: np.asarray(state[f"bind_weights/{k}"]) for k in reparam}
    x64 = bool(jax.config.jax_enable_x64)
    if "float64" in meta and bool(meta["float64"]) != x64:
        raise ckpt.CheckpointError(
            f"the checkpoint at {path} was written with float64 "
            f"{'enabled' if meta['float64'] else 'disabled'} but jax_enable_x64 is now {x64}; "
            "set jax.config.update('jax_enable_x64', "
            f"{bool(meta['float64'])}) before resuming")
    run = _prepare_run(model, data, settings, reparam)
    if "structure" in meta:
        checkpointing.check_same_structure(meta["structure"],
                                           checkpointing.model_structure(run.bound), path)
    run.state = _restored_state(run, state, meta["num_state_leaves"], path)
    run.weights = {k: jnp.asarray(v)
                   for k, v in checkpointing.restore_arrays(state, "weights").items()}
    run.phase, run.done = meta["phase"], int(meta["done"])
    run.probe_positions = state.get("probe_positions")
    for name, derived in run.keys.items():  # the per-chain keys the run was started with
        stored = state.get(f"keys/{name}")
        if stored is None or stored.shape != np.shape(derived):
            raise ckpt.CheckpointError(f"the checkpoint at {path} lacks the random key "
                                       f"{name!r} of the run")
        run.keys[name] = jnp.asarray(stored, jnp.asarray(derived).dtype)
    run.stats.update(meta["warmup_stats"])
    run.times.update(meta.get("times", {}))
    offset = 0
    for groups in draws:  # chunk by chunk, so resuming needs no more memory than the run
        run.buffer.write(groups, offset)
        offset += next(iter(groups["sample_stats"].values())).shape[1]
    return _execute(run, progress=progress, checkpoint=path if checkpoint else None,
                    after_warmup=None)



def _restored_state(run: NUTSRun, state: dict, num_leaves: int, path):
    """The sampler state saved in a checkpoint, checked leaf by leaf against the shapes
    this hbm builds for the run's settings: a checkpoint of another hbm version can hold
    a differently shaped state (the low-rank metric's columns, for one), which would
    otherwise fail deep inside the compiled warmup."""
    from hbm import checkpoint as ckpt

    expected, treedef = jax.tree_util.tree_flatten(run.state_shapes())
    saved = [np.asarray(state[f"state/{i}"]) for i in range(num_leaves)]
    mismatch = [f"leaf {i}: shape {tuple(a.shape)}, expected {tuple(e.shape)}"
                for i, (a, e) in enumerate(zip(saved, expected)) if a.shape != e.shape]
    if len(saved) != len(expected) or mismatch:
        found = (f"{len(saved)} state arrays, expected {len(expected)}"
                 if len(saved) != len(expected) else "; ".join(mismatch[:3]))
        raise ckpt.CheckpointError(
            f"the sampler state in the checkpoint at {path} does not match what this hbm "
            f"builds for the run's settings ({found}); it was most likely written by "
            "another hbm version: start the run again with hbm.sample")
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in saved])


def _prepare_run(model, data, settings: SampleSettings, reparam) -> NUTSRun:
    """Bind (with ``reparam="auto"``: probe the hierarchy first), fetch or compile the
    programs, derive the per-chain keys and the phases."""
    chains, warmup = settings.chains, settings.warmup
    auto = reparam == "auto"
    if auto:
        probe = bind(model, data, "noncentered")
        hierarchical = [n for n in probe.nodes if n.locscale]
        if hierarchical and warmup >= AUTO_REPARAM_MIN_WARMUP:
            bind_reparam = {n.name: np.zeros(n.shape) for n in hierarchical}
            bound = bind(model, data, bind_reparam)
        else:
            auto, bind_reparam, bound = False, "noncentered", probe
    else:
        bind_reparam = reparam
        bound = bind(model, data, reparam)
    if bound.size == 0:
        raise ModelError("the model has no parameters to sample")
    log_likelihood = settings.log_likelihood
    if log_likelihood is None:
        n_obs = sum(int(np.prod(jnp.shape(bound.data[k]))) for k in observed_keys(bound))
        log_likelihood = n_obs * chains * settings.draws <= MAX_LOG_LIKELIHOOD_SIZE
    # LAPACK calls matter only for chains that may share the CPU devices (see
    # hbm.inference.chains); the trace that finds them is made once per model and shapes
    linear_algebra = (
        jax.default_backend() == "cpu" and settings.chain_method in ("auto", "sharded")
        and len(jax.local_devices()) > 1
        and (settings.metric in ("dense", "lowrank") or cached(
            model, ("linear_algebra", reparam_signature(bind_reparam),
                    data_signature(bound.data), jax.config.jax_enable_x64),
            lambda: calls_linear_algebra(lambda x: bound.logdensity(x, bound.data),
                                         jnp.zeros(bound.size)))))
    chain_method = resolve_chain_method(settings.chain_method, chains,
                                        linear_algebra=linear_algebra)
    placement = dict(num_chains=chains, chain_method=chain_method,
                     store_log_likelihood=bool(log_likelihood),
                     linear_algebra=linear_algebra and chain_method == "sharded")
    cache_key = ("nuts", reparam_signature(bind_reparam), data_signature(bound.data),
                 settings.kernel, tuple(sorted(placement.items())),
                 jax.config.jax_enable_x64)
    programs = cached(model, cache_key, lambda: engine.compile_programs(
        bound, settings.kernel, **placement))
    key = jax.random.PRNGKey(settings.seed)
    init_key, warmup_key, sample_key, reparam_key = jax.random.split(key, 4)
    keys = dict(init=init_key, warmup=jax.random.split(warmup_key, chains),
                sample=jax.random.split(sample_key, chains),
                reinit=jax.random.split(reparam_key, chains),
                warmup2=jax.random.split(jax.random.fold_in(reparam_key, 1), chains))
    phases = []
    first = max(AUTO_REPARAM_MIN_WARMUP // 2, warmup // 4) if auto else 0
    if auto:
        phases.append(("probe", first))
    if warmup - first > 0:
        phases.append(("warmup", warmup - first))
    phases.append(("sampling", settings.draws * settings.thin))
    return NUTSRun(model=model, bound=bound, programs=programs, settings=settings,
                   chain_method=chain_method, auto=auto, bind_reparam=bind_reparam,
                   log_likelihood=bool(log_likelihood), keys=keys, phases=phases,
                   buffer=DrawBuffer(chains, settings.draws, settings.store),
                   weights=dict(bound.weights), phase=phases[0][0])


def _execute(run: NUTSRun, *, progress, checkpoint, after_warmup):
    """Run (or continue) the phases of ``run`` chunk by chunk; build the Fit."""
    s = run.settings
    chains, thin = s.chains, s.thin
    programs, data = run.programs, run.bound.data
    total = s.warmup + s.draws
    done_before = sum(n for name, n in run.phases[:[p for p, _ in run.phases].index(
        run.phase)]) + run.done
    bar = progress_bar(progress, total, "sampling" if run.phase == "sampling" else "warmup")
    bar.update(min(done_before, s.warmup) + max(0, done_before - s.warmup) // thin)
    if run.state is None:
        step = jnp.asarray(1.0 if s.step_size is None else s.step_size,
                           run.positions.dtype)
        run.state = programs.init(run.keys["warmup"], run.positions, data, run.weights, step)
        if checkpoint is not None:
            checkpointing.save(run, checkpoint)
    partial_reason = None
    t_start = time.perf_counter()
    try:
        for index, (phase, n_iter) in enumerate(run.phases):
            if phase != run.phase:
                continue
            adapt = phase != "sampling"
            keys = {"probe": run.keys["warmup"],
                    "warmup": run.keys["warmup2"] if run.auto else run.keys["warmup"],
                    "sampling": run.keys["sample"]}[phase]
            if phase == "sampling":
                bar.set_description("sampling")
            run.state = _run_chunks(run, keys, n_iter, adapt, bar, checkpoint)
            # phase transition
            if phase == "probe":
                from hbm import reparam as reparam_lib

                run.weights = reparam_lib.centering_weights(run.bound, run.probe_positions,
                                                            n_iter // 2)
                positions = reparam_lib.move_positions(run.bound, run.state.hmc_state.position,
                                                       run.bind_reparam, run.weights)
                step = jnp.asarray(1.0 if s.step_size is None else s.step_size,
                                   positions.dtype)
                run.state = programs.init(run.keys["reinit"], positions, data, run.weights, step)
                run.probe_positions = None
            if phase != "sampling":
                run.times["warmup"] = run.times.get("warmup", 0.0) + (
                    time.perf_counter() - t_start)
                t_start = time.perf_counter()
            nxt = run.phases[index + 1][0] if index + 1 < len(run.phases) else None
            if nxt == "sampling" and after_warmup is not None and s.warmup > 0:
                from hbm.fallback import NUTSDiagnostics

                timed = run.chunk_times[1:] or run.chunk_times
                per_iteration = sum(t for t, _ in timed) / max(1, sum(n for _, n in timed))
                after_warmup(NUTSDiagnostics(
                    initialized=True, step_size=float(np.min(np.asarray(run.state.step_size))),
                    warmup_divergent_fraction=run.stats["divergences"] / (s.warmup * chains),
                    seconds_per_warmup_iteration=per_iteration))
            if nxt is not None:
                run.phase, run.done = nxt, 0
                if checkpoint is not None:
                    checkpointing.save(run, checkpoint)
        run.times["sampling"] = run.times.get("sampling", 0.0) + (time.perf_counter()
                                                                  - t_start)
    except KeyboardInterrupt:
        done = run.buffer.filled
        if run.phase != "sampling" or done == 0:
            raise
        partial_reason = f"interrupted by the user after {done} of {s.draws} draws"
    except HbmError:
        raise
    except Exception as error:  # out of memory, disk full, a device failure, ...
        raise _failure_keeping_draws(run, error, checkpoint) from error
    finally:
        bar.close()
    return _build_fit(run, partial_reason)



def _failure_keeping_draws(run, error, checkpoint):
    """A :class:`SamplingError` for a run that failed mid-sampling, carrying the draws
    completed so far as ``error.partial_fit`` (``None`` when there are none)."""
    import warnings

    s = run.settings
    done = run.buffer.filled if run.phase == "sampling" else 0
    names = [name for name, _ in run.phases]
    warmup_done = sum(n for _, n in run.phases[:names.index(run.phase)]) + run.done
    where = (f"after {done} of {s.draws} draws" if run.phase == "sampling"
             else f"during warmup (iteration {warmup_done} of {s.warmup})")
    partial_fit = None
    if done:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                partial_fit = _build_fit(run, f"stopped by {type(error).__name__} {where}")
        except Exception:  # the failure itself (e.g. no memory left) may prevent it
            partial_fit = None
    kept = ("the draws made so far are in this error's .partial_fit" if partial_fit is not None
            else "no draws were kept")
    if checkpoint is not None:
        kept += f"; hbm.resume({str(checkpoint)!r}, model) continues from the last checkpoint"
    err = SamplingError(f"sampling stopped {where}: {type(error).__name__}: {error} ({kept})")
    err.partial_fit = partial_fit
    return err



def _run_chunks(run, keys, n_iter, adapt, bar, checkpoint):
    """The remaining chunks of the current phase, from ``run.done``; returns the state.

    Without a checkpoint the next chunk is queued before the last one's outputs are read
    (JAX dispatches asynchronously), so the device does not wait while the host stores
    draws and updates the progress bar. With one, chunks run one at a time: a checkpoint
    saves ``run.state`` with the draws made up to it."""
    s = run.settings
    thin = s.thin
    capacity = s.chunk_size or chunk_capacity(run)
    if adapt:
        schedule = engine.schedule_for_chunks(s.warmup_schedule, n_iter, capacity, s.metric,
                                              run.bound.size)
    else:
        schedule = engine.no_adaptation(capacity)
    ahead = checkpoint is None
    queued = []  # (start, iterations, outputs, state) of chunks dispatched, not yet read
    read = (run.state, run.done)  # the state after the last chunk read, and its count
    last_read = time.perf_counter()
    reads = 0
    try:
        while run.done < n_iter or queued:
            if run.done < n_iter:
                start = run.done
                n = min(s.chunk_size or _next_chunk_length(run, capacity, thin),
                        n_iter - start)
                flags = engine.slice_schedule(schedule, *(
                    (start, start + capacity) if adapt else (0, capacity)))
                state, out = run.programs.chunk(run.state, keys, jnp.asarray(start),
                                                jnp.asarray(n_iter), jnp.asarray(adapt),
                                                flags, run.bound.data, run.weights,
                                                jnp.asarray(start + n))
                run.state, run.done = state, start + n
                if not adapt:  # constrained on the device, queued before the next chunk
                    out = run.programs.emit(out, run.bound.data, run.weights,
                                            jnp.asarray(n), thin)
                queued.append((start, n, out, state))
                if ahead and run.done < n_iter and len(queued) < 2:
                    continue
            start, n, out, state = queued.pop(0)
            stats, new_draws = _read_chunk(run, start, n, out, adapt, thin)
            read = (state, start + n)
            now = time.perf_counter()
            if adapt:
                run.chunk_times.append((now - last_read, n))
            if reads:  # the first read of a phase may include compiling and dispatch
                run.seconds_per_iteration = (now - last_read) / n
            reads += 1
            last_read = now
            bar.update(n if adapt else n // thin)
            bar.set_postfix(divergences=run.stats["divergences"] if adapt
                            else run.stats["sampling_divergences"],
                            step_size=f"{float(np.mean(stats['step_size'][:, -1])):.3g}")
            if checkpoint is not None:
                checkpointing.save(run, checkpoint, new_draws)
    except BaseException:  # a run that stops keeps the state of its last draws
        run.state, run.done = read
        raise
    return run.state


#: Chunks of automatic length take about this long (progress updates stay frequent while
#: the cost between chunks, a millisecond or two, stays below 1%).
CHUNK_SECONDS = 0.25
#: The automatic chunk length: at most this many iterations, and at most this many bytes
#: of per-iteration outputs on the device (at least ``MIN_CHUNK`` iterations).
MAX_CHUNK, MIN_CHUNK, CHUNK_BYTES = 1000, 100, 64 * 2**20


def chunk_capacity(run) -> int:
    """The iterations a chunk can hold (its compiled output length) when ``chunk_size``
    is not given: ``MAX_CHUNK``, fewer where a chunk's outputs (positions, constrained
    draws, pointwise log likelihood, statistics; all chains) would exceed
    ``CHUNK_BYTES``, never fewer than ``MIN_CHUNK``; a multiple of ``thin``."""
    s, bound = run.settings, run.bound
    values = 2 * bound.size + len(engine.STATISTICS)
    if run.log_likelihood:
        values += sum(int(np.prod(jnp.shape(bound.data[k]))) for k in observed_keys(bound))
    per_iteration = s.chains * values * jnp.dtype(jnp.result_type(float)).itemsize
    capacity = int(np.clip(CHUNK_BYTES // per_iteration, MIN_CHUNK, MAX_CHUNK))
    return max(s.thin, capacity - capacity % s.thin)


def _next_chunk_length(run, capacity: int, thin: int) -> int:
    """Iterations of the next automatic chunk: about ``CHUNK_SECONDS`` at the measured
    time per iteration (``MIN_CHUNK`` before there is a measurement), a multiple of
    ``thin``, at most ``capacity``."""
    if run.seconds_per_iteration is None:
        n = MIN_CHUNK
    else:
        n = int(CHUNK_SECONDS / max(run.seconds_per_iteration, 1e-9))
    n = int(np.clip(n, 1, capacity))
    return max(thin, n - n % thin)


def _read_chunk(run, start, n, out, adapt, thin):
    """Bring one chunk's outputs to the host: warmup counts (and the probe's positions),
    or the chunk's draws (``out`` is then ``programs.emit``'s) into ``run.buffer``.
    Returns the chunk's statistics on the host and its draws (``None`` in warmup)."""
    if adapt:
        wanted = ["diverging", "n_steps", "step_size"]
        if run.phase == "probe":
            wanted.append("position")
        fetched = {k: np.asarray(v)[:, :n]
                   for k, v in jax.device_get({k: out[k] for k in wanted}).items()}
        run.stats["divergences"] += int(fetched["diverging"].sum())
        run.stats["gradients"] += int(fetched["n_steps"].sum())
        if run.phase == "probe":
            pos = fetched["position"]
            run.probe_positions = pos if run.probe_positions is None else np.concatenate(
                [run.probe_positions, pos], axis=1)
        return fetched, None
    params, stats, loglik = out
    kept = n // thin
    new_draws = {group: {k: np.asarray(v)[:, :kept] for k, v in arrays.items()}
                 for group, arrays in jax.device_get(dict(
                     posterior=params, sample_stats=stats,
                     log_likelihood=loglik)).items()}
    run.buffer.write(new_draws, start // thin)
    run.stats["sampling_divergences"] = run.stats.get(
        "sampling_divergences", 0) + int(new_draws["sample_stats"]["diverging"].sum())
    return new_draws["sample_stats"], new_draws



def _build_fit(run, partial_reason):
    """The Fit of the draws in ``run.buffer`` (views; memory-mapped with ``store=``), with
    its diagnostics emitted as warnings that point at the caller of ``sample``/``resume``."""
    from hbm.results import Fit

    groups = run.buffer.read()
    posterior, loglik, stats = (groups["posterior"], groups["log_likelihood"],
                                groups["sample_stats"])
    s = run.settings
    thin = s.thin
    sample_stats = dict(
        diverging=stats["diverging"].astype(bool),
        tree_depth=stats["tree_depth"].astype(np.int64),
        n_steps=stats["n_steps"].astype(np.int64),
        step_size=stats["step_size"],
        energy=stats["energy"],
        lp=stats["lp"],
        acceptance_rate=stats["acceptance_rate"],
    )
    if run.auto:
        chosen = {k: np.asarray(v).round(3).tolist() for k, v in run.weights.items()}
    else:
        chosen = {k: (v if isinstance(v, str) else np.asarray(v).tolist())
                  for k, v in run.bound.reparam.items()}
    info = dict(
        reparam=chosen,
        reparam_method="auto" if run.auto else "fixed",
        step_size=np.asarray(run.state.step_size),
        inverse_mass_matrix=jax.tree.map(np.asarray, run.state.inverse_mass_matrix),
        metric=s.metric, warmup_schedule=s.warmup_schedule,
        warmup_divergences=run.stats["divergences"],
        warmup_iterations=s.warmup,
        warmup_gradient_evaluations=run.stats["gradients"],
        far_tail_iterations=np.asarray(run.stats.get("far_tail_iterations",
                                                      [0] * s.chains), np.int64),
        max_tree_depth=s.max_tree_depth,
        target_accept=s.target_accept,
        dense_mass=s.dense_mass,
        chain_method=run.chain_method, requested_chain_method=s.chain_method,
        seed=s.seed,
        thin=thin,
        times=dict(run.times),
        last_position=np.asarray(run.state.hmc_state.position),
    )
    model = run.model
    fit = Fit(posterior, sample_stats, method="nuts", model=model, data=run.bound.data,
              dims=model.dims, coords=model.coords,
              log_likelihood=loglik if run.log_likelihood else None,
              observed_data=observed(run.bound), info=info)
    if partial_reason is not None:
        fit.partial = True
        fit.info["partial_reason"] = partial_reason
    try:  # frames above Fit.warn: this one, _execute, sample or resume, then the user's
        fit.warn(stacklevel=5)
    except KeyboardInterrupt:  # the draws are done: a slow check must not lose them
        import warnings

        from hbm.diagnostics import HbmWarning

        warnings.warn("the end-of-run convergence checks were interrupted; the draws are "
                      "complete. Run fit.diagnostics() to check them.", HbmWarning,
                      stacklevel=4)
    return fit

