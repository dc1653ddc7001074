"""Simulation studies over many simulated data sets: MAP versus posterior mean, and SBC.

In a hierarchical model the classical mode can sit at a group scale of zero while the
posterior mean is far from it. :func:`study` measures this over many data sets simulated
from the model at given true values: every data set is fitted with the classical MAP
(no Jacobian, centered), the mode of the unconstrained density (with the Jacobian,
non-centered) and NUTS (non-centered), all compiled once per data shape and vectorized
over data sets and chains (:mod:`hbm.batch`); NUTS draws are reduced on the device to
per-element summaries, the rank-normalized split R-hat and the bulk ESS
(:mod:`hbm.study_diagnostics`), so only ``O(data sets x parameters)`` numbers leave it.

:func:`sbc` is simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman
2018, "Validating Bayesian inference algorithms with simulation-based calibration",
arXiv:1804.06788): truths drawn from the prior, data from the likelihood, and the rank of
each truth among thinned posterior draws, counted on the device. Uniformity of the ranks
is tested with a binned chi-square test and with the simultaneous ECDF bands of
Säilynoja, Bürkner & Vehtari (2022), "Graphical test for discrete uniformity and its
applications in goodness-of-fit evaluation and multiple sample comparison", Statistics and
Computing 32:32, whose adjusted level is found by simulation.

Random keys: data set ``s`` of configuration ``c`` (global index ``c * datasets + s``)
gets the key :func:`hbm.batch.dataset_keys` gives that index, split into simulation,
MAP, Jacobian-MAP and NUTS keys, so results do not depend on the batch size, nor on the
devices and processes a batch is split over (:mod:`hbm.placement`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbm.errors import ConfigurationError, DataError, ModelError
from hbm.checkpoint import atomic_write, npz_bytes
from hbm.inference.settings import check_int
from hbm.placement import (check_same_everywhere, from_process_zero, gather_rows,
                           placement_info, resolve_placement, shard_program)

__all__ = ["study", "sbc", "StudyResult", "SBCResult", "METHODS", "COLLAPSE_RATIO",
           "LOG_BOUNDARY"]

METHODS = ("map", "nuts")
COLLAPSE_RATIO = 1e-3  # a scale's MAP below this times its posterior median has collapsed
LOG_BOUNDARY = -15.0  # ... or its log below this (lme4's singular fit)
RHAT_THRESHOLD = 1.01
_INDEX = "study.json"
_FORMAT = 1
_COLUMNS = ("map", "map_jacobian", "mean", "median", "sd", "q05", "q95", "rhat",
            "ess_bulk")


# ------------------------------------------------------------------------ helpers
def _check_model(model):
    from hbm.model import Model

    if not isinstance(model, Model):
        raise ModelError(f"model must be an hbm.Model, got {type(model).__name__}")
    if not model.can_simulate:
        raise ModelError("a model built with Model.from_logdensity cannot simulate data sets; "
                         "write it as a prior DAG and likelihood to use it in a study or SBC")
    if model.likelihood is None:
        raise ModelError("the model has no likelihood, so there are no data to simulate")


class _Design(NamedTuple):
    """What every data set shares: the bound views, the simulated keys, the layout."""

    centered: Any
    noncentered: Any
    layout: Any
    observed: tuple  # data keys the likelihood explains (simulated)
    shared: dict  # every other data key, fixed
    template: dict  # the whole template (the simulation reads the observed keys' shapes)
    dtypes: dict  # dtype of each simulated key as bound
    labels: list  # element labels in layout order
    parameters: list  # parameter name of each element
    positive: np.ndarray  # elements of a positive (scale) parameter


def _design(model, data) -> _Design:
    """Bind the template both ways and find which keys are simulated (errors before any
    compilation: a missing data key is a DataError naming it)."""
    from hbm import constraints
    from hbm.batch import constrained_layout
    from hbm.diagnostics import element_labels

    if data is None:
        data = {}
    centered = model.bind(data, reparam="centered")
    noncentered = model.bind(data, reparam="noncentered")
    example = jax.eval_shape(lambda k: model.simulate(k, centered.data),
                             jax.random.PRNGKey(0))
    observed = tuple(k for k in example if k not in model.prior
                     and k not in model.deterministic)
    for k in observed:
        if tuple(example[k].shape) != tuple(centered.data[k].shape):
            raise DataError(f"the likelihood simulates data key '{k}' with shape "
                            f"{tuple(example[k].shape)}, but the template's '{k}' has shape "
                            f"{tuple(centered.data[k].shape)}")
    shared = {k: v for k, v in centered.data.items() if k not in observed}
    dtypes = {k: centered.data[k].dtype for k in observed}
    layout = constrained_layout(centered)
    labels, parameters, positive = [], [], []
    for node in centered.nodes:
        names = element_labels(node.name, tuple(node.shape), model.dims.get(node.name),
                               model.coords)
        labels += names
        parameters += [node.name] * len(names)
        is_positive = isinstance(node.support, type(constraints.positive))
        positive += [is_positive] * len(names)
    return _Design(centered, noncentered, layout, observed, shared, dict(centered.data),
                   dtypes, labels,
                   parameters, np.asarray(positive, bool))


def _truth_configurations(truth, design: _Design) -> list[dict]:
    """``truth`` (dict, list of dicts or DataFrame) -> list of dicts of arrays, checked."""
    if hasattr(truth, "to_dict") and hasattr(truth, "columns"):  # DataFrame: a grid
        configurations = truth.to_dict(orient="records")
    elif isinstance(truth, dict):
        configurations = [truth]
    elif isinstance(truth, (list, tuple)):
        configurations = list(truth)
    else:
        raise ConfigurationError("truth must be a dict name -> value, a list of such dicts "
                                 f"or a DataFrame, got {type(truth).__name__}")
    if not configurations:
        raise ConfigurationError("truth holds no configuration")
    shapes = dict(zip(design.layout.names, design.layout.shapes))
    checked = []
    for i, config in enumerate(configurations):
        where = "truth" if len(configurations) == 1 else f"truth configuration {i}"
        if not isinstance(config, dict):
            raise ConfigurationError(f"{where} must be a dict name -> value, got "
                                     f"{type(config).__name__}")
        unknown = sorted(set(config) - set(shapes))
        if unknown:
            raise ConfigurationError(f"{where} names unknown parameter(s) {unknown}; the "
                                     f"model's parameters are {list(shapes)}")
        values = {}
        for name, value in config.items():
            try:
                array = np.asarray(value, dtype=float)
            except (TypeError, ValueError) as e:
                raise ConfigurationError(f"{where}['{name}'] is not numeric: {e}") from e
            if array.shape != shapes[name]:
                raise ConfigurationError(f"{where}['{name}'] has shape {array.shape}; the "
                                         f"parameter '{name}' has shape {shapes[name]}")
            if not np.all(np.isfinite(array)):
                raise ConfigurationError(f"{where}['{name}'] holds NaN or inf")
            values[name] = array
        checked.append(values)
    return checked


def _build_simulator(model, design: _Design):
    """Jitted ``(keys (B,), fixed params, template) -> (observed, flat truth (B, k))``:
    parameters not fixed are drawn from the prior given the fixed ones."""
    layout = design.layout

    def one(key, fixed, template):
        out = model.simulate(key, template, params=fixed)
        observed = {k: out[k].astype(design.dtypes[k]) for k in design.observed}
        flat = jnp.concatenate([jnp.ravel(jnp.asarray(out[n], dtype=jnp.result_type(float)))
                                for n in layout.names])
        return observed, flat

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def _calls_linear_algebra(design: _Design) -> bool:
    """Whether either parameterization's log density or its gradient calls LAPACK."""
    from hbm.inference.chains import calls_linear_algebra

    return any(calls_linear_algebra(lambda x, b=b: b.logdensity(x, b.data), jnp.zeros(b.size))
               for b in (design.centered, design.noncentered))


