"""reparam="auto" against "centered" and "noncentered", in the same run, several seeds.

Models:
- eight schools written centered (the funnel): divergent transitions;
- radon varying intercept (Minnesota, 85 counties of 1 to 116 houses): large counties favour
  centering, small ones non-centering;
- a simulated two-level normal model whose groups have either 2 or 500 observations;
- correlated (MultivariateNormal) effects: radon varying intercept + slope, sleepstudy, and
  a simulated varying intercept + slope model whose groups have 2 or 500 observations
  (the model layer reparameterizes these nodes along their Cholesky factor).

For each model, parameterization and seed it reports divergent transitions (%), the minimum
bulk ESS over all parameters, gradient evaluations (warmup + sampling) and ESS per 1000
gradients of sampling; the summary row per parameterization is the mean over seeds.

    python benchmarks/reparam.py [--seeds 3] [--chains 4] [--warmup 1000] [--draws 1000]
                                 [--models radon_varying_intercept_slope,...] [--out bench-out/]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import numpy as np


def two_level_mixed_sizes(seed=0, n_small=20, n_large=20, small=2, large=500, tau=0.5,
                          sigma=1.0):
    import hbm
    from hbm import dist

    rng = np.random.default_rng(seed)
    sizes = np.array([small] * n_small + [large] * n_large)
    J = len(sizes)
    theta = rng.normal(1.0, tau, size=J)
    group = np.repeat(np.arange(J), sizes)
    y = rng.normal(theta[group], sigma)
    model = hbm.Model(
        prior={
            "mu": dist.Normal(0.0, 5.0),
            "tau": dist.HalfNormal(2.0),
            "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand((J,)),
            "sigma": dist.HalfNormal(2.0),
        },
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"][d["group"]], p["sigma"])},
        dims={"theta": ("group",)},
    )
    return model, {"y": y, "group": group}


def correlated_mixed_sizes(seed=0, n_small=20, n_large=20, small=2, large=200):
    """Varying intercepts and slopes, MultivariateNormal(0, diag(sd) L L^T diag(sd)) per
    group, groups of ``small`` or ``large`` observations."""
    import hbm
    from hbm import dist

    rng = np.random.default_rng(seed)
    sizes = np.array([small] * n_small + [large] * n_large)
    J = len(sizes)
    cov = np.array([[0.5 ** 2, 0.5 * 0.3 * 0.4], [0.5 * 0.3 * 0.4, 0.3 ** 2]])
    effects = rng.multivariate_normal([1.0, 0.5], cov, size=J)
    group = np.repeat(np.arange(J), sizes)
    x = rng.normal(size=group.size)
    y = rng.normal(effects[group, 0] + effects[group, 1] * x, 1.0)

    def effect_prior(p, d):
        tril = p["sd"][:, None] * p["L"]
        return dist.MultivariateNormal(p["beta"], scale_tril=tril).expand((J,))

    model = hbm.Model(
        prior={
            "beta": dist.Normal(0.0, 5.0).expand((2,)),
            "sd": dist.HalfNormal(2.0).expand((2,)),
            "L": dist.LKJCholesky(2, 2.0),
            "effect": effect_prior,
            "sigma": dist.HalfNormal(2.0),
        },
        likelihood=lambda p, d: {"y": dist.Normal(
            p["effect"][d["group"], 0] + p["effect"][d["group"], 1] * d["x"], p["sigma"])},
    )
    return model, {"y": y, "x": x, "group": group}


MODELS = {
    "eight_schools_centered": lambda hbm: hbm.models.eight_schools(centered=True),
    "radon_varying_intercept": lambda hbm: hbm.models.radon_varying_intercept(),
    "two_level_2_and_500": lambda hbm: two_level_mixed_sizes(),
    "radon_varying_intercept_slope": lambda hbm: hbm.models.radon_varying_intercept_slope(),
    "sleepstudy": lambda hbm: hbm.models.sleepstudy(),
    "correlated_2_and_200": lambda hbm: correlated_mixed_sizes(),
}


def run(args):
    import hbm

    models = {name: MODELS[name](hbm) for name in args.models.split(",")}
    rows = []
    for name, (model, data) in models.items():
        for reparam in ("centered", "noncentered", "auto"):
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = hbm.sample(model, data, chains=args.chains, warmup=args.warmup,
                                     draws=args.draws, seed=seed, reparam=reparam,
                                     progress=False)
                wall = time.perf_counter() - t0
                ess = min(_min_ess(v) for v in fit.posterior.values())
                grads = int(fit.sample_stats["n_steps"].sum())
                rows.append(dict(
                    model=name, reparam=reparam, seed=seed,
                    divergent_pct=100 * float(fit.sample_stats["diverging"].mean()),
                    min_ess_bulk=ess, sampling_gradients=grads,
                    warmup_gradients=int(fit.info["warmup_gradient_evaluations"]),
                    ess_per_1000_gradients=1000 * ess / grads,
                    seconds=wall,
                ))
                print(f"{name:26s} {reparam:12s} seed {seed}: div {rows[-1]['divergent_pct']:.2f}%"
                      f"  min ESS {ess:7.0f}  ESS/1000 grad {rows[-1]['ess_per_1000_gradients']:6.1f}",
                      flush=True)
    return rows


def _min_ess(draws):
    import arviz as az

    draws = np.asarray(draws)
    flat = draws.reshape(draws.shape[0], draws.shape[1], -1)
    return float(min(az.ess(flat[..., i], method="bulk") for i in range(flat.shape[-1])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown --models {unknown}; known: {', '.join(MODELS)}")

    import pandas as pd

    rows = run(args)
    df = pd.DataFrame(rows)
    table = df.groupby(["model", "reparam"], sort=False)[
        ["divergent_pct", "min_ess_bulk", "ess_per_1000_gradients", "seconds"]].mean()
    best_fixed = table.xs("auto", level="reparam")["ess_per_1000_gradients"] / table.drop(
        "auto", level="reparam")["ess_per_1000_gradients"].groupby(level="model").max()
    print("\nmean over seeds")
    print(table.round(2).to_string())
    print("\nauto's ESS per gradient / the better fixed choice's")
    print(best_fixed.round(2).to_string())
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reparam.json").write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {out / 'reparam.json'}")


if __name__ == "__main__":
    main()
