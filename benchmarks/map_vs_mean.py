"""Simulation study: how far is the MAP from the posterior mean in a two-level model?

For every configuration (family x number of groups J x true between-group sd tau) the
study simulates S data sets from a two-level model,

    normal:    y_ij ~ Normal(mu + eta_j, sigma),           eta_j ~ Normal(0, tau)
    logistic:  y_ij ~ Bernoulli(logit^-1(mu + eta_j)),     eta_j ~ Normal(0, tau)

with priors mu ~ Normal(0, 2.5), tau ~ HalfNormal(1), sigma ~ HalfNormal(1), group sizes
like the 85 Minnesota radon counties (the radon county counts themselves for J = 85, drawn
from them with replacement otherwise), and fits every data set twice: the classical MAP
(L-BFGS, no Jacobian, centered, best of 4 restarts) and NUTS (non-centered, Stan's
warmup). Both run vectorized over data sets (and chains) in one compiled program per
(family, J), with the data passed as arguments: changing tau changes no shape, so nothing
recompiles. NUTS draws are reduced on the device to per-data-set summaries
(:mod:`hbm.batch`), and data sets stream through in batches of ``--batch-size``.

Reported per configuration: quartiles over data sets of the standardized distance
``(MAP - posterior mean) / posterior sd`` for tau and of its mean absolute value over the
group effects, the fraction of collapsed MAPs (tau's MAP below 1e-3 times its posterior
median, or its log below -15), the coverage of the 90% central posterior intervals for the
true tau and group effects, the largest split R-hat, divergences, wall time and device.

Usage::

    python benchmarks/map_vs_mean.py --smoke --out /tmp/mvm
    python benchmarks/map_vs_mean.py --datasets 1000 --groups 85 --device gpu --out out/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

FAMILIES = ("normal", "logistic")
TRUE_MU = {"normal": 1.3, "logistic": -0.5}
TRUE_SIGMA = 0.75  # radon's within-county sd of log radon is about 0.75
COLLAPSE_RATIO = 1e-3
LOG_BOUNDARY = -15.0


# -------------------------------------------------------------------------- design
def radon_county_sizes() -> np.ndarray:
    """Number of homes per county in the radon data (85 counties, 919 homes)."""
    import hbm

    df = hbm.datasets.load("radon_mn")
    return df.groupby("county").size().to_numpy()


def group_sizes(num_groups: int, seed: int = 0) -> np.ndarray:
    """Radon's county sizes for 85 groups; otherwise drawn from them with replacement."""
    counts = radon_county_sizes()
    if num_groups == len(counts):
        return counts.copy()
    rng = np.random.default_rng([seed, num_groups])
    return rng.choice(counts, size=num_groups, replace=True)


def build_model(family: str, num_groups: int):
    """The two-level model of the given family with ``num_groups`` groups."""
    import hbm
    from hbm import dist

    prior = {
        "mu": dist.Normal(0.0, 2.5),
        "tau": dist.HalfNormal(1.0),
        "eta": lambda p, d: dist.Normal(0.0, p["tau"]).expand((num_groups,)),
    }
    if family == "normal":
        prior["sigma"] = dist.HalfNormal(1.0)

        def likelihood(p, d):
            return {"y": dist.Normal(p["mu"] + p["eta"][d["group"]], p["sigma"])}
    elif family == "logistic":
        def likelihood(p, d):
            return {"y": dist.Bernoulli(logits=p["mu"] + p["eta"][d["group"]])}
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    return hbm.Model(prior=prior, likelihood=likelihood, dims={"eta": ("group",)},
                     name=f"two_level_{family}")


def simulate(rng: np.random.Generator, family: str, sizes: np.ndarray, tau: float,
             num_datasets: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """``num_datasets`` outcome vectors (S, N) and their true group effects (S, J)."""
    group = np.repeat(np.arange(len(sizes)), sizes)
    eta = tau * rng.standard_normal((num_datasets, len(sizes)))
    linear = TRUE_MU[family] + eta[:, group]
    if family == "normal":
        y = linear + TRUE_SIGMA * rng.standard_normal(linear.shape)
    else:
        y = (rng.random(linear.shape) < 1.0 / (1.0 + np.exp(-linear))).astype(float)
    return y.astype(dtype), eta


# -------------------------------------------------------------------------- running
def _quartiles(values) -> dict:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"q25": None, "median": None, "q75": None}
    q25, med, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"q25": float(q25), "median": float(med), "q75": float(q75)}


