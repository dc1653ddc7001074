"""Discrete distributions. Parameterizations follow Stan and NumPyro.

Families with alternative parameterizations (``probs`` or ``logits``, ``rate`` or
``log_rate``) take exactly one of them; the log density is evaluated in the given one
with numerically stable forms (``softplus`` for logits, ``xlogy``/``xlog1py``,
``gammaln``), and ``params()`` returns the given one with the other set to ``None``.
Both are available as attributes. ``log_prob`` accepts integer-valued floats and is
``-inf`` outside the support. Samples have the default integer dtype.

The negative binomial is Stan's ``neg_binomial_2`` (mean and concentration, variance
``mean + mean**2 / concentration``), sampled as a gamma-Poisson mixture; the beta-binomial
is sampled as a beta-binomial mixture.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, gammaln, xlog1py, xlogy

from hbm import constraints
from hbm.dist.base import Distribution, as_float
from hbm.errors import ModelError


def _int_dtype():
    return jax.dtypes.canonicalize_dtype(jnp.int64)


def _which_one(family, **alternatives):
    """The name of the single alternative that is not ``None``, else :class:`ModelError`."""
    given = [name for name, value in alternatives.items() if value is not None]
    if len(given) != 1:
        names = " or ".join(alternatives)
        got = "neither" if not given else "both " + " and ".join(given)
        raise ModelError(f"{family} needs exactly one of {names}; got {got}")
    return given[0]


def _log_binomial_coefficient(n, k):
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def _outside_is_impossible(inside, log_mass):
    return jnp.where(inside, log_mass, -jnp.inf)


class _ProbsOrLogits(Distribution):
    """Shared storage for families parameterized by ``probs`` or ``logits``."""

    def _set_probs_or_logits(self, probs, logits):
        self._given = _which_one(type(self).__name__, probs=probs, logits=logits)
        if self._given == "probs":
            self.probs = as_float(probs)
            self.logits = jnp.log(self.probs) - jnp.log1p(-self.probs)
        else:
            self.logits = as_float(logits)
            self.probs = jax.nn.sigmoid(self.logits)

    def _log_p_and_log_1mp(self):
        """``(log p, log(1 - p))`` computed stably from whichever was given."""
        if self._given == "logits":
            return -jax.nn.softplus(-self.logits), -jax.nn.softplus(self.logits)
        return jnp.log(self.probs), jnp.log1p(-self.probs)


class Bernoulli(_ProbsOrLogits):
    """Bernoulli(probs=None, logits=None) on {0, 1}."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean

    def __init__(self, probs=None, logits=None):
        self._set_probs_or_logits(probs, logits)
        super().__init__(batch_shape=jnp.shape(self.probs))

    def params(self):
        return {
            "probs": self.probs if self._given == "probs" else None,
            "logits": self.logits if self._given == "logits" else None,
        }

    def log_prob(self, value):
        value = as_float(value)  # integer counts: gradients w.r.t. parameters need float
        if self._given == "logits":
            log_mass = value * self.logits - jax.nn.softplus(self.logits)
        else:
            log_mass = xlogy(value, self.probs) + xlog1py(1 - value, -self.probs)
        return _outside_is_impossible(self.support.check(value), log_mass)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        return jax.random.bernoulli(key, self.probs, shape).astype(_int_dtype())

    @property
    def mean(self):
        return self.probs

    @property
    def variance(self):
        return self.probs * (1 - self.probs)


class Binomial(_ProbsOrLogits):
    """Binomial(total_count, probs=None, logits=None) on {0, ..., total_count}."""

    arg_constraints = {
        "total_count": constraints.nonnegative_integer,
        "probs": constraints.unit_interval,
        "logits": constraints.real,
    }

    def __init__(self, total_count, probs=None, logits=None):
        self._set_probs_or_logits(probs, logits)
        self.total_count = as_float(total_count)
        self.support = constraints.integer_interval(0, self.total_count)
        super().__init__(
            batch_shape=jnp.broadcast_shapes(jnp.shape(self.total_count), jnp.shape(self.probs))
        )

    def params(self):
        return {
            "total_count": self.total_count,
            "probs": self.probs if self._given == "probs" else None,
            "logits": self.logits if self._given == "logits" else None,
        }

    def log_prob(self, value):
        value = as_float(value)  # integer counts: gradients w.r.t. parameters need float
        n = self.total_count
        if self._given == "logits":
            log_kernel = value * self.logits - n * jax.nn.softplus(self.logits)
        else:
            log_kernel = xlogy(value, self.probs) + xlog1py(n - value, -self.probs)
        inside = self.support.check(value)
        safe = jnp.where(inside, value, 0)
        log_mass = _log_binomial_coefficient(n, safe) + log_kernel
        return _outside_is_impossible(inside, log_mass)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        dtype = jnp.result_type(self.total_count, self.probs)
        draws = jax.random.binomial(key, self.total_count, self.probs, shape, dtype=dtype)
        return draws.astype(_int_dtype())

    @property
    def mean(self):
        return jnp.broadcast_to(self.total_count * self.probs, self.batch_shape)

    @property
    def variance(self):
        p = self.probs
        return jnp.broadcast_to(self.total_count * p * (1 - p), self.batch_shape)


