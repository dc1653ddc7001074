"""Effective samples per second: hbm's NUTS against BlackJAX, NumPyro and Stan.

Each library runs the identical model (see :mod:`benchmarks._peers`): the non-centered
eight schools and Gelman and Hill's correlated varying intercept and slope radon model.
Per library: the first run (compilation included), then ``--repeats`` runs with the same
shapes and new seeds, timed end to end (warmup + sampling). The minimum bulk ESS
(Vehtari et al. 2021, "Rank-normalization, folding, and localization") is taken over
every non-constant scalar of the constrained draws, parameters and deterministics alike.
Gradient evaluations are the leapfrog steps of warmup and sampling, all chains.

hbm's sampler overhead: the wall time per gradient evaluation of the sampling phase,
divided by the time of one jitted ``vmap(value_and_grad(logdensity))`` over the chains.
Vectorized chains evaluate gradients in lockstep, so the sampling phase costs about
``sum over iterations of max over chains of n_steps`` batched evaluations: the
"batched" figure uses that count, the "per chain" figure the plain sum over chains.

Run from the repository root::

    python -m benchmarks.ess_per_second --models eight_schools,radon --out bench-out/

Peers are optional (``pip install blackjax numpyro pystan``); a missing one is reported
in the table. Default precision is float32 for the JAX libraries, what users run;
``--x64`` switches to float64. Stan always computes in double precision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import warnings

import numpy as np

LIBRARIES = ("hbm", "blackjax", "numpyro", "stan")
MODELS = ("eight_schools", "radon")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs after the first (compiling) one; medians reported")
    parser.add_argument("--x64", action="store_true", help="float64 for the JAX libraries")
    parser.add_argument("--out", default="bench-out/")
    parser.add_argument("--overhead-reps", type=int, default=2000,
                        help="gradient evaluations timed for the bare-gradient reference")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.libraries = [lib for lib in args.libraries.split(",") if lib]
    for m in args.models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {MODELS}")
    for lib in args.libraries:
        if lib not in LIBRARIES:
            parser.error(f"unknown library {lib!r}; choose from {LIBRARIES}")
    return args


# ---------------------------------------------------------------------- metrics
def min_bulk_ess(draws: dict) -> tuple[float, str]:
    """Minimum bulk ESS over every non-constant scalar of ``draws`` (chain, draw, ...)."""
    import arviz as az

    best, where = np.inf, ""
    for name, value in draws.items():
        value = np.asarray(value, np.float64)
        flat = value.reshape(value.shape[:2] + (-1,))
        for i in range(flat.shape[-1]):
            x = flat[..., i]
            if np.ptp(x) <= 1e-12 * max(1.0, np.max(np.abs(x))):
                continue  # a constant (e.g. L[0, 0] = 1)
            ess = float(az.ess(x, method="bulk"))
            if ess < best:
                index = np.unravel_index(i, value.shape[2:]) if value.ndim > 2 else ()
                best, where = ess, name + (str(list(map(int, index))) if index else "")
    return best, where


def _median(values):
    return float(np.median(np.asarray(values, np.float64)))


def summarize(spec, result) -> dict:
    """Timings, ESS and gradient counts of one library (medians over the timed runs)."""
    ess = [min_bulk_ess(spec.derived(d)) for d in result.draws]
    ess_values = [e for e, _ in ess]
    per_second = [e / t for e, t in zip(ess_values, result.seconds)]
    per_kgrad = [1000.0 * e / g for e, g in zip(ess_values, result.gradients)]
    compile_s = result.compile_seconds or [0.0] * len(result.seconds)
    per_second_run = [e / max(t - c, 1e-9) for e, t, c in zip(ess_values, result.seconds,
                                                                compile_s)]
    return {
        "first run s": result.first_seconds,
        "warmup+sampling s": _median(result.seconds),
        "of which compile s": _median(compile_s),
        "min bulk ESS": _median(ess_values),
        "min ESS at": ess[len(ess) // 2][1],
        "ESS/s": _median(per_second),
        "ESS/s excl. compile": _median(per_second_run),
        "gradients": int(_median(result.gradients)),
        "ESS/1k grads": _median(per_kgrad),
    }


# ---------------------------------------------------------------------- overhead
def hbm_overhead(spec, fit, reps: int) -> dict:
    """Sampling-phase time per gradient against a bare jitted vmapped value_and_grad."""
    import jax
    import jax.numpy as jnp

    bound = spec.hbm_model.bind(spec.data)
    xs = jnp.asarray(fit.info["last_position"])  # (chains, d): where the chains ended
    grad_fn = jax.vmap(jax.value_and_grad(bound.logdensity))
    call = jax.jit(grad_fn)
    jax.block_until_ready(call(xs))
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(call(xs))
    per_call = (time.perf_counter() - t) / reps

    # The same evaluations inside one compiled loop: no Python dispatch per evaluation.
    tiny = jnp.asarray(1e-12, xs.dtype)

    def body(_, carry):
        x, acc = carry
        lp, g = grad_fn(x)
        return x + tiny * g, acc + jnp.sum(lp)

    looped = jax.jit(lambda x: jax.lax.fori_loop(0, reps, body, (x, jnp.zeros((), x.dtype))))
    jax.block_until_ready(looped(xs))
    t = time.perf_counter()
    jax.block_until_ready(looped(xs))
    in_loop = (time.perf_counter() - t) / reps

    n_steps = np.asarray(fit.sample_stats["n_steps"], np.int64)  # (chain, draw)
    sampling = float(fit.info["times"]["sampling"])
    batched = int(n_steps.max(axis=0).sum())
    per_chain = int(n_steps.sum())
    per_batched = sampling / batched
    return {
        "sampling s": sampling,
        "gradients (sum over chains)": per_chain,
        "batched gradient steps (sum of max over chains)": batched,
        "s per gradient per chain": sampling / per_chain,
        "s per batched gradient": per_batched,
        "bare vmapped value_and_grad s (jitted loop)": in_loop,
        "bare vmapped value_and_grad s (one jitted call each)": per_call,
        "overhead: batched / bare (loop)": per_batched / in_loop,
        "overhead: batched / bare (per call)": per_batched / per_call,
    }


# ---------------------------------------------------------------------- driving
def _available(library):
    module = {"hbm": "hbm", "blackjax": "blackjax", "numpyro": "numpyro", "stan": "stan"}[library]
    try:
        __import__(module)
        return None
    except Exception as e:  # ImportError, or a broken install
        return f"{type(e).__name__}: {e}"


def check_phase(args, specs) -> dict:
    """Log densities of hbm and the peers at random points, in float64."""
    import jax
    from benchmarks import _peers

    checks = {}
    jax.config.update("jax_enable_x64", True)
    try:
        for name, spec in specs.items():
            rows = _peers.check_logdensities(spec)
            if "stan" in args.libraries and _available("stan") is None:
                try:
                    posterior, _ = _peers.build_stan(spec)
                    rows.append(_peers.check_stan_logdensity(spec, posterior))
                except Exception as e:  # noqa: BLE001 - reported, not fatal
                    rows.append({"peer": "stan", "status": f"check failed ({e})"})
            checks[name] = rows
    finally:
        jax.config.update("jax_enable_x64", bool(args.x64))
    return checks


def main(argv=None):
    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", bool(args.x64))
    from benchmarks import _peers

    precision = "float64" if args.x64 else "float32"
    print(f"hbm ESS/s benchmark: {args.chains} chains x ({args.warmup} warmup + {args.draws} "
          f"draws), {args.repeats} timed run(s) after the first; JAX libraries in {precision} "
          f"(Stan: double); jax {jax.__version__} on {jax.default_backend()} "
          f"({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()})")
    specs = {m: _peers.SPECS[m]() for m in args.models}

    checks = check_phase(args, specs)
    print("\nLog density check (float64, 5 random unconstrained points; peer - hbm):")
    for name, rows in checks.items():
        for row in rows:
            if "spread" in row:
                print(f"  {name:14s} {row['peer']:30s} offset {row['constant offset']:+.6f}  "
                      f"spread {row['spread']:.2e}  {row['status']}")
            else:
                print(f"  {name:14s} {row['peer']:30s} {row['status']}")

    seeds = list(range(1, 2 + args.repeats))
    report = {"settings": {k: v for k, v in vars(args).items()}, "precision": precision,
              "jax": jax.__version__, "checks": checks, "models": {}}
    for name, spec in specs.items():
        rows, notes, overhead = {}, {}, None
        for lib in args.libraries:
            missing = _available(lib)
            if missing is not None:
                notes[lib] = f"not available ({missing})"
                continue
            print(f"\n[{name}] running {lib} ...", flush=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = _peers.RUNNERS[lib](spec, args.chains, args.warmup, args.draws,
                                                 seeds)
                rows[lib] = summarize(spec, result)
                if lib == "hbm":
                    overhead = hbm_overhead(spec, result.extra["fits"][-1], args.overhead_reps)
                    rows[lib]["sampling s"] = overhead["sampling s"]
                if lib == "stan":
                    rows[lib]["first run s"] = result.first_seconds
                    notes[lib] = (f"build {result.extra['build_seconds']:.1f} s (httpstan caches "
                                  "compiled models; counted in 'first run s')")
                print(f"  {rows[lib]}", flush=True)
            except Exception as e:  # noqa: BLE001 - one library failing must not stop the rest
                traceback.print_exc()
                notes[lib] = f"failed ({type(e).__name__}: {e})"
        table = _table(rows)
        print(f"\n=== {name}: {args.chains} chains, {args.warmup}+{args.draws}, {precision} ===")
        print(table.to_string(float_format=lambda v: f"{v:.3g}") if len(table) else "(no runs)")
        for lib, note in notes.items():
            print(f"  {_label(lib)}: {note}")
        if overhead is not None:
            print("  hbm sampler overhead (second run, sampling phase):")
            for key, value in overhead.items():
                print(f"    {key}: {value:.4g}" if isinstance(value, float) else
                      f"    {key}: {value}")
        report["models"][name] = {"table": json.loads(table.to_json(orient="index")),
                                  "notes": notes, "hbm_overhead": overhead}

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"ess_per_second_{precision}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\nwrote {path}")
    return report


def _label(lib):
    return {"hbm": "hbm", "blackjax": "BlackJAX", "numpyro": "NumPyro", "stan": "Stan"}[lib]


def _table(rows):
    import pandas as pd

    table = pd.DataFrame.from_dict(rows, orient="index")
    if "hbm" in rows and len(table):
        table["hbm ESS/s ratio"] = rows["hbm"]["ESS/s"] / table["ESS/s"]
        table["hbm ESS/1k-grad ratio"] = rows["hbm"]["ESS/1k grads"] / table["ESS/1k grads"]
    table.index = [_label(i) for i in table.index]
    return table


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