class _Shape:
    """Compiled programs of one (family, J): the model, bound views, MAP and NUTS."""

    def __init__(self, family, num_groups, args, dtype):
        import jax.numpy as jnp

        from hbm.batch import build_batched_map, build_batched_nuts, constrained_layout

        self.family, self.num_groups = family, num_groups
        self.sizes = group_sizes(num_groups, args.seed)
        self.group = np.repeat(np.arange(num_groups), self.sizes).astype(np.int32)
        self.model = build_model(family, num_groups)
        template = {"y": np.zeros(self.group.shape[0], dtype), "group": self.group}
        if family == "logistic":
            template["y"][: num_groups] = 1.0
        centered = self.model.bind(template, reparam="centered")
        noncentered = self.model.bind(template, reparam="noncentered")
        self.layout = constrained_layout(centered)
        self.shared = {"group": jnp.asarray(self.group)}
        self.map_program = build_batched_map(centered, jacobian=False, restarts=4)
        self.nuts_program = build_batched_nuts(noncentered, chains=args.chains,
                                               warmup=args.warmup, draws=args.draws)


def run_configuration(shape: _Shape, tau: float, args, dtype) -> dict:
    """Simulate, fit (MAP and NUTS, in batches) and summarize one configuration."""
    import jax
    import jax.numpy as jnp

    from hbm.batch import dataset_keys

    rng = np.random.default_rng([args.seed, FAMILIES.index(shape.family), shape.num_groups,
                                 int(round(tau * 1e6))])
    num = args.datasets
    y, eta_true = simulate(rng, shape.family, shape.sizes, tau, num, dtype)
    batch = min(args.batch_size, num)
    maps, summaries, divergences, steps = [], [], [], []
    start = time.perf_counter()
    for first in range(0, num, batch):
        count = min(batch, num - first)
        index = np.arange(first, first + batch).clip(max=num - 1)  # pad the last batch
        batched = {"y": jnp.asarray(y[index])}
        keys = dataset_keys(args.seed, first, batch)
        map_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        mode = shape.map_program(map_keys, batched, shape.shared)
        fit = shape.nuts_program(keys, batched, shape.shared)
        mode, fit = jax.device_get((mode, fit))
        maps.append(np.asarray(mode.constrained)[:count])
        summaries.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:count], fit.summary))
        divergences.append(np.asarray(fit.divergences)[:count])
        steps.append(np.asarray(fit.mean_steps)[:count])
    wall = time.perf_counter() - start

    mode = np.concatenate(maps)
    summary = {f: np.concatenate([getattr(s, f) for s in summaries]) for f in
               summaries[0]._fields}
    divergences = np.concatenate(divergences)
    tau_i = shape.layout.slice("tau").start
    eta_s = shape.layout.slice("eta")
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = (mode - summary["mean"]) / summary["sd"]
        log_tau_map = np.log(mode[:, tau_i])
    collapsed = (mode[:, tau_i] < COLLAPSE_RATIO * summary["median"][:, tau_i]) | (
        log_tau_map < LOG_BOUNDARY)
    cover_tau = (summary["q05"][:, tau_i] <= tau) & (tau <= summary["q95"][:, tau_i])
    cover_eta = (summary["q05"][:, eta_s] <= eta_true) & (eta_true <= summary["q95"][:, eta_s])
    rhat_max = np.nanmax(summary["rhat"], axis=1)
    return {
        "family": shape.family,
        "groups": shape.num_groups,
        "observations": int(shape.group.shape[0]),
        "tau": float(tau),
        "datasets": int(num),
        "distance_tau": _quartiles(distance[:, tau_i]),
        "distance_eta_mean_abs": _quartiles(np.mean(np.abs(distance[:, eta_s]), axis=1)),
        "collapsed_fraction": float(collapsed.mean()),
        "coverage90_tau": float(cover_tau.mean()),
        "coverage90_eta": float(cover_eta.mean()),
        "posterior_mean_tau": _quartiles(summary["mean"][:, tau_i]),
        "map_tau": _quartiles(mode[:, tau_i]),
        "rhat_max": float(np.max(rhat_max)),
        "rhat_above_1_01_fraction": float(np.mean(rhat_max > 1.01)),
        "divergences": int(divergences.sum()),
        "datasets_with_divergences": float(np.mean(divergences > 0)),
        "mean_gradient_evaluations_per_draw": float(np.mean(np.concatenate(steps))),
        "wall_s": wall,
    }


