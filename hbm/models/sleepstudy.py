"""Sleep deprivation: reaction times over ten days (Belenky et al. 2003; lme4::sleepstudy).

The standard example of correlated varying intercepts and slopes, ``Reaction ~ Days +
(Days | Subject)`` in lme4 notation (Bates et al. 2015, "Fitting linear mixed-effects
models using lme4", J. Stat. Softw. 67(1)). The LKJ prior on the correlation is from
Lewandowski, Kurowicka and Joe (2009).
"""

from __future__ import annotations

import numpy as np

from hbm import dist
from hbm.models._common import (
    build,
    correlated_effects,
    frame,
    group_codes,
    numeric,
    population_prior,
    deprecated_centered,
    positive_float,
    scale,
)


def sleepstudy(df=None, *, centered=None, lkj_concentration=2.0):
    """Reaction time with correlated subject intercepts and slopes in ``Days``.

    .. math::

        L &\\sim \\mathrm{LKJCholesky}(2, \\nu), \\qquad
        \\eta_j \\sim \\mathrm{MultivariateNormal}(0,
            \\mathrm{diag}(\\sigma_{subject}) L L^T \\mathrm{diag}(\\sigma_{subject})), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\eta_{j[i],0}
            + (\\beta_1 + \\eta_{j[i],1})\\, \\mathrm{Days}_i, \\sigma).

    Priors (scaled to the data): ``beta[0] ~ Normal(mean(y), 2.5 sd(y))``,
    ``beta[1] ~ Normal(0, 2.5 sd(y) / sd(Days))``, ``sigma_subject ~ HalfNormal(sd(y),
    sd(y) / sd(Days))``, ``sigma ~ HalfNormal(sd(y))``, ``nu = 2``.

    Parameters
    ----------
    df : pandas.DataFrame, optional
        Columns ``Reaction``, ``Days``, ``Subject``; the bundled data when ``None``.
    centered : None
        Deprecated and ignored (a DeprecationWarning): ``subject_effect`` is always the
        MultivariateNormal node above, and ``hbm.sample(..., reparam=...)`` chooses
        whether it is sampled centered, non-centered or partially centered.
    lkj_concentration : float
        The LKJ shape ``nu``.

    Returns
    -------
    (Model, dict)
        Data ``{"y", "days", "subject"}``; parameters ``beta`` (2), ``sigma_subject``
        (2), ``L_subject`` (2, 2), ``subject_effect`` (subject, 2), ``sigma``.
    """
    deprecated_centered("sleepstudy", centered)
    df = frame(df, "sleepstudy", ["Reaction", "Days", "Subject"])
    y = numeric(df, "Reaction")
    days = numeric(df, "Days")
    subject, labels = group_codes(df["Subject"])
    data = {"y": y, "days": days, "subject": subject}
    sd_y = scale(y)
    design = np.column_stack([np.ones_like(days), days])
    prior = {
        "beta": population_prior(design, float(np.mean(y)), sd_y),
        "sigma_subject": dist.HalfNormal(np.array([sd_y, sd_y / scale(days)])),
        "L_subject": dist.LKJCholesky(2, positive_float("lkj_concentration", lkj_concentration)),
    }
    effects = correlated_effects(prior, "subject", len(labels), 2)
    prior["sigma"] = dist.HalfNormal(sd_y)

    def likelihood(p, d):
        per_obs = effects(p, d)[d["subject"]]
        mean = p["beta"][0] + per_obs[:, 0] + (p["beta"][1] + per_obs[:, 1]) * d["days"]
        return {"y": dist.Normal(mean, p["sigma"])}

    model = build(
        prior=prior,
        likelihood=likelihood,
        dims={
            "beta": ("term",),
            "sigma_subject": ("term",),
            "subject_effect": ("subject", "term"),
        },
        coords={"term": ["intercept", "days"], "subject": labels},
    )
    return model, data
