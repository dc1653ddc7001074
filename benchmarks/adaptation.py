"""Mass-matrix adaptation: min bulk ESS per gradient, per metric and warmup schedule, on
the library's hierarchical models and posteriordb posteriors, with peers on the same
log density.

For every model below, every hbm configuration (``warmup_schedule/metric``) and every
seed, ``hbm.sample`` runs ``--chains`` chains of ``--warmup`` + ``--draws`` iterations
(and, for the ESS-per-draw table, the same with the shorter ``--short-warmups``). A row
holds the minimum bulk ESS over every constrained scalar (``arviz.ess``, ``method=
"bulk"``), the gradient evaluations (leapfrog steps) of warmup and of sampling, all
chains, min ESS per 1000 gradients of the whole run (warmup included: the figure the
issue's targets use), ESS per second (compilation excluded: JAX reports it), the ratio
of warmup to sampling gradients and the divergences.

Peers run on exactly hbm's flat unconstrained log density of the model (the same
``BoundModel.logdensity``, jitted), so only the adaptation differs:

* ``blackjax``: ``blackjax.window_adaptation(nuts)`` (Stan's windows, diagonal), chains
  vmapped, as in :mod:`benchmarks._peers`.
* ``nutpie`` and ``nutpie_lowrank``: nutpie's Rust NUTS and adaptation (its default
  gradient-based diagonal, and ``low_rank_modified_mass_matrix=True``) on the jitted
  value-and-gradient through ``nutpie.compiled_pyfunc.from_pyfunc``. Its ESS per
  gradient is nutpie's; its ESS/s is not (every gradient crosses into Python).
* ``stan``: pystan on the Stan program of :mod:`benchmarks._peers` where one exists
  (eight schools, radon varying intercept and slope); Stan's draws, Stan's gradients.

Models: eight schools (non-centered), the radon models of :mod:`hbm.models`, sleepstudy,
cbpp, epil and penicillin (``reparam="noncentered"``), and the posteriordb posteriors of
:mod:`benchmarks.posteriordb_models` (as posteriordb writes them, ``"centered"``).

Tables: ESS per 1000 gradients per model and configuration with the ratio to
``stan/diag`` (hbm's Stan-style default before this benchmark) and the median ratio;
warmup/sampling gradients; ESS per draw with shorter warmups; ESS/s; divergences.

Run from the repository root (in ``.venv-bench`` for the peers)::

    python -m benchmarks.adaptation --out bench-out/            # everything, 3 seeds
    python -m benchmarks.adaptation --models kidiq,surgical --configs stan/diag,early/diag_grad \\
        --peers none --seeds 1 --short-warmups none
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hbm  # noqa: E402
from benchmarks import _peers, posteriordb_models  # noqa: E402
from benchmarks.ess_per_second import min_bulk_ess  # noqa: E402
from hbm.diagnostics import HbmWarning  # noqa: E402

#: label -> keyword arguments of hbm.sample
CONFIGS = {
    "stan/diag": {"metric": "diag", "warmup_schedule": "stan"},
    "stan/diag_grad": {"metric": "diag_grad", "warmup_schedule": "stan"},
    "early/diag": {"metric": "diag", "warmup_schedule": "early"},
    "early/diag_grad": {"metric": "diag_grad", "warmup_schedule": "early"},
    "early/lowrank": {"metric": "lowrank", "warmup_schedule": "early"},
    "stan/lowrank": {"metric": "lowrank", "warmup_schedule": "stan"},
    "stan/dense": {"metric": "dense", "warmup_schedule": "stan"},
}
DEFAULT_CONFIGS = ("stan/diag", "stan/diag_grad", "early/diag", "early/diag_grad",
                   "early/lowrank")
BASELINE = "stan/diag"
#: models whose log density is not computable in float32, and why: they are skipped
#: without ``--x64`` (run them on their own with it and merge with ``--include``)
NEEDS_X64 = {
    "gp_pois_regr": "the kernel matrix's condition number is ~1e9 near rho's prior mean, "
                    "past a float32 Cholesky (NaN log densities, thousands of divergences)",
}
PEERS = ("blackjax", "nutpie", "nutpie_lowrank", "stan")


def _library(name, reparam="noncentered", spec=None, **options):
    def load():
        return getattr(hbm.models, name)(**options)
    return load, reparam, spec


#: name -> (() -> (model, data), reparam, () -> benchmarks._peers.Spec or None)
MODELS = {
    "eight_schools": _library("eight_schools", spec=_peers.eight_schools_spec,
                              centered=False),
    "radon_intercept": _library("radon_varying_intercept"),
    "radon_intercept_slope": _library("radon_varying_intercept_slope",
                                      spec=_peers.radon_spec),
    "radon_uranium": _library("radon_uranium"),
    "sleepstudy": _library("sleepstudy"),
    "cbpp": _library("cbpp"),
    "epil": _library("epil"),
    "penicillin": _library("penicillin"),
    **{name: (lambda name=name: posteriordb_models.load(name), "centered", None)
       for name in posteriordb_models.MODELS},
}


@lru_cache(maxsize=None)
def load(name):
    """(model, data, reparam, bound model) of a benchmark model."""
    loader, reparam, _ = MODELS[name]
    model, data = loader()
    return model, data, reparam, model.bind(data, reparam=reparam)


# ---------------------------------------------------------------------- hbm


def run_hbm(name, label, *, chains, warmup, draws, seed):
    model, data, reparam, _ = load(name)
    with warnings.catch_warnings():  # short runs warn about ESS and R-hat; the table says it
        warnings.simplefilter("ignore", HbmWarning)
        with _peers._Timer() as timer:
            fit = hbm.sample(model, data, chains=chains, warmup=warmup, draws=draws,
                             seed=seed, reparam=reparam, progress=False,
                             log_likelihood=False, **CONFIGS[label])
    warmup_gradients = int(fit.info["warmup_gradient_evaluations"])
    sampling_gradients = int(np.sum(np.asarray(fit.sample_stats["n_steps"], np.int64)))
    divergences = int(np.sum(fit.sample_stats["diverging"]))
    return (dict(fit.posterior), warmup_gradients, sampling_gradients, divergences,
            timer.seconds - timer.compile_seconds)


# ---------------------------------------------------------------------- peers


@lru_cache(maxsize=None)
def _blackjax_programs(name, warmup, draws):
    _, data, _, bound = load(name)
    return _peers.blackjax_programs(jax.jit(lambda x: bound.logdensity(x, data)), warmup,
                                    draws)


@lru_cache(maxsize=None)
def _constrain_program(name):
    _, data, _, bound = load(name)
    return jax.jit(jax.vmap(jax.vmap(lambda x: bound.constrain(x, data))))


def run_blackjax(name, *, chains, warmup, draws, seed):
    _, _, _, bound = load(name)
    warm, sample = _blackjax_programs(name, warmup, draws)
    init_key, warm_key, sample_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    dtype = jnp.result_type(float)
    positions = jax.random.uniform(init_key, (chains, bound.size), dtype, -2.0, 2.0)
    with _peers._Timer() as timer:
        state, step_size, inverse_mass, warm_steps = _peers._block(
            warm(jax.random.split(warm_key, chains), positions))
        xs, steps, divergent = _peers._block(
            sample(jax.random.split(sample_key, chains), state, step_size, inverse_mass))
    posterior = {k: np.asarray(v) for k, v in _constrain_program(name)(xs).items()}
    return (posterior, int(np.sum(np.asarray(warm_steps, np.int64))),
            int(np.sum(np.asarray(steps, np.int64))), int(np.sum(divergent)),
            timer.seconds - timer.compile_seconds)


@lru_cache(maxsize=None)
def _nutpie_model(name):
    from nutpie.compiled_pyfunc import from_pyfunc

    _, data, _, bound = load(name)
    dtype = jnp.result_type(float)
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: bound.logdensity(x, data)))
    constrain = jax.jit(lambda x: bound.constrain(x, data))
    example = constrain(jnp.zeros(bound.size, dtype))
    names = list(example)
    shapes = [tuple(np.shape(example[k])) for k in names]

    def make_logp_fn():
        def logp(x, **_):
            value, grad = value_and_grad(jnp.asarray(x, dtype))
            return float(value), np.asarray(grad, np.float64)
        return logp

    def make_expand_fn(*_):
        def expand(x, **_):
            return {k: np.asarray(v, np.float64) for k, v in
                    constrain(jnp.asarray(x, dtype)).items()}
        return expand

    def initial_point(seed):
        return np.random.default_rng(seed).uniform(-2.0, 2.0, bound.size)

    return from_pyfunc(bound.size, make_logp_fn, make_expand_fn,
                       [np.dtype(np.float64)] * len(names), shapes, names,
                       make_initial_point_fn=initial_point)


def run_nutpie(name, *, chains, warmup, draws, seed, low_rank=False):
    import nutpie

    model = _nutpie_model(name)
    t0 = time.perf_counter()
    trace = nutpie.sample(model, chains=chains, tune=warmup, draws=draws, seed=seed,
                          cores=_peers.usable_cores(), progress_bar=False,
                          low_rank_modified_mass_matrix=low_rank)
    seconds = time.perf_counter() - t0
    warm = int(np.asarray(trace.warmup_sample_stats["n_steps"], np.int64).sum())
    sampling = int(np.asarray(trace.sample_stats["n_steps"], np.int64).sum())
    divergences = int(np.asarray(trace.sample_stats["diverging"]).sum())
    posterior = {k: np.asarray(trace.posterior[k]) for k in trace.posterior.data_vars}
    return posterior, warm, sampling, divergences, seconds


@lru_cache(maxsize=None)
def _stan_spec(name):
    spec_fn = MODELS[name][2]
    return None if spec_fn is None else spec_fn()


def run_stan(name, *, chains, warmup, draws, seed):
    spec = _stan_spec(name)
    # the first seed of run_stan's list is its warm-up run (build, first sampling)
    result = _peers.run_stan(spec, chains, warmup, draws, [seed + 10_000, seed])
    posterior = spec.derived(result.draws[0])
    sampling = result.sampling_gradients[0]
    total = result.gradients[0]
    return posterior, total - sampling, sampling, -1, result.seconds[0]


def peer_available(peer, name) -> bool:
    modules = {"blackjax": "blackjax", "nutpie": "nutpie", "nutpie_lowrank": "nutpie",
               "stan": "stan"}
    try:
        __import__(modules[peer])
    except ImportError:
        return False
    return peer != "stan" or MODELS[name][2] is not None


def run_peer(peer, name, **kwargs):
    if peer == "blackjax":
        return run_blackjax(name, **kwargs)
    if peer in ("nutpie", "nutpie_lowrank"):
        return run_nutpie(name, low_rank=peer == "nutpie_lowrank", **kwargs)
    return run_stan(name, **kwargs)


# ---------------------------------------------------------------------- rows and tables


def make_row(name, config, seed, warmup, draws, chains, result):
    posterior, warmup_gradients, sampling_gradients, divergences, seconds = result
    ess, where = min_bulk_ess(posterior)
    total = warmup_gradients + sampling_gradients
    return {
        "model": name, "config": config, "seed": seed, "warmup": warmup,
        "min bulk ESS": round(ess, 1), "at": where,
        "ESS per draw": round(ess / (chains * draws), 4),
        "warmup grads": warmup_gradients, "sampling grads": sampling_gradients,
        "ESS/1k grads": round(1000 * ess / total, 3),
        "warmup/sampling grads": round(warmup_gradients / max(sampling_gradients, 1), 2),
        "ESS/s": round(ess / max(seconds, 1e-9), 1), "seconds": round(seconds, 2),
        "divergences": divergences,
    }


def _mean(rows, key):
    values = [r[key] for r in rows]
    if not values:
        return float("nan")
    # wall times carry the first run's one-off costs: the median of the seeds for them
    return float(np.median(values) if key == "ESS/s" else np.mean(values))


def _format(value, digits=2):
    if isinstance(value, str):
        return value
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def print_grid(title, row_names, column_names, cell, digits=2, median_row=None):
    print(f"\n{title}")
    width = max(len(n) for n in list(row_names) + ["median ratio"]) + 2
    widths = [max(len(c), 7) + 2 for c in column_names]
    print("".ljust(width) + "".join(c.rjust(w) for c, w in zip(column_names, widths)))
    for r in row_names:
        print(r.ljust(width) + "".join(_format(cell(r, c), digits).rjust(w)
                                       for c, w in zip(column_names, widths)))
    if median_row is not None:
        print(median_row[0].ljust(width) + "".join(
            _format(median_row[1](c), digits).rjust(w) for c, w in zip(column_names, widths)))


def summarize(rows, main_warmup):
    """Per (model, config) means over seeds at the main warmup, and the tables."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    main = [r for r in rows if r["warmup"] == main_warmup]

    def cell_rows(model, config, warmup=main_warmup):
        return [r for r in rows if r["model"] == model and r["config"] == config
                and r["warmup"] == warmup]

    def mean(model, config, key, warmup=main_warmup):
        found = cell_rows(model, config, warmup)
        return _mean(found, key) if found else float("nan")

    def ratio(model, config, key="ESS/1k grads"):
        base = mean(model, BASELINE, key)
        return mean(model, config, key) / base if base > 0 else float("nan")

    def median_ratio(config, key="ESS/1k grads"):
        values = [ratio(m, config, key) for m in models]
        values = [v for v in values if np.isfinite(v)]
        return float(np.median(values)) if values else float("nan")

    summary = {"median ratio to " + BASELINE: {c: median_ratio(c) for c in configs},
               "median ESS/s ratio to " + BASELINE: {c: median_ratio(c, "ESS/s")
                                                     for c in configs}}
    print_grid(f"min bulk ESS per 1000 gradients (warmup {main_warmup} included; mean over "
               "seeds)", models, configs, lambda m, c: mean(m, c, "ESS/1k grads"))
    print_grid(f"ratio to {BASELINE} (ESS per 1000 gradients)", models, configs,
               lambda m, c: ratio(m, c), median_row=("median ratio", median_ratio))
    print_grid("warmup gradients / sampling gradients (max over seeds)", models, configs,
               lambda m, c: max((r["warmup/sampling grads"] for r in cell_rows(m, c)),
                                default=float("nan")))
    print_grid("ESS/s (compilation excluded, median over seeds; nutpie's through Python "
               "callbacks)", models,
               configs, lambda m, c: mean(m, c, "ESS/s"), digits=1,
               median_row=("median ratio", lambda c: median_ratio(c, "ESS/s")))
    print_grid("divergences (sampling, all chains, summed over seeds; stan: -)", models,
               configs, lambda m, c: float(sum(r["divergences"] for r in cell_rows(m, c)))
               if cell_rows(m, c) else float("nan"), digits=0)

    warmups = sorted({r["warmup"] for r in rows})
    if len(warmups) > 1:
        columns = [f"{c}@{w}" for c in configs for w in warmups
                   if any(cell_rows(m, c, w) for m in models)]

        def per_draw_ratio(model, column):
            config, warmup = column.rsplit("@", 1)
            base = mean(model, BASELINE, "ESS per draw")
            return mean(model, config, "ESS per draw", int(warmup)) / base

        def median_per_draw(column):
            values = [per_draw_ratio(m, column) for m in models]
            values = [v for v in values if np.isfinite(v)]
            return float(np.median(values)) if values else float("nan")

        print_grid(f"ESS per draw relative to {BASELINE}@{main_warmup}, by warmup length",
                   models, columns, per_draw_ratio,
                   median_row=("median ratio", median_per_draw))
        summary["median ESS per draw ratio"] = {c: median_per_draw(c) for c in columns}
    print("\n" + json.dumps(summary))
    return summary


