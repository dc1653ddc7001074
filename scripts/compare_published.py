"""Fit classic mixed models with hbm's NUTS and compare with published estimates.

Models and published numbers (point estimates of the frequentist fits):

- ``sleepstudy``: ``Reaction ~ Days + (Days | Subject)``, REML, Bates, Maechler, Bolker
  and Walker (2015), "Fitting linear mixed-effects models using lme4", J. Stat. Softw.
  67(1), sec. 1 and 5 (model ``fm1``).
- ``cbpp``: ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, binomial,
  Laplace ML, lme4's ``?cbpp`` / ``?glmer`` help page (model ``gm1``) and the JSS paper.
- ``penicillin``: ``diameter ~ 1 + (1 | plate) + (1 | sample)``, REML, Bates (2010),
  "lme4: Mixed-effects modeling with R", ch. 2 (model ``fm2``).
- ``radon``: Gelman and Hill (2007), "Data Analysis Using Regression and
  Multilevel/Hierarchical Models", sec. 12.4 (varying intercept, ``lmer(y ~ x + (1 |
  county))``) and sec. 13.1 (varying intercept and slope, ``lmer(y ~ x + (1 + x |
  county))``).

Usage::

    python scripts/compare_published.py [--chains 4 --warmup 1000 --draws 1000]
        [--markdown docs/comparisons_tables.md]

Prints one table per model: the published estimate, hbm's posterior mean and sd, and
their difference in posterior sds.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import hbm  # noqa: E402
from hbm import models  # noqa: E402


def _corr(L):
    """Correlation of the two effects from draws of the (..., 2, 2) Cholesky factor."""
    cov = L @ np.swapaxes(L, -1, -2)
    return cov[..., 0, 1] / np.sqrt(cov[..., 0, 0] * cov[..., 1, 1])


# name -> (model function, published source, [(label, published, extractor)])
COMPARISONS = {
    "sleepstudy": (
        models.sleepstudy,
        "lme4 fm1, REML (Bates et al. 2015, JSS 67(1))",
        [
            ("(Intercept)", 251.405, lambda p: p["beta"][..., 0]),
            ("Days", 10.467, lambda p: p["beta"][..., 1]),
            ("sd Subject (Intercept)", 24.741, lambda p: p["sigma_subject"][..., 0]),
            ("sd Subject Days", 5.922, lambda p: p["sigma_subject"][..., 1]),
            ("corr (Intercept), Days", 0.066, lambda p: _corr(p["L_subject"])),
            ("sd Residual", 25.592, lambda p: p["sigma"]),
        ],
    ),
    "cbpp": (
        models.cbpp,
        "lme4 gm1, Laplace ML (lme4 ?cbpp, ?glmer; Bates et al. 2015)",
        [
            ("(Intercept)", -1.3983, lambda p: p["beta"][..., 0]),
            ("period2", -0.9919, lambda p: p["beta"][..., 1]),
            ("period3", -1.1282, lambda p: p["beta"][..., 2]),
            ("period4", -1.5797, lambda p: p["beta"][..., 3]),
            ("sd herd", 0.6421, lambda p: p["sigma_herd"]),
        ],
    ),
    "penicillin": (
        models.penicillin,
        "lme4 fm2 on Penicillin, REML (Bates 2010, lme4 book ch. 2)",
        [
            ("(Intercept)", 22.9722, lambda p: p["mu"]),
            ("sd plate", 0.8467, lambda p: p["sigma_plate"]),
            ("sd sample", 1.9316, lambda p: p["sigma_sample"]),
            ("sd Residual", 0.5499, lambda p: p["sigma"]),
            ("finite-pop. sd plate (s_plate)", 0.8467, lambda p: p["s_plate"]),
            ("finite-pop. sd sample (s_sample)", 1.9316, lambda p: p["s_sample"]),
        ],
    ),
    "radon_varying_intercept": (
        models.radon_varying_intercept,
        "Gelman and Hill (2007) sec. 12.4, lmer(y ~ x + (1 | county))",
        [
            ("intercept a (mu_alpha)", 1.46, lambda p: p["beta"][..., 0]),
            ("floor b", -0.69, lambda p: p["beta"][..., 1]),
            ("sigma_alpha (county)", 0.33, lambda p: p["sigma_county"]),
            ("sigma_y", 0.76, lambda p: p["sigma"]),
        ],
    ),
    "radon_varying_intercept_slope": (
        models.radon_varying_intercept_slope,
        "Gelman and Hill (2007) sec. 13.1, lmer(y ~ x + (1 + x | county))",
        [
            ("intercept mu_alpha", 1.46, lambda p: p["beta"][..., 0]),
            ("floor mu_beta", -0.68, lambda p: p["beta"][..., 1]),
            ("sigma_alpha", 0.35, lambda p: p["sigma_county"][..., 0]),
            ("sigma_beta", 0.34, lambda p: p["sigma_county"][..., 1]),
            ("rho", -0.34, lambda p: _corr(p["L_county"])),
            ("sigma_y", 0.75, lambda p: p["sigma"]),
        ],
    ),
}


def compare(name, *, chains, warmup, draws, seed):
    """Fit model ``name`` and return (table DataFrame, source string, run info dict)."""
    build, source, rows = COMPARISONS[name]
    model, data = build()
    start = time.perf_counter()
    fit = hbm.sample(model, data, chains=chains, warmup=warmup, draws=draws, seed=seed,
                     progress=False)
    seconds = time.perf_counter() - start
    table = []
    for label, published, extract in rows:
        draws_ = np.asarray(extract(fit.posterior), dtype=np.float64)
        mean, sd = float(draws_.mean()), float(draws_.std(ddof=1))
        table.append({"parameter": label, "published": published, "hbm mean": mean,
                      "hbm sd": sd, "hbm median": float(np.median(draws_)),
                      "(mean - published) / sd": (mean - published) / sd})
    diverging = int(np.sum(fit.sample_stats["diverging"]))
    summary = fit.summary()
    info = {"seconds": seconds, "divergences": diverging,
            "max r_hat": float(summary["r_hat"].max()),
            "min ess_bulk": float(summary["ess_bulk"].min())}
    return pd.DataFrame(table), source, info


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", default=list(COMPARISONS))
    parser.add_argument("--markdown", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    out = []
    for name in args.models:
        table, source, info = compare(name, chains=args.chains, warmup=args.warmup,
                                      draws=args.draws, seed=args.seed)
        header = (f"### {name}\n\nPublished: {source}. hbm: NUTS, {args.chains} chains x "
                  f"{args.warmup} warmup x {args.draws} draws, seed {args.seed}; "
                  f"{info['divergences']} divergences, max R-hat {info['max r_hat']:.3f}, "
                  f"min bulk ESS {info['min ess_bulk']:.0f}, {info['seconds']:.0f} s "
                  f"(incl. compilation).\n")
        block = header + "\n" + to_markdown(table) + "\n"
        print(block, flush=True)
        out.append(block)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(out))


if __name__ == "__main__":
    main()
