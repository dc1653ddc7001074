"""Mass-matrix adaptation on posteriordb models: min bulk ESS per gradient, per metric and
warmup schedule.

For every model of :mod:`benchmarks.posteriordb_models` and every configuration below,
NUTS runs ``--chains`` chains of ``--warmup`` + ``--draws`` iterations and the table
reports the minimum bulk ESS over the constrained parameters (``arviz.ess``,
``method="bulk"``), the gradient evaluations (leapfrog steps) of warmup and of sampling,
all chains, min bulk ESS per 1000 gradients (of the whole run and of sampling alone),
the ratio of warmup to sampling gradients (the issue's target: at most 2) and the
divergences.

Configurations (``--configs``), each a set of ``hbm.sample`` arguments: ``stan/diag``
(the default), ``stan/dense`` (``dense_mass=True``), ``stan/diag_grad``, ``stan/lowrank``,
``early/diag``, ``early/diag_grad`` and ``early/lowrank`` (``warmup_schedule/metric``).
Every row runs through ``hbm.sample``: the engine's one program, with the metric
estimators of :mod:`hbm.samplers.mass_matrix` and the schedules of
:mod:`hbm.samplers.schedules`.

Run from the repository root (keep it small on a shared machine)::

    python -m benchmarks.adaptation --models kidiq,surgical --chains 2 --warmup 300 \\
        --draws 300 --out bench-out/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hbm  # noqa: E402
from benchmarks import posteriordb_models  # noqa: E402
from benchmarks.ess_per_second import min_bulk_ess  # noqa: E402
from hbm.diagnostics import HbmWarning  # noqa: E402

#: label -> keyword arguments of hbm.sample
CONFIGS = {
    "stan/diag": {},
    "stan/dense": {"dense_mass": True},
    "stan/diag_grad": {"metric": "diag_grad", "warmup_schedule": "stan"},
    "early/diag": {"metric": "diag", "warmup_schedule": "early"},
    "early/diag_grad": {"metric": "diag_grad", "warmup_schedule": "early"},
    "early/lowrank": {"metric": "lowrank", "warmup_schedule": "early"},
    "stan/lowrank": {"metric": "lowrank", "warmup_schedule": "stan"},
}


# ---------------------------------------------------------------------- measurement


def run_with_sample(model, data, options, *, chains, warmup, draws, seed, reparam):
    """One ``hbm.sample`` run: (constrained draws, warmup grads, sampling grads, divergences)."""
    with warnings.catch_warnings():  # short runs warn about ESS and R-hat; the table says it
        warnings.simplefilter("ignore", HbmWarning)
        fit = hbm.sample(model, data, chains=chains, warmup=warmup, draws=draws, seed=seed,
                         reparam=reparam, progress=False, **options)
    warmup_gradients = int(fit.info["warmup_gradient_evaluations"])
    sampling_gradients = int(np.sum(fit.sample_stats["n_steps"]))
    divergences = int(np.sum(fit.sample_stats["diverging"]))
    return dict(fit.posterior), warmup_gradients, sampling_gradients, divergences


def measure(name, label, options, args):
    model, data = posteriordb_models.load(name)
    row = {"model": name, "config": label}
    start = time.perf_counter()
    posterior, warmup_gradients, sampling_gradients, divergences = run_with_sample(
        model, data, options, chains=args.chains, warmup=args.warmup, draws=args.draws,
        seed=args.seed, reparam=args.reparam)
    row["wall s"] = round(time.perf_counter() - start, 1)
    ess, where = min_bulk_ess(posterior)
    total = warmup_gradients + sampling_gradients
    row.update({
        "min bulk ESS": round(ess, 1),
        "at": where,
        "warmup grads": warmup_gradients,
        "sampling grads": sampling_gradients,
        "ESS/1k grads": round(1000 * ess / total, 2),
        "ESS/1k sampling grads": round(1000 * ess / sampling_gradients, 2),
        "warmup/sampling grads": round(warmup_gradients / sampling_gradients, 2),
        "divergences": divergences,
    })
    return row


def print_table(rows):
    columns = ["model", "config", "min bulk ESS", "at", "warmup grads",
               "sampling grads", "ESS/1k grads", "ESS/1k sampling grads",
               "warmup/sampling grads", "divergences", "wall s"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(posteriordb_models.MODELS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reparam", default="centered",
                        help="as posteriordb writes the models (default) or 'auto'")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--out", default=None, help="folder for adaptation.json")
    args = parser.parse_args(argv)
    for what, names, known in (("models", args.models, posteriordb_models.MODELS),
                               ("configs", args.configs, CONFIGS)):
        unknown = [n for n in names.split(",") if n not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown}; known: {list(known)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    rows = []
    for name in args.models.split(","):
        for label in args.configs.split(","):
            row = measure(name, label, CONFIGS[label], args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print_table(rows)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "adaptation.json").write_text(json.dumps(
            {"settings": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
