"""Simulation-study throughput: NUTS over many data sets with and without lockstep.

Models: radon-sized two-level models (85 groups, 919 observations, a binary covariate;
the design of Gelman and Hill's Minnesota radon data), non-centered::

    mu ~ N(0, 5), beta ~ N(0, 5), tau ~ HalfNormal(1), z_j ~ N(0, 1),
    alpha_j = mu + tau z_j,  eta_i = alpha_{group_i} + beta x_i
    normal:   y_i ~ N(eta_i, sigma), sigma ~ HalfNormal(1)
    logistic: y_i ~ Bernoulli(logit^-1(eta_i))

Data sets are simulated at fixed true values (numpy, seeded). Every data set gets
``--chains`` chains: members are (data set, chain) pairs. Both runs are the engine's
chain program with ``hbm.sample``'s default adaptation, keyed as
:mod:`hbm.batch` keys them, and take the same decisions (same keys):

* lockstep: ``jit(vmap(...))`` of :func:`hbm.inference.engine.build_chain_program` over
  members (what :func:`hbm.batch.build_batched_nuts` runs): every transition costs every
  member the longest tree of the batch; useful fraction =
  ``sum(num_steps) / (members * sum_t max_m num_steps)``, warmup included;
* lockstep-free: :func:`hbm.samplers.lockstep_free.run_lockstep_free_chains`
  (``build_batched_nuts(..., lockstep_free=True)``) on ``members / --refill`` lanes (a
  lane whose member is done takes the next member of the batch, and the tail runs on
  fewer lanes); useful fraction = all leapfrog steps over the lanes' iterations.

Data sets stream through the compiled programs in batches of ``--batch``; the table
gives data sets per second (compilation excluded: a first batch compiles), the useful
fractions and the peak memory (device peak where the backend reports it, else the
process's peak resident set size), which stays flat in S.

Run from the repository root::

    python -m benchmarks.study                       # S = 16 ... 1024, both families
    python -m benchmarks.study --smoke               # 256 members, a minute or two;
                                                     # JSON summary as the last line
    python -m benchmarks.study --device-check        # the issue's accelerator run (below)

``--device-check`` is the prepared accelerator run: ``hbm.study`` itself (the public API,
NUTS only, lockstep-free) on S = 1000 radon-sized data sets x 4 chains x (1000 warmup +
1000 draws), normal family, after a first call of one batch that compiles the programs;
it prints the seconds for the 1000 data sets, the share with R-hat < 1.01 on every
parameter, the useful-leapfrog fraction and the divergences, as one JSON object per
run. ``--refills`` lists the members per lane of each run (default ``8,1``: the CPU-tuned
``hbm.batch.REFILL``, then every member in its own lane, which an accelerator may
prefer), ``--budget`` the seconds after which no further run starts.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hbm  # noqa: E402
from hbm.batch import MIN_LANES, REFILL, dataset_keys  # noqa: E402
from hbm.inference.engine import (build_chain_program, no_adaptation,  # noqa: E402
                                  schedule_for_chunks, slice_schedule)
from hbm.inference.settings import KernelSettings  # noqa: E402
from hbm.samplers.adaptation import metric_estimator  # noqa: E402
from hbm.samplers.lockstep_free import run_lockstep_free_chains  # noqa: E402

NUM_GROUPS, NUM_OBS = 85, 919
TRUTH = {"mu": 1.4, "beta": -0.6, "tau": 0.35, "sigma": 0.75}


def model(family: str):
    """The hbm model of ``family`` ("normal" or "logistic")."""
    priors = {"mu": hbm.dist.Normal(0.0, 5.0), "beta": hbm.dist.Normal(0.0, 5.0),
              "tau": hbm.dist.HalfNormal(1.0),
              "z": hbm.dist.Normal(0.0, 1.0).expand((NUM_GROUPS,))}
    if family == "normal":
        priors["sigma"] = hbm.dist.HalfNormal(1.0)

    def likelihood(p, d):
        eta = p["mu"] + p["tau"] * p["z"][d["group"]] + p["beta"] * d["x"]
        if family == "normal":
            return {"y": hbm.dist.Normal(eta, p["sigma"])}
        return {"y": hbm.dist.Bernoulli(logits=eta)}

    return hbm.Model(priors, likelihood)


def design(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"group": rng.integers(0, NUM_GROUPS, NUM_OBS).astype(np.int32),
            "x": rng.integers(0, 2, NUM_OBS).astype(np.float64)}


def simulate(family: str, count: int, seed: int, layout) -> np.ndarray:
    """``count`` responses (count, NUM_OBS) at :data:`TRUTH` with new group effects."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(count, NUM_GROUPS))
    eta = (TRUTH["mu"] + TRUTH["tau"] * z[:, layout["group"]]
           + TRUTH["beta"] * layout["x"][None])
    if family == "normal":
        return eta + TRUTH["sigma"] * rng.normal(size=eta.shape)
    return (rng.uniform(size=eta.shape) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)


