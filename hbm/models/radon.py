"""Minnesota radon: the multilevel models of Gelman and Hill (2007), chapters 12-13.

Data: the bundled ``radon_mn`` (HLMdiag::radon, 919 homes in 85 counties). Outcome
``y = log.radon``. Predictor ``x = basement`` *used as is*: despite its name, this column
equals Gelman and Hill's ``floor`` (0 = measured in the basement, 1 = on the first
floor), not a "measured in the basement" indicator. We checked it against posteriordb's
``radon_mn`` (``floor_measure``): per-county counts of ones agree exactly and 916 of 919 (county,
radon, floor) triples match (the other three differ only in how a zero radon reading was
logged). About 17% of the homes have ``x = 1``, as expected for first-floor readings.
``uranium`` is the county's log soil uranium (log ppm), constant within a county.

Priors are weakly informative and scaled to the data (rstanarm-style autoscaling, Gabry
and Goodrich, "Prior distributions for rstanarm models"): ``beta[0] ~ Normal(mean(y), 2.5 sd(y))``, ``beta[k] ~
Normal(0, 2.5 sd(y) / sd(x_k))``; ``sigma`` and every group-level sd ``~ HalfNormal(sd(y))``;
``L_county ~ LKJCholesky(2, 2)``.

Every model is written centered, as Gelman and Hill write it: the correlated varying
intercept and slope model has the MultivariateNormal node ``county_effect``. How the
group effects are sampled (centered, non-centered, or partially centered per element,
chosen in warmup) is the model layer's business (:mod:`hbm.reparam`).
"""

from __future__ import annotations

import numpy as np

from hbm import dist
from hbm.errors import DataError
from hbm.models._common import (
    build,
    frame,
    group_codes,
    correlated_effects,
    deprecated_centered,
    numeric,
    population_prior,
    positive_float,
    scale,
)

_COLUMNS = ["log.radon", "basement", "county"]


def _radon_data(df, extra=()):
    df = frame(df, "radon_mn", _COLUMNS + list(extra))
    y = numeric(df, "log.radon")
    floor = numeric(df, "basement")
    county, labels = group_codes(df["county"])
    if "county.name" in df.columns:
        names = df.groupby(county)["county.name"].first()
        labels = [str(names[j]).strip() for j in range(len(labels))]
    data = {"y": y, "floor": floor, "county": county}
    coords = {"county": labels}
    return df, data, coords


def _varying_intercept_prior(design, y, n_county):
    """Autoscaled population coefficients, county intercept offsets and residual sd."""
    sd_y = scale(y)
    return {
        "beta": population_prior(design, float(np.mean(y)), sd_y),
        "sigma_county": dist.HalfNormal(sd_y),
        "county_effect": lambda p, d: dist.Normal(0.0, p["sigma_county"]).expand(
            (n_county,)
        ),
        "sigma": dist.HalfNormal(sd_y),
    }


def _gaussian(p, mean):
    return dist.Normal(mean, p["sigma"])


def radon_pooled(df=None):
    """Complete pooling: one regression line for all of Minnesota.

    .. math::

        y_i \\sim \\mathrm{Normal}(\\beta_0 + \\beta_1 x_i, \\sigma).

    Returns
    -------
    (Model, dict)
        Data ``{"y", "floor", "county"}`` (``county`` unused here).
    """
    _, data, coords = _radon_data(df)
    y, floor = data["y"], data["floor"]
    design = np.column_stack([np.ones_like(floor), floor])
    sd_y = scale(y)
    model = build(
        prior={
            "beta": population_prior(design, float(np.mean(y)), sd_y),
            "sigma": dist.HalfNormal(sd_y),
        },
        likelihood=lambda p, d: {
            "y": _gaussian(p, p["beta"][0] + p["beta"][1] * d["floor"])
        },
        dims={"beta": ("term",)},
        coords={"term": ["intercept", "floor"], "county": coords["county"]},
    )
    return model, data


