"""Contagious bovine pleuropneumonia: a binomial GLMM (lme4::cbpp; Lesnoff et al. 2004).

New serological cases (``incidence``) out of ``size`` zebu cattle in 15 herds, over four
periods: ``incidence | size ~ period + (1 | herd)`` with a logit link (Bates et al. 2015;
Gelman and Hill 2007, ch. 14).
"""

from __future__ import annotations

import numpy as np

from hbm import dist
from hbm.errors import DataError
from hbm.models._common import build, frame, group_codes, integer, population_prior, positive_float


def cbpp(df=None, *, group_scale: float = 1.0):
    """Binomial logit model with period effects and herd intercepts.

    .. math::

        \\eta_h &\\sim \\mathrm{Normal}(0, \\sigma_{herd}), \\\\
        \\mathrm{incidence}_i &\\sim \\mathrm{Binomial}(\\mathrm{size}_i,
            \\mathrm{logit}^{-1}(\\beta_0 + \\beta_1 [p_i = 2] + \\beta_2 [p_i = 3]
            + \\beta_3 [p_i = 4] + \\eta_{h[i]})).

    Priors on the logit scale: ``beta[0] ~ Normal(logit(pooled rate), 2.5)``, the
    period contrasts ``~ Normal(0, 2.5 / sd(dummy))`` (rstanarm's autoscaling),
    ``sigma_herd ~ HalfNormal(group_scale)`` (default 1: herd odds ratios mostly within
    a factor of e^2).

    Returns
    -------
    (Model, dict)
        Data ``{"incidence", "size", "period2", "period3", "period4", "herd"}``;
        parameters ``beta`` (4), ``sigma_herd``, ``herd_effect`` (herd).
    """
    df = frame(df, "cbpp", ["herd", "incidence", "size", "period"])
    incidence = integer(df, "incidence")
    size = integer(df, "size", lower=1)
    if np.any(incidence > size):
        raise DataError("incidence exceeds size")
    herd, labels = group_codes(df["herd"])
    period, periods = group_codes(df["period"])
    if len(periods) != 4:
        raise DataError(f"cbpp expects 4 periods, found {periods}")
    dummies = np.stack([(period == k).astype(np.float64) for k in (1, 2, 3)], axis=1)
    rate = (incidence.sum() + 0.5) / (size.sum() + 1.0)
    design = np.column_stack([np.ones(len(df)), dummies])
    data = {
        "incidence": incidence,
        "size": size,
        "period2": dummies[:, 0],
        "period3": dummies[:, 1],
        "period4": dummies[:, 2],
        "herd": herd,
    }
    n_herd = len(labels)

    def likelihood(p, d):
        b = p["beta"]
        logits = (
            b[0]
            + b[1] * d["period2"]
            + b[2] * d["period3"]
            + b[3] * d["period4"]
            + p["herd_effect"][d["herd"]]
        )
        return {"incidence": dist.Binomial(d["size"], logits=logits)}

    model = build(
        prior={
            "beta": population_prior(design, float(np.log(rate / (1 - rate))), 1.0),
            "sigma_herd": dist.HalfNormal(positive_float("group_scale", group_scale)),
            "herd_effect": lambda p, d: dist.Normal(0.0, p["sigma_herd"]).expand((n_herd,)),
        },
        likelihood=likelihood,
        dims={"beta": ("term",), "herd_effect": ("herd",)},
        coords={
            "term": ["intercept", "period2", "period3", "period4"],
            "herd": labels,
        },
    )
    return model, data