class Programs:
    """The lockstep and lockstep-free runs of one family and size, compiled once."""

    def __init__(self, family, layout, *, chains, warmup, draws, refill, radius=2.0):
        dtype = jnp.result_type(float)
        self.chains, self.warmup, self.draws = chains, warmup, draws
        self.layout_np = layout
        self.layout = {k: jnp.asarray(v) for k, v in layout.items()}
        example = {**self.layout, "y": jnp.zeros(NUM_OBS, dtype)}
        bound = model(family).bind(example, reparam="noncentered")
        self.size = bound.size
        settings = KernelSettings()  # hbm.sample's defaults
        program = build_chain_program(lambda x, data, weights: bound.logdensity(x, data),
                                      settings)
        estimator = metric_estimator(settings.metric, settings.warmup_schedule)
        flags = slice_schedule(schedule_for_chunks(settings.warmup_schedule, warmup, warmup,
                                                   settings.metric, bound.size), 0, warmup)
        shared = self.layout

        def logdensity(x, y):
            return bound.logdensity(x, {**shared, "y": y})

        def members(keys, ys):
            """Per member: (init key, search key, warmup key, draw key), start, data."""
            chain_keys = jax.vmap(lambda key: jax.vmap(
                lambda c: jax.random.fold_in(key, c))(jnp.arange(chains)))(keys)
            chain_keys = chain_keys.reshape((-1,) + keys.shape[1:])
            split = jax.vmap(lambda key: jax.random.split(key, 4))(chain_keys)
            starts = jax.vmap(lambda key: jax.random.uniform(
                key, (bound.size,), dtype, -radius, radius))(split[:, 0])
            return split, starts, jnp.repeat(ys, chains, axis=0)

        def lockstep(keys, ys):
            split, starts, member_ys = members(keys, ys)

            def one(key4, start, y):
                data = {**shared, "y": y}
                state = program.init(key4[1], start, data, None, None)
                state, warm = program.run(state, key4[2], 0, warmup, True, flags, data, None)
                state, out = program.run(state, key4[3], 0, draws, False,
                                         no_adaptation(draws), data, None)
                return out["position"].mean(0), warm["n_steps"], out["n_steps"]

            means, warm_steps, steps = jax.vmap(one)(split, starts, member_ys)
            per_transition = jnp.concatenate([warm_steps, steps], axis=1)
            slots = per_transition.shape[0] * jnp.sum(jnp.max(per_transition, axis=0))
            return means, jnp.sum(per_transition), slots

        def lockstep_free(keys, ys):
            split, starts, member_ys = members(keys, ys)
            members_count = member_ys.shape[0]
            slots = max(-(-members_count // refill), min(members_count, MIN_LANES))
            initial = jax.vmap(lambda key4, start, y: program.init(
                key4[1], start, {**shared, "y": y}, None, None))(split, starts, member_ys)
            result = run_lockstep_free_chains(
                split[:, 2], split[:, 3], initial, logdensity, warmup, draws, flags,
                estimator=estimator, max_tree_depth=settings.max_tree_depth,
                target_accept=settings.target_accept, data=member_ys, slots=slots)
            used = jnp.sum(result.warmup_steps) + jnp.sum(result.infos.num_steps)
            # the lanes' iterations (fewer lanes in a compacted tail)
            return result.positions.mean(1), used, used / result.useful_leapfrog_fraction

        self.runs = {"lockstep": jax.jit(lockstep), "lockstep_free": jax.jit(lockstep_free)}


def peak_memory_mb() -> float:
    """Device peak bytes in use where reported (GPU, TPU), else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(programs: Programs, family, num_datasets, batch, seed, which):
    """Run ``num_datasets`` data sets in batches through one program (a first batch
    compiles); returns data sets per second, useful fraction and the means."""
    run = programs.runs[which]
    batch = min(batch, num_datasets)
    warm_keys = dataset_keys(seed + 1, 0, batch)
    warm_ys = jnp.asarray(simulate(family, batch, seed + 1, programs.layout_np))
    jax.block_until_ready(run(warm_keys, warm_ys))  # compile
    used = slots = 0
    means = []
    start = time.perf_counter()
    for first in range(0, num_datasets, batch):
        count = min(batch, num_datasets - first)
        if count < batch:  # keep one shape: pad the last batch, drop the padding
            keys = dataset_keys(seed, first, batch)
        else:
            keys = dataset_keys(seed, first, count)
        ys = jnp.asarray(simulate(family, batch, seed + 10_000 + first, programs.layout_np))
        out_means, out_used, out_slots = jax.block_until_ready(run(keys, ys))
        means.append(np.asarray(out_means)[: count * programs.chains])
        used += int(out_used)
        slots += float(out_slots)
    seconds = time.perf_counter() - start
    return {"datasets_per_s": num_datasets / seconds, "seconds": seconds,
            "useful_fraction": used / slots, "means": np.concatenate(means)}


def run_rows(families, sizes, *, chains, warmup, draws, batch, seed, refill):
    rows = []
    for family in families:
        layout = design(seed)
        programs = Programs(family, layout, chains=chains, warmup=warmup, draws=draws,
                            refill=refill)
        for num_datasets in sizes:
            row = {"family": family, "datasets": num_datasets, "chains": chains,
                   "members_per_batch": min(batch, num_datasets) * chains,
                   "lockstep_free_lanes": max(-(-min(batch, num_datasets) * chains // refill),
                                              min(min(batch, num_datasets) * chains,
                                                  MIN_LANES)),
                   "warmup": warmup, "draws": draws, "d": programs.size}
            results = {}
            for which in ("lockstep", "lockstep_free"):
                results[which] = measure(programs, family, num_datasets, batch, seed, which)
                row[f"{which}_datasets_per_s"] = round(results[which]["datasets_per_s"], 3)
                row[f"{which}_useful_leapfrog_fraction"] = round(
                    results[which]["useful_fraction"], 4)
            # same keys, same decisions: the chains' means agree to rounding
            row["max_abs_mean_difference"] = float(np.max(np.abs(
                results["lockstep"]["means"] - results["lockstep_free"]["means"])))
            row["speedup"] = round(row["lockstep_free_datasets_per_s"]
                                   / row["lockstep_datasets_per_s"], 3)
            row["peak_memory_mb"] = round(peak_memory_mb(), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def device_check(*, datasets, batch, chains, warmup, draws, refills, seed, budget):
    """Time ``hbm.study`` (NUTS, lockstep-free) on ``datasets`` radon-sized data sets, once
    per value of ``refills``; each run's programs are compiled by a first call on one
    batch. Returns one dict per run (printed as JSON lines as they finish)."""
    import hbm.batch

    layout = design(seed)
    template = {"group": layout["group"], "x": layout["x"],
                "y": simulate("normal", 1, seed, layout)[0]}
    truth = dict(TRUTH)
    settings = dict(methods=("nuts",), chains=chains, warmup=warmup, draws=draws,
                    batch_size=batch, lockstep_free=True, progress=False)
    rows, started = [], time.perf_counter()
    default_refill = hbm.batch.REFILL
    try:
        for refill in refills:
            if time.perf_counter() - started > budget:
                print(json.dumps({"refill": refill, "skipped": "over --budget"}), flush=True)
                continue
            hbm.batch.REFILL = refill  # read by hbm.study when it builds its programs,
            normal = model("normal")  # which it caches per model: a new one per refill
            t0 = time.perf_counter()
            hbm.study(normal, truth, data=template, datasets=batch, seed=seed + 1,
                      **settings)
            first_call = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = hbm.study(normal, truth, data=template, datasets=datasets, seed=seed,
                               **settings)
            seconds = time.perf_counter() - t0
            table = result.table
            worst_rhat = table.groupby("dataset")["rhat"].max()
            divergences = table.groupby("dataset")["divergences"].first()
            row = {"refill": refill, "datasets": datasets, "chains": chains,
                   "warmup": warmup, "draws": draws, "batch": batch,
                   "seconds": round(seconds, 2),
                   "datasets_per_s": round(datasets / seconds, 3),
                   "first_call_seconds_with_compilation": round(first_call, 2),
                   "share_rhat_below_1_01": round(float(np.mean(worst_rhat < 1.01)), 4),
                   "max_rhat": round(float(worst_rhat.max()), 4),
                   "useful_leapfrog_fraction": result.info["useful_leapfrog_fraction"],
                   "datasets_with_divergences": int(np.sum(divergences > 0)),
                   "device": result.info["device"],
                   "devices": len(jax.local_devices())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        hbm.batch.REFILL = default_refill
    return rows


def print_table(rows):
    columns = ["family", "datasets", "members_per_batch", "lockstep_free_lanes",
               "lockstep_datasets_per_s",
               "lockstep_free_datasets_per_s", "speedup",
               "lockstep_useful_leapfrog_fraction", "lockstep_free_useful_leapfrog_fraction",
               "peak_memory_mb"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


def _given(value, default):
    return default if value is None else value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="normal,logistic")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated (default 16,64,256,1024; --device-check: one "
                             "number, default 1000)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=None,
                        help="default 500 (--device-check: 1000)")
    parser.add_argument("--draws", type=int, default=None,
                        help="default 500 (--device-check: 1000)")
    parser.add_argument("--batch", type=int, default=None,
                        help="data sets per batch (default 64; --device-check: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refill", type=int, default=REFILL,
                        help="lockstep-free: members per lane (a lane whose member is done "
                             "takes the next); 1 runs every member of a batch at once")
    parser.add_argument("--smoke", action="store_true",
                        help="one batch of 64 data sets x 4 chains = 256 members, normal "
                             "family, 150 warmup + 100 draws")
    parser.add_argument("--out", default=None, help="folder for study.json")
    parser.add_argument("--device-check", action="store_true",
                        help="hbm.study on --datasets (default 1000) data sets x 4 chains x "
                             "(1000 + 1000), normal family, lockstep-free, once per "
                             "--refills value")
    parser.add_argument("--refills", default="8,1",
                        help="--device-check: members per lane of each run, comma-separated")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="--device-check: seconds after which no further run starts")
    args = parser.parse_args(argv)
    if args.device_check:
        datasets = int(_given(args.datasets, 1000))
        rows = device_check(datasets=datasets, batch=_given(args.batch, datasets),
                            chains=args.chains, warmup=_given(args.warmup, 1000),
                            draws=_given(args.draws, 1000),
                            refills=[int(r) for r in args.refills.split(",")],
                            seed=args.seed, budget=args.budget)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "device_check.json").write_text(json.dumps(rows, indent=1))
        return rows
    if args.smoke:
        args.families, args.datasets, args.chains = "normal", "64", 4
        args.warmup, args.draws, args.batch = 150, 100, 64
    args.datasets = _given(args.datasets, "16,64,256,1024")
    args.warmup, args.draws = _given(args.warmup, 500), _given(args.draws, 500)
    args.batch = _given(args.batch, 64)
    rows = run_rows(args.families.split(","), [int(s) for s in args.datasets.split(",")],
                    chains=args.chains, warmup=args.warmup, draws=args.draws,
                    batch=args.batch, seed=args.seed, refill=args.refill)
    print()
    print_table(rows)
    at = [r for r in rows if r["members_per_batch"] == 256] or rows
    summary = {
        "members": at[-1]["members_per_batch"],
        "lockstep_free_lanes": at[-1]["lockstep_free_lanes"],
        "useful_leapfrog_fraction": at[-1]["lockstep_free_useful_leapfrog_fraction"],
        "lockstep_useful_leapfrog_fraction": at[-1]["lockstep_useful_leapfrog_fraction"],
        "lockstep_free_datasets_per_s": at[-1]["lockstep_free_datasets_per_s"],
        "lockstep_datasets_per_s": at[-1]["lockstep_datasets_per_s"],
        "peak_memory_mb": max(r["peak_memory_mb"] for r in rows),
        "device": str(jax.devices()[0]),
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "study.json").write_text(json.dumps({"rows": rows, "summary": summary},
                                                   indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
