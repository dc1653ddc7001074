"""Bijections from unconstrained real space onto the supports in :mod:`hbm.constraints`.

Gradient-based samplers and optimizers work on all of R^n. A parameter with a constrained
support (a scale, a probability, a simplex, a correlation matrix) is written as
``y = T(x)`` for a smooth bijection ``T`` from unconstrained ``x``, and the density of
``x`` is the density of ``y`` times ``|det dT/dx|``. For a transform that changes the
dimension (a simplex of K entries has K - 1 degrees of freedom) the Jacobian is taken with
respect to the independent coordinates of ``y``: the first K - 1 entries of a simplex, the
strictly lower triangle of a Cholesky factor of a correlation matrix, the lower triangle
of a Cholesky factor or of a covariance matrix.

:func:`biject_to` maps a constraint to its transform through a small registry keyed by
the constraint's class; :func:`register_bijector` extends it.

The constructions follow the Stan Reference Manual, chapter "Constraint Transforms"
(lower bounds, lower and upper bounds, unit simplex by stick breaking, ordered vectors,
Cholesky factors of correlation matrices by canonical partial correlations, Cholesky
factors of covariance matrices, covariance matrices), and

- Lewandowski, Kurowicka and Joe (2009), "Generating random correlation matrices based
  on vines and extended onion method", J. Multivariate Analysis 100(9), for the canonical
  partial correlations;
- Kucukelbir, Tran, Ranganath, Gelman and Blei (2017), "Automatic differentiation
  variational inference", JMLR 18(14), for the use of these maps in automatic inference.

Numerics: every log-determinant is computed in a form that stays finite when the
transform saturates (``log_sigmoid`` for the logistic map, ``log(1 - tanh(x)**2) =
2 * (log 2 - x - softplus(-2 x))`` for correlations, products of stick lengths summed in
log space). Forward maps clamp their result strictly inside open supports when the
floating-point result would land on the boundary, and inverse maps clamp their argument
away from the boundary, so that no NaN or infinity appears for ``|x|`` up to 50 in
float32. Two limits remain in float32: ordered vectors whose increments fall below the
spacing of the previous element collapse to ties, and the covariance transform saturates
the log-diagonal of its Cholesky factor at about +-43 (+-353 in float64) so that
``L @ L.T`` stays representable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hbm import constraints
from hbm.constraints import Constraint
from hbm.errors import ConstraintError

__all__ = [
    "Transform",
    "IdentityTransform",
    "ExpTransform",
    "GreaterThanTransform",
    "IntervalTransform",
    "StickBreakingTransform",
    "OrderedTransform",
    "CorrCholeskyTransform",
    "LowerCholeskyTransform",
    "PositiveDefiniteTransform",
    "biject_to",
    "register_bijector",
]


# ----------------------------------------------------------------------------- helpers


def _as_float(x):
    """``x`` as a floating-point array (integers become the default float type)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _step_from(bound, dtype):
    """A positive step that moves ``bound`` to a different float of type ``dtype``."""
    finfo = jnp.finfo(dtype)
    return jnp.maximum(jnp.abs(bound) * finfo.eps, finfo.tiny)


def _strictly_above(y, bound):
    """``y``, raised where rounding put it on or below ``bound``."""
    return jnp.maximum(y, bound + _step_from(bound, y.dtype))


def _strictly_below(y, bound):
    """``y``, lowered where rounding put it on or above ``bound``."""
    return jnp.minimum(y, bound - _step_from(bound, y.dtype))


def _log1m_tanh_sq(x):
    """``log(1 - tanh(x)**2)``, finite for every finite ``x``."""
    return 2.0 * (math.log(2.0) - x - jax.nn.softplus(-2.0 * x))


def _exclusive_cumsum(a):
    """Cumulative sum over the last axis that excludes the current entry."""
    zeros = jnp.zeros_like(a[..., :1])
    return jnp.concatenate([zeros, jnp.cumsum(a[..., :-1], axis=-1)], axis=-1)


def _reverse_cumsum(a):
    """``out[..., j] = sum(a[..., j:])`` over the last axis."""
    return jnp.flip(jnp.cumsum(jnp.flip(a, -1), axis=-1), -1)


def _require_min_ndim(shape, ndim, name):
    if len(shape) < ndim:
        raise ConstraintError(f"{name} needs at least {ndim} axes, got shape {tuple(shape)}")