def radon_unpooled(df=None):
    """No pooling: a separate intercept per county, independent wide priors.

    .. math::

        \\alpha_j &\\sim \\mathrm{Normal}(\\bar y, 2.5\\,\\mathrm{sd}(y)), \\\\
        y_i &\\sim \\mathrm{Normal}(\\alpha_{j[i]} + \\beta_0 x_i, \\sigma).

    Parameters: ``county_intercept`` (county), ``beta`` (length 1: floor), ``sigma``.
    """
    _, data, coords = _radon_data(df)
    y, floor = data["y"], data["floor"]
    n_county = len(coords["county"])
    sd_y = scale(y)
    model = build(
        prior={
            "county_intercept": dist.Normal(float(np.mean(y)), 2.5 * sd_y).expand((n_county,)),
            "beta": dist.Normal(0.0, 2.5 * sd_y / scale(floor)).expand((1,)),
            "sigma": dist.HalfNormal(sd_y),
        },
        likelihood=lambda p, d: {
            "y": _gaussian(p, p["county_intercept"][d["county"]] + p["beta"][0] * d["floor"])
        },
        dims={"county_intercept": ("county",), "beta": ("term",)},
        coords={"county": coords["county"], "term": ["floor"]},
    )
    return model, data


def radon_varying_intercept(df=None):
    """Partial pooling of county intercepts (Gelman and Hill ch. 12).

    .. math::

        \\eta_j &\\sim \\mathrm{Normal}(0, \\sigma_{county}), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\beta_1 x_i + \\eta_{j[i]}, \\sigma).

    Parameters: ``beta`` (intercept, floor), ``sigma_county``, ``county_effect``,
    ``sigma``.
    """
    _, data, coords = _radon_data(df)
    y, floor = data["y"], data["floor"]
    n_county = len(coords["county"])
    design = np.column_stack([np.ones_like(floor), floor])
    model = build(
        prior=_varying_intercept_prior(design, y, n_county),
        likelihood=lambda p, d: {
            "y": _gaussian(
                p,
                p["beta"][0] + p["beta"][1] * d["floor"] + p["county_effect"][d["county"]],
            )
        },
        dims={"beta": ("term",), "county_effect": ("county",)},
        coords={"term": ["intercept", "floor"], "county": coords["county"]},
    )
    return model, data


def radon_varying_slope(df=None):
    """A common intercept and county-varying floor slopes.

    .. math::

        \\eta_j &\\sim \\mathrm{Normal}(0, \\sigma_{county}), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + (\\beta_1 + \\eta_{j[i]}) x_i, \\sigma).

    Parameters: ``beta`` (intercept, floor), ``sigma_county``, ``county_effect`` (slope
    deviations), ``sigma``.
    """
    _, data, coords = _radon_data(df)
    y, floor = data["y"], data["floor"]
    n_county = len(coords["county"])
    design = np.column_stack([np.ones_like(floor), floor])
    sd_y = scale(y)
    slope_scale = sd_y / scale(floor)
    model = build(
        prior={
            "beta": population_prior(design, float(np.mean(y)), sd_y),
            "sigma_county": dist.HalfNormal(slope_scale),
            "county_effect": lambda p, d: dist.Normal(0.0, p["sigma_county"]).expand(
                (n_county,)
            ),
            "sigma": dist.HalfNormal(sd_y),
        },
        likelihood=lambda p, d: {
            "y": _gaussian(
                p,
                p["beta"][0] + (p["beta"][1] + p["county_effect"][d["county"]]) * d["floor"],
            )
        },
        dims={"beta": ("term",), "county_effect": ("county",)},
        coords={"term": ["intercept", "floor"], "county": coords["county"]},
    )
    return model, data