def _split_keys(keys):
    """Per data set: simulation, MAP, Jacobian-MAP and NUTS keys."""
    parts = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
    return parts[:, 0], parts[:, 1], parts[:, 2], parts[:, 3]


_PROGRAMS: "weakref.WeakKeyDictionary" = None


def _cached_programs(model, key, build):
    """Compiled programs per model (held weakly) and shapes/settings ``key``, so repeated
    calls (a grid, a resumed study) do not compile again."""
    import weakref

    global _PROGRAMS
    if _PROGRAMS is None:
        _PROGRAMS = weakref.WeakKeyDictionary()
    per_model = _PROGRAMS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        leaves = jax.tree_util.tree_leaves(arrays[key])
        for leaf in leaves:
            a = np.asarray(leaf)
            h.update(f"{key}:{a.dtype}:{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _progress(total, initial, enabled, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="batch")


# ----------------------------------------------------------------------- results
class StudyResult:
    """The outcome of :func:`study`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per configuration x data set x parameter element (see :func:`study`).
    configurations : list of dict
        The true values of each configuration (index = ``table.configuration``).
    info : dict
        Settings, device, timings (seconds per phase), compilation counts (traces of
        the programs, which are cached per model and shapes, so a repeated call adds none),
        ``resumed_batches`` (batches read back from ``directory``) and the placement
        (:func:`hbm.placement.placement_info`: ``devices``, ``device_count``,
        ``process_index``, ``process_count``, ``datasets_per_call``, ``padded_batch``,
        ``placement_note``).
    """

    def __init__(self, table, configurations, info):
        self.table = table
        self.configurations = configurations
        self.info = info

    def dataset(self, configuration: int, dataset: int) -> dict:
        """The simulated data set ``dataset`` of ``configuration`` (simulated again from
        its key: the template with the simulated keys replaced)."""
        from hbm.batch import dataset_keys

        simulate, design, datasets, seed = self._replay
        configuration = int(configuration)
        dataset = int(dataset)
        if not (0 <= configuration < len(self.configurations) and 0 <= dataset < datasets):
            raise ConfigurationError(f"no data set ({configuration}, {dataset}) in this study")
        keys = dataset_keys(seed, configuration * datasets + dataset, 1)
        fixed = {n: jnp.asarray(v, dtype=jnp.result_type(float))
                 for n, v in self.configurations[configuration].items()}
        observed, _ = simulate(_split_keys(keys)[0], fixed, design.template)
        data = dict(design.shared)
        data.update({k: v[0] for k, v in observed.items()})
        return data

    def summary(self):
        """Per configuration x parameter: mean |distance|, quartiles of the distance
        ``(map - mean) / sd``, coverage of the 90% central interval with its Wilson 95%
        interval (scipy), the fraction of collapsed MAPs and the fraction of data sets
        whose largest R-hat over the parameter's elements is below 1.01."""
        import pandas as pd
        from scipy.stats import binomtest

        rows = []
        for (config, parameter), group in self.table.groupby(["configuration", "parameter"],
                                                              sort=False):
            distance = group["distance"].to_numpy(float)
            finite = distance[np.isfinite(distance)]
            quartiles = (np.quantile(finite, [0.25, 0.5, 0.75]) if finite.size
                         else [np.nan] * 3)
            covered = group["covered"].to_numpy()
            known = ~pd.isna(covered)
            hits, trials = int(np.sum(covered[known].astype(bool))), int(np.sum(known))
            if trials:
                ci = binomtest(hits, trials).proportion_ci(0.95, method="wilson")
                coverage, low, high = hits / trials, ci.low, ci.high
            else:
                coverage = low = high = np.nan
            rhat_max = group.groupby("dataset")["rhat"].max()
            rows.append({
                "configuration": config, "parameter": parameter,
                "datasets": group["dataset"].nunique(), "elements": len(group),
                "mean_abs_distance": float(np.mean(np.abs(finite))) if finite.size
                else np.nan,
                "distance_q25": quartiles[0], "distance_median": quartiles[1],
                "distance_q75": quartiles[2],
                "coverage": coverage, "coverage_low": low, "coverage_high": high,
                "collapsed_fraction": float(group["collapsed"].mean()),
                "rhat_below_1_01": float(np.mean(rhat_max.to_numpy(float) < RHAT_THRESHOLD))
                if rhat_max.notna().any() else np.nan,
            })
        return pd.DataFrame(rows)

    def __repr__(self):
        return (f"StudyResult({len(self.configurations)} configuration(s), "
                f"{self.info['settings']['datasets']} data sets each, {len(self.table)} rows)")


class SBCResult:
    """The outcome of :func:`sbc`.

    Attributes
    ----------
    ranks : pandas.DataFrame
        One row per data set x parameter element: ``dataset``, ``parameter``, ``element``,
        ``truth``, ``rank`` (thinned draws below the truth) and ``max_rank``.
    p_value : pandas.DataFrame
        Per element (index): ``parameter``, ``chi_square`` and ``ecdf`` p-values.
    band : dict
        The simultaneous 95% ECDF band (:func:`ecdf_band`): ``z``, ``lower``, ``upper``
        (of the ECDF, at the fractions ``z``) and the adjusted level ``gamma``.
    info : dict
        Settings, device and placement (as :class:`StudyResult`), timings, divergences
        per data set.
    """

    def __init__(self, ranks, p_value, band, info):
        self.ranks = ranks
        self.p_value = p_value
        self.band = band
        self.info = info

    def __repr__(self):
        return (f"SBCResult({self.info['settings']['datasets']} data sets, "
                f"{len(self.p_value)} elements, max rank {self.info['max_rank']})")


# -------------------------------------------------------------------------- study
def _settings(model, design, configurations, *, datasets, methods, chains, warmup,
              draws, seed, batch_size, restarts) -> dict:
    return {
        "format": _FORMAT,
        "model": model.name,
        "parameters": {n: list(s) for n, s in zip(design.layout.names, design.layout.shapes)},
        "simulated": list(design.observed),
        "template": _digest({k: v for k, v in design.centered.data.items()}),
        "truth": [{k: np.asarray(v).tolist() for k, v in c.items()} for c in configurations],
        "datasets": datasets, "methods": list(methods), "chains": chains, "warmup": warmup,
        "draws": draws, "seed": seed, "batch_size": batch_size, "restarts": restarts,
        "x64": bool(jax.config.jax_enable_x64),
    }


def _open_directory(directory, settings) -> tuple[pathlib.Path, list]:
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    index = path / _INDEX
    if not index.exists():
        atomic_write(index, json.dumps({"settings": settings, "done": []}, indent=1).encode())
        return path, []
    try:
        stored = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"directory={str(directory)!r}: cannot read {_INDEX}: {e}") \
            from e
    old = stored.get("settings", {})
    differing = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if differing:
        raise ConfigurationError(
            f"directory={str(directory)!r} holds a study with other settings ({differing} "
            "differ); use a new directory or the same settings to resume it")
    done = [entry for entry in stored.get("done", []) if (path / entry).exists()]
    return path, done


