"""Supports of distributions (constraints on parameter values).

A constraint says which values a random variable may take. It knows its ``event_dim``
(how many trailing axes form one point of the support), whether it is discrete, and how to
check a value. :func:`hbm.transforms.biject_to` maps each continuous constraint to a
bijection from unconstrained space.
"""

from __future__ import annotations

import jax.numpy as jnp


class Constraint:
    """A set of admissible values. Subclasses implement :meth:`check`."""

    event_dim: int = 0
    is_discrete: bool = False

    def check(self, value):
        """Boolean array, ``True`` where ``value`` lies in the set (batch shape)."""
        raise NotImplementedError

    def __repr__(self):
        return type(self).__name__.lstrip("_")

    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self):
        return hash((type(self), self._key()))

    def _key(self):
        return ()


class _Real(Constraint):
    def check(self, value):
        return jnp.isfinite(value)

    def __repr__(self):
        return "real"


class _RealVector(Constraint):
    event_dim = 1

    def check(self, value):
        return jnp.all(jnp.isfinite(value), axis=-1)

    def __repr__(self):
        return "real_vector"


class _GreaterThan(Constraint):
    def __init__(self, lower_bound):
        self.lower_bound = lower_bound

    def check(self, value):
        return value > self.lower_bound

    def _key(self):
        return (_hashable(self.lower_bound),)

    def __repr__(self):
        return f"greater_than({self.lower_bound})"


class _Positive(_GreaterThan):
    def __init__(self):
        super().__init__(0.0)

    def __repr__(self):
        return "positive"


class _Interval(Constraint):
    def __init__(self, lower_bound, upper_bound):
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound

    def check(self, value):
        return (value > self.lower_bound) & (value < self.upper_bound)

    def _key(self):
        return (_hashable(self.lower_bound), _hashable(self.upper_bound))

    def __repr__(self):
        return f"interval({self.lower_bound}, {self.upper_bound})"


class _UnitInterval(_Interval):
    def __init__(self):
        super().__init__(0.0, 1.0)

    def __repr__(self):
        return "unit_interval"


class _Simplex(Constraint):
    event_dim = 1

    def check(self, value):
        return jnp.all(value >= 0, axis=-1) & (jnp.abs(jnp.sum(value, axis=-1) - 1) < 1e-5)

    def __repr__(self):
        return "simplex"


class _OrderedVector(Constraint):
    event_dim = 1

    def check(self, value):
        return jnp.all(value[..., 1:] > value[..., :-1], axis=-1) & jnp.all(
            jnp.isfinite(value), axis=-1
        )

    def __repr__(self):
        return "ordered_vector"


class _CorrCholesky(Constraint):
    """Lower-triangular matrices with positive diagonal and rows of unit norm."""

    event_dim = 2

    def check(self, value):
        tril = jnp.all(jnp.triu(value, 1) == 0, axis=(-2, -1))
        pos = jnp.all(jnp.diagonal(value, axis1=-2, axis2=-1) > 0, axis=-1)
        unit = jnp.all(jnp.abs(jnp.sum(value**2, axis=-1) - 1) < 1e-5, axis=-1)
        return tril & pos & unit

    def __repr__(self):
        return "corr_cholesky"


class _LowerCholesky(Constraint):
    """Lower-triangular matrices with positive diagonal."""

    event_dim = 2

    def check(self, value):
        tril = jnp.all(jnp.triu(value, 1) == 0, axis=(-2, -1))
        pos = jnp.all(jnp.diagonal(value, axis1=-2, axis2=-1) > 0, axis=-1)
        return tril & pos

    def __repr__(self):
        return "lower_cholesky"


class _PositiveDefinite(Constraint):
    event_dim = 2

    def check(self, value):
        sym = jnp.all(jnp.abs(value - jnp.swapaxes(value, -1, -2)) < 1e-6, axis=(-2, -1))
        return sym & jnp.all(jnp.linalg.eigvalsh(value) > 0, axis=-1)

    def __repr__(self):
        return "positive_definite"


class _NonNegativeInteger(Constraint):
    is_discrete = True

    def check(self, value):
        return (value >= 0) & (jnp.floor(value) == value)

    def __repr__(self):
        return "nonnegative_integer"


class _IntegerInterval(Constraint):
    is_discrete = True

    def __init__(self, lower_bound, upper_bound):
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound

    def check(self, value):
        return (
            (value >= self.lower_bound)
            & (value <= self.upper_bound)
            & (jnp.floor(value) == value)
        )

    def _key(self):
        return (_hashable(self.lower_bound), _hashable(self.upper_bound))

    def __repr__(self):
        return f"integer_interval({self.lower_bound}, {self.upper_bound})"


class _Boolean(_IntegerInterval):
    def __init__(self):
        super().__init__(0, 1)

    def __repr__(self):
        return "boolean"


def _hashable(x):
    try:
        return float(x)
    except TypeError:
        return id(x)


real = _Real()
real_vector = _RealVector()
positive = _Positive()
unit_interval = _UnitInterval()
simplex = _Simplex()
ordered_vector = _OrderedVector()
corr_cholesky = _CorrCholesky()
lower_cholesky = _LowerCholesky()
positive_definite = _PositiveDefinite()
nonnegative_integer = _NonNegativeInteger()
boolean = _Boolean()
greater_than = _GreaterThan
interval = _Interval
integer_interval = _IntegerInterval

__all__ = [
    "Constraint",
    "real",
    "real_vector",
    "positive",
    "greater_than",
    "interval",
    "unit_interval",
    "simplex",
    "ordered_vector",
    "corr_cholesky",
    "lower_cholesky",
    "positive_definite",
    "nonnegative_integer",
    "integer_interval",
    "boolean",
]