# -------------------------------------------------------------------------- report
def plot(results: list[dict], path: str) -> None:
    """Median (and quartiles) of tau's standardized distance and the collapsed fraction
    against true tau, one line per family and J."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    lines = sorted({(r["family"], r["groups"]) for r in results})
    for family, groups in lines:
        rows = sorted((r for r in results if r["family"] == family and r["groups"] == groups),
                      key=lambda r: r["tau"])
        taus = [r["tau"] for r in rows]
        med = np.array([np.nan if r["distance_tau"]["median"] is None
                        else r["distance_tau"]["median"] for r in rows])
        low = np.array([np.nan if r["distance_tau"]["q25"] is None
                        else r["distance_tau"]["q25"] for r in rows])
        high = np.array([np.nan if r["distance_tau"]["q75"] is None
                         else r["distance_tau"]["q75"] for r in rows])
        label = f"{family}, J={groups}"
        axes[0].errorbar(taus, med, yerr=[med - low, high - med], marker="o", capsize=3,
                         label=label)
        axes[1].plot(taus, [r["collapsed_fraction"] for r in rows], marker="o", label=label)
    axes[0].axhline(0.0, color="grey", lw=0.8)
    axes[0].set(xscale="log", xlabel="true tau",
                ylabel="(MAP - posterior mean) / posterior sd of tau",
                title="standardized MAP-to-mean distance (median, IQR)")
    axes[1].set(xscale="log", xlabel="true tau", ylabel="fraction of data sets",
                ylim=(-0.02, 1.02), title="collapsed MAP of tau")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=200, help="data sets per configuration")
    parser.add_argument("--groups", type=int, nargs="+", default=[8, 30, 85])
    parser.add_argument("--tau-grid", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4, 0.8])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250,
                        help="data sets per compiled call (device memory)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="map_vs_mean_out")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run (8 groups, 4 data sets, 2 tau values, short chains)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets, args.groups, args.tau_grid = 4, [8], [0.1, 1.0]
        args.chains, args.warmup, args.draws, args.batch_size = 2, 150, 100, 4
    for name in ("datasets", "chains", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.draws < 4:
        parser.error("--draws must be >= 4")
    return args


def main(argv=None) -> dict:
    """Run the study; writes ``results.json`` and ``map_vs_mean.png`` into ``--out`` and
    returns the JSON content."""
    args = _parse(argv)
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    if args.device is not None:
        try:
            device = jax.devices(args.device)[0]
        except RuntimeError as e:
            raise SystemExit(f"--device {args.device}: no such device here ({e})") from e
    else:
        device = jax.devices()[0]
    os.makedirs(args.out, exist_ok=True)
    results, compilations = [], {}
    start = time.perf_counter()
    with jax.default_device(device):
        for family in args.families:
            for groups in args.groups:
                shape = _Shape(family, groups, args, dtype)
                for i, tau in enumerate(args.tau_grid):
                    row = run_configuration(shape, tau, args, dtype)
                    row["includes_compilation"] = i == 0
                    results.append(row)
                    print(f"{family:8s} J={groups:3d} tau={tau:<6g} S={args.datasets}: "
                          f"tau distance median {row['distance_tau']['median']:.3g}, "
                          f"collapsed {row['collapsed_fraction']:.2f}, "
                          f"coverage tau {row['coverage90_tau']:.2f} "
                          f"eta {row['coverage90_eta']:.2f}, R-hat max "
                          f"{row['rhat_max']:.3f}, divergences {row['divergences']}, "
                          f"{row['wall_s']:.1f} s", flush=True)
                compilations[f"{family}/J={groups}"] = {
                    "map": shape.map_program.traces(), "nuts": shape.nuts_program.traces()}
    report = {
        "settings": {k: v for k, v in vars(args).items()},
        "device": device.platform,
        "device_kind": getattr(device, "device_kind", ""),
        "dtype": np.dtype(dtype).name,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "total_wall_s": time.perf_counter() - start,
        "compilations": compilations,
        "results": results,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(results, os.path.join(args.out, "map_vs_mean.png"))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
