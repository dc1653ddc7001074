"""ETH Zurich lecture evaluations: a large crossed model (lme4::InstEval).

73421 ratings ``y`` (1-5) by 2972 students ``s`` of 1128 lecturers ``d`` in 14
departments: ``y ~ service + (1 | s) + (1 | d) + (1 | dept)`` (Bates et al. 2015). A
Gaussian approximation to an ordinal outcome, used here as a scale test; the group names
follow the data columns (``s_effect``, ``d_effect``, ``dept_effect``).
"""

from __future__ import annotations

import numpy as np

from hbm import dist
from hbm.grouping import take_groups
from hbm.models._common import build, frame, group_codes, numeric, population_prior, scale


def insteval(df=None):
    """Crossed student, lecturer and department intercepts with a ``service`` effect.

    .. math::

        s_a &\\sim \\mathrm{Normal}(0, \\sigma_s), \\quad
        d_b \\sim \\mathrm{Normal}(0, \\sigma_d), \\quad
        c_k \\sim \\mathrm{Normal}(0, \\sigma_{dept}), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\beta_1 \\mathrm{service}_i + s_{a[i]}
            + d_{b[i]} + c_{k[i]}, \\sigma).

    Priors (scaled to the data): ``beta[0] ~ Normal(mean(y), 2.5 sd(y))``, ``beta[1] ~
    Normal(0, 2.5 sd(y) / sd(service))``; ``sigma_s, sigma_d, sigma_dept, sigma ~
    HalfNormal(sd(y))``.

    Returns
    -------
    (Model, dict)
        Data ``{"y", "service", "s", "d", "dept"}``.
    """
    df = frame(df, "insteval", ["y", "service", "s", "d", "dept"])
    y = numeric(df, "y")
    service = numeric(df, "service")
    s, s_labels = group_codes(df["s"])
    lecturer, d_labels = group_codes(df["d"])
    dept, dept_labels = group_codes(df["dept"])
    data = {"y": y, "service": service, "s": s, "d": lecturer, "dept": dept}
    sd_y = scale(y)
    design = np.column_stack([np.ones_like(y), service])
    sizes = {"s": len(s_labels), "d": len(d_labels), "dept": len(dept_labels)}
    prior = {"beta": population_prior(design, float(np.mean(y)), sd_y)}
    for group, size in sizes.items():
        prior[f"sigma_{group}"] = dist.HalfNormal(sd_y)
        prior[f"{group}_effect"] = _group_prior(group, size)
    prior["sigma"] = dist.HalfNormal(sd_y)

    def likelihood(p, d):
        mean = (
            p["beta"][0]
            + p["beta"][1] * d["service"]
            # rows are sorted by student: the scatter-add of this term's gradient is
            # a long dependent chain per student, which take_groups splits into lanes
            + take_groups(p["s_effect"], d["s"])
            + p["d_effect"][d["d"]]
            + p["dept_effect"][d["dept"]]
        )
        return {"y": dist.Normal(mean, p["sigma"])}

    model = build(
        prior=prior,
        likelihood=likelihood,
        dims={
            "beta": ("term",),
            "s_effect": ("s",),
            "d_effect": ("d",),
            "dept_effect": ("dept",),
        },
        coords={
            "term": ["intercept", "service"],
            "s": s_labels,
            "d": d_labels,
            "dept": dept_labels,
        },
    )
    return model, data


def _group_prior(group, size):
    return lambda p, d: dist.Normal(0.0, p[f"sigma_{group}"]).expand((size,))