def _batch_file(config: int, batch: int) -> str:
    return f"configuration-{config}-batch-{batch}.npz"


def study(model, truth, data=None, *, datasets: int = 100, methods=METHODS, chains: int = 4,
          warmup: int = 1000, draws: int = 1000, seed: int = 0, batch_size: int | None = None,
          progress: bool = True, directory=None, restarts: int = 4,
          lockstep_free: bool = False, devices=None,
          _after_batch: Callable | None = None) -> StudyResult:
    """Simulate data sets at true parameter values and fit each with MAP and NUTS.

    For every configuration of true values, ``datasets`` data sets are simulated from the
    model (:meth:`~hbm.Model.simulate`) with the design of the template ``data`` (group
    sizes, covariates, ...): the data keys the likelihood explains are replaced by
    simulated values, every other key is kept. Parameters not given in ``truth`` are
    drawn from their prior given the ones that are (so ``{"tau": 0.1}`` draws new group
    effects per data set), and the table's ``truth`` is the value used. Every data set is
    fitted with the classical MAP (``jacobian=False``, centered parameterization), the MAP
    with the Jacobian (the mode of the unconstrained density, non-centered) and NUTS
    (non-centered, ``hbm.sample``'s warmup), each compiled once per shape and vectorized
    over data sets and chains (:mod:`hbm.batch`); draws are reduced on the device. Batches of
    ``batch_size`` data sets stream through the compiled programs, each split over the
    local devices and, after ``jax.distributed.initialize``, over the processes
    (:mod:`hbm.placement`); the table does not depend on the placement.

    Parameters
    ----------
    model : hbm.Model
        A model that can simulate (not :meth:`~hbm.Model.from_logdensity`).
    truth : dict, list of dict or pandas.DataFrame
        True values ``name -> value`` (of the parameter's shape); a list of such dicts or
        a DataFrame (one row per configuration) is a grid of configurations.
    data : dict
        The template data set.
    datasets : int
        Data sets per configuration.
    methods : tuple of str
        ``"map"`` (both MAPs) and/or ``"nuts"``; ``"advi"`` is not supported yet.
    chains, warmup, draws
        NUTS chains per data set, warmup iterations and kept draws per chain.
    seed : int
        The same seed gives the same study, whatever the batch size.
    batch_size : int, optional
        Data sets per compiled call (default: all of a configuration at once).
    progress : bool
        A tqdm progress bar over batches.
    directory : str or path-like, optional
        Each finished batch is written there (``.npz`` per batch and a JSON index with the
        settings, written atomically); a study called again with the same directory and
        settings continues from the batches done; other settings raise ConfigurationError.
    restarts : int
        L-BFGS restarts per data set for each MAP.
    lockstep_free : bool
        Run NUTS without lockstep: every chain of every data set of a batch advances its
        own trajectory one leapfrog step per iteration of one shared loop
        (:func:`hbm.samplers.lockstep_free.run_lockstep_free_chains`), instead of waiting
        for the longest tree of the batch at every transition; an eighth of the batch's
        chains run at once, and a lane whose chain is done takes the next one
        (:data:`hbm.batch.REFILL`), so the batch waits for its slowest chains only once.
        Same keys, same decisions (exactly in float64; in float32 rounding can
        eventually send a chain another way). On a 2-core CPU, radon-sized data sets x 4
        chains run 2.1-3.2x as many data sets per second as with lockstep (normal
        family; 1.3-1.6x logistic; ``benchmarks/study.py``). Off by default: its table
        equals the lockstep one only to rounding, and across device counts too (the
        lockstep table is the same bit for bit on any placement). The useful
        fraction is ``.info["useful_leapfrog_fraction"]``.
    devices : None, int or sequence of jax.Device
        Where each batch runs: None (default) splits it over every local device, a number
        ``n`` over the first ``n``, or over the devices given (local to the calling
        process), as far as the batch fills them with at least two data sets each
        (padded with further data sets, dropped). A model that calls LAPACK keeps one
        device on CPU (see :mod:`hbm.inference.chains`). The table is the same bit for
        bit whatever the placement (:mod:`hbm.placement`). With several processes (``jax.distributed``), every
        process makes the same call: each fits its share of every batch on its own
        devices, the results are gathered, and every process returns the same result;
        process 0 alone reads and writes ``directory``. ``.info`` records the placement.

    Returns
    -------
    StudyResult
        ``.table``: a tidy DataFrame, one row per configuration x data set x parameter
        element, with columns ``configuration, dataset, parameter, element, truth, map,
        map_jacobian, mean, median, sd, q05, q95, distance`` ((map - mean) / sd),
        ``covered`` (q05 <= truth <= q95), ``collapsed`` (the classical MAP of a positive
        scale parameter below 1e-3 x its posterior median, or its log below -15: lme4's
        singular fit), ``rhat`` (rank-normalized split R-hat, Vehtari et al. 2021),
        ``ess_bulk``, ``divergences`` (per data set); ``.summary()`` per configuration x
        parameter; ``.info`` (timings, devices and processes, settings).
    """
    from hbm.batch import REFILL, build_batched_map, build_batched_nuts, dataset_keys

    _check_model(model)
    datasets = check_int("datasets", datasets, 1)
    chains = check_int("chains", chains, 1)
    warmup = check_int("warmup", warmup, 0)
    draws = check_int("draws", draws, 4)
    seed = check_int("seed", seed, 0)
    restarts = check_int("restarts", restarts, 1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    methods = _check_methods(methods)
    design = _design(model, data)
    configurations = _truth_configurations(truth, design)
    batch = min(batch_size or datasets, datasets)
    settings = _settings(model, design, configurations, datasets=datasets,
                         methods=methods, chains=chains, warmup=warmup, draws=draws, seed=seed,
                         batch_size=batch, restarts=restarts)
    placement = resolve_placement(devices, batch,
                                  linear_algebra=lambda: _calls_linear_algebra(design))
    check_same_everywhere(placement, "study settings",
                          json.dumps([settings, bool(lockstep_free)], sort_keys=True))
    lanes = placement.lanes
    first_lane = placement.process_index * lanes  # this process's slice of a padded batch
    path = pathlib.Path(directory) if directory is not None else None
    writer = path is not None and placement.process_index == 0

    def read_directory():
        _, entries = _open_directory(path, settings)
        stored = {}
        for entry in entries:
            parts = entry[:-4].split("-")
            with np.load(path / entry) as f:
                stored[(int(parts[1]), int(parts[3]))] = {n: f[n] for n in f.files}
        return entries, stored

    done, results = (from_process_zero(placement, read_directory) if path is not None
                     else ([], {}))

    def build():
        programs = {"simulate": _build_simulator(model, design)}
        if "map" in methods:
            programs["map"] = build_batched_map(design.centered, jacobian=False,
                                                restarts=restarts)
            programs["map_jacobian"] = build_batched_map(design.noncentered, jacobian=True,
                                                         restarts=restarts)
        if "nuts" in methods:
            programs["nuts"] = build_batched_nuts(design.noncentered, chains=chains,
                                                  warmup=warmup, draws=draws,
                                                  lockstep_free=bool(lockstep_free),
                                                  refill=REFILL if lockstep_free else 1)
        return programs

    key = ("study", design.centered.signature, methods, chains, warmup, draws, restarts,
           bool(lockstep_free))
    programs = dict(_cached_programs(model, key, build))
    simulate = programs.pop("simulate")
    runners = _cached_programs(model, key + (placement.devices,), lambda: {
        name: shard_program(p, placement, (True, True, False)) for name, p in programs.items()})
    k = design.layout.size
    batches_per_config = -(-datasets // batch)
    seconds = {name: 0.0 for name in ("simulate", *programs, "gather")}
    resumed = len(results)
    fractions = []
    start_all = time.perf_counter()
    bar = _progress(len(configurations) * batches_per_config, len(results),
                    progress and placement.process_index == 0, "study")
    try:
        for c, fixed in enumerate(configurations):
            fixed_j = {n: jnp.asarray(v, dtype=jnp.result_type(float)) for n, v in fixed.items()}
            for b in range(batches_per_config):
                if (c, b) in results:
                    continue
                first = b * batch
                count = min(batch, datasets - first)
                keys = dataset_keys(seed, c * datasets + first + first_lane, lanes)
                sim_keys, map_keys, mapj_keys, nuts_keys = _split_keys(keys)
                t0 = time.perf_counter()
                observed, truth_flat = jax.block_until_ready(
                    simulate(sim_keys, fixed_j, design.template))
                seconds["simulate"] += time.perf_counter() - t0
                local = {"truth": np.asarray(truth_flat)}
                nan = np.full((lanes, k), np.nan)
                for column in _COLUMNS:
                    local[column] = nan
                local["divergences"] = np.full(lanes, -1, np.int64)
                for name, run in runners.items():
                    t0 = time.perf_counter()
                    if name == "nuts":
                        fit = jax.device_get(run(nuts_keys, observed, design.shared))
                        s = fit.summary
                        for column in ("mean", "median", "sd", "q05", "q95"):
                            local[column] = np.asarray(getattr(s, column))
                        local["rhat"] = np.asarray(s.rhat_rank)
                        local["ess_bulk"] = np.asarray(s.ess_bulk)
                        local["divergences"] = np.asarray(fit.divergences).astype(np.int64)
                        if fit.useful_leapfrog_fraction is not None:
                            local["fraction"] = np.asarray(fit.useful_leapfrog_fraction)
                    else:
                        mode = jax.device_get(run(map_keys if name == "map" else mapj_keys,
                                                  observed, design.shared))
                        local[name] = np.asarray(mode.constrained)
                    seconds[name] += time.perf_counter() - t0
                t0 = time.perf_counter()
                gathered = gather_rows(placement, local)
                seconds["gather"] += time.perf_counter() - t0
                if "fraction" in gathered:  # per device loop; the same on its lanes
                    fractions.append(float(np.mean(gathered.pop("fraction"))))
                out = {name: value[:count] for name, value in gathered.items()}
                results[(c, b)] = out
                if writer:
                    name = _batch_file(c, b)
                    atomic_write(path / name, npz_bytes(out))
                    done.append(name)
                    atomic_write(path / _INDEX, json.dumps(
                        {"settings": settings, "done": done}, indent=1).encode())
                bar.update(1)
                if _after_batch is not None:
                    _after_batch(c, b)
    finally:
        bar.close()
    seconds["total"] = time.perf_counter() - start_all
    table = _study_table(design, configurations, results, datasets, batch,
                         batches_per_config)
    device = placement.devices[0]
    info = {
        "settings": settings,
        "device": str(device), "platform": device.platform,
        **placement_info(placement),
        "seconds": seconds,
        "compilations": {name: p.traces() for name, p in programs.items()},
        "resumed_batches": resumed,
        # lockstep_free=True: leapfrog steps / gradient slots, mean over the batches run
        # (and over the devices: each runs its own loop)
        "useful_leapfrog_fraction": float(np.mean(fractions)) if fractions else None,
    }
    result = StudyResult(table, [{n: np.asarray(v) for n, v in c.items()}
                                 for c in configurations], info)
    result._replay = (simulate, design, datasets, seed)
    return result


def _check_methods(methods) -> tuple:
    if isinstance(methods, str):
        methods = (methods,)
    try:
        methods = tuple(methods)
    except TypeError as e:
        raise ConfigurationError(f"methods must be a tuple of names from {METHODS}") from e
    if not methods:
        raise ConfigurationError(f"methods is empty; choose from {METHODS}")
    for m in methods:
        if m == "advi":
            raise ConfigurationError("methods='advi' is not supported yet in hbm.study; "
                                     f"choose from {METHODS}")
        if m not in METHODS:
            raise ConfigurationError(f"unknown method {m!r} in methods; choose from {METHODS}")
    return tuple(dict.fromkeys(methods))


def _study_table(design, configurations, results, datasets, batch, batches_per_config):
    import pandas as pd

    k = design.layout.size
    frames = []
    for c in range(len(configurations)):
        parts = [results[(c, b)] for b in range(batches_per_config)]
        cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        n = cols["truth"].shape[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = (cols["map"] - cols["mean"]) / cols["sd"]
            log_map = np.log(np.where(design.positive, cols["map"], np.nan))
        covered = (cols["q05"] <= cols["truth"]) & (cols["truth"] <= cols["q95"])
        collapsed = design.positive & (
            (cols["map"] < COLLAPSE_RATIO * cols["median"]) | (log_map < LOG_BOUNDARY))
        frame = {
            "configuration": np.full(n * k, c),
            "dataset": np.repeat(np.arange(n), k),
            "parameter": np.tile(np.asarray(design.parameters, dtype=object), n),
            "element": np.tile(np.asarray(design.labels, dtype=object), n),
            "truth": cols["truth"].ravel(),
        }
        for name in ("map", "map_jacobian", "mean", "median", "sd", "q05", "q95"):
            frame[name] = cols[name].ravel()
        frame["distance"] = distance.ravel()
        has_nuts = np.isfinite(cols["q05"]).ravel()
        frame["covered"] = pd.array(np.where(has_nuts, covered.ravel(), False), "boolean")
        frame["covered"][~has_nuts] = pd.NA
        frame["collapsed"] = collapsed.ravel()
        frame["rhat"] = cols["rhat"].ravel()
        frame["ess_bulk"] = cols["ess_bulk"].ravel()
        frame["divergences"] = np.repeat(cols["divergences"], k)
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------- SBC
class _RankProgram:
    """A jitted SBC program over a batch of data sets and the number of its traces."""

    def __init__(self, jitted, traces):
        self._jitted = jitted
        self._traces = traces

    def __call__(self, *args):
        return self._jitted(*args)

    def traces(self) -> int:
        return self._traces[0]


def _build_rank_program(bound, *, chains, warmup, draws, thin, posterior_draws=None,
                        max_tree_depth=10, target_accept=0.8, radius=2.0):
    """``run(keys (S,), batched, shared, truth (S, k)) -> (ranks (S, k), divergences (S,))``.

    Per data set: ``chains`` NUTS chains (``hbm.sample``'s warmup), every ``thin``-th
    kept draw of each, and the number of those draws below the truth per element, all on the device.
    ``posterior_draws(key, data) -> (chains, draws, k)`` replaces NUTS (tests: an exact
    sampler, or a deliberately wrong one).
    """
    from hbm.batch import build_chain_draws

    chain_draws = build_chain_draws(bound, warmup=warmup, draws=draws,
                                    max_tree_depth=max_tree_depth,
                                    target_accept=target_accept, radius=radius)
    traces = [0]

    def one_chain(key, data):
        values, divergent, _, _ = chain_draws(key, data)
        return values, divergent

    def one_dataset(key, batched, shared, truth):
        data = dict(shared)
        data.update(batched)
        if posterior_draws is None:
            keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(chains))
            values, divergent = jax.vmap(one_chain, in_axes=(0, None))(keys, data)
            divergences = divergent.sum()
        else:
            values = posterior_draws(key, data)
            divergences = jnp.zeros((), jnp.int32)
        kept = values[:, ::thin]
        ranks = jnp.sum(kept < truth, axis=(0, 1))
        return ranks, divergences

    def run_traced(keys, batched, shared, truth):
        traces[0] += 1
        return jax.vmap(one_dataset, in_axes=(0, 0, None, 0))(keys, batched, shared, truth)

    return _RankProgram(jax.jit(run_traced), traces)


def _bin_counts(max_rank: int, bins: int) -> np.ndarray:
    """How many of the rank values 0..max_rank fall in each of ``bins`` equal bins."""
    return np.bincount((np.arange(max_rank + 1) * bins) // (max_rank + 1), minlength=bins)


def chi_square_p_values(ranks: np.ndarray, max_rank: int, bins: int) -> np.ndarray:
    """Chi-square test of uniformity of ``ranks`` (S, k) on 0..max_rank in ``bins`` bins
    (rank ``r`` in bin ``floor(r bins / (max_rank + 1))``, expected counts exact)."""
    from scipy.stats import chi2

    ranks = np.asarray(ranks)
    n = ranks.shape[0]
    expected = n * _bin_counts(max_rank, bins) / (max_rank + 1)
    which = (ranks * bins) // (max_rank + 1)
    observed = np.stack([np.bincount(which[:, j], minlength=bins)
                         for j in range(ranks.shape[1])], axis=1)  # (bins, k)
    statistic = np.sum((observed - expected[:, None]) ** 2 / expected[:, None], axis=0)
    return chi2.sf(statistic, bins - 1)


def _ecdf_thresholds(max_rank: int, points: int):
    """Rank thresholds ``t_k`` and fractions ``z_k = (t_k + 1) / (max_rank + 1)`` at which
    the ECDF is compared: ``P(rank <= t_k) = z_k`` exactly under uniformity."""
    levels = max_rank + 1
    points = min(points, levels)
    t = np.unique((np.arange(1, points) * levels) // points - 1)
    t = t[(t >= 0) & (t < max_rank)]
    return t, (t + 1) / levels


def _min_local_p(counts: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """min over thresholds of the two-sided binomial tail probability of ``counts``
    (..., K) under Binomial(n, z_k)."""
    from scipy.stats import binom

    lower = binom.cdf(counts, n, z)
    upper = binom.sf(counts - 1, n, z)
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper)).min(axis=-1)


def ecdf_test(ranks: np.ndarray, max_rank: int, *, points: int | None = None,
              simulations: int = 2000, alpha: float = 0.05, seed: int = 0):
    """Säilynoja, Bürkner & Vehtari (2022) simultaneous ECDF test of discrete uniformity.

    The ECDF of the ranks (S, k) is compared at ``K`` thresholds with the pointwise
    binomial distributions its counts have under uniformity; the statistic is the smallest
    two-sided pointwise tail probability. Its null distribution is found by simulating
    ``simulations`` samples of S uniform ranks on 0..max_rank: the p-value is the fraction
    of simulated statistics at or below the observed one, and the adjusted level ``gamma``
    (the ``alpha`` quantile of the simulated statistics) gives the simultaneous
    ``1 - alpha`` band of pointwise ``gamma/2`` and ``1 - gamma/2`` binomial quantiles.

    Returns ``(p_values (k,), band)`` with ``band = {"z", "lower", "upper", "gamma"}``
    (the band of the ECDF at the fractions ``z``).
    """
    from scipy.stats import binom

    ranks = np.asarray(ranks)
    n = ranks.shape[0]
    t, z = _ecdf_thresholds(max_rank, points or min(n, max_rank + 1))
    rng = np.random.default_rng([seed, n, max_rank, len(t)])
    null_ranks = rng.integers(0, max_rank + 1, size=(simulations, n))
    null_counts = np.stack([(null_ranks <= ti).sum(axis=1) for ti in t], axis=-1)
    null_stat = np.sort(_min_local_p(null_counts, n, z))
    counts = np.stack([(ranks <= ti).sum(axis=0) for ti in t], axis=-1)  # (k, K)
    observed = _min_local_p(counts, n, z)
    p_values = (np.searchsorted(null_stat, observed, side="right") + 1) / (simulations + 1)
    gamma = float(np.quantile(null_stat, alpha))
    band = {"z": z, "lower": binom.ppf(gamma / 2, n, z) / n,
            "upper": binom.ppf(1 - gamma / 2, n, z) / n, "gamma": gamma}
    return np.minimum(p_values, 1.0), band


def sbc(model, data=None, *, datasets: int = 100, chains: int = 4, warmup: int = 1000,
        draws: int = 1000, thin: int = 10, seed: int = 0, batch_size: int | None = None,
        bins: int | None = None, progress: bool = True, devices=None,
        _posterior_draws: Callable | None = None) -> SBCResult:
    """Simulation-based calibration of NUTS on ``model`` with the design of ``data``.

    For each of ``datasets`` data sets, a truth is drawn from the prior
    (:meth:`~hbm.Model.simulate` without params) and the data keys the likelihood explains
    from the likelihood (every other key of the template is kept); NUTS (non-centered,
    ``hbm.sample``'s warmup, compiled once and vectorized over data sets and chains)
    samples the posterior, and the rank of the truth among every ``thin``-th draw of each chain (the
    count of kept draws below it, per element) is computed on the device. Under a correct
    sampler the ranks are uniform on ``0 .. max_rank`` (Talts et al. 2018), tested per
    element with a binned chi-square test and with the simultaneous ECDF test of
    Säilynoja, Bürkner & Vehtari (2022) (:func:`ecdf_test`).

    Parameters
    ----------
    model : hbm.Model
        A model that can simulate.
    data : dict
        The template data set.
    datasets, chains, warmup, draws, thin
        Data sets; NUTS chains, warmup iterations and draws per chain; keep every
        ``thin``-th draw (``max_rank = chains * ceil(draws / thin)``).
    seed : int
        The same seed gives the same ranks, whatever the batch size.
    batch_size : int, optional
        Data sets per compiled call (default: all at once).
    bins : int, optional
        Chi-square bins (default ``min(20, max(2, datasets // 5), max_rank + 1)``).
    progress : bool
        A tqdm progress bar over batches.
    devices : None, int or sequence of jax.Device
        As :func:`study`: each batch split over every local device by default, and over
        the processes after ``jax.distributed.initialize`` (every process makes the same
        call and returns the same result).

    Returns
    -------
    SBCResult
        ``.ranks`` (one row per data set x element, with ``max_rank``), ``.p_value``
        (per element: ``chi_square`` and ``ecdf``), ``.band`` (for
        :func:`hbm.plots.sbc`), ``.info``.
    """
    import pandas as pd

    from hbm.batch import dataset_keys

    _check_model(model)
    datasets = check_int("datasets", datasets, 1)
    chains = check_int("chains", chains, 1)
    warmup = check_int("warmup", warmup, 0)
    draws = check_int("draws", draws, 1)
    thin = check_int("thin", thin, 1)
    seed = check_int("seed", seed, 0)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    design = _design(model, data)
    max_rank = chains * (-(-draws // thin))
    if bins is None:
        bins = min(20, max(2, datasets // 5), max_rank + 1)
    bins = check_int("bins", bins, 2)
    if bins > max_rank + 1:
        raise ConfigurationError(f"bins={bins} exceeds the {max_rank + 1} possible ranks")
    batch = min(batch_size or datasets, datasets)
    simulate, program = _cached_programs(
        model, ("sbc", design.centered.signature, chains, warmup, draws, thin,
                _posterior_draws),
        lambda: (_build_simulator(model, design),
                 _build_rank_program(design.noncentered, chains=chains, warmup=warmup,
                                     draws=draws, thin=thin,
                                     posterior_draws=_posterior_draws)))
    placement = resolve_placement(devices, batch,
                                  linear_algebra=lambda: _calls_linear_algebra(design))
    check_same_everywhere(placement, "sbc settings", json.dumps(
        [model.name, datasets, chains, warmup, draws, thin, seed, batch, bins]))
    lanes = placement.lanes
    first_lane = placement.process_index * lanes
    run = _cached_programs(
        model, ("sbc", design.centered.signature, chains, warmup, draws, thin,
                _posterior_draws, placement.devices),
        lambda: shard_program(program, placement, (True, True, False, True)))
    ranks, truths, divergences = [], [], []
    seconds = {"simulate": 0.0, "nuts": 0.0, "gather": 0.0}
    start = time.perf_counter()
    bar = _progress(-(-datasets // batch), 0, progress and placement.process_index == 0, "sbc")
    try:
        for first in range(0, datasets, batch):
            count = min(batch, datasets - first)
            keys = dataset_keys(seed, first + first_lane, lanes)
            sim_keys, _, _, nuts_keys = _split_keys(keys)
            t0 = time.perf_counter()
            observed, truth = jax.block_until_ready(simulate(sim_keys, {}, design.template))
            seconds["simulate"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            r, d = jax.device_get(run(nuts_keys, observed, design.shared, truth))
            seconds["nuts"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            r, t, d = gather_rows(placement, (np.asarray(r), np.asarray(truth), np.asarray(d)))
            seconds["gather"] += time.perf_counter() - t0
            ranks.append(r[:count])
            truths.append(t[:count])
            divergences.append(d[:count])
            bar.update(1)
    finally:
        bar.close()
    seconds["total"] = time.perf_counter() - start
    ranks = np.concatenate(ranks).astype(np.int64)
    truths = np.concatenate(truths)
    k = design.layout.size
    table = pd.DataFrame({
        "dataset": np.repeat(np.arange(datasets), k),
        "parameter": np.tile(np.asarray(design.parameters, dtype=object), datasets),
        "element": np.tile(np.asarray(design.labels, dtype=object), datasets),
        "truth": truths.ravel(),
        "rank": ranks.ravel(),
        "max_rank": max_rank,
    })
    chi = chi_square_p_values(ranks, max_rank, bins)
    ecdf, band = ecdf_test(ranks, max_rank, seed=seed)
    p_value = pd.DataFrame({"parameter": design.parameters, "chi_square": chi, "ecdf": ecdf},
                           index=pd.Index(design.labels, name="element"))
    device = placement.devices[0]
    info = {
        "settings": {"model": model.name, "datasets": datasets, "chains": chains,
                     "warmup": warmup, "draws": draws, "thin": thin, "seed": seed,
                     "batch_size": batch, "bins": bins,
                     "x64": bool(jax.config.jax_enable_x64)},
        "max_rank": max_rank, "device": str(device), "platform": device.platform,
        **placement_info(placement),
        "seconds": seconds, "compilations": program.traces(),
        "divergences": np.concatenate(divergences),
    }
    return SBCResult(table, p_value, band, info)


__all__ += ["chi_square_p_values", "ecdf_test"]
