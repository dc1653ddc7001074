"""Effective samples per second: hbm's NUTS against BlackJAX, NumPyro, nutpie and Stan.

Each library runs the identical model (see :mod:`benchmarks._peers`): the non-centered
eight schools and Gelman and Hill's correlated varying intercept and slope radon model.
Per library: the first run (compilation included), then ``--repeats`` runs with the same
shapes and new seeds, timed end to end (warmup + sampling). The minimum bulk ESS
(Vehtari et al. 2021, "Rank-normalization, folding, and localization") is taken over
every non-constant scalar of the constrained draws, parameters and deterministics alike.
Gradient evaluations are the leapfrog steps of warmup and sampling, all chains.

Time per gradient: wall seconds divided by the gradient evaluations of all chains, for
the whole run (compilation taken out) and for the sampling phase alone. hbm reports its
phases (``fit.info["times"]``); BlackJAX and NumPyro are timed around their warmup and
sampling calls; nutpie and Stan report neither, so a second run with the same seed and
one draw (an identical warmup, checked by its leapfrog counts) is subtracted.

Single-core rows (``--single-core``, on by default): hbm and BlackJAX once more in a
child process pinned to one core (``os.sched_setaffinity`` before any thread starts,
like ``taskset -c``) with one XLA host device
(``XLA_FLAGS=--xla_force_host_platform_device_count=1``, ``HBM_CPU_DEVICES=1``), so
neither library can use a second core.

hbm's sampler overhead: the wall time per gradient evaluation of the sampling phase,
divided by the time of one jitted ``vmap(value_and_grad(logdensity))`` over the chains.
Vectorized chains evaluate gradients in lockstep, so the sampling phase costs about
``sum over iterations of max over chains of n_steps`` batched evaluations: the
"batched" figure uses that count, the "per chain" figure the plain sum over chains.

Run from the repository root::

    python -m benchmarks.ess_per_second --models eight_schools,radon --out bench-out/

Peers are optional (``pip install -e ".[bench,stan]"``); a missing one is reported in the
table. Default precision is float32 for the JAX libraries, what users run; ``--x64``
switches to float64. nutpie (numba) and Stan always compute in double precision.
"""

from __future__ import annotations

import os

#: Set by the parent for the single-core child: the CPU to pin this process to, before any
#: thread starts (numpy's, JAX's), so that every thread inherits it (like ``taskset -c``).
PIN_VARIABLE = "HBM_BENCH_PIN_CPU"
if os.environ.get(PIN_VARIABLE):
    os.sched_setaffinity(0, {int(os.environ[PIN_VARIABLE])})

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

