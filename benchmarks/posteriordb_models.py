"""posteriordb posteriors written as hbm models, for the adaptation benchmarks.

Each function reads its data set from ``/work/shared/data/posteriordb/`` (the posteriordb
JSON files; override the folder with ``HBM_POSTERIORDB``) and returns ``(model, data)``.
The model blocks follow the Stan programs of posteriordb (Magnusson et al., "posteriordb:
testing, benchmarking and developing Bayesian inference algorithms";
github.com/stan-dev/posteriordb, ``posterior_database/models/stan/``):

=====================  ====================================  ======
function               posteriordb posterior                 params
=====================  ====================================  ======
``diamonds``           diamonds-diamonds                     26
``kidiq``              kidiq-kidscore_momhsiq                4
``mesquite``           mesquite-logmesquite_logvash          7
``nes2000``            nes2000-nes                           10
``seeds``              seeds_data-seeds_model                26
``surgical``           surgical_data-surgical_model          14
``gp_pois_regr``       gp_pois_regr-gp_pois_regr             13
=====================  ====================================  ======

Where a Stan program leaves a parameter with an improper flat prior (kidiq, mesquite,
nes2000) the model is written with :meth:`hbm.Model.from_logdensity` so the posterior is
exactly posteriordb's (a DAG node needs a proper distribution). Constants that Stan's
``~`` statements drop are kept or dropped freely: they do not change the posterior.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import hbm
from hbm import constraints, dist

__all__ = ["MODELS", "load", "diamonds", "kidiq", "mesquite", "nes2000", "seeds",
           "surgical", "gp_pois_regr"]

DATA_DIR = Path(os.environ.get("HBM_POSTERIORDB", "/work/shared/data/posteriordb"))


def _read(name: str) -> dict:
    with open(DATA_DIR / f"{name}.json") as handle:
        return json.load(handle)


def _f(values) -> np.ndarray:
    return np.asarray(values, dtype=float)


def diamonds():
    """brms-generated linear regression on 24 centered predictors (``normal_id_glm``):
    ``b ~ Normal(0, 1)``, ``Intercept ~ StudentT(3, 8, 10)``, ``sigma ~ StudentT+(3, 0,
    10)``, ``Y ~ Normal(Intercept + Xc b, sigma)``. Strongly correlated ``b``: the classic
    case for a dense or low-rank metric."""
    raw = _read("diamonds")
    x = _f(raw["X"])[:, 1:]
    data = {"Y": _f(raw["Y"]), "Xc": x - x.mean(0)}
    k = data["Xc"].shape[1]
    model = hbm.Model(
        prior={
            "b": dist.Normal(0.0, 1.0).expand((k,)),
            "Intercept": dist.StudentT(3.0, 8.0, 10.0),
            "sigma": dist.HalfStudentT(3.0, 10.0),
        },
        likelihood=lambda p, d: {
            "Y": dist.Normal(p["Intercept"] + d["Xc"] @ p["b"], p["sigma"])
        },
        name="diamonds",
    )
    return model, data


def _flat_regression(name, response, design, sigma_prior=None):
    """``response ~ Normal(design @ beta, sigma)`` with flat ``beta`` (and flat ``sigma``
    on (0, inf) unless ``sigma_prior``)."""

    def logdensity(p, d):
        lp = jnp.sum(dist.Normal(d["design"] @ p["beta"], p["sigma"]).log_prob(d["response"]))
        if sigma_prior is not None:
            lp = lp + sigma_prior.log_prob(p["sigma"])
        return lp

    model = hbm.Model.from_logdensity(
        logdensity, params={"beta": constraints.real, "sigma": constraints.positive},
        shapes={"beta": (design.shape[1],)}, name=name,
    )
    return model, {"response": _f(response), "design": _f(design)}


def kidiq():
    """``kid_score ~ Normal(beta1 + beta2 mom_hs + beta3 mom_iq, sigma)``, flat ``beta``,
    ``sigma ~ Cauchy+(0, 2.5)`` (kidscore_momhsiq)."""
    raw = _read("kidiq")
    n = len(raw["kid_score"])
    design = np.column_stack([np.ones(n), _f(raw["mom_hs"]), _f(raw["mom_iq"])])
    return _flat_regression("kidiq", raw["kid_score"], design, dist.HalfCauchy(2.5))


def mesquite():
    """``log weight`` on log canopy volume, area, shape, total height and group, flat
    priors (logmesquite_logvash)."""
    raw = _read("mesquite")
    diam1, diam2 = _f(raw["diam1"]), _f(raw["diam2"])
    canopy_height, total_height = _f(raw["canopy_height"]), _f(raw["total_height"])
    design = np.column_stack([
        np.ones(len(diam1)),
        np.log(diam1 * diam2 * canopy_height),
        np.log(diam1 * diam2),
        np.log(diam1 / diam2),
        np.log(total_height),
        _f(raw["group"]),
    ])
    return _flat_regression("mesquite", np.log(_f(raw["weight"])), design)


def nes2000():
    """Party identification on ideology, race, age group (3 indicators), education,
    gender and income, flat priors (nes)."""
    raw = _read("nes2000")
    age = np.asarray(raw["age_discrete"])
    design = np.column_stack([
        np.ones(len(age)), _f(raw["real_ideo"]), _f(raw["race_adj"]),
        (age == 2).astype(float), (age == 3).astype(float), (age == 4).astype(float),
        _f(raw["educ1"]), _f(raw["gender"]), _f(raw["income"]),
    ])
    return _flat_regression("nes2000", raw["partyid7"], design)


def seeds():
    """Random-effect logistic regression (BUGS "Seeds"): ``alpha ~ Normal(0, 1000)``,
    ``tau ~ Gamma(0.001, 0.001)``, ``b_i ~ Normal(0, 1 / sqrt(tau))``, ``n_i ~
    Binomial(N_i, logit^-1(alpha0 + alpha1 x1 + alpha2 x2 + alpha12 x1 x2 + b_i))``."""
    raw = _read("seeds_data")
    x1, x2 = _f(raw["x1"]), _f(raw["x2"])
    data = {"n": _f(raw["n"]), "N": _f(raw["N"]), "x1": x1, "x2": x2, "x1x2": x1 * x2}
    size = len(x1)
    model = hbm.Model(
        prior={
            "alpha0": dist.Normal(0.0, 1000.0),
            "alpha1": dist.Normal(0.0, 1000.0),
            "alpha12": dist.Normal(0.0, 1000.0),
            "alpha2": dist.Normal(0.0, 1000.0),
            "tau": dist.Gamma(0.001, 0.001),
            "b": lambda p, d: dist.Normal(0.0, 1.0 / jnp.sqrt(p["tau"])).expand((size,)),
        },
        likelihood=lambda p, d: {
            "n": dist.Binomial(d["N"], logits=p["alpha0"] + p["alpha1"] * d["x1"]
                               + p["alpha2"] * d["x2"] + p["alpha12"] * d["x1x2"] + p["b"])
        },
        name="seeds",
    )
    return model, data


def surgical():
    """Hospital mortality (BUGS "Surgical"): ``mu ~ Normal(0, 1000)``, ``sigmasq ~
    InvGamma(0.001, 0.001)``, ``b_i ~ Normal(mu, sqrt(sigmasq))``, ``r_i ~
    Binomial(n_i, logit^-1(b_i))``."""
    raw = _read("surgical_data")
    data = {"r": _f(raw["r"]), "n": _f(raw["n"])}
    size = len(data["r"])
    model = hbm.Model(
        prior={
            "mu": dist.Normal(0.0, 1000.0),
            "sigmasq": dist.InverseGamma(0.001, 0.001),
            "b": lambda p, d: dist.Normal(p["mu"], jnp.sqrt(p["sigmasq"])).expand((size,)),
        },
        likelihood=lambda p, d: {"r": dist.Binomial(d["n"], logits=p["b"])},
        name="surgical",
    )
    return model, data


def _exp_quad_cholesky(x, alpha, rho):
    distance = (x[:, None] - x[None, :]) ** 2
    cov = alpha**2 * jnp.exp(-0.5 * distance / rho**2) + 1e-10 * jnp.eye(x.shape[0])
    return jnp.linalg.cholesky(cov)


def gp_pois_regr():
    """Latent Gaussian process Poisson regression, non-centered: ``rho ~ Gamma(25, 4)``,
    ``alpha ~ Normal+(0, 2)``, ``f_tilde ~ Normal(0, 1)``, ``f = chol(K(x; alpha, rho) +
    1e-10 I) f_tilde``, ``k ~ Poisson(exp(f))``."""
    raw = _read("gp_pois_regr")
    data = {"x": _f(raw["x"]), "k": _f(raw["k"])}
    size = len(data["x"])

    def latent(p, d):
        return _exp_quad_cholesky(d["x"], p["alpha"], p["rho"]) @ p["f_tilde"]

    model = hbm.Model(
        prior={
            "rho": dist.Gamma(25.0, 4.0),
            "alpha": dist.HalfNormal(2.0),
            "f_tilde": dist.Normal(0.0, 1.0).expand((size,)),
        },
        likelihood=lambda p, d: {"k": dist.Poisson(log_rate=latent(p, d))},
        deterministic={"f": latent},
        name="gp_pois_regr",
    )
    return model, data


MODELS = {
    "diamonds": diamonds,
    "kidiq": kidiq,
    "mesquite": mesquite,
    "nes2000": nes2000,
    "seeds": seeds,
    "surgical": surgical,
    "gp_pois_regr": gp_pois_regr,
}


def load(name: str):
    """``(model, data)`` of the posterior called ``name`` (a key of :data:`MODELS`)."""
    if name not in MODELS:
        raise KeyError(f"unknown posteriordb model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]()
