"""Probability distributions: ``log_prob``, ``sample``, ``support``, shapes, ``expand``."""

from hbm.dist.base import Distribution, Standardized
from hbm.dist.continuous import (
    Beta,
    Cauchy,
    Exponential,
    Gamma,
    HalfCauchy,
    HalfNormal,
    HalfStudentT,
    InverseGamma,
    Laplace,
    Logistic,
    LogNormal,
    Normal,
    StudentT,
    Uniform,
)
from hbm.dist.discrete import (
    Bernoulli,
    BetaBinomial,
    Binomial,
    Categorical,
    NegativeBinomial,
    Poisson,
)
from hbm.dist.multivariate import Dirichlet, LKJCholesky, MultivariateNormal

__all__ = [
    "Distribution",
    "Standardized",
    # continuous
    "Normal",
    "HalfNormal",
    "StudentT",
    "HalfStudentT",
    "Cauchy",
    "HalfCauchy",
    "Laplace",
    "Logistic",
    "LogNormal",
    "Exponential",
    "Gamma",
    "InverseGamma",
    "Beta",
    "Uniform",
    # discrete
    "Bernoulli",
    "Binomial",
    "Poisson",
    "NegativeBinomial",
    "BetaBinomial",
    "Categorical",
    # multivariate
    "MultivariateNormal",
    "LKJCholesky",
    "Dirichlet",
]
