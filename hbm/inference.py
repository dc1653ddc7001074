"""The inference drivers: :func:`sample` (NUTS), :func:`advi`, :func:`find_map`, :func:`fit`.

The drivers turn a :class:`~hbm.model.Model` and its data into the flat log density of
:class:`~hbm.model.BoundModel` and run the pure kernels of :mod:`hbm.samplers` on it.

NUTS runs many chains at once. Warmup and sampling are each one jitted program, a
``lax.scan`` over a fixed-size chunk of iterations; Python calls it chunk after chunk, so
draws reach the host (and the progress bar moves) between chunks while nothing but
compiled code runs per iteration. The random key of chain ``c`` at iteration ``i`` is
``fold_in(chain_key[c], i)``, so results do not depend on the chunk size or on whether the
chains run vectorized (``jax.vmap``), sequentially (``lax.map``) or sharded across devices
(``jax.shard_map``). Compiled programs are cached per model, data shapes and settings,
and take the data as an argument: a second run on same-shaped data does not recompile.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbm.cpu_devices import resolve_chain_method
from hbm.errors import ConfigurationError, HbmError, ModelError, SamplingError
from hbm.draws import DrawBuffer
from hbm.model import BoundModel, Model

CHAIN_METHODS = ("auto", "vectorized", "sequential", "sharded")
#: Pointwise log likelihoods are stored for LOO only below this many numbers.
MAX_LOG_LIKELIHOOD_SIZE = 20_000_000
#: ``reparam="auto"`` needs this much warmup (else it samples non-centered).
AUTO_REPARAM_MIN_WARMUP = 150


# --------------------------------------------------------------------- validation
def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_model(model):
    if not isinstance(model, Model):
        raise ConfigurationError(f"expected an hbm.Model, got {type(model).__name__}")


def _bind(model, data, reparam) -> BoundModel:
    _check_model(model)
    return model.bind(data, reparam=reparam)


def _data_signature(data) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(data)
    return (treedef, tuple((tuple(jnp.shape(x)), str(jnp.asarray(x).dtype)) for x in leaves))


def _reparam_signature(reparam):
    if isinstance(reparam, str):
        return reparam
    return tuple(sorted((k, v if isinstance(v, str) else "partial") for k, v in reparam.items()))


def _cached(model, key, build):
    cache = model._bind_cache
    if key not in cache:
        cache[key] = build()
    return cache[key]


# -------------------------------------------------------------------------- NUTS
class _Programs(NamedTuple):
    bound: BoundModel
    init: object
    chunk: object
    emit: object


def _chain_mapper(chain_method, num_chains):
    """Maps a per-chain function over the leading (chain) axis of its mapped arguments."""
    if chain_method == "vectorized":
        return lambda f, in_axes: jax.vmap(f, in_axes=in_axes)
    if chain_method == "sequential":
        def mapper(f, in_axes):
            def run(*args):
                mapped = [a for a, ax in zip(args, in_axes) if ax == 0]
                fixed = [(i, a) for i, (a, ax) in enumerate(zip(args, in_axes)) if ax != 0]

                def one(xs):
                    full, it = [], iter(xs)
                    fixed_map = dict(fixed)
                    for i in range(len(args)):
                        full.append(fixed_map[i] if i in fixed_map else next(it))
                    return f(*full)

                return jax.lax.map(one, tuple(mapped))
            return run
        return mapper
    # sharded: each device runs its share of the chains, vectorized
    devices = jax.devices()
    n_dev = len(devices)
    if num_chains % n_dev != 0:
        n_dev = math.gcd(num_chains, n_dev)
        devices = devices[:n_dev]
    mesh = jax.sharding.Mesh(np.array(devices), ("chains",))
    P = jax.sharding.PartitionSpec

    def mapper(f, in_axes):
        vf = jax.vmap(f, in_axes=in_axes)
        in_specs = tuple(P("chains") if ax == 0 else P() for ax in in_axes)
        return jax.shard_map(vf, mesh=mesh, in_specs=in_specs, out_specs=P("chains"),
                             check_vma=False)
    return mapper


def _build_programs(bound: BoundModel, *, num_chains, chunk_size, max_tree_depth,
                    target_accept, dense_mass, chain_method, store_log_likelihood,
                    given_step_size):
    """The compiled programs of a NUTS run: per-chain initialization, and one chunk program
    that serves both warmup (``adapt=True``: Stan's adaptation after each transition) and
    sampling (``adapt=False``), so the NUTS kernel is compiled once."""
    from hbm.samplers import adaptation, nuts

    kernel = nuts.build_kernel(max_tree_depth=max_tree_depth)
    mapper = _chain_mapper(chain_method, num_chains)

    def logdensity_for(data, weights):
        return lambda x: bound.logdensity(x, data, weights)

    def init_one(key, position, data, weights, step_size):
        return adaptation.warmup_init(key, position, logdensity_for(data, weights),
                                      dense_mass=dense_mass, target_accept=target_accept,
                                      initial_step_size=step_size if given_step_size else None)

    def chunk_one(ws, chain_key, start, total, adapt, stage, window_end, data, weights):
        """``chunk_size`` iterations from iteration ``start`` of a phase of ``total``;
        ``stage``/``window_end`` are this chunk's slice of the warmup schedule."""
        logdensity_fn = logdensity_for(data, weights)

        def body(ws, i):
            it = start + i

            def step(ws):
                kernel_key, adapt_key = jax.random.split(jax.random.fold_in(chain_key, it))
                hmc, info = kernel(kernel_key, ws.hmc_state, logdensity_fn, ws.step_size,
                                   ws.inverse_mass_matrix)
                new = jax.lax.cond(
                    adapt,
                    lambda: adaptation.warmup_adapt(
                        adapt_key, ws, hmc, info, logdensity_fn, stage[i], window_end[i],
                        it == total - 1, target_accept=target_accept, dense_mass=dense_mass),
                    lambda: ws._replace(hmc_state=hmc, iteration=ws.iteration + 1))
                out = dict(position=hmc.position, lp=hmc.logdensity,
                           diverging=info.is_divergent, tree_depth=info.tree_depth,
                           n_steps=info.num_steps, energy=info.energy,
                           acceptance_rate=info.acceptance_rate, step_size=ws.step_size)
                return new, out

            def skip(ws):
                zero = jnp.zeros_like(ws.hmc_state.logdensity)
                out = dict(position=ws.hmc_state.position, lp=ws.hmc_state.logdensity,
                           diverging=jnp.bool_(False), tree_depth=jnp.zeros((), jnp.int32),
                           n_steps=jnp.zeros((), jnp.int32), energy=zero,
                           acceptance_rate=zero, step_size=ws.step_size)
                return ws, out

            return jax.lax.cond(it < total, step, skip, ws)

        return jax.lax.scan(body, ws, jnp.arange(chunk_size))

    def emit_one(out, data, weights, thin):
        """One chain's sampling chunk -> thinned constrained draws, statistics and
        pointwise log likelihood, computed on the device so only those leave it."""
        kept = {k: v[thin - 1::thin] for k, v in out.items()}
        if thin > 1:  # chunks hold whole thinning windows
            kept["diverging"] = out["diverging"].reshape(-1, thin).any(-1)
            kept["n_steps"] = out["n_steps"].reshape(-1, thin).sum(-1)

        def one(x):
            params = bound.constrain(x, data, weights)
            loglik = bound.log_likelihood(params, data) if store_log_likelihood else {}
            return params, loglik

        params, loglik = jax.lax.map(one, kept.pop("position"))
        return params, kept, loglik

    init = jax.jit(mapper(init_one, (0, 0, None, None, None)))
    chunk = jax.jit(mapper(chunk_one, (0, 0, None, None, None, None, None, None, None)))
    emit = jax.jit(lambda out, data, weights, thin: jax.vmap(
        partial(emit_one, thin=thin), in_axes=(0, None, None))(out, data, weights),
        static_argnums=3)
    return _Programs(bound, init, chunk, emit)


def _progress_bar(progress, total, desc):
    from tqdm.auto import tqdm

    enabled = bool(progress) and (progress == "force" or sys.stderr.isatty())
    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True)