def _square_size(shape, name):
    """Size K of the trailing K x K matrix axes of ``shape``."""
    _require_min_ndim(shape, 2, name)
    if shape[-1] != shape[-2]:
        raise ConstraintError(f"{name} needs square trailing axes, got shape {tuple(shape)}")
    return int(shape[-1])


def _triangle_side(length, strict, name):
    """K with ``length == K (K - 1) / 2`` (strict) or ``K (K + 1) / 2``."""
    length = int(length)
    root = math.isqrt(1 + 8 * length)
    side = (root + 1) // 2 if strict else (root - 1) // 2
    expected = side * (side - 1) // 2 if strict else side * (side + 1) // 2
    if expected != length:
        kind = "K(K-1)/2" if strict else "K(K+1)/2"
        raise ConstraintError(
            f"{name} needs an unconstrained vector of length {kind} for an integer K, "
            f"got length {length}"
        )
    return side


# ----------------------------------------------------------------------------- base


class Transform:
    """A bijection from unconstrained real space onto a constrained support.

    Attributes
    ----------
    event_dim : int
        Number of trailing axes that form one constrained value.
    unconstrained_event_dim : int
        Number of trailing axes that form one unconstrained value.
    codomain : Constraint
        The support the transform maps onto.
    """

    event_dim: int = 0
    unconstrained_event_dim: int = 0
    codomain: Constraint = constraints.real

    def forward(self, x):
        """Map unconstrained ``x`` to the constrained space."""
        raise NotImplementedError

    def inverse(self, y):
        """Map constrained ``y`` back to unconstrained space."""
        raise NotImplementedError

    def log_abs_det_jacobian(self, x):
        """``log |det d forward / dx|`` at unconstrained ``x``, summed over the event axes.

        Returns an array of the batch shape of ``x``.
        """
        raise NotImplementedError

    def forward_shape(self, shape):
        """Shape of ``forward(x)`` for ``x`` of shape ``shape``."""
        return tuple(shape)

    def inverse_shape(self, shape):
        """Shape of ``inverse(y)`` for ``y`` of shape ``shape``."""
        return tuple(shape)

    def finite_limits(self, shape):
        """Which unconstrained coordinates approach a finite boundary of the support.

        Returns two boolean arrays of the unconstrained ``shape``: whether sending that
        coordinate to ``-inf`` (first) or ``+inf`` (second) drives the constrained value
        to a finite edge of the support (``exp`` at ``-inf`` reaches 0; the identity
        never reaches an edge). A mode optimizer that drifts far out along a coordinate
        has found a boundary mode only in such a direction. The default, for transforms
        that do not say, is ``True`` both ways.
        """
        return np.ones(shape, bool), np.ones(shape, bool)

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self):
        return f"{type(self).__name__}()"


# ----------------------------------------------------------------------------- scalar maps


class IdentityTransform(Transform):
    """``y = x`` on ``real`` (``event_dim=0``) or ``real_vector`` (``event_dim=1``)."""

    def __init__(self, event_dim: int = 0):
        if event_dim not in (0, 1):
            raise ConstraintError(f"IdentityTransform supports event_dim 0 or 1, got {event_dim}")
        self.event_dim = event_dim
        self.unconstrained_event_dim = event_dim
        self.codomain = constraints.real if event_dim == 0 else constraints.real_vector

    def forward(self, x):
        return _as_float(x)

    def inverse(self, y):
        return _as_float(y)

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        batch_shape = x.shape[: x.ndim - self.event_dim]
        return jnp.zeros(batch_shape, dtype=x.dtype)

    def finite_limits(self, shape):
        return np.zeros(shape, bool), np.zeros(shape, bool)

    def __repr__(self):
        return f"IdentityTransform(event_dim={self.event_dim})"


class ExpTransform(Transform):
    """``y = exp(x)`` onto ``positive``."""

    codomain = constraints.positive

    def forward(self, x):
        return jnp.exp(_as_float(x))

    def inverse(self, y):
        return jnp.log(_as_float(y))

    def log_abs_det_jacobian(self, x):
        return _as_float(x)

    def finite_limits(self, shape):
        return np.ones(shape, bool), np.zeros(shape, bool)


