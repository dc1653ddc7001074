"""Penicillin potency assay: crossed random effects (Davies and Goldsmith 1972; lme4).

Diameters of growth-inhibition zones for 6 penicillin samples on each of 24 plates:
``diameter ~ 1 + (1 | plate) + (1 | sample)``. Besides the superpopulation sds, the
model reports the finite-population sds of each factor, the ANOVA view of a multilevel
model of Gelman (2005), "Analysis of variance - why it is more important than ever",
Ann. Statist. 33(1).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hbm import dist
from hbm.models._common import build, frame, group_codes, numeric, scale


def _mean(p, d):
    return p["mu"] + p["plate_effect"][d["plate"]] + p["sample_effect"][d["sample"]]


def _finite_sd(values):
    """Sample sd (divisor n - 1) over the last axis: Gelman's (2005) s_m."""
    return jnp.std(values, axis=-1, ddof=1)


def penicillin(df=None):
    """Crossed plate and sample intercepts.

    .. math::

        a_j &\\sim \\mathrm{Normal}(0, \\sigma_{plate}), \\qquad
        b_k \\sim \\mathrm{Normal}(0, \\sigma_{sample}), \\\\
        y_i &\\sim \\mathrm{Normal}(\\mu + a_{j[i]} + b_{k[i]}, \\sigma).

    Priors: ``mu ~ Normal(mean(y), 2.5 sd(y))``; ``sigma_plate, sigma_sample, sigma ~
    HalfNormal(sd(y))``. Deterministic finite-population sds: ``s_plate = sd(a)``,
    ``s_sample = sd(b)``, ``s_resid = sd(y - mu - a - b)`` (divisor n - 1).

    Returns
    -------
    (Model, dict)
        Data ``{"y", "plate", "sample"}``.
    """
    df = frame(df, "penicillin", ["diameter", "plate", "sample"])
    y = numeric(df, "diameter")
    plate, plates = group_codes(df["plate"])
    sample, samples = group_codes(df["sample"])
    data = {"y": y, "plate": plate, "sample": sample}
    sd_y = scale(y)
    n_plate, n_sample = len(plates), len(samples)
    model = build(
        prior={
            "mu": dist.Normal(float(np.mean(y)), 2.5 * sd_y),
            "sigma_plate": dist.HalfNormal(sd_y),
            "sigma_sample": dist.HalfNormal(sd_y),
            "plate_effect": lambda p, d: dist.Normal(0.0, p["sigma_plate"]).expand((n_plate,)),
            "sample_effect": lambda p, d: dist.Normal(0.0, p["sigma_sample"]).expand(
                (n_sample,)
            ),
            "sigma": dist.HalfNormal(sd_y),
        },
        likelihood=lambda p, d: {"y": dist.Normal(_mean(p, d), p["sigma"])},
        dims={"plate_effect": ("plate",), "sample_effect": ("sample",)},
        coords={"plate": plates, "sample": samples},
        deterministic={
            "s_plate": lambda p, d: _finite_sd(p["plate_effect"]),
            "s_sample": lambda p, d: _finite_sd(p["sample_effect"]),
            "s_resid": lambda p, d: _finite_sd(d["y"] - _mean(p, d)),
        },
    )
    return model, data
