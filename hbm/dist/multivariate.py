"""Multivariate distributions: MultivariateNormal, LKJCholesky and Dirichlet.

LKJCholesky is the distribution of the Cholesky factor ``L`` of a correlation matrix
``R = L L^T`` whose density is ``∝ det(R)^(eta - 1)`` (Lewandowski, Kurowicka & Joe 2009,
"Generating random correlation matrices based on vines and extended onion method",
Journal of Multivariate Analysis 100(9)). Its density is taken with respect to Lebesgue
measure on the strictly lower triangle of ``L`` (each row ``i`` of ``L`` is a point of
the unit sphere, so its first ``i - 1`` entries determine the diagonal entry). With
``K`` the dimension and 1-based row index ``i``, the Jacobian of ``L -> R`` is
``prod_i L_ii^(K - i)`` and ``det R = prod_i L_ii^2``, so

    log p(L) = sum_{i=2..K} (K - i + 2 eta - 2) log L_ii - log Z.

The density factorizes over rows: row ``i`` has ``d = i - 1`` free coordinates ``x``
in the unit ball with weight ``(1 - |x|^2)^((K - i + 2 eta - 2) / 2)``. The ball integral
``int (1 - |x|^2)^a dx = pi^(d/2) Gamma(a + 1) / Gamma(a + 1 + d/2)`` gives

    log Z = sum_{i=2..K} [(i - 1)/2 log pi + lgamma(eta + (K - i)/2) - lgamma(eta + (K - 1)/2)],

which equals the constant of Lewandowski et al. (their eq. 16). The same factorization
gives the sampler (it is the onion method written for the Cholesky factor): row ``i`` is
``sqrt(s) u`` followed by ``sqrt(1 - s)`` on the diagonal, with ``u`` uniform on the
sphere in ``R^(i-1)`` and ``s ~ Beta((i - 1)/2, eta + (K - i)/2)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import gammaln, xlogy

from hbm import constraints
from hbm.dist.base import Distribution, as_float
from hbm.errors import ModelError

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class MultivariateNormal(Distribution):
    """MultivariateNormal(loc, scale_tril=None, covariance_matrix=None).

    Give exactly one of ``scale_tril`` (the lower Cholesky factor of the covariance) or
    ``covariance_matrix`` (factorized on construction). ``loc`` has shape ``(..., k)``
    (a scalar is broadcast), the event shape is ``(k,)``.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    param_event_ndims = {"loc": 1, "scale_tril": 2}

    def __init__(self, loc=0.0, scale_tril=None, covariance_matrix=None):
        if (scale_tril is None) == (covariance_matrix is None):
            got = "neither" if scale_tril is None else "both"
            raise ModelError(
                f"MultivariateNormal needs exactly one of scale_tril or covariance_matrix; "
                f"got {got}"
            )
        if scale_tril is None:
            scale_tril = jnp.linalg.cholesky(as_float(covariance_matrix))
        self.scale_tril = as_float(scale_tril)
        if self.scale_tril.ndim < 2 or self.scale_tril.shape[-1] != self.scale_tril.shape[-2]:
            raise ModelError(
                f"MultivariateNormal scale_tril must have shape (..., k, k), "
                f"got {self.scale_tril.shape}"
            )
        k = self.scale_tril.shape[-1]
        loc = as_float(loc)
        if loc.ndim >= 1 and loc.shape[-1] not in (1, k):
            raise ModelError(
                f"MultivariateNormal loc has {loc.shape[-1]} components, scale_tril has {k}"
            )
        loc_batch = loc.shape[:-1] if loc.ndim >= 1 else ()
        self.loc = jnp.broadcast_to(loc, loc_batch + (k,))
        batch_shape = jnp.broadcast_shapes(loc_batch, self.scale_tril.shape[:-2])
        super().__init__(batch_shape=batch_shape, event_shape=(k,))

    def log_prob(self, value):
        diff = as_float(value) - self.loc
        k = self.event_shape[0]
        shape = jnp.broadcast_shapes(diff.shape[:-1], self.scale_tril.shape[:-2])
        tril = jnp.broadcast_to(self.scale_tril, shape + (k, k))
        diff = jnp.broadcast_to(diff, shape + (k,))
        z = solve_triangular(tril, diff[..., None], lower=True)[..., 0]
        half_log_det = jnp.sum(jnp.log(jnp.diagonal(self.scale_tril, axis1=-2, axis2=-1)), -1)
        return -0.5 * jnp.sum(z**2, axis=-1) - half_log_det - k * _HALF_LOG_2PI

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        eps = jax.random.normal(key, shape, dtype=jnp.result_type(self.loc, self.scale_tril))
        return self.loc + jnp.einsum("...ij,...j->...i", self.scale_tril, eps)

    @property
    def covariance_matrix(self):
        return self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.shape)

    @property
    def variance(self):
        return jnp.broadcast_to(jnp.sum(self.scale_tril**2, axis=-1), self.shape)


