"""Epileptic seizure counts: a Poisson GLMM with overdispersion (MASS::epil).

Thall and Vail (1990), analysed by Breslow and Clayton (1993), "Approximate inference in
generalized linear mixed models", JASA 88, and as the BUGS example ``Epil``. 59 patients,
four two-week periods each; covariates as in the BUGS model: ``lbase`` (log of the
8-week baseline count / 4, centered), ``trt`` (1 = progabide), their interaction,
``lage`` (log age, centered), ``V4`` (1 for the fourth visit).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hbm import dist
from hbm.errors import ConfigurationError, DataError
from hbm.models._common import build, frame, group_codes, integer, numeric, population_prior

FAMILIES = ("poisson", "negbinomial")


def _treatment(column) -> np.ndarray:
    values = column.to_numpy()
    if values.dtype.kind in "iufb":
        codes = np.asarray(values, dtype=np.float64)
    else:
        labels = [str(v).strip().lower() for v in values]
        if not set(labels) <= {"placebo", "progabide"}:
            raise DataError("trt must be 'placebo'/'progabide' or 0/1")
        codes = np.array([label == "progabide" for label in labels], dtype=np.float64)
    if not set(np.unique(codes)) <= {0.0, 1.0}:
        raise DataError("trt must be 'placebo'/'progabide' or 0/1")
    return codes


def epil(df=None, *, family: str = "poisson"):
    """Seizure counts with subject effects and observation-level overdispersion.

    ``family="poisson"`` (Breslow and Clayton's model III):

    .. math::

        b_j &\\sim \\mathrm{Normal}(0, \\sigma_{subject}), \\qquad
        e_i \\sim \\mathrm{Normal}(0, \\sigma_{obs}), \\\\
        y_i &\\sim \\mathrm{Poisson}(\\exp(x_i^T \\beta + b_{j[i]} + e_i)),

    with :math:`x_i = (1, \\mathrm{lbase}, \\mathrm{trt}, \\mathrm{lbase \\cdot trt},
    \\mathrm{lage}, \\mathrm{V4})`. ``family="negbinomial"`` drops :math:`e_i` and uses
    :math:`y_i \\sim \\mathrm{NegativeBinomial}(\\exp(x_i^T\\beta + b_{j[i]}), \\phi)`
    (mean, concentration).

    Priors on the log scale: ``beta[0] ~ Normal(log(mean(y)), 2.5)``, other
    ``beta[k] ~ Normal(0, 2.5 / sd(x_k))``; ``sigma_subject, sigma_obs ~ HalfNormal(1)``;
    ``concentration ~ Gamma(2, 0.1)`` (shape, rate).

    Returns
    -------
    (Model, dict)
        Data ``{"y", "lbase", "trt", "lage", "v4", "subject"}``; parameters ``beta``
        (6), ``sigma_subject``, ``subject_effect`` (subject) and either ``sigma_obs``,
        ``obs_effect`` (obs) or ``concentration``.
    """
    if family not in FAMILIES:
        raise ConfigurationError(f"family must be one of {FAMILIES}, got {family!r}")
    df = frame(df, "epil", ["y", "trt", "lbase", "lage", "V4", "subject"])
    y = integer(df, "y")
    lbase, lage, v4 = numeric(df, "lbase"), numeric(df, "lage"), numeric(df, "V4")
    trt = _treatment(df["trt"])
    subject, labels = group_codes(df["subject"])
    n_obs, n_subject = len(y), len(labels)
    design = np.column_stack([np.ones(n_obs), lbase, trt, lbase * trt, lage, v4])
    data = {"y": y, "lbase": lbase, "trt": trt, "lage": lage, "v4": v4, "subject": subject}

    def linear_predictor(p, d):
        b = p["beta"]
        return (
            b[0]
            + b[1] * d["lbase"]
            + b[2] * d["trt"]
            + b[3] * d["lbase"] * d["trt"]
            + b[4] * d["lage"]
            + b[5] * d["v4"]
            + p["subject_effect"][d["subject"]]
        )

    prior = {
        "beta": population_prior(design, float(np.log(np.mean(y) + 0.5)), 1.0),
        "sigma_subject": dist.HalfNormal(1.0),
        "subject_effect": lambda p, d: dist.Normal(0.0, p["sigma_subject"]).expand(
            (n_subject,)
        ),
    }
    dims = {"beta": ("term",), "subject_effect": ("subject",)}
    if family == "poisson":
        prior["sigma_obs"] = dist.HalfNormal(1.0)
        prior["obs_effect"] = lambda p, d: dist.Normal(0.0, p["sigma_obs"]).expand((n_obs,))
        dims["obs_effect"] = ("obs",)

        def likelihood(p, d):
            return {"y": dist.Poisson(log_rate=linear_predictor(p, d) + p["obs_effect"])}

    else:
        prior["concentration"] = dist.Gamma(2.0, 0.1)
        # whole-number floats: NegativeBinomial.log_prob's xlogy(k, mean) cannot be
        # differentiated with an integer k (float0 tangent) in this version of hbm.dist
        data["y"] = y.astype(np.float64)

        def likelihood(p, d):
            mean = jnp.exp(linear_predictor(p, d))
            return {"y": dist.NegativeBinomial(mean, p["concentration"])}

    model = build(
        prior=prior,
        likelihood=likelihood,
        dims=dims,
        coords={
            "term": ["intercept", "lbase", "trt", "lbase:trt", "lage", "V4"],
            "subject": labels,
            "obs": list(range(n_obs)),
        },
    )
    return model, data