LIBRARIES = ("hbm", "blackjax", "numpyro", "nutpie", "stan")
MODELS = ("eight_schools", "radon")
SINGLE_CORE_LIBRARIES = ("hbm", "blackjax")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = {"hbm": "hbm", "blackjax": "BlackJAX", "numpyro": "NumPyro", "nutpie": "nutpie",
          "stan": "Stan", "hbm_1core": "hbm (1 core)", "blackjax_1core": "BlackJAX (1 core)"}


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
                        help="gradient evaluations timed for the bare-gradient reference "
                             "(0: skip hbm's overhead figures)")
    parser.add_argument("--single-core", action=argparse.BooleanOptionalAction, default=True,
                        help="also run hbm and BlackJAX pinned to one core (a child process)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the float64 log density check")
    parser.add_argument("--single-core-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.libraries = [lib for lib in args.libraries.split(",") if lib]
    for m in args.models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {MODELS}")
    for lib in args.libraries:
        if lib not in LIBRARIES:
            parser.error(f"unknown library {lib!r}; choose from {LIBRARIES}")
    for name in ("chains", "warmup", "draws"):
        if getattr(args, name) < (2 if name == "draws" else 1):
            parser.error(f"--{name} must be at least {2 if name == 'draws' else 1}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
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
    values = np.asarray(values, np.float64)
    return float(np.median(values)) if values.size else float("nan")


def summarize(spec, result) -> dict:
    """Timings, ESS, gradient counts and time per gradient of one library (medians over
    the timed runs)."""
    ess = [min_bulk_ess(spec.derived(d)) for d in result.draws]
    ess_values = [e for e, _ in ess]
    per_second = [e / t for e, t in zip(ess_values, result.seconds)]
    per_kgrad = [1000.0 * e / g for e, g in zip(ess_values, result.gradients)]
    compile_s = result.compile_seconds or [0.0] * len(result.seconds)
    run_s = [max(t - c, 1e-9) for t, c in zip(result.seconds, compile_s)]
    per_second_run = [e / t for e, t in zip(ess_values, run_s)]
    us_per_grad = [1e6 * t / g for t, g in zip(run_s, result.gradients)]
    us_per_sampling_grad = [1e6 * t / g if g > 0 else float("nan")
                            for t, g in zip(result.sampling_seconds, result.sampling_gradients)]
    return {
        "first run s": result.first_seconds,
        "warmup+sampling s": _median(result.seconds),
        "of which compile s": _median(compile_s),
        "sampling s": _median(result.sampling_seconds),
        "min bulk ESS": _median(ess_values),
        "min ESS at": ess[len(ess) // 2][1],
        "ESS/s": _median(per_second),
        "ESS/s excl. compile": _median(per_second_run),
        "gradients": int(_median(result.gradients)),
        "sampling gradients": int(_median(result.sampling_gradients))
        if result.sampling_gradients else 0,
        "ESS/1k grads": _median(per_kgrad),
        "us/grad (run excl. compile)": _median(us_per_grad),
        "us/grad (sampling)": _median(us_per_sampling_grad),
    }


#: (column, better when larger) compared with hbm's: the table's "÷ hbm" columns and the
#: "hbm ÷ peer" lines.
RATIO_COLUMNS = (("ESS/s", True), ("ESS/s excl. compile", True), ("ESS/1k grads", True),
                 ("us/grad (run excl. compile)", False), ("us/grad (sampling)", False))


def ratios(rows: dict) -> dict:
    """hbm's figures divided by BlackJAX's and nutpie's (and hbm on one core by BlackJAX
    on one core), for each of :data:`RATIO_COLUMNS`."""
    out = {}
    for mine, theirs in (("hbm", "blackjax"), ("hbm", "nutpie"), ("hbm", "numpyro"),
                         ("hbm", "stan"), ("hbm_1core", "blackjax_1core")):
        if mine in rows and theirs in rows:
            out[f"{LABELS[mine]} / {LABELS[theirs]}"] = {
                column: _ratio(rows[mine][column], rows[theirs][column])
                for column, _ in RATIO_COLUMNS}
    return out


def _ratio(a, b):
    a, b = float(a), float(b)
    return a / b if b != 0 and np.isfinite(a) and np.isfinite(b) else float("nan")


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
    modules = {"hbm": ("hbm",), "blackjax": ("blackjax",), "numpyro": ("numpyro",),
               "nutpie": ("nutpie", "pymc"), "stan": ("stan",)}[library]
    try:
        for module in modules:
            __import__(module)
        return None
    except Exception as e:  # ImportError, or a broken install
        return f"{type(e).__name__}: {e}"


def check_phase(args, models) -> dict:
    """Log densities of hbm and the peers at random points, in float64 (the specs built
    anew under float64: hbm's models may hold constants in the default float type)."""
    import jax
    from benchmarks import _peers

    checks = {}
    jax.config.update("jax_enable_x64", True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in models:
                spec = _peers.SPECS[name]()
                rows = _peers.check_logdensities(spec)
                if "stan" in args.libraries and _available("stan") is None:
                    try:
                        posterior, build_seconds = _peers.build_stan(spec)
                        rows.append(_peers.check_stan_logdensity(spec, posterior))
                        rows[-1]["stan.build s (first in this process)"] = build_seconds
                    except Exception as e:  # noqa: BLE001 - reported, not fatal
                        rows.append({"peer": "stan", "status": f"check failed ({e})"})
                checks[name] = rows
    finally:
        jax.config.update("jax_enable_x64", bool(args.x64))
    return checks


def _single_core_env(core: int, own_cache: str | None) -> dict:
    """The environment of the single-core child: pinned to ``core``, one XLA host device,
    hbm told so; without ``own_cache`` (the parent's fresh cache: the child makes its own)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "",
                   os.environ.get("XLA_FLAGS", ""))
    env = dict(os.environ, HBM_CPU_DEVICES="1", **{PIN_VARIABLE: str(core)},
               XLA_FLAGS=(flags + " --xla_force_host_platform_device_count=1").strip())
    if own_cache is not None and env.get("HBM_COMPILATION_CACHE") == own_cache:
        env.pop("HBM_COMPILATION_CACHE")
    return env


def run_single_core(args, own_cache) -> tuple[dict, str]:
    """hbm and BlackJAX again in a child process pinned to one core with one XLA device.

    Returns the child's report (``{}`` when skipped) and a note."""
    libs = [lib for lib in SINGLE_CORE_LIBRARIES if lib in args.libraries]
    if not args.single_core or not libs:
        return {}, "skipped"
    core = min(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "benchmarks.ess_per_second",
                   "--models", ",".join(args.models), "--libraries", ",".join(libs),
                   "--chains", str(args.chains), "--warmup", str(args.warmup),
                   "--draws", str(args.draws), "--repeats", str(args.repeats),
                   "--out", out, "--overhead-reps", "0", "--no-single-core", "--no-check",
                   "--single-core-child"] + (["--x64"] if args.x64 else [])
        print(f"\n[single core] {' '.join(command[1:])} (pinned to core {core}, "
              "XLA_FLAGS=--xla_force_host_platform_device_count=1, HBM_CPU_DEVICES=1) ...",
              flush=True)
        done = subprocess.run(command, cwd=REPO_ROOT, env=_single_core_env(core, own_cache),
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            return {}, f"failed (exit {done.returncode}; output above)"
        precision = "float64" if args.x64 else "float32"
        with open(os.path.join(out, f"ess_per_second_{precision}.json")) as f:
            report = json.load(f)
    env = report["environment"]
    return report, (f"child pinned to CPU {env['cpu affinity']} with {env['jax devices']} "
                    "JAX device(s)")


def _fresh_compilation_cache() -> str | None:
    """Point hbm's persistent compilation cache (which ``import hbm`` turns on for every
    JAX program, the peers' included) at a new empty directory, so that each library's
    first run compiles, unless the caller chose a cache (``HBM_COMPILATION_CACHE`` or
    ``JAX_COMPILATION_CACHE_DIR``). Call before ``import hbm``."""
    if ("HBM_COMPILATION_CACHE" in os.environ or "JAX_COMPILATION_CACHE_DIR" in os.environ
            or "hbm" in sys.modules):
        return None
    directory = tempfile.mkdtemp(prefix="hbm-bench-jax-cache-")
    os.environ["HBM_COMPILATION_CACHE"] = directory
    return directory


def main(argv=None):
    args = parse_args(argv)
    cache = _fresh_compilation_cache()
    try:
        return _run(args, cache)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def _run(args, cache):
    import jax

    jax.config.update("jax_enable_x64", bool(args.x64))
    from benchmarks import _peers

    precision = "float64" if args.x64 else "float32"
    print(f"hbm ESS/s benchmark: {args.chains} chains x ({args.warmup} warmup + {args.draws} "
          f"draws), {args.repeats} timed run(s) after the first; JAX libraries in {precision} "
          f"(nutpie, Stan: double); jax {jax.__version__} on {jax.default_backend()} "
          f"({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()})")
    specs = {m: _peers.SPECS[m]() for m in args.models}
    environment = {"cpu count": os.cpu_count(), "cpu affinity": sorted(os.sched_getaffinity(0)),
                   "jax devices": len(jax.devices()), "jax backend": jax.default_backend(),
                   "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                   "compilation cache": cache or os.environ.get("HBM_COMPILATION_CACHE")
                   or os.environ.get("JAX_COMPILATION_CACHE_DIR"),
                   "versions": _versions(args.libraries)}

    checks = {} if args.no_check else check_phase(args, args.models)
    if checks:
        print("\nLog density check (float64, 5 random unconstrained points; peer - hbm):")
    for name, rows in checks.items():
        for row in rows:
            if "spread" in row:
                print(f"  {name:14s} {row['peer']:30s} offset {row['constant offset']:+.6f}  "
                      f"spread {row['spread']:.2e}  {row['status']}")
            else:
                print(f"  {name:14s} {row['peer']:30s} {row['status']}")

    single_core, single_core_note = ({}, "") if args.single_core_child else \
        run_single_core(args, cache)
    seeds = list(range(1, 2 + args.repeats))
    report = {"settings": {k: v for k, v in vars(args).items()}, "precision": precision,
              "jax": jax.__version__, "environment": environment, "checks": checks,
              "models": {}}
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
                    fit = result.extra["fits"][-1]
                    notes[lib] = (f"chain_method {fit.info['chain_method']!r} on "
                                  f"{len(jax.devices())} JAX device(s)")
                    if args.overhead_reps > 0:
                        overhead = hbm_overhead(spec, fit, args.overhead_reps)
                if lib in ("stan", "nutpie"):
                    what = {"stan": "stan.build", "nutpie": "compile_pymc_model (numba)"}[lib]
                    notes[lib] = (f"{what} {result.extra['build_seconds']:.1f} s, counted in "
                                  "'first run s'; sampling phase = run - run with 1 draw")
                    if lib == "nutpie":
                        notes[lib] += f"; cores={result.extra['cores']}"
                    else:
                        first = [r["stan.build s (first in this process)"]
                                 for r in checks.get(name, [])
                                 if "stan.build s (first in this process)" in r]
                        notes[lib] += ("; httpstan caches builds across processes (the first "
                                       f"build in this process, in the check: "
                                       f"{first[0] if first else float('nan'):.1f} s)")
                print(f"  {rows[lib]}", flush=True)
            except Exception as e:  # noqa: BLE001 - one library failing must not stop the rest
                traceback.print_exc()
                notes[lib] = f"failed ({type(e).__name__}: {e})"
        if single_core:
            child = single_core["models"][name]
            for lib, row in child["rows"].items():
                rows[f"{lib}_1core"] = row
            for lib, note in child["notes"].items():
                notes[f"{lib}_1core"] = note
            notes["single core"] = single_core_note
        elif single_core_note:
            notes["single core"] = single_core_note
        table = _table(rows)
        model_ratios = ratios(rows)
        print(f"\n=== {name}: {args.chains} chains, {args.warmup}+{args.draws}, {precision} ===")
        if len(table):
            import pandas as pd

            with pd.option_context("display.width", 200, "display.max_columns", 20):
                print(table.T.to_string(float_format=lambda v: f"{v:.3g}"))
        else:
            print("(no runs)")
        for pair, values in model_ratios.items():
            print(f"  {pair}: " + ", ".join(f"{k} {v:.3g}" for k, v in values.items()))
        for lib, note in notes.items():
            print(f"  {LABELS.get(lib, lib)}: {note}")
        if overhead is not None:
            print("  hbm sampler overhead (last run, sampling phase):")
            for key, value in overhead.items():
                print(f"    {key}: {value:.4g}" if isinstance(value, float) else
                      f"    {key}: {value}")
        report["models"][name] = {"table": json.loads(table.to_json(orient="index")),
                                  "rows": rows, "ratios": model_ratios, "notes": notes,
                                  "hbm_overhead": overhead}

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"ess_per_second_{precision}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\nwrote {path}")
    return report


def _versions(libraries) -> dict:
    from importlib import metadata

    names = {"hbm": ["hbm", "jax"], "blackjax": ["blackjax"], "numpyro": ["numpyro"],
             "nutpie": ["nutpie", "pymc"], "stan": ["pystan", "httpstan"]}
    out = {}
    for lib in libraries:
        for dist in names[lib]:
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[dist] = None
    return out


def _table(rows):
    """One row per library; ``... / hbm`` columns divide by hbm's figure."""
    import pandas as pd

    table = pd.DataFrame.from_dict(rows, orient="index")
    if "hbm" in rows and len(table):
        for column, _ in RATIO_COLUMNS:
            table[f"{column} / hbm"] = [_ratio(v, rows["hbm"][column]) for v in table[column]]
    table.index = [LABELS[i] for i in table.index]
    return table


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
