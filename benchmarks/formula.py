"""A formula model against the hand-written library model: compile time and ESS/s.

Issue 15's target: ``hbm.formula`` models compile and sample within 10% of the
hand-written ones. For each pair (the formulas of ``tests/test_formula_equivalence.py``,
with the library's priors, so both are the same posterior), ``hbm.sample`` runs each
model in this process with its defaults (4 chains, 1000 warmup + 1000 draws, float32),
the formula and library model alternately, ``--repeats`` times after a first run:

* ``compile s``: JAX compilation seconds of the first run (from JAX's own compile-time
  events; hbm's persistent compilation cache is switched off so every first run compiles);
* ``ESS/s``: min bulk ESS over every constrained scalar (``ess_per_second.min_bulk_ess``)
  over the wall seconds of the run without compilation, median over the repeats;
* ``ESS/1k grads``: the same ESS per 1000 gradient evaluations, warmup included, as
  mean +- standard error over the repeats (the two models are the same posterior, so this
  differs only by chance: min bulk ESS of radon's slope sd varies by +-20% between seeds);
* ``us/grad``: wall microseconds per gradient evaluation (all chains) of the timed runs,
  median: the part of ESS/s that the formula's compiled log density decides.

Run from the repository root (in ``.venv-bench``, or any environment with hbm)::

    python -m benchmarks.formula [--models sleepstudy,radon_intercept] [--repeats 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HBM_COMPILATION_CACHE", "0")  # measure compilation, every time

import numpy as np  # noqa: E402

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hbm  # noqa: E402
from benchmarks import _peers  # noqa: E402
from benchmarks.ess_per_second import min_bulk_ess  # noqa: E402
from hbm import dist  # noqa: E402
from hbm.diagnostics import HbmWarning  # noqa: E402


def _sd(values):
    return float(np.std(np.asarray(values, dtype=float), ddof=1))


def sleepstudy():
    df = hbm.datasets.load("sleepstudy")
    sd_y = _sd(df["Reaction"])
    formula = hbm.formula("Reaction ~ Days + (Days | Subject)", df, priors={
        "sd_Subject": dist.HalfNormal(np.array([sd_y, sd_y / _sd(df["Days"])])),
        "L": dist.LKJCholesky(2, 2.0), "sigma": dist.HalfNormal(sd_y)})
    return hbm.models.sleepstudy(df), formula


def _radon(slope):
    df = hbm.datasets.load("radon_mn")
    sd_y = _sd(df["log.radon"])
    sd = np.array([sd_y, sd_y / _sd(df["basement"])]) if slope else sd_y
    priors = {"sd": dist.HalfNormal(sd), "sigma": dist.HalfNormal(sd_y)}
    if slope:
        priors["L_county"] = dist.LKJCholesky(2, 2.0)
        library = hbm.models.radon_varying_intercept_slope(df)
        text = "log.radon ~ basement + (basement | county)"
    else:
        library = hbm.models.radon_varying_intercept(df)
        text = "log.radon ~ basement + (1 | county)"
    return library, hbm.formula(text, df, priors=priors)


PAIRS = {
    "sleepstudy": sleepstudy,
    "radon_intercept": lambda: _radon(False),
    "radon_intercept_slope": lambda: _radon(True),
}


def run(model, data, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HbmWarning)
        with _peers._Timer() as timer:
            fit = hbm.sample(model, data, seed=seed, progress=False, log_likelihood=False)
    gradients = (int(fit.info["warmup_gradient_evaluations"])
                 + int(np.sum(np.asarray(fit.sample_stats["n_steps"], np.int64))))
    ess, _ = min_bulk_ess(dict(fit.posterior))
    seconds = timer.seconds - timer.compile_seconds
    return {"compile_s": timer.compile_seconds, "ess_per_s": ess / seconds,
            "ess_per_1k_grads": 1000.0 * ess / gradients,
            "us_per_grad": 1e6 * seconds / gradients}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(PAIRS))
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", default=None, help="folder for formula.json")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        (lib_model, lib_data), (f_model, f_data) = PAIRS[name]()
        runs = {"library": [], "formula": []}
        for repeat in range(args.repeats + 1):  # the first run of each compiles
            for label, (model, data) in (("library", (lib_model, lib_data)),
                                         ("formula", (f_model, f_data))):
                runs[label].append(run(model, data, seed=repeat))
        row = {"model": name}
        for label, results in runs.items():
            row[f"{label}_compile_s"] = round(results[0]["compile_s"], 2)
            timed = results[1:]
            for key in ("ess_per_s", "us_per_grad"):
                row[f"{label}_{key}"] = round(float(np.median([r[key] for r in timed])), 2)
            per_grad = np.array([r["ess_per_1k_grads"] for r in timed])
            row[f"{label}_ess_per_1k_grads"] = round(float(per_grad.mean()), 2)
            row[f"{label}_ess_per_1k_grads_se"] = round(
                float(per_grad.std(ddof=1) / np.sqrt(len(per_grad))) if len(per_grad) > 1
                else float("nan"), 2)
        for key in ("compile_s", "ess_per_s", "ess_per_1k_grads", "us_per_grad"):
            row[f"ratio_{key}"] = round(row[f"formula_{key}"] / row[f"library_{key}"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = ["model", "library_compile_s", "formula_compile_s", "ratio_compile_s",
               "library_us_per_grad", "formula_us_per_grad", "ratio_us_per_grad",
               "library_ess_per_s", "formula_ess_per_s", "ratio_ess_per_s"]
    print("\n| " + " | ".join(columns) + " | ESS/1k grads, library | formula | ratio |")
    print("|" + "---|" * (len(columns) + 3))
    for row in rows:
        per_grad = [f"{row[f'{label}_ess_per_1k_grads']} +- "
                    f"{row[f'{label}_ess_per_1k_grads_se']}" for label in runs]
        print("| " + " | ".join(str(row[c]) for c in columns) + " | "
              + " | ".join(per_grad) + f" | {row['ratio_ess_per_1k_grads']} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "formula.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