class GreaterThanTransform(Transform):
    """``y = lower_bound + exp(x)`` onto ``greater_than(lower_bound)``.

    ``lower_bound`` may be an array that broadcasts against the values.
    """

    def __init__(self, lower_bound):
        self.lower_bound = lower_bound
        self.codomain = constraints.greater_than(lower_bound)

    def forward(self, x):
        y = self.lower_bound + jnp.exp(_as_float(x))
        return _strictly_above(y, self.lower_bound)

    def inverse(self, y):
        gap = _as_float(y) - self.lower_bound
        return jnp.log(jnp.maximum(gap, jnp.finfo(gap.dtype).tiny))

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        return jnp.broadcast_to(x, jnp.broadcast_shapes(x.shape, jnp.shape(self.lower_bound)))

    def forward_shape(self, shape):
        return jnp.broadcast_shapes(tuple(shape), jnp.shape(self.lower_bound))

    def inverse_shape(self, shape):
        return jnp.broadcast_shapes(tuple(shape), jnp.shape(self.lower_bound))

    def finite_limits(self, shape):
        return np.ones(shape, bool), np.zeros(shape, bool)

    def __repr__(self):
        return f"GreaterThanTransform({self.lower_bound})"


class IntervalTransform(Transform):
    """``y = lower + (upper - lower) * sigmoid(x)`` onto ``interval(lower, upper)``.

    The bounds may be arrays that broadcast against the values. The result is clamped
    strictly inside the interval when the sigmoid rounds to 0 or 1.
    """

    def __init__(self, lower_bound, upper_bound):
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        if _is_unit(lower_bound, upper_bound):
            self.codomain = constraints.unit_interval
        else:
            self.codomain = constraints.interval(lower_bound, upper_bound)

    def forward(self, x):
        x = _as_float(x)
        y = self.lower_bound + (self.upper_bound - self.lower_bound) * jax.nn.sigmoid(x)
        return _strictly_below(_strictly_above(y, self.lower_bound), self.upper_bound)

    def inverse(self, y):
        y = _as_float(y)
        fraction = (y - self.lower_bound) / (self.upper_bound - self.lower_bound)
        finfo = jnp.finfo(fraction.dtype)
        fraction = jnp.clip(fraction, finfo.tiny, 1.0 - finfo.epsneg)
        return jnp.log(fraction) - jnp.log1p(-fraction)

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        return (
            jnp.log(self.upper_bound - self.lower_bound)
            + jax.nn.log_sigmoid(x)
            + jax.nn.log_sigmoid(-x)
        )

    def forward_shape(self, shape):
        return jnp.broadcast_shapes(
            tuple(shape), jnp.shape(self.lower_bound), jnp.shape(self.upper_bound)
        )

    def inverse_shape(self, shape):
        return self.forward_shape(shape)

    def __repr__(self):
        return f"IntervalTransform({self.lower_bound}, {self.upper_bound})"


def _is_unit(lower, upper):
    try:
        return float(lower) == 0.0 and float(upper) == 1.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


# ----------------------------------------------------------------------------- vectors


class StickBreakingTransform(Transform):
    """Stick breaking from R^(K-1) onto the K-simplex.

    ``z_k = sigmoid(x_k - log(K - k))`` for ``k = 1..K-1`` is the fraction of the stick
    left after the first ``k - 1`` pieces that piece ``k`` takes; the last entry is what
    remains. The offset makes ``x = 0`` map to the uniform simplex. Remaining stick
    lengths are accumulated in log space so every entry stays non-negative.
    """

    event_dim = 1
    unconstrained_event_dim = 1
    codomain = constraints.simplex

    @staticmethod
    def _pieces(x):
        """Logit ``u``, ``log z``, ``log(1 - z)`` and log stick before each piece."""
        k_minus_1 = x.shape[-1]
        offset = jnp.log(jnp.arange(k_minus_1, 0, -1, dtype=x.dtype))
        u = x - offset
        log_z = jax.nn.log_sigmoid(u)
        log_1mz = jax.nn.log_sigmoid(-u)
        log_stick = _exclusive_cumsum(log_1mz)
        return log_z, log_1mz, log_stick

    def forward(self, x):
        x = _as_float(x)
        _require_min_ndim(x.shape, 1, "StickBreakingTransform")
        log_z, log_1mz, log_stick = self._pieces(x)
        log_last = jnp.sum(log_1mz, axis=-1, keepdims=True)
        return jnp.exp(jnp.concatenate([log_z + log_stick, log_last], axis=-1))

    def inverse(self, y):
        y = _as_float(y)
        _require_min_ndim(y.shape, 1, "StickBreakingTransform")
        tiny = jnp.finfo(y.dtype).tiny
        k = y.shape[-1]
        # Stick remaining after piece j, summed from the tail to avoid cancellation.
        rest = _reverse_cumsum(y)[..., 1:]
        offset = jnp.log(jnp.arange(k - 1, 0, -1, dtype=y.dtype))
        return (
            jnp.log(jnp.maximum(y[..., :-1], tiny))
            - jnp.log(jnp.maximum(rest, tiny))
            + offset
        )

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        _require_min_ndim(x.shape, 1, "StickBreakingTransform")
        log_z, log_1mz, log_stick = self._pieces(x)
        return jnp.sum(log_z + log_1mz + log_stick, axis=-1)

    def forward_shape(self, shape):
        _require_min_ndim(shape, 1, "StickBreakingTransform")
        return tuple(shape[:-1]) + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        _require_min_ndim(shape, 1, "StickBreakingTransform")
        if shape[-1] < 1:
            raise ConstraintError("a simplex needs at least one entry")
        return tuple(shape[:-1]) + (shape[-1] - 1,)