def radon_varying_intercept_slope(df=None, *, centered=None, lkj_concentration=2.0):
    """Correlated county intercepts and floor slopes (Gelman and Hill sec. 13.1).

    .. math::

        \\eta_j &\\sim \\mathrm{MultivariateNormal}(0,
            \\mathrm{diag}(\\sigma_{county}) L L^T \\mathrm{diag}(\\sigma_{county})),
            \\quad L \\sim \\mathrm{LKJCholesky}(2, \\nu), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\eta_{j[i],0}
            + (\\beta_1 + \\eta_{j[i],1}) x_i, \\sigma).

    Parameters: ``beta`` (2), ``sigma_county`` (2), ``L_county`` (2, 2),
    ``county_effect`` (county, 2), ``sigma``. ``sigma_county[1]`` has prior scale
    ``sd(y) / sd(x)``. ``centered`` is deprecated and ignored (a DeprecationWarning):
    ``hbm.sample(..., reparam=...)`` chooses the parameterization.
    """
    deprecated_centered("radon_varying_intercept_slope", centered)
    _, data, coords = _radon_data(df)
    y, floor = data["y"], data["floor"]
    n_county = len(coords["county"])
    design = np.column_stack([np.ones_like(floor), floor])
    sd_y = scale(y)
    eta = positive_float("lkj_concentration", lkj_concentration)
    prior = {
        "beta": population_prior(design, float(np.mean(y)), sd_y),
        "sigma_county": dist.HalfNormal(np.array([sd_y, sd_y / scale(floor)])),
        "L_county": dist.LKJCholesky(2, eta),
    }
    effects = correlated_effects(prior, "county", n_county, 2)
    prior["sigma"] = dist.HalfNormal(sd_y)
    model = build(
        prior=prior,
        likelihood=lambda p, d: {
            "y": _gaussian(p, _intercept_slope_mean(p, d, effects(p, d)))
        },
        dims={
            "beta": ("term",),
            "sigma_county": ("term",),
            "county_effect": ("county", "term"),
        },
        coords={"term": ["intercept", "floor"], "county": coords["county"]},
    )
    return model, data


def _intercept_slope_mean(p, d, effect):
    per_obs = effect[d["county"]]
    return p["beta"][0] + per_obs[:, 0] + (p["beta"][1] + per_obs[:, 1]) * d["floor"]


def radon_uranium(df=None):
    """Varying intercepts with the county-level predictor log uranium (G&H sec. 12.6).

    .. math::

        \\eta_j &\\sim \\mathrm{Normal}(0, \\sigma_{county}), \\\\
        y_i &\\sim \\mathrm{Normal}(\\beta_0 + \\beta_1 x_i + \\beta_2 u_{j[i]}
            + \\eta_{j[i]}, \\sigma),

    with :math:`u_j` the county's log uranium. Data adds ``log_uranium`` (county,).
    Parameters: ``beta`` (intercept, floor, log_uranium), ``sigma_county``,
    ``county_effect``, ``sigma``.
    """
    df, data, coords = _radon_data(df, extra=["uranium"])
    county = data["county"]
    n_county = len(coords["county"])
    uranium = numeric(df, "uranium")
    per_county = np.zeros(n_county)
    per_county[county] = uranium
    if not np.allclose(per_county[county], uranium):
        raise DataError("'uranium' must be constant within each county")
    data["log_uranium"] = per_county
    y, floor = data["y"], data["floor"]
    design = np.column_stack([np.ones_like(floor), floor, uranium])
    model = build(
        prior=_varying_intercept_prior(design, y, n_county),
        likelihood=lambda p, d: {
            "y": _gaussian(
                p,
                p["beta"][0]
                + p["beta"][1] * d["floor"]
                + (p["beta"][2] * d["log_uranium"] + p["county_effect"])[d["county"]],
            )
        },
        dims={"beta": ("term",), "county_effect": ("county",)},
        coords={"term": ["intercept", "floor", "log_uranium"], "county": coords["county"]},
    )
    return model, data