# ---------------------------------------------------------------------- command line


def included_rows(paths) -> list:
    """The rows of earlier runs (``adaptation.json`` or a log of printed rows); a later
    file's (model, config, warmup) cells replace those of an earlier one."""
    cells: dict = {}
    for path in paths:
        text = Path(path).read_text()
        try:
            found = json.loads(text)["rows"]  # an adaptation.json
        except (json.JSONDecodeError, KeyError, TypeError):  # a log: one row per line
            found = [json.loads(line) for line in text.splitlines()
                     if line.startswith("{") and '"model"' in line]
        found = [r for r in found if "error" not in r and "skipped" not in r]
        for key in {(r["model"], r["config"], r["warmup"]) for r in found}:
            cells[key] = []
        for r in found:
            cells[(r["model"], r["config"], r["warmup"])].append(r)
    return [r for group in cells.values() for r in group]


def _names(value, known, what, parser):
    if value in ("", "none"):
        return []
    names = value.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what} {unknown}; known: {list(known)}")
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"of {list(CONFIGS)}")
    parser.add_argument("--peers", default=",".join(PEERS), help="or 'none'")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--short-warmups", default="300,500",
                        help="extra warmup lengths for the ESS-per-draw table (hbm only)")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run are first-seed, ..., first-seed + seeds - 1")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--out", default=None, help="folder for adaptation.json")
    parser.add_argument("--include", default=None,
                        help="earlier runs whose rows join the tables, comma-separated: "
                             "adaptation.json files or logs of this script's printed rows; "
                             "a later file's (model, config, warmup) cells replace an "
                             "earlier one's (with --models none: tables only)")
    parser.add_argument("--no-baseline", action="store_true",
                        help=f"do not add {BASELINE} to --configs (its rows come from "
                             "--include)")
    args = parser.parse_args(argv)
    args.model_names = _names(args.models, MODELS, "models", parser)
    args.config_names = _names(args.configs, CONFIGS, "configs", parser)
    if BASELINE not in args.config_names and not args.no_baseline:
        args.config_names.insert(0, BASELINE)
    args.peer_names = _names(args.peers, PEERS, "peers", parser)
    args.short = [int(w) for w in args.short_warmups.split(",")] if args.short_warmups not in (
        "", "none") else []
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    rows = included_rows(args.include.split(",")) if args.include else []
    sizes = dict(chains=args.chains, draws=args.draws)

    def record(name, config, seed, warmup, result):
        row = make_row(name, config, seed, warmup, args.draws, args.chains, result)
        rows.append(row)
        print(json.dumps(row), flush=True)

    for name in args.model_names:
        if name in NEEDS_X64 and not args.x64:
            print(json.dumps({"model": name, "skipped": f"needs --x64: {NEEDS_X64[name]}"}),
                  flush=True)
            continue
        for label in args.config_names:
            for warmup in [args.warmup] + args.short:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    record(name, label, seed, warmup,
                           run_hbm(name, label, warmup=warmup, seed=seed, **sizes))
        for peer in args.peer_names:
            if not peer_available(peer, name):
                continue
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                try:
                    result = run_peer(peer, name, warmup=args.warmup, seed=seed, **sizes)
                except Exception as error:  # a peer failing must not stop the benchmark
                    print(json.dumps({"model": name, "config": peer,
                                      "error": f"{type(error).__name__}: {error}"[:300]}),
                          flush=True)
                    break
                record(name, peer, seed, args.warmup, result)
    summary = summarize(rows, args.warmup)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items()}
        (out / "adaptation.json").write_text(json.dumps(
            {"settings": settings, "rows": rows, "summary": summary}, indent=1))
    return rows


if __name__ == "__main__":
    main()
