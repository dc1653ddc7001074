"""Continuous univariate distributions. Parameterizations follow Stan and NumPyro.

Every family stores its constructor arguments as float arrays under the same names, so
``type(d)(**d.params())`` rebuilds ``d``. ``log_prob`` is ``-inf`` outside the support for
families whose support is bounded (half-line, unit interval, ``[low, high]``).

The location-scale families (Normal, StudentT, Cauchy, Laplace, Logistic, and LogNormal
in log space) answer :meth:`~hbm.dist.base.Distribution.standardized`, which the model
layer uses for non-centered and partially centered parameterizations (Papaspiliopoulos,
Roberts & Skold 2007, "A general framework for the parametrization of hierarchical
models", Statistical Science 22(1)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, gammaln, xlog1py, xlogy

from hbm import constraints
from hbm.dist.base import Distribution, Standardized, as_float

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_2 = math.log(2.0)
_LOG_PI = math.log(math.pi)


def _batch_shape(*arrays):
    return jnp.broadcast_shapes(*[jnp.shape(a) for a in arrays])


def _dtype(*arrays):
    return jnp.result_type(*arrays)


def _full(value, batch_shape, dtype):
    """``value`` broadcast to ``batch_shape`` (used for means and variances)."""
    return jnp.broadcast_to(jnp.asarray(value, dtype), batch_shape)


def _outside_is_impossible(inside, log_density):
    """``log_density`` where ``inside`` holds, ``-inf`` elsewhere."""
    return jnp.where(inside, log_density, -jnp.inf)


# --------------------------------------------------------------------- real line
class Normal(Distribution):
    """Normal(loc, scale)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real

    def __init__(self, loc=0.0, scale=1.0):
        self.loc, self.scale = as_float(loc), as_float(scale)
        super().__init__(batch_shape=jnp.broadcast_shapes(self.loc.shape, self.scale.shape))

    def log_prob(self, value):
        z = (value - self.loc) / self.scale
        return -0.5 * z**2 - jnp.log(self.scale) - _HALF_LOG_2PI

    def sample(self, key, sample_shape=()):
        dtype = _dtype(self.loc, self.scale)
        eps = jax.random.normal(key, tuple(sample_shape) + self.batch_shape, dtype=dtype)
        return self.loc + self.scale * eps

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(self.scale**2, self.batch_shape)

    def standardized(self):
        base = Normal(jnp.zeros(self.batch_shape, self.loc.dtype), 1.0)
        return Standardized(base, self.loc, self.scale, "identity")


