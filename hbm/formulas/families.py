"""Response families and link functions of the formula front-end.

Each family maps the linear predictor ``eta`` (after the inverse link) and its own
parameters to an hbm distribution of one observation, with the parameter names brms uses:

=============  =====================  ===========  ======================================
family         distribution           links        extra parameter
=============  =====================  ===========  ======================================
gaussian       Normal(mu, sigma)      identity,log ``sigma``
student        StudentT(nu, mu, sigma) identity     ``sigma``, ``nu``
bernoulli      Bernoulli(p)           logit, probit, cloglog
binomial       Binomial(trials, p)    logit, probit, cloglog
poisson        Poisson(mu)            log, identity
negbinomial    NegativeBinomial(mu, shape) log     ``shape`` (Stan's neg_binomial_2 phi)
gamma          Gamma(shape, shape/mu) log, identity ``shape``
lognormal      LogNormal(mu, sigma)   identity     ``sigma`` (mu, sigma on the log scale)
beta           Beta(mu phi, (1-mu) phi) logit, probit, cloglog ``phi``
=============  =====================  ===========  ======================================

Observation weights ``w_i`` multiply each observation's log likelihood,
``sum_i w_i log p(y_i | theta)`` (brms' ``weights()`` addition term): a weight of 2 counts
an observation twice. :class:`Weighted` wraps the family's distribution to do that; its
draws are the unweighted family's.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
from jax.scipy.special import expit
from jax.scipy.stats import norm

from hbm import dist
from hbm.dist.base import Distribution
from hbm.errors import ConfigurationError

__all__ = ["FAMILIES", "LINKS", "Family", "Weighted", "get_family", "inverse_link"]


def _inv_cloglog(eta):
    return -jnp.expm1(-jnp.exp(eta))


LINKS: dict[str, Callable] = {
    "identity": lambda eta: eta,
    "log": jnp.exp,
    "logit": expit,
    "probit": norm.cdf,
    "cloglog": _inv_cloglog,
}


def inverse_link(link: str) -> Callable:
    return LINKS[link]


class Family(NamedTuple):
    """A response family: its links (the first is the default), extra parameters and the
    distribution of the response given ``eta`` (linear predictor), params and data."""

    name: str
    links: tuple
    aux: tuple                      # brms names of the extra parameters
    discrete: bool
    make: Callable                  # (eta, link, params, data) -> Distribution


def _gaussian(eta, link, p, d):
    return dist.Normal(inverse_link(link)(eta), p["sigma"])


def _student(eta, link, p, d):
    return dist.StudentT(p["nu"], inverse_link(link)(eta), p["sigma"])


def _bernoulli(eta, link, p, d):
    if link == "logit":
        return dist.Bernoulli(logits=eta)
    return dist.Bernoulli(probs=inverse_link(link)(eta))


def _binomial(eta, link, p, d):
    if link == "logit":
        return dist.Binomial(d["trials"], logits=eta)
    return dist.Binomial(d["trials"], probs=inverse_link(link)(eta))


def _poisson(eta, link, p, d):
    if link == "log":
        return dist.Poisson(log_rate=eta)
    return dist.Poisson(rate=inverse_link(link)(eta))


def _negbinomial(eta, link, p, d):
    return dist.NegativeBinomial(inverse_link(link)(eta), p["shape"])


def _gamma(eta, link, p, d):
    mu = inverse_link(link)(eta)
    return dist.Gamma(p["shape"], p["shape"] / mu)


def _lognormal(eta, link, p, d):
    return dist.LogNormal(eta, p["sigma"])


def _beta(eta, link, p, d):
    mu = inverse_link(link)(eta)
    return dist.Beta(mu * p["phi"], (1.0 - mu) * p["phi"])


FAMILIES: dict[str, Family] = {
    "gaussian": Family("gaussian", ("identity", "log"), ("sigma",), False, _gaussian),
    "student": Family("student", ("identity",), ("sigma", "nu"), False, _student),
    "bernoulli": Family("bernoulli", ("logit", "probit", "cloglog"), (), True, _bernoulli),
    "binomial": Family("binomial", ("logit", "probit", "cloglog"), (), True, _binomial),
    "poisson": Family("poisson", ("log", "identity"), (), True, _poisson),
    "negbinomial": Family("negbinomial", ("log",), ("shape",), True, _negbinomial),
    "gamma": Family("gamma", ("log", "identity"), ("shape",), False, _gamma),
    "lognormal": Family("lognormal", ("identity",), ("sigma",), False, _lognormal),
    "beta": Family("beta", ("logit", "probit", "cloglog"), ("phi",), False, _beta),
}


def get_family(family, link=None) -> tuple[Family, str]:
    """The family and the link to use; unknown names raise ConfigurationError."""
    if not isinstance(family, str) or family.lower() not in FAMILIES:
        raise ConfigurationError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    fam = FAMILIES[family.lower()]
    if link is None:
        return fam, fam.links[0]
    if link not in fam.links:
        raise ConfigurationError(f"unknown link {link!r} for family {fam.name!r}; it takes "
                                 f"{list(fam.links)}")
    return fam, link


class Weighted(Distribution):
    """``base`` with each observation's log density multiplied by ``weights``."""

    def __init__(self, base: Distribution, weights):
        self.base = base
        self.weights = jnp.asarray(weights)
        self.support = base.support
        super().__init__(batch_shape=base.batch_shape, event_shape=base.event_shape)

    def params(self):
        return {"base": self.base, "weights": self.weights}

    def log_prob(self, value):
        return self.weights * self.base.log_prob(value)

    def sample(self, key, sample_shape=()):
        return self.base.sample(key, sample_shape)

    @property
    def mean(self):
        return self.base.mean