class LKJCholesky(Distribution):
    """LKJCholesky(dimension, concentration=1.0): the Cholesky factor of an LKJ
    correlation matrix (see the module docstring for the density and the sampler).

    ``dimension`` is a Python int (at least 2); ``concentration`` (eta > 0) may be an
    array, which gives the batch shape. The event shape is ``(dimension, dimension)``.
    """

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.corr_cholesky
    static_params = ("dimension",)

    def __init__(self, dimension, concentration=1.0):
        if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)):
            raise ModelError(f"LKJCholesky dimension must be an int, got {dimension!r}")
        if dimension < 2:
            raise ModelError(f"LKJCholesky dimension must be at least 2, got {dimension}")
        self.dimension = int(dimension)
        self.concentration = as_float(concentration)
        super().__init__(
            batch_shape=self.concentration.shape,
            event_shape=(self.dimension, self.dimension),
        )

    def params(self):
        return {"dimension": self.dimension, "concentration": self.concentration}

    def _row_index(self):
        """1-based row indices ``i = 2..K`` as floats."""
        return np.arange(2, self.dimension + 1, dtype=float)

    def log_normalizer(self):
        """``log Z`` (batch shape) of the density above."""
        K, i = self.dimension, self._row_index()
        eta = self.concentration[..., None]
        terms = (
            0.5 * (i - 1) * math.log(math.pi)
            + gammaln(eta + 0.5 * (K - i))
            - gammaln(eta + 0.5 * (K - 1))
        )
        return jnp.sum(terms, axis=-1)

    def log_prob(self, value):
        K, i = self.dimension, self._row_index()
        eta = self.concentration[..., None]
        diagonal = jnp.diagonal(as_float(value), axis1=-2, axis2=-1)[..., 1:]
        unnormalized = jnp.sum(xlogy(K - i + 2 * eta - 2, diagonal), axis=-1)
        return unnormalized - self.log_normalizer()

    def sample(self, key, sample_shape=()):
        K, i = self.dimension, self._row_index()
        shape = tuple(sample_shape) + self.batch_shape
        dtype = self.concentration.dtype
        key_a, key_b, key_u = jax.random.split(key, 3)
        # s = ga / (ga + gb) ~ Beta((i-1)/2, eta + (K-i)/2); 1 - s = gb / (ga + gb) exactly
        a = jnp.asarray(0.5 * (i - 1), dtype)
        b = self.concentration[..., None] + 0.5 * (K - i)
        ga = jax.random.gamma(key_a, a, shape + (K - 1,), dtype=dtype)
        gb = jax.random.gamma(key_b, b, shape + (K - 1,), dtype=dtype)
        total = ga + gb
        radius, diag = jnp.sqrt(ga / total), jnp.sqrt(gb / total)
        z = jnp.tril(jax.random.normal(key_u, shape + (K, K), dtype=dtype), -1)[..., 1:, :]
        direction = z / jnp.sqrt(jnp.sum(z**2, axis=-1, keepdims=True))
        lower_rows = direction * radius[..., None] + diag[..., None] * jnp.eye(K, dtype=dtype)[1:]
        first_row = jnp.broadcast_to(jnp.eye(K, dtype=dtype)[:1], shape + (1, K))
        return jnp.concatenate([first_row, lower_rows], axis=-2)


class Dirichlet(Distribution):
    """Dirichlet(concentration) on the simplex; the last axis of ``concentration`` indexes
    the components."""

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.simplex
    param_event_ndims = {"concentration": 1}

    def __init__(self, concentration):
        self.concentration = as_float(concentration)
        if self.concentration.ndim < 1:
            raise ModelError("Dirichlet needs a vector of concentrations (last axis)")
        super().__init__(
            batch_shape=self.concentration.shape[:-1],
            event_shape=self.concentration.shape[-1:],
        )

    def log_prob(self, value):
        alpha = self.concentration
        value = as_float(value)
        inside = self.support.check(value)
        x = jnp.where(inside[..., None], value, 1.0 / alpha.shape[-1])
        log_density = (
            jnp.sum(xlogy(alpha - 1, x), axis=-1)
            + gammaln(jnp.sum(alpha, axis=-1))
            - jnp.sum(gammaln(alpha), axis=-1)
        )
        return jnp.where(inside, log_density, -jnp.inf)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape
        return jax.random.dirichlet(key, self.concentration, shape, dtype=self.concentration.dtype)

    @property
    def mean(self):
        alpha = self.concentration
        return alpha / jnp.sum(alpha, axis=-1, keepdims=True)

    @property
    def variance(self):
        alpha = self.concentration
        total = jnp.sum(alpha, axis=-1, keepdims=True)
        return alpha * (total - alpha) / (total**2 * (total + 1))


__all__ = ["MultivariateNormal", "LKJCholesky", "Dirichlet"]
