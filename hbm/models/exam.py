"""London exam scores: students in schools with a school-level predictor (mlmRev::Exam).

Goldstein et al. (1993), "A multilevel analysis of school examination results", Oxford
Review of Education 19(4); 4059 students in 65 schools. ``normexam`` (normalized exam
score) on ``standLRT`` (standardized London Reading Test) with school intercepts and the
school's average intake score ``schavg`` as a school-level predictor (Gelman and Hill
2007, sec. 12.6, for the idea).
"""

from __future__ import annotations

import numpy as np

from hbm import dist
from hbm.errors import DataError
from hbm.models._common import build, frame, group_codes, numeric, population_prior, scale


def exam(df=None):
    """Varying school intercepts with a student- and a school-level predictor.

    .. math::

        \\eta_j &\\sim \\mathrm{Normal}(0, \\sigma_{school}), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\beta_1 \\mathrm{standLRT}_i
            + \\beta_2 \\mathrm{schavg}_{j[i]} + \\eta_{j[i]}, \\sigma).

    Priors (scaled to the data): ``beta[0] ~ Normal(mean(y), 2.5 sd(y))``, ``beta[k] ~
    Normal(0, 2.5 sd(y) / sd(x_k))``; ``sigma_school, sigma ~ HalfNormal(sd(y))``.

    Returns
    -------
    (Model, dict)
        Data ``{"y", "standlrt", "schavg" (school,), "school"}``; parameters ``beta``
        (intercept, standLRT, schavg), ``sigma_school``, ``school_effect``, ``sigma``.
    """
    df = frame(df, "exam", ["normexam", "standLRT", "schavg", "school"])
    y = numeric(df, "normexam")
    standlrt = numeric(df, "standLRT")
    schavg_obs = numeric(df, "schavg")
    school, labels = group_codes(df["school"])
    n_school = len(labels)
    schavg = np.zeros(n_school)
    schavg[school] = schavg_obs
    if not np.allclose(schavg[school], schavg_obs):
        raise DataError("'schavg' must be constant within each school")
    data = {"y": y, "standlrt": standlrt, "schavg": schavg, "school": school}
    sd_y = scale(y)
    design = np.column_stack([np.ones_like(y), standlrt, schavg_obs])

    def likelihood(p, d):
        b = p["beta"]
        school_mean = b[2] * d["schavg"] + p["school_effect"]
        mean = b[0] + b[1] * d["standlrt"] + school_mean[d["school"]]
        return {"y": dist.Normal(mean, p["sigma"])}

    model = build(
        prior={
            "beta": population_prior(design, float(np.mean(y)), sd_y),
            "sigma_school": dist.HalfNormal(sd_y),
            "school_effect": lambda p, d: dist.Normal(0.0, p["sigma_school"]).expand(
                (n_school,)
            ),
            "sigma": dist.HalfNormal(sd_y),
        },
        likelihood=likelihood,
        dims={"beta": ("term",), "school_effect": ("school",)},
        coords={"term": ["intercept", "standLRT", "schavg"], "school": labels},
    )
    return model, data