class OrderedTransform(Transform):
    """``y_1 = x_1``, ``y_k = y_(k-1) + exp(x_k)``: onto strictly increasing vectors."""

    event_dim = 1
    unconstrained_event_dim = 1
    codomain = constraints.ordered_vector

    def forward(self, x):
        x = _as_float(x)
        _require_min_ndim(x.shape, 1, "OrderedTransform")
        first = x[..., :1]
        return jnp.concatenate([first, first + jnp.cumsum(jnp.exp(x[..., 1:]), axis=-1)], -1)

    def inverse(self, y):
        y = _as_float(y)
        _require_min_ndim(y.shape, 1, "OrderedTransform")
        gaps = jnp.maximum(jnp.diff(y, axis=-1), jnp.finfo(y.dtype).tiny)
        return jnp.concatenate([y[..., :1], jnp.log(gaps)], axis=-1)

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        _require_min_ndim(x.shape, 1, "OrderedTransform")
        return jnp.sum(x[..., 1:], axis=-1)

    def forward_shape(self, shape):
        _require_min_ndim(shape, 1, "OrderedTransform")
        return tuple(shape)

    def inverse_shape(self, shape):
        _require_min_ndim(shape, 1, "OrderedTransform")
        return tuple(shape)


# ----------------------------------------------------------------------------- matrices

    def finite_limits(self, shape):
        below = np.ones(shape, bool)
        below[..., :1] = False  # the first entry is free; the others are log increments
        return below, np.zeros(shape, bool)