class StudentT(Distribution):
    """Student's t with ``df`` degrees of freedom, location ``loc`` and scale ``scale``."""

    arg_constraints = {
        "df": constraints.positive,
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.real

    def __init__(self, df, loc=0.0, scale=1.0):
        self.df, self.loc, self.scale = as_float(df), as_float(loc), as_float(scale)
        super().__init__(batch_shape=_batch_shape(self.df, self.loc, self.scale))

    def log_prob(self, value):
        df = self.df
        z = (value - self.loc) / self.scale
        return (
            gammaln(0.5 * (df + 1))
            - gammaln(0.5 * df)
            - 0.5 * jnp.log(df * math.pi)
            - jnp.log(self.scale)
            - 0.5 * (df + 1) * jnp.log1p(z**2 / df)
        )

    def sample(self, key, sample_shape=()):
        dtype = _dtype(self.df, self.loc, self.scale)
        t = jax.random.t(key, self.df, tuple(sample_shape) + self.batch_shape, dtype=dtype)
        return self.loc + self.scale * t

    @property
    def mean(self):
        """``loc`` for ``df > 1``, else NaN."""
        return jnp.broadcast_to(jnp.where(self.df > 1, self.loc, jnp.nan), self.batch_shape)

    @property
    def variance(self):
        """``scale**2 df / (df - 2)`` for ``df > 2``; inf for ``1 < df <= 2``; else NaN."""
        df = self.df
        var = jnp.where(
            df > 2,
            self.scale**2 * df / jnp.where(df > 2, df - 2, 1.0),
            jnp.where(df > 1, jnp.inf, jnp.nan),
        )
        return jnp.broadcast_to(var, self.batch_shape)

    def standardized(self):
        base = StudentT(jnp.broadcast_to(self.df, self.batch_shape), 0.0, 1.0)
        return Standardized(base, self.loc, self.scale, "identity")


class Cauchy(Distribution):
    """Cauchy(loc, scale). Its mean and variance do not exist (reported as NaN)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real

    def __init__(self, loc=0.0, scale=1.0):
        self.loc, self.scale = as_float(loc), as_float(scale)
        super().__init__(batch_shape=_batch_shape(self.loc, self.scale))

    def log_prob(self, value):
        z = (value - self.loc) / self.scale
        return -_LOG_PI - jnp.log(self.scale) - jnp.log1p(z**2)

    def sample(self, key, sample_shape=()):
        dtype = _dtype(self.loc, self.scale)
        eps = jax.random.cauchy(key, tuple(sample_shape) + self.batch_shape, dtype=dtype)
        return self.loc + self.scale * eps

    @property
    def mean(self):
        return _full(jnp.nan, self.batch_shape, _dtype(self.loc, self.scale))

    @property
    def variance(self):
        return _full(jnp.nan, self.batch_shape, _dtype(self.loc, self.scale))

    def standardized(self):
        base = Cauchy(jnp.zeros(self.batch_shape, self.loc.dtype), 1.0)
        return Standardized(base, self.loc, self.scale, "identity")


class Laplace(Distribution):
    """Laplace (double exponential) with location ``loc`` and scale ``scale``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real

    def __init__(self, loc=0.0, scale=1.0):
        self.loc, self.scale = as_float(loc), as_float(scale)
        super().__init__(batch_shape=_batch_shape(self.loc, self.scale))

    def log_prob(self, value):
        return -_LOG_2 - jnp.log(self.scale) - jnp.abs(value - self.loc) / self.scale

    def sample(self, key, sample_shape=()):
        dtype = _dtype(self.loc, self.scale)
        eps = jax.random.laplace(key, tuple(sample_shape) + self.batch_shape, dtype=dtype)
        return self.loc + self.scale * eps

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(2 * self.scale**2, self.batch_shape)

    def standardized(self):
        base = Laplace(jnp.zeros(self.batch_shape, self.loc.dtype), 1.0)
        return Standardized(base, self.loc, self.scale, "identity")


class Logistic(Distribution):
    """Logistic(loc, scale)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real

    def __init__(self, loc=0.0, scale=1.0):
        self.loc, self.scale = as_float(loc), as_float(scale)
        super().__init__(batch_shape=_batch_shape(self.loc, self.scale))

    def log_prob(self, value):
        z = (value - self.loc) / self.scale
        # log(e^-z / (1 + e^-z)^2), written to stay finite for large |z|
        return -z - 2 * jax.nn.softplus(-z) - jnp.log(self.scale)

    def sample(self, key, sample_shape=()):
        dtype = _dtype(self.loc, self.scale)
        eps = jax.random.logistic(key, tuple(sample_shape) + self.batch_shape, dtype=dtype)
        return self.loc + self.scale * eps

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(self.scale**2 * math.pi**2 / 3, self.batch_shape)

    def standardized(self):
        base = Logistic(jnp.zeros(self.batch_shape, self.loc.dtype), 1.0)
        return Standardized(base, self.loc, self.scale, "identity")


# --------------------------------------------------------------- positive half-line
class HalfNormal(Distribution):
    """The absolute value of a Normal(0, scale)."""

    arg_constraints = {"scale": constraints.positive}
    support = constraints.positive

    def __init__(self, scale=1.0):
        self.scale = as_float(scale)
        super().__init__(batch_shape=self.scale.shape)

    def log_prob(self, value):
        z = value / self.scale
        log_density = _LOG_2 - _HALF_LOG_2PI - jnp.log(self.scale) - 0.5 * z**2
        return _outside_is_impossible(value >= 0, log_density)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        return self.scale * jnp.abs(jax.random.normal(key, shape, dtype=self.scale.dtype))

    @property
    def mean(self):
        return self.scale * math.sqrt(2 / math.pi)

    @property
    def variance(self):
        return self.scale**2 * (1 - 2 / math.pi)


class HalfStudentT(Distribution):
    """The absolute value of a StudentT(df, 0, scale)."""

    arg_constraints = {"df": constraints.positive, "scale": constraints.positive}
    support = constraints.positive

    def __init__(self, df, scale=1.0):
        self.df, self.scale = as_float(df), as_float(scale)
        super().__init__(batch_shape=_batch_shape(self.df, self.scale))

    def log_prob(self, value):
        log_density = _LOG_2 + StudentT(self.df, 0.0, self.scale).log_prob(value)
        return _outside_is_impossible(value >= 0, log_density)

    def sample(self, key, sample_shape=()):
        dtype = _dtype(self.df, self.scale)
        t = jax.random.t(key, self.df, tuple(sample_shape) + self.batch_shape, dtype=dtype)
        return self.scale * jnp.abs(t)

    @property
    def mean(self):
        """``2 scale sqrt(df/pi) Gamma((df+1)/2) / (Gamma(df/2) (df-1))`` for ``df > 1``,
        else inf."""
        df = self.df
        safe = jnp.where(df > 1, df, 2.0)
        m = (
            2 * self.scale * jnp.sqrt(safe / math.pi)
            * jnp.exp(gammaln(0.5 * (safe + 1)) - gammaln(0.5 * safe)) / (safe - 1)
        )
        return jnp.broadcast_to(jnp.where(df > 1, m, jnp.inf), self.batch_shape)

    @property
    def variance(self):
        """``scale**2 df / (df - 2) - mean**2`` for ``df > 2``, else inf."""
        df = self.df
        second = self.scale**2 * df / jnp.where(df > 2, df - 2, 1.0)
        var = jnp.where(df > 2, second - self.mean**2, jnp.inf)
        return jnp.broadcast_to(var, self.batch_shape)


class HalfCauchy(Distribution):
    """The absolute value of a Cauchy(0, scale). Mean and variance are infinite."""

    arg_constraints = {"scale": constraints.positive}
    support = constraints.positive

    def __init__(self, scale=1.0):
        self.scale = as_float(scale)
        super().__init__(batch_shape=self.scale.shape)

    def log_prob(self, value):
        z = value / self.scale
        log_density = _LOG_2 - _LOG_PI - jnp.log(self.scale) - jnp.log1p(z**2)
        return _outside_is_impossible(value >= 0, log_density)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        return self.scale * jnp.abs(jax.random.cauchy(key, shape, dtype=self.scale.dtype))

    @property
    def mean(self):
        return _full(jnp.inf, self.batch_shape, self.scale.dtype)

    @property
    def variance(self):
        return _full(jnp.inf, self.batch_shape, self.scale.dtype)


class LogNormal(Distribution):
    """``exp(X)`` with ``X ~ Normal(loc, scale)``; a location-scale family in log space."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive

    def __init__(self, loc=0.0, scale=1.0):
        self.loc, self.scale = as_float(loc), as_float(scale)
        super().__init__(batch_shape=_batch_shape(self.loc, self.scale))

    def log_prob(self, value):
        positive = value > 0
        log_x = jnp.log(jnp.where(positive, value, 1.0))
        z = (log_x - self.loc) / self.scale
        log_density = -0.5 * z**2 - jnp.log(self.scale) - _HALF_LOG_2PI - log_x
        return _outside_is_impossible(positive, log_density)

    def sample(self, key, sample_shape=()):
        return jnp.exp(Normal(self.loc, self.scale).sample(key, sample_shape))

    @property
    def mean(self):
        return jnp.broadcast_to(jnp.exp(self.loc + 0.5 * self.scale**2), self.batch_shape)

    @property
    def variance(self):
        s2 = self.scale**2
        return jnp.broadcast_to(jnp.expm1(s2) * jnp.exp(2 * self.loc + s2), self.batch_shape)

    def standardized(self):
        base = Normal(jnp.zeros(self.batch_shape, self.loc.dtype), 1.0)
        return Standardized(base, self.loc, self.scale, "exp")


class Exponential(Distribution):
    """Exponential(rate): density ``rate * exp(-rate x)``."""

    arg_constraints = {"rate": constraints.positive}
    support = constraints.positive

    def __init__(self, rate=1.0):
        self.rate = as_float(rate)
        super().__init__(batch_shape=self.rate.shape)

    def log_prob(self, value):
        return _outside_is_impossible(value >= 0, jnp.log(self.rate) - self.rate * value)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        return jax.random.exponential(key, shape, dtype=self.rate.dtype) / self.rate

    @property
    def mean(self):
        return 1 / self.rate

    @property
    def variance(self):
        return 1 / self.rate**2


class Gamma(Distribution):
    """Gamma(concentration, rate): density ``∝ x^(concentration-1) exp(-rate x)``."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.positive

    def __init__(self, concentration, rate=1.0):
        self.concentration, self.rate = as_float(concentration), as_float(rate)
        super().__init__(batch_shape=_batch_shape(self.concentration, self.rate))

    def log_prob(self, value):
        a, b = self.concentration, self.rate
        inside = value >= 0
        x = jnp.where(inside, value, 1.0)
        log_density = a * jnp.log(b) + xlogy(a - 1, x) - b * x - gammaln(a)
        return _outside_is_impossible(inside, log_density)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        dtype = _dtype(self.concentration, self.rate)
        return jax.random.gamma(key, self.concentration, shape, dtype=dtype) / self.rate

    @property
    def mean(self):
        return jnp.broadcast_to(self.concentration / self.rate, self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(self.concentration / self.rate**2, self.batch_shape)


class InverseGamma(Distribution):
    """InverseGamma(concentration, scale): ``scale / X`` with ``X ~ Gamma(concentration, 1)``."""

    arg_constraints = {"concentration": constraints.positive, "scale": constraints.positive}
    support = constraints.positive

    def __init__(self, concentration, scale=1.0):
        self.concentration, self.scale = as_float(concentration), as_float(scale)
        super().__init__(batch_shape=_batch_shape(self.concentration, self.scale))

    def log_prob(self, value):
        a, b = self.concentration, self.scale
        inside = value > 0
        x = jnp.where(inside, value, 1.0)
        log_density = a * jnp.log(b) - gammaln(a) - (a + 1) * jnp.log(x) - b / x
        return _outside_is_impossible(inside, log_density)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        dtype = _dtype(self.concentration, self.scale)
        return self.scale / jax.random.gamma(key, self.concentration, shape, dtype=dtype)

    @property
    def mean(self):
        """``scale / (concentration - 1)`` for ``concentration > 1``, else inf."""
        a = self.concentration
        m = jnp.where(a > 1, self.scale / jnp.where(a > 1, a - 1, 1.0), jnp.inf)
        return jnp.broadcast_to(m, self.batch_shape)

    @property
    def variance(self):
        """``scale**2 / ((a - 1)**2 (a - 2))`` for ``a = concentration > 2``, else inf."""
        a = self.concentration
        safe = jnp.where(a > 2, a, 3.0)
        v = jnp.where(a > 2, self.scale**2 / ((safe - 1) ** 2 * (safe - 2)), jnp.inf)
        return jnp.broadcast_to(v, self.batch_shape)


# ------------------------------------------------------------------ bounded supports
class Beta(Distribution):
    """Beta(concentration1, concentration0), i.e. Beta(a, b) with density
    ``∝ x^(a-1) (1-x)^(b-1)``."""

    arg_constraints = {
        "concentration1": constraints.positive,
        "concentration0": constraints.positive,
    }
    support = constraints.unit_interval

    def __init__(self, concentration1, concentration0):
        self.concentration1 = as_float(concentration1)
        self.concentration0 = as_float(concentration0)
        super().__init__(batch_shape=_batch_shape(self.concentration1, self.concentration0))

    def log_prob(self, value):
        a, b = self.concentration1, self.concentration0
        inside = (value >= 0) & (value <= 1)
        x = jnp.where(inside, value, 0.5)
        log_density = xlogy(a - 1, x) + xlog1py(b - 1, -x) - betaln(a, b)
        return _outside_is_impossible(inside, log_density)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        a, b = self.concentration1, self.concentration0
        return jax.random.beta(key, a, b, shape, dtype=_dtype(a, b))

    @property
    def mean(self):
        a, b = self.concentration1, self.concentration0
        return jnp.broadcast_to(a / (a + b), self.batch_shape)

    @property
    def variance(self):
        a, b = self.concentration1, self.concentration0
        total = a + b
        return jnp.broadcast_to(a * b / (total**2 * (total + 1)), self.batch_shape)


class Uniform(Distribution):
    """Uniform(low, high) on the interval ``(low, high)``."""

    arg_constraints = {"low": constraints.real, "high": constraints.real}

    def __init__(self, low=0.0, high=1.0):
        self.low, self.high = as_float(low), as_float(high)
        self.support = constraints.interval(self.low, self.high)
        super().__init__(batch_shape=_batch_shape(self.low, self.high))

    def log_prob(self, value):
        inside = (value >= self.low) & (value <= self.high)
        return _outside_is_impossible(inside, -jnp.log(self.high - self.low))

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        u = jax.random.uniform(key, shape, dtype=_dtype(self.low, self.high))
        return self.low + (self.high - self.low) * u

    @property
    def mean(self):
        return jnp.broadcast_to(0.5 * (self.low + self.high), self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to((self.high - self.low) ** 2 / 12, self.batch_shape)


__all__ = [
    "Normal",
    "StudentT",
    "Cauchy",
    "Laplace",
    "Logistic",
    "HalfNormal",
    "HalfStudentT",
    "HalfCauchy",
    "LogNormal",
    "Exponential",
    "Gamma",
    "InverseGamma",
    "Beta",
    "Uniform",
]