def _initial_positions(bound: BoundModel, key, num_chains, init):
    if init is None:
        return bound.init_many(key, num_chains)
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
           chunk_size: int = 100, log_likelihood: bool | None = None,
           checkpoint: str | None = None, store: str | None = None, _after_warmup=None):
    """Draw from the posterior with the No-U-Turn Sampler and Stan's windowed warmup.

    Parameters
    ----------
    model, data
        The :class:`~hbm.Model` and its data (a dict of arrays).
    chains, warmup, draws, thin
        Number of chains; warmup iterations; kept draws per chain; keep every ``thin``-th.
    seed
        Integer seed; the same seed gives the same draws.
    target_accept, max_tree_depth, dense_mass
        Dual-averaging target, NUTS tree depth limit, dense instead of diagonal metric.
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
        Optional dict of initial values (constrained), one per parameter or per chain.
    step_size
        Initial step size (required when ``warmup=0``).
    chunk_size
        Iterations per compiled chunk (progress updates and host transfers between chunks).
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
    chains = _check_int("chains", chains, 1)
    warmup = _check_int("warmup", warmup, 0)
    draws = _check_int("draws", draws, 1)
    thin = _check_int("thin", thin, 1)
    max_tree_depth = _check_int("max_tree_depth", max_tree_depth, 1)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    seed = _check_int("seed", seed, 0)
    if seed >= 2**63:
        raise ConfigurationError(f"seed must be below 2**63, got {seed}")
    for name, value in (("chains", chains), ("warmup", warmup), ("draws", draws),
                        ("thin", thin), ("chunk_size", chunk_size)):
        if value >= 2**31:
            raise ConfigurationError(f"{name} must be below 2**31, got {value}")
    for name, value in (("target_accept", target_accept), ("step_size", step_size)):
        try:
            value is None or float(value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{name} must be a number, got {value!r}") from None
    if not 0.0 < float(target_accept) < 1.0:
        raise ConfigurationError(f"target_accept must lie in (0, 1), got {target_accept}")
    if not isinstance(chain_method, str) or chain_method not in CHAIN_METHODS:
        raise ConfigurationError(f"chain_method must be one of {CHAIN_METHODS}, got "
                                 f"{chain_method!r}")
    if warmup == 0 and step_size is None:
        raise ConfigurationError("warmup=0 needs a step_size (and uses a unit metric)")
    if step_size is not None and not (float(step_size) > 0 and math.isfinite(float(step_size))):
        raise ConfigurationError(f"step_size must be a positive number, got {step_size}")
    if not (isinstance(reparam, dict) or (isinstance(reparam, str) and reparam in (
            "centered", "noncentered", "auto"))):
        raise ConfigurationError("reparam must be 'centered', 'noncentered', 'auto' or a dict, "
                                 f"got {reparam!r}")

    if thin > 1 and chunk_size % thin:
        chunk_size += thin - chunk_size % thin  # chunks hold whole thinning windows
    settings = dict(chains=chains, warmup=warmup, draws=draws, thin=thin, seed=seed,
                    target_accept=float(target_accept), max_tree_depth=max_tree_depth,
                    dense_mass=bool(dense_mass), chain_method=chain_method,
                    chunk_size=chunk_size, step_size=None if step_size is None
                    else float(step_size), log_likelihood=log_likelihood,
                    reparam=reparam if isinstance(reparam, str) else "custom",
                    store=None if store is None else str(store))
    if checkpoint is not None:
        from hbm import checkpoint as ckpt

        ckpt.check_new(checkpoint)
    run = _prepare_run(model, data, settings, reparam)
    run.positions = _initial_positions(run.bound, run.keys["init"], chains, init)
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

    _check_model(model)
    meta, state, draws = ckpt.load(path, previous=previous)
    settings = meta["settings"]
    data = {k[len("data/"):]: v for k, v in state.items() if k.startswith("data/")}
    reparam = meta["bind_reparam"]
    if settings["reparam"] == "auto":
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
        _check_same_structure(meta["structure"], model_structure(run.bound), path)
    leaves = [jnp.asarray(state[f"state/{i}"]) for i in range(meta["num_state_leaves"])]
    run.ws = jax.tree_util.tree_unflatten(run.state_treedef(), leaves)
    run.weights = {k[len("weights/"):]: jnp.asarray(v) for k, v in state.items()
                   if k.startswith("weights/")}
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


def model_structure(bound: BoundModel) -> dict:
    """What a checkpoint's state depends on: each parameter's name, shape and number of
    unconstrained coordinates, in order, and the observed data keys (JSON-ready)."""
    return {"parameters": [[n.name, list(n.shape), int(n.size)] for n in bound.nodes],
            "observed": sorted(_observed_keys(bound))}


def _check_same_structure(saved: dict, current: dict, path):
    from hbm.checkpoint import CheckpointError

    if saved == current:
        return
    old = {p[0]: p[1:] for p in saved.get("parameters", [])}
    new = {p[0]: p[1:] for p in current["parameters"]}
    differences = [f"parameter '{k}' is missing from the model" for k in old if k not in new]
    differences += [f"parameter '{k}' is not in the checkpoint" for k in new if k not in old]
    differences += [f"parameter '{k}' has shape {tuple(new[k][0])} (checkpoint: "
                    f"{tuple(old[k][0])})" for k in new if k in old and new[k] != old[k]]
    if not differences and list(old) != list(new):
        differences.append(f"the parameters are in another order ({list(new)}; checkpoint: "
                           f"{list(old)})")
    if saved.get("observed") != current["observed"]:
        differences.append(f"the observed data keys are {current['observed']} (checkpoint: "
                           f"{saved.get('observed')})")
    raise CheckpointError(f"the model passed to resume does not match the checkpoint at {path}: "
                          + "; ".join(differences))


class _Run:
    """Everything a NUTS run carries from chunk to chunk (the driver's mutable record)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def state_treedef(self):
        shape = jax.eval_shape(
            lambda x: self.programs.init(self.keys["warmup"], x, self.bound.data,
                                         self.weights, jnp.asarray(1.0, x.dtype)),
            jax.ShapeDtypeStruct((self.settings["chains"], self.bound.size),
                                 jnp.result_type(float)))
        return jax.tree_util.tree_structure(shape)


def _prepare_run(model, data, settings, reparam) -> _Run:
    chains, warmup = settings["chains"], settings["warmup"]
    auto = reparam == "auto"
    if auto:
        probe = _bind(model, data, "noncentered")
        hierarchical = [n for n in probe.nodes if n.locscale]
        if hierarchical and warmup >= AUTO_REPARAM_MIN_WARMUP:
            bind_reparam = {n.name: np.zeros(n.shape) for n in hierarchical}
            bound = _bind(model, data, bind_reparam)
        else:
            auto, bind_reparam, bound = False, "noncentered", probe
    else:
        bind_reparam = reparam
        bound = _bind(model, data, reparam)
    if bound.size == 0:
        raise ModelError("the model has no parameters to sample")
    log_likelihood = settings["log_likelihood"]
    if log_likelihood is None:
        n_obs = sum(int(np.prod(jnp.shape(bound.data[k]))) for k in _observed_keys(bound))
        log_likelihood = n_obs * chains * settings["draws"] <= MAX_LOG_LIKELIHOOD_SIZE
    compile_settings = dict(
        num_chains=chains, chunk_size=settings["chunk_size"],
        max_tree_depth=settings["max_tree_depth"], target_accept=settings["target_accept"],
        dense_mass=settings["dense_mass"],
        chain_method=resolve_chain_method(settings["chain_method"], chains),
        store_log_likelihood=bool(log_likelihood),
        given_step_size=settings["step_size"] is not None)
    cache_key = ("nuts", _reparam_signature(bind_reparam), _data_signature(bound.data),
                 tuple(sorted(compile_settings.items())), jax.config.jax_enable_x64)
    programs = _cached(model, cache_key, lambda: _build_programs(bound, **compile_settings))
    key = jax.random.PRNGKey(settings["seed"])
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
    phases.append(("sampling", settings["draws"] * settings["thin"]))
    return _Run(model=model, bound=bound, programs=programs, settings=settings, auto=auto,
                bind_reparam=bind_reparam, log_likelihood=bool(log_likelihood), keys=keys,
                phases=phases, phase=phases[0][0], done=0, ws=None,
                weights=dict(bound.weights), probe_positions=None,
                buffer=DrawBuffer(chains, settings["draws"], settings.get("store")),
                stats={"divergences": 0, "gradients": 0}, times={}, chunk_times=[],
                positions=None, chain_method=compile_settings["chain_method"])


def _save_checkpoint(run, path, new_draws=None):
    from hbm import checkpoint as ckpt

    leaves = jax.tree_util.tree_leaves(run.ws)
    state = {f"state/{i}": np.asarray(v) for i, v in enumerate(leaves)}
    state.update({f"weights/{k}": np.asarray(v) for k, v in run.weights.items()})
    bind_reparam = run.bind_reparam
    if isinstance(bind_reparam, dict):
        state.update({f"bind_weights/{k}": np.asarray(v) for k, v in bind_reparam.items()})
        bind_meta = {k: "weights" for k in bind_reparam}
    else:
        bind_meta = bind_reparam
    state.update({f"keys/{k}": np.asarray(v) for k, v in run.keys.items()})
    if run.probe_positions is not None:
        state["probe_positions"] = np.asarray(run.probe_positions)
    meta = dict(settings=run.settings, phase=run.phase, done=run.done,
                num_state_leaves=len(leaves), bind_reparam=bind_meta,
                warmup_stats=run.stats, times=run.times, model=run.model.name,
                structure=model_structure(run.bound), float64=bool(jax.config.jax_enable_x64))
    first = not (pathlib.Path(path) / ckpt.INDEX).exists()
    data = {k: np.asarray(v) for k, v in run.bound.data.items()} if first else None
    ckpt.save(path, meta, state, new_draws, dims=run.model.dims, data=data)


def _execute(run: _Run, *, progress, checkpoint, after_warmup):
    """Run (or continue) the phases of ``run`` chunk by chunk; build the Fit."""
    s = run.settings
    chains, thin = s["chains"], s["thin"]
    programs, data = run.programs, run.bound.data
    total = s["warmup"] + s["draws"]
    done_before = sum(n for name, n in run.phases[:[p for p, _ in run.phases].index(
        run.phase)]) + run.done
    bar = _progress_bar(progress, total, "sampling" if run.phase == "sampling" else "warmup")
    bar.update(min(done_before, s["warmup"]) + max(0, done_before - s["warmup"]) // thin)
    if run.ws is None:
        step = jnp.asarray(1.0 if s["step_size"] is None else s["step_size"],
                           run.positions.dtype)
        run.ws = programs.init(run.keys["warmup"], run.positions, data, run.weights, step)
        if checkpoint is not None:
            _save_checkpoint(run, checkpoint)
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
            run.ws = _run_chunks(run, keys, n_iter, adapt, bar, checkpoint)
            # phase transition
            if phase == "probe":
                from hbm import reparam as reparam_lib

                run.weights = reparam_lib.centering_weights(run.bound, run.probe_positions,
                                                            n_iter // 2)
                positions = reparam_lib.move_positions(run.bound, run.ws.hmc_state.position,
                                                       run.bind_reparam, run.weights)
                step = jnp.asarray(1.0 if s["step_size"] is None else s["step_size"],
                                   positions.dtype)
                run.ws = programs.init(run.keys["reinit"], positions, data, run.weights, step)
                run.probe_positions = None
            if phase != "sampling":
                run.times["warmup"] = run.times.get("warmup", 0.0) + (
                    time.perf_counter() - t_start)
                t_start = time.perf_counter()
            nxt = run.phases[index + 1][0] if index + 1 < len(run.phases) else None
            if nxt == "sampling" and after_warmup is not None and s["warmup"] > 0:
                from hbm.fallback import NUTSDiagnostics

                timed = run.chunk_times[1:] or run.chunk_times
                per_iteration = sum(t for t, _ in timed) / max(1, sum(n for _, n in timed))
                after_warmup(NUTSDiagnostics(
                    initialized=True, step_size=float(np.min(np.asarray(run.ws.step_size))),
                    warmup_divergent_fraction=run.stats["divergences"] / (s["warmup"] * chains),
                    seconds_per_warmup_iteration=per_iteration))
            if nxt is not None:
                run.phase, run.done = nxt, 0
                if checkpoint is not None:
                    _save_checkpoint(run, checkpoint)
        run.times["sampling"] = run.times.get("sampling", 0.0) + (time.perf_counter()
                                                                  - t_start)
    except KeyboardInterrupt:
        done = run.buffer.filled
        if run.phase != "sampling" or done == 0:
            raise
        partial_reason = f"interrupted by the user after {done} of {s['draws']} draws"
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
    where = (f"after {done} of {s['draws']} draws" if run.phase == "sampling"
             else f"during warmup (iteration {warmup_done} of {s['warmup']})")
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
    """The remaining chunks of the current phase, from ``run.done``."""
    from hbm.samplers.adaptation import build_schedule

    s = run.settings
    chunk_size, thin = s["chunk_size"], s["thin"]
    if adapt:
        schedule = build_schedule(n_iter)
        pad = (-n_iter) % chunk_size + chunk_size
        stage = np.concatenate([schedule.stage, np.zeros(pad, np.int32)])
        window_end = np.concatenate([schedule.window_end, np.zeros(pad, bool)])
    else:
        stage = np.zeros(chunk_size, np.int32)
        window_end = np.zeros(chunk_size, bool)
    ws = run.ws
    while run.done < n_iter:
        start = run.done
        sl = slice(start, start + chunk_size) if adapt else slice(0, chunk_size)
        t0 = time.perf_counter()
        ws, out = run.programs.chunk(ws, keys, jnp.asarray(start), jnp.asarray(n_iter),
                                     jnp.asarray(adapt), jnp.asarray(stage[sl]),
                                     jnp.asarray(window_end[sl]), run.bound.data, run.weights)
        n = min(chunk_size, n_iter - start)
        run.ws, run.done = ws, start + n
        new_draws = None
        if adapt:
            wanted = ["diverging", "n_steps", "step_size"]
            if run.phase == "probe":
                wanted.append("position")
            out = {k: np.asarray(v)[:, :n]
                   for k, v in jax.device_get({k: out[k] for k in wanted}).items()}
            run.stats["divergences"] += int(out["diverging"].sum())
            run.stats["gradients"] += int(out["n_steps"].sum())
            run.chunk_times.append((time.perf_counter() - t0, n))
            if run.phase == "probe":
                pos = out["position"]
                run.probe_positions = pos if run.probe_positions is None else np.concatenate(
                    [run.probe_positions, pos], axis=1)
            bar.update(n)
        else:
            params, stats, loglik = run.programs.emit(out, run.bound.data, run.weights, thin)
            kept = n // thin
            new_draws = {group: {k: np.asarray(v)[:, :kept] for k, v in arrays.items()}
                         for group, arrays in jax.device_get(dict(
                             posterior=params, sample_stats=stats,
                             log_likelihood=loglik)).items()}
            run.buffer.write(new_draws, start // thin)
            out = new_draws["sample_stats"]
            run.stats["sampling_divergences"] = run.stats.get(
                "sampling_divergences", 0) + int(out["diverging"].sum())
            bar.update(kept)
        bar.set_postfix(divergences=run.stats["divergences"] if adapt
                        else run.stats["sampling_divergences"],
            step_size=f"{float(np.mean(out['step_size'][:, -1])):.3g}")
        if checkpoint is not None:
            _save_checkpoint(run, checkpoint, new_draws)
    return ws


def _build_fit(run, partial_reason):
    """The Fit of the draws in ``run.buffer`` (views; memory-mapped with ``store=``), with
    its diagnostics emitted as warnings that point at the caller of ``sample``/``resume``."""
    from hbm.results import Fit

    groups = run.buffer.read()
    posterior, loglik, stats = (groups["posterior"], groups["log_likelihood"],
                                groups["sample_stats"])
    s = run.settings
    thin = s["thin"]
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
        step_size=np.asarray(run.ws.step_size),
        inverse_mass_matrix=np.asarray(run.ws.inverse_mass_matrix),
        warmup_divergences=run.stats["divergences"],
        warmup_iterations=s["warmup"],
        warmup_gradient_evaluations=run.stats["gradients"],
        max_tree_depth=s["max_tree_depth"],
        target_accept=s["target_accept"],
        dense_mass=s["dense_mass"],
        chain_method=run.chain_method, requested_chain_method=s["chain_method"],
        seed=s["seed"],
        thin=thin,
        times=dict(run.times),
        last_position=np.asarray(run.ws.hmc_state.position),
    )
    model = run.model
    fit = Fit(posterior, sample_stats, method="nuts", model=model, data=run.bound.data,
              dims=model.dims, coords=model.coords,
              log_likelihood=loglik if run.log_likelihood else None,
              observed_data=_observed(run.bound), info=info)
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


def _observed_keys(bound: BoundModel) -> list:
    model = bound.model
    if model.likelihood is None:
        return []
    if not hasattr(bound, "_observed_keys"):
        keys = []

        def trace(x):
            p = bound.constrain(x, deterministic=False)
            keys.extend(model.likelihood(p, bound.data))
            return jnp.zeros(())

        jax.eval_shape(trace, jnp.zeros(bound.size))
        bound._observed_keys = keys
    return bound._observed_keys


# -------------------------------------------------------------------- flat helpers
def _constrain_draws(bound: BoundModel, xs, store_log_likelihood=True):
    """(n, d) flat unconstrained draws -> posterior dict and log likelihood, (1, n, ...)."""
    key = ("constrain_draws", bound.signature, bool(store_log_likelihood))
    cache = bound.model._bind_cache
    if key not in cache:  # compiled once per model structure; data and weights are arguments
        def one(x, data, weights):
            params = bound.constrain(x, data, weights)
            loglik = bound.log_likelihood(params, data) if store_log_likelihood else {}
            return params, loglik

        cache[key] = jax.jit(lambda v, data, weights: jax.lax.map(
            lambda x: one(x, data, weights), v))
    params, loglik = cache[key](jnp.asarray(xs), bound.data, bound.weights)
    params = {k: np.asarray(v)[None] for k, v in params.items()}
    loglik = {k: np.asarray(v)[None] for k, v in loglik.items()}
    return params, loglik


def _describe_indices(bound: BoundModel, indices, params: dict | None = None) -> list:
    """``(label, value)`` for each flat unconstrained index: the element's name and, with
    ``params``, its constrained value where the node's transform keeps its shape
    (elementwise maps; ``None`` otherwise)."""
    described = []
    for i in indices:
        for n in bound.nodes:
            if n.offset <= i < n.offset + n.size:
                label = n.name if n.size == 1 else f"{n.name}[{i - n.offset}]"
                value = None
                if params is not None and n.shape == n.unconstrained_shape:
                    value = float(np.ravel(params[n.name])[i - n.offset])
                described.append((label, value))
    return described


def _observed(bound):
    return {k: np.asarray(bound.data[k]) for k in _observed_keys(bound)}


# --------------------------------------------------------------------------- ADVI
def advi(model: Model, data=None, *, method: str = "meanfield", max_steps: int = 10000,
         optimizer=None, mc_samples: int = 1, draws: int = 1000, seed: int = 0,
         progress=True, tol_rel_obj: float = 0.01, reparam="noncentered"):
    """Automatic differentiation variational inference (Kucukelbir et al. 2017).

    A Gaussian (``"meanfield"`` or ``"fullrank"``) approximation in the unconstrained space,
    fitted with stick-the-landing gradients; convergence on the relative change of the
    smoothed ELBO, as in Stan. Returns a :class:`~hbm.results.Fit` (one chain of ``draws``
    independent draws) whose ``info`` holds the ELBO history, the number of steps, and
    the Pareto k-hat of PSIS on ``log p - log q`` (above 0.7: the approximation is
    unreliable, and a warning says so)."""
    import warnings

    from hbm.diagnostics import HbmWarning, pareto_khat
    from hbm.results import Fit
    from hbm.samplers import advi as advi_lib

    if method not in ("meanfield", "fullrank"):
        raise ConfigurationError(f"method must be 'meanfield' or 'fullrank', got {method!r}")
    max_steps = _check_int("max_steps", max_steps, 1)
    mc_samples = _check_int("mc_samples", mc_samples, 1)
    draws = _check_int("draws", draws, 1)
    seed = _check_int("seed", seed, 0)
    bound = _bind(model, data, reparam)
    key = jax.random.PRNGKey(seed)
    init_key, fit_key, draw_key = jax.random.split(key, 3)
    x0 = bound.init(init_key)
    logdensity_fn = logdensity_closure(bound)
    bar = _progress_bar(progress, max_steps, f"ADVI ({method})")

    def callback(step, elbo):
        bar.n = step
        bar.set_postfix(elbo=f"{elbo:.4g}")
        bar.refresh()

    t0 = time.perf_counter()
    try:
        result = advi_lib.run_advi(fit_key, logdensity_fn, x0, method=method,
                                   optimizer=optimizer, max_steps=max_steps,
                                   mc_samples=mc_samples, tol_rel_obj=tol_rel_obj,
                                   callback=callback)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    xs, log_q = advi_lib.advi_draws(draw_key, result, draws)
    log_p = _logdensity_many(logdensity_fn, xs)
    khat = pareto_khat(np.asarray(log_p - log_q))
    posterior, loglik = _constrain_draws(bound, xs)
    info = dict(
        advi_method=method, num_steps=int(result.num_steps), converged=bool(result.converged),
        elbo_history=np.asarray(result.elbo_history), khat=float(khat),
        learning_rate=float(result.learning_rate) if result.learning_rate is not None
        else None,
        mean=np.asarray(result.mean), sd=np.asarray(result.sd),
        times={"fit": elapsed}, seed=seed,
    )
    fit = Fit(posterior, None, method="advi", model=model, data=bound.data,
              dims=model.dims, coords=model.coords, log_likelihood=loglik,
              observed_data=_observed(bound), info=info)
    if not result.converged:
        warnings.warn(f"ADVI did not converge in {max_steps} steps (relative ELBO change "
                      f"above {tol_rel_obj}); raise max_steps", HbmWarning, stacklevel=2)
    if not khat <= 0.7:
        warnings.warn(f"ADVI's Pareto k-hat is {khat:.2f} > 0.7: the approximation is "
                      "unreliable for this posterior; use hbm.sample (NUTS)", HbmWarning,
                      stacklevel=2)
    return fit


def _bound_logdensity(bound, jacobian, data, weights, x):
    return bound.logdensity(x, data, weights, jacobian=jacobian)


def logdensity_closure(bound: BoundModel, jacobian: bool = True) -> jax.tree_util.Partial:
    """The flat log density of ``bound`` at its data, as a
    :class:`jax.tree_util.Partial` over ``(data, weights)``. Its function is kept per model
    structure and data shapes, so the compiled optimizers and ADVI chunks that take it are
    reused for new same-shaped data (:mod:`hbm.samplers.closures`)."""
    key = ("logdensity", bound.signature, bool(jacobian))
    fn = _cached(bound.model, key, lambda: partial(_bound_logdensity, bound, bool(jacobian)))
    return jax.tree_util.Partial(fn, bound.data, bound.weights)


@jax.jit
def _logdensity_many(logdensity_fn, xs):
    return jax.vmap(logdensity_fn)(xs)


# ----------------------------------------------------------------------- MAP/Laplace
def find_map(model: Model, data=None, *, jacobian: bool = False, optimizer=None,
             restarts: int = 4, seed: int = 0, laplace: bool = False, draws: int = 1000,
             max_iters: int = 2000, tol: float | None = None, reparam=None):
    """The posterior mode, by L-BFGS from ``restarts`` random initial points.

    ``jacobian=False`` gives the classical MAP (the mode of the density of the model's own
    constrained parameters); ``jacobian=True`` the mode of the unconstrained density (what
    a Laplace approximation in unconstrained space is centred on). The classical MAP uses
    the centered parameterization of hierarchical nodes (it is a property of the model's
    own parameters); the unconstrained mode depends on the parameterization, which
    ``reparam`` chooses (default ``"noncentered"``, as :func:`sample`). A mode on the boundary of the parameter space
    (a group scale driven to zero, or a log density growing without bound) is reported
    with a warning and in ``info["boundary"]``. With ``laplace=True`` the result holds
    ``draws`` Gaussian draws from the inverse negative Hessian at the unconstrained mode
    (which needs ``jacobian=True`` semantics, so the mode is then taken with the Jacobian).

    Returns a :class:`~hbm.results.Fit` with ``method="map"`` (one draw: the mode) or
    ``"laplace"``; ``fit.params`` is the mode in the model's own parameters.
    """
    import warnings

    from hbm.diagnostics import HbmWarning
    from hbm.results import Fit
    from hbm.samplers import optimize

    restarts = _check_int("restarts", restarts, 1)
    draws = _check_int("draws", draws, 1)
    seed = _check_int("seed", seed, 0)
    max_iters = _check_int("max_iters", max_iters, 1)
    if laplace:
        jacobian = True
    if not jacobian:
        if reparam not in (None, "centered"):
            raise ConfigurationError("the classical MAP (jacobian=False) is defined in the "
                                     "centered parameterization; leave reparam unset")
        reparam = "centered"
    elif reparam is None:
        reparam = "noncentered"
    bound = _bind(model, data, reparam)
    key = jax.random.PRNGKey(seed)
    init_key, draw_key = jax.random.split(key)
    inits = bound.init_many(init_key, restarts)
    logdensity_fn = logdensity_closure(bound, bool(jacobian))
    tol = (1e-8 if jax.config.jax_enable_x64 else 1e-4) if tol is None else float(tol)
    t0 = time.perf_counter()
    result = optimize.find_mode(logdensity_fn, inits, optimizer=optimizer, max_iters=max_iters,
                                tol=tol)
    report = optimize.boundary_report(result, logdensity_fn,
                                      finite_limits=bound.finite_limits())
    elapsed = time.perf_counter() - t0
    restart_params, _ = _constrain_draws(bound, result.all_positions, False)
    best = int(np.argmax(np.where(np.isfinite(np.asarray(result.all_logdensities)),
                                  np.asarray(result.all_logdensities), -np.inf)))
    mode_params = {k: v[0, best] for k, v in restart_params.items()}
    spread = {k: float(np.max(np.ptp(v[0], axis=0))) for k, v in restart_params.items()}
    described = _describe_indices(bound, report.indices, mode_params)
    boundary = [label for label, _ in described]
    info = dict(
        jacobian=bool(jacobian), logdensity=float(result.logdensity),
        converged=bool(result.converged), num_iterations=np.asarray(result.num_iterations),
        restart_logdensities=np.asarray(result.all_logdensities), restart_spread=spread,
        grad_norm=float(np.asarray(result.grad_norm).max()) if np.size(result.grad_norm)
        else None,
        boundary=boundary, boundary_reason=report.reason, mode=mode_params,
        reparam=reparam if isinstance(reparam, str) else "custom",
        unconstrained_mode=np.asarray(result.position), times={"optimize": elapsed},
        seed=seed,
    )
    if boundary:
        where = ", ".join(f"{name} = {value:.3g}" if value is not None else name
                          for name, value in described)
        warnings.warn(f"the mode lies on the boundary of the parameter space at "
                      f"{where}: {report.reason}. The reported mode is only "
                      "where the optimizer stopped; a group scale whose MAP collapses to 0 "
                      "is common in hierarchical models - use the posterior (hbm.sample).",
                      HbmWarning, stacklevel=2)
    if laplace:
        xs, cov = optimize.laplace_draws(draw_key, logdensity_fn, result.position, draws)
        posterior, loglik = _constrain_draws(bound, xs)
        info["covariance"] = np.asarray(cov)
        method = "laplace"
    else:
        posterior = {k: v[None, None] for k, v in mode_params.items()}
        loglik = None
        method = "map"
    fit = Fit(posterior, None, method=method, model=model, data=bound.data, dims=model.dims,
              coords=model.coords, log_likelihood=loglik, observed_data=_observed(bound),
              info=info)
    fit.params = mode_params
    return fit


# ------------------------------------------------------------------------ fit (auto)
class _FallBack(HbmError):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def fit(model: Model, data=None, method: str = "auto", *, time_budget: float | None = None,
        seed: int = 0, advi_method: str = "fullrank", **kwargs):
    """Fit with ``method``: ``"nuts"``, ``"advi"``, ``"map"``, ``"laplace"`` or ``"auto"``.

    ``"auto"`` runs NUTS and falls back to full-rank ADVI, with a warning, when NUTS cannot
    start (no finite initial point), when warmup collapses (step size below 1e-8, or more
    than 20% of warmup transitions divergent), or when the measured warmup speed predicts
    that the requested draws will not finish within ``time_budget`` seconds. The decision
    is :func:`hbm.fallback.fallback_reason`; the result records ``fit.method`` and
    ``fit.fallback_reason``. Extra keyword arguments go to the chosen method."""
    import warnings

    from hbm.diagnostics import HbmWarning
    from hbm.errors import InitializationError
    from hbm.fallback import NUTSDiagnostics, fallback_reason

    methods = ("auto", "nuts", "advi", "map", "laplace")
    if method not in methods:
        raise ConfigurationError(f"method must be one of {methods}, got {method!r}")
    if method == "nuts":
        return sample(model, data, seed=seed, **kwargs)
    if method == "advi":
        return advi(model, data, method=advi_method, seed=seed, **kwargs)
    if method in ("map", "laplace"):
        return find_map(model, data, seed=seed, laplace=method == "laplace", **kwargs)

    if time_budget is not None and not (isinstance(time_budget, (int, float))
                                        and time_budget > 0):
        raise ConfigurationError(f"time_budget must be a number of seconds > 0, got "
                                 f"{time_budget!r}")
    draws = kwargs.get("draws", 1000) * kwargs.get("thin", 1)
    start = time.perf_counter()

    def check(diag: NUTSDiagnostics):
        budget = None
        if time_budget is not None:
            elapsed = time.perf_counter() - start
            budget = time_budget - elapsed
            if not budget > 0:  # warmup alone spent it: no sampling time is left
                raise _FallBack(f"NUTS warmup took {elapsed:.3g} s, the whole time budget "
                                f"of {time_budget:.3g} s")
        reason = fallback_reason(diag, num_draws=draws, time_budget=budget)
        if reason is not None:
            raise _FallBack(reason)

    try:
        result = sample(model, data, seed=seed, _after_warmup=check, **kwargs)
        result.fallback_reason = None
        return result
    except _FallBack as e:
        reason = e.reason
    except InitializationError as e:
        reason = fallback_reason(NUTSDiagnostics(False, float("nan"), float("nan")),
                                 num_draws=draws) + f" ({e})"
    warnings.warn(f"NUTS was abandoned ({reason}); falling back to full-rank ADVI. Treat the "
                  "result as approximate.", HbmWarning, stacklevel=2)
    advi_kwargs = {k: kwargs[k] for k in ("draws", "progress") if k in kwargs}
    result = advi(model, data, method=advi_method, seed=seed, **advi_kwargs)
    result.fallback_reason = reason
    result.info["fallback_reason"] = reason
    result.info["requested_method"] = "auto"
    return result