class CorrCholeskyTransform(Transform):
    """R^(K(K-1)/2) onto Cholesky factors of K x K correlation matrices.

    ``z = tanh(x)`` are canonical partial correlations, laid out row by row on the
    strictly lower triangle (the order of ``numpy.tril_indices(K, -1)``). Row ``i`` of the
    factor ``L`` breaks the unit norm of the row like a stick:
    ``L_ij = z_ij * sqrt(1 - sum_(k<j) L_ik^2)`` and ``L_ii = sqrt(1 - sum_(k<i) L_ik^2)``.
    Since ``1 - sum_(k<j) L_ik^2 = prod_(k<j) (1 - z_ik^2)``, the squared remaining norm
    is accumulated in log space with the stable ``log(1 - tanh^2)``. The log-determinant
    with respect to the strictly lower triangle of ``L`` is
    ``sum_(i>j) [log(1 - z_ij^2) + 0.5 * log(1 - sum_(k<j) L_ik^2)]``.
    """

    event_dim = 2
    unconstrained_event_dim = 1
    codomain = constraints.corr_cholesky

    @staticmethod
    def _log_scales(x, side):
        """``log(1 - tanh^2)`` on the strict triangle and half log remaining norms."""
        rows, cols = np.tril_indices(side, -1)
        log_1mz2 = _log1m_tanh_sq(x)
        matrix = jnp.zeros(x.shape[:-1] + (side, side), x.dtype).at[..., rows, cols].set(log_1mz2)
        half_log_norm = 0.5 * _exclusive_cumsum(matrix)
        return log_1mz2, half_log_norm, rows, cols

    def forward(self, x):
        x = _as_float(x)
        _require_min_ndim(x.shape, 1, "CorrCholeskyTransform")
        side = _triangle_side(x.shape[-1], True, "CorrCholeskyTransform")
        _, half_log_norm, rows, cols = self._log_scales(x, side)
        norm = jnp.exp(half_log_norm)
        z = jnp.zeros_like(norm).at[..., rows, cols].set(jnp.tanh(x))
        diagonal = jnp.maximum(jnp.diagonal(norm, axis1=-2, axis2=-1), jnp.finfo(x.dtype).tiny)
        strict_lower = jnp.asarray(np.tri(side, k=-1, dtype=bool))
        lower = jnp.where(strict_lower, z * norm, 0.0)
        return lower + diagonal[..., :, None] * jnp.eye(side, dtype=x.dtype)

    def inverse(self, y):
        y = _as_float(y)
        side = _square_size(y.shape, "CorrCholeskyTransform")
        finfo = jnp.finfo(y.dtype)
        rows, cols = np.tril_indices(side, -1)
        # Squared norm left in row i from column j on, summed from the tail.
        remaining = _reverse_cumsum(jnp.tril(y) ** 2)
        z = y[..., rows, cols] / jnp.sqrt(jnp.maximum(remaining[..., rows, cols], finfo.tiny))
        z = jnp.clip(z, -1.0 + finfo.epsneg, 1.0 - finfo.epsneg)
        return jnp.arctanh(z)

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        _require_min_ndim(x.shape, 1, "CorrCholeskyTransform")
        side = _triangle_side(x.shape[-1], True, "CorrCholeskyTransform")
        log_1mz2, half_log_norm, rows, cols = self._log_scales(x, side)
        return jnp.sum(log_1mz2 + half_log_norm[..., rows, cols], axis=-1)

    def forward_shape(self, shape):
        _require_min_ndim(shape, 1, "CorrCholeskyTransform")
        side = _triangle_side(shape[-1], True, "CorrCholeskyTransform")
        return tuple(shape[:-1]) + (side, side)

    def inverse_shape(self, shape):
        side = _square_size(shape, "CorrCholeskyTransform")
        return tuple(shape[:-2]) + (side * (side - 1) // 2,)


def _fill_lower(x, log_diagonal_map, name):
    """Lower-triangular matrix from ``x`` laid out row by row (``tril_indices`` order).

    Diagonal entries are ``exp(log_diagonal_map(x_ii))``. Returns the matrix and the
    vector of log-diagonal values.
    """
    _require_min_ndim(x.shape, 1, name)
    side = _triangle_side(x.shape[-1], False, name)
    rows, cols = np.tril_indices(side)
    on_diagonal = np.flatnonzero(rows == cols)
    log_diagonal = log_diagonal_map(x[..., on_diagonal])
    values = x.at[..., on_diagonal].set(jnp.exp(log_diagonal))
    matrix = jnp.zeros(x.shape[:-1] + (side, side), x.dtype).at[..., rows, cols].set(values)
    return matrix, log_diagonal


def _lower_to_vector(matrix):
    """Inverse of :func:`_fill_lower` with the identity diagonal map."""
    side = _square_size(matrix.shape, "lower-triangular transform")
    rows, cols = np.tril_indices(side)
    values = matrix[..., rows, cols]
    on_diagonal = np.flatnonzero(rows == cols)
    diagonal = jnp.maximum(values[..., on_diagonal], jnp.finfo(values.dtype).tiny)
    return values.at[..., on_diagonal].set(jnp.log(diagonal))


def _identity(a):
    return a


class LowerCholeskyTransform(Transform):
    """R^(K(K+1)/2) onto lower-triangular K x K matrices with positive diagonal.

    The vector fills the lower triangle row by row (``numpy.tril_indices(K)`` order); the
    diagonal entries are exponentiated. The log-determinant with respect to the lower
    triangle is the sum of the unconstrained diagonal entries.
    """

    event_dim = 2
    unconstrained_event_dim = 1
    codomain = constraints.lower_cholesky

    def forward(self, x):
        return _fill_lower(_as_float(x), _identity, "LowerCholeskyTransform")[0]

    def inverse(self, y):
        return _lower_to_vector(_as_float(y))

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        side = _triangle_side(x.shape[-1], False, "LowerCholeskyTransform")
        rows, cols = np.tril_indices(side)
        return jnp.sum(x[..., np.flatnonzero(rows == cols)], axis=-1)

    def forward_shape(self, shape):
        _require_min_ndim(shape, 1, "LowerCholeskyTransform")
        side = _triangle_side(shape[-1], False, "LowerCholeskyTransform")
        return tuple(shape[:-1]) + (side, side)

    def inverse_shape(self, shape):
        side = _square_size(shape, "LowerCholeskyTransform")
        return tuple(shape[:-2]) + (side * (side + 1) // 2,)

    def finite_limits(self, shape):
        side = _triangle_side(shape[-1], False, type(self).__name__)
        rows, cols = np.tril_indices(side)
        below = np.broadcast_to(rows == cols, tuple(shape)).copy()  # log-diagonal entries
        return below, np.zeros(shape, bool)


class PositiveDefiniteTransform(LowerCholeskyTransform):
    """R^(K(K+1)/2) onto symmetric positive definite K x K matrices: ``L @ L.T``.

    ``L`` is the :class:`LowerCholeskyTransform` of ``x``. With respect to the lower
    triangle of the result, ``log |det J| = sum_i x_ii + K log 2 + sum_i (K - i + 1)
    log L_ii`` (1-based ``i``), the second part being the Jacobian of ``L -> L L^T``.
    The log-diagonal of ``L`` is clamped to ``+-0.5 * (log(max float) - log(4 K))`` so
    that ``L L^T`` stays finite; the log-determinant uses the clamped values.
    """

    event_dim = 2
    unconstrained_event_dim = 1
    codomain = constraints.positive_definite

    @staticmethod
    def _clamp_log_diagonal(log_diagonal):
        side = log_diagonal.shape[-1]
        limit = 0.5 * (math.log(jnp.finfo(log_diagonal.dtype).max) - math.log(4 * side))
        return jnp.clip(log_diagonal, -limit, limit)

    def forward(self, x):
        lower, _ = _fill_lower(_as_float(x), self._clamp_log_diagonal, "PositiveDefiniteTransform")
        product = lower @ jnp.swapaxes(lower, -1, -2)
        return 0.5 * (product + jnp.swapaxes(product, -1, -2))

    def inverse(self, y):
        return _lower_to_vector(jnp.linalg.cholesky(_as_float(y)))

    def log_abs_det_jacobian(self, x):
        x = _as_float(x)
        side = _triangle_side(x.shape[-1], False, "PositiveDefiniteTransform")
        rows, cols = np.tril_indices(side)
        raw = x[..., np.flatnonzero(rows == cols)]
        log_diagonal = self._clamp_log_diagonal(raw)
        # sum_i log L_ii from d L / d x, plus K log 2 + sum_i (K - i + 1) log L_ii.
        powers = jnp.arange(side + 1, 1, -1, dtype=x.dtype)
        return side * math.log(2.0) + jnp.sum(powers * log_diagonal, axis=-1)


# ----------------------------------------------------------------------------- registry


_BIJECTORS: dict[type, Callable[[Constraint], Transform]] = {}


def register_bijector(constraint_type: type, factory: Callable[[Constraint], Transform]):
    """Register ``factory(constraint) -> Transform`` for instances of ``constraint_type``.

    Lookup follows the class hierarchy, so a registration for a subclass takes
    precedence over one for its base class.
    """
    _BIJECTORS[constraint_type] = factory
    return factory


register_bijector(type(constraints.real), lambda c: IdentityTransform(0))
register_bijector(type(constraints.real_vector), lambda c: IdentityTransform(1))
register_bijector(type(constraints.positive), lambda c: ExpTransform())
register_bijector(constraints.greater_than, lambda c: GreaterThanTransform(c.lower_bound))
register_bijector(
    constraints.interval, lambda c: IntervalTransform(c.lower_bound, c.upper_bound)
)
register_bijector(type(constraints.simplex), lambda c: StickBreakingTransform())
register_bijector(type(constraints.ordered_vector), lambda c: OrderedTransform())
register_bijector(type(constraints.corr_cholesky), lambda c: CorrCholeskyTransform())
register_bijector(type(constraints.lower_cholesky), lambda c: LowerCholeskyTransform())
register_bijector(type(constraints.positive_definite), lambda c: PositiveDefiniteTransform())


def biject_to(constraint: Constraint) -> Transform:
    """The bijection from unconstrained space onto the support ``constraint``.

    Parameters
    ----------
    constraint : Constraint
        A continuous constraint from :mod:`hbm.constraints`.

    Returns
    -------
    Transform

    Raises
    ------
    ConstraintError
        If ``constraint`` is not a constraint, is discrete, or has no registered bijector.
    """
    if not isinstance(constraint, Constraint):
        raise ConstraintError(f"biject_to expects a Constraint, got {constraint!r}")
    if constraint.is_discrete:
        raise ConstraintError(
            f"constraint {constraint!r} is discrete and has no bijection from real space; "
            "discrete parameters cannot be sampled by gradient-based inference"
        )
    for cls in type(constraint).__mro__:
        factory = _BIJECTORS.get(cls)
        if factory is not None:
            return factory(constraint)
    raise ConstraintError(f"no bijector is registered for constraint {constraint!r}")