class Poisson(Distribution):
    """Poisson(rate=None, log_rate=None) on the nonnegative integers."""

    arg_constraints = {"rate": constraints.positive, "log_rate": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, rate=None, log_rate=None):
        self._given = _which_one("Poisson", rate=rate, log_rate=log_rate)
        if self._given == "rate":
            self.rate = as_float(rate)
            self.log_rate = jnp.log(self.rate)
        else:
            self.log_rate = as_float(log_rate)
            self.rate = jnp.exp(self.log_rate)
        super().__init__(batch_shape=jnp.shape(self.rate))

    def params(self):
        return {
            "rate": self.rate if self._given == "rate" else None,
            "log_rate": self.log_rate if self._given == "log_rate" else None,
        }

    def log_prob(self, value):
        value = as_float(value)  # integer counts: gradients w.r.t. parameters need float
        if self._given == "log_rate":
            log_kernel = value * self.log_rate - self.rate
        else:
            log_kernel = xlogy(value, self.rate) - self.rate
        inside = self.support.check(value)
        log_mass = log_kernel - gammaln(jnp.where(inside, value, 0) + 1)
        return _outside_is_impossible(inside, log_mass)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        return jax.random.poisson(key, self.rate, shape, dtype=_int_dtype())

    @property
    def mean(self):
        return self.rate

    @property
    def variance(self):
        return self.rate


class NegativeBinomial(Distribution):
    """NegativeBinomial(mean, concentration): Stan's ``neg_binomial_2``, with
    ``variance = mean + mean**2 / concentration``.

    The :attr:`mean` property returns the ``mean`` parameter broadcast to the batch shape.
    """

    arg_constraints = {"mean": constraints.positive, "concentration": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, mean, concentration):
        self._mean, self.concentration = as_float(mean), as_float(concentration)
        super().__init__(
            batch_shape=jnp.broadcast_shapes(jnp.shape(self._mean), jnp.shape(self.concentration))
        )

    def params(self):
        return {"mean": self._mean, "concentration": self.concentration}

    def log_prob(self, value):
        value = as_float(value)  # integer counts: gradients w.r.t. parameters need float
        mu, phi = self._mean, self.concentration
        inside = self.support.check(value)
        k = jnp.where(inside, value, 0)
        log_mass = (
            gammaln(k + phi)
            - gammaln(phi)
            - gammaln(k + 1)
            + xlogy(k, mu)
            - k * jnp.log(mu + phi)
            - phi * jnp.log1p(mu / phi)
        )
        return _outside_is_impossible(inside, log_mass)

    def sample(self, key, sample_shape=()):
        key_rate, key_count = jax.random.split(key)
        shape = tuple(sample_shape) + self.batch_shape
        mu, phi = self._mean, self.concentration
        gamma = jax.random.gamma(key_rate, phi, shape, dtype=jnp.result_type(mu, phi))
        return jax.random.poisson(key_count, mu * gamma / phi, shape, dtype=_int_dtype())

    @property
    def mean(self):
        return jnp.broadcast_to(self._mean, self.batch_shape)

    @property
    def variance(self):
        mu = self._mean
        return jnp.broadcast_to(mu + mu**2 / self.concentration, self.batch_shape)


class BetaBinomial(Distribution):
    """BetaBinomial(total_count, concentration1, concentration0): a Binomial whose
    success probability is Beta(concentration1, concentration0)."""

    arg_constraints = {
        "total_count": constraints.nonnegative_integer,
        "concentration1": constraints.positive,
        "concentration0": constraints.positive,
    }

    def __init__(self, total_count, concentration1, concentration0):
        self.total_count = as_float(total_count)
        self.concentration1 = as_float(concentration1)
        self.concentration0 = as_float(concentration0)
        self.support = constraints.integer_interval(0, self.total_count)
        super().__init__(
            batch_shape=jnp.broadcast_shapes(
                jnp.shape(self.total_count),
                jnp.shape(self.concentration1),
                jnp.shape(self.concentration0),
            )
        )

    def log_prob(self, value):
        value = as_float(value)  # integer counts: gradients w.r.t. parameters need float
        n, a, b = self.total_count, self.concentration1, self.concentration0
        inside = self.support.check(value)
        k = jnp.where(inside, value, 0)
        log_mass = _log_binomial_coefficient(n, k) + betaln(k + a, n - k + b) - betaln(a, b)
        return _outside_is_impossible(inside, log_mass)

    def sample(self, key, sample_shape=()):
        key_p, key_k = jax.random.split(key)
        shape = tuple(sample_shape) + self.batch_shape
        a, b = self.concentration1, self.concentration0
        dtype = jnp.result_type(self.total_count, a, b)
        p = jax.random.beta(key_p, a, b, shape, dtype=dtype)
        draws = jax.random.binomial(key_k, self.total_count, p, shape, dtype=dtype)
        return draws.astype(_int_dtype())

    @property
    def mean(self):
        n, a, b = self.total_count, self.concentration1, self.concentration0
        return jnp.broadcast_to(n * a / (a + b), self.batch_shape)

    @property
    def variance(self):
        n, a, b = self.total_count, self.concentration1, self.concentration0
        total = a + b
        v = n * a * b * (total + n) / (total**2 * (total + 1))
        return jnp.broadcast_to(v, self.batch_shape)


class Categorical(Distribution):
    """Categorical(probs=None, logits=None) on {0, ..., K-1}; the last axis of the
    parameter indexes the K categories (``probs`` are normalized, ``logits`` need not be)."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    param_event_ndims = {"probs": 1, "logits": 1}

    def __init__(self, probs=None, logits=None):
        self._given = _which_one("Categorical", probs=probs, logits=logits)
        if self._given == "probs":
            self.probs = as_float(probs)
            self.logits = jnp.log(self.probs)
            self._log_probs = self.logits - jnp.log(jnp.sum(self.probs, axis=-1, keepdims=True))
        else:
            self.logits = as_float(logits)
            self.probs = jax.nn.softmax(self.logits, axis=-1)
            self._log_probs = jax.nn.log_softmax(self.logits, axis=-1)
        if self.probs.ndim < 1:
            raise ModelError("Categorical needs a vector of probs or logits (last axis)")
        self.num_categories = self.probs.shape[-1]
        self.support = constraints.integer_interval(0, self.num_categories - 1)
        super().__init__(batch_shape=self.probs.shape[:-1])

    def params(self):
        return {
            "probs": self.probs if self._given == "probs" else None,
            "logits": self.logits if self._given == "logits" else None,
        }

    def log_prob(self, value):
        value = jnp.asarray(value)
        shape = jnp.broadcast_shapes(value.shape, self.batch_shape)
        inside = jnp.broadcast_to(self.support.check(value), shape)
        index = jnp.clip(jnp.where(inside, value, 0), 0, self.num_categories - 1)
        index = jnp.broadcast_to(index.astype(_int_dtype()), shape)
        table = jnp.broadcast_to(self._log_probs, shape + (self.num_categories,))
        log_mass = jnp.take_along_axis(table, index[..., None], axis=-1)[..., 0]
        return _outside_is_impossible(inside, log_mass)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        draws = jax.random.categorical(key, self._log_probs, axis=-1, shape=shape)
        return draws.astype(_int_dtype())

    @property
    def mean(self):
        k = jnp.arange(self.num_categories, dtype=self.probs.dtype)
        return jnp.sum(jnp.exp(self._log_probs) * k, axis=-1)

    @property
    def variance(self):
        k = jnp.arange(self.num_categories, dtype=self.probs.dtype)
        p = jnp.exp(self._log_probs)
        m = jnp.sum(p * k, axis=-1)
        return jnp.sum(p * (k - m[..., None]) ** 2, axis=-1)


__all__ = [
    "Bernoulli",
    "Binomial",
    "Poisson",
    "NegativeBinomial",
    "BetaBinomial",
    "Categorical",
]
