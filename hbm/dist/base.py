"""The distribution interface shared by every family in :mod:`hbm.dist`.

A distribution is an immutable object holding its parameters as arrays. It has a
``batch_shape`` (independent, not necessarily identical, copies) and an ``event_shape``
(the shape of one draw of a multivariate family), a ``support`` constraint, a
``log_prob(value)`` that returns an array of the broadcast batch shape, and a
``sample(key, sample_shape)`` that returns ``sample_shape + batch_shape + event_shape``.

Location-scale families (Normal, StudentT, Cauchy, Laplace, Logistic, and LogNormal in
log space) also answer :meth:`Distribution.standardized`, which the model layer uses to
reparameterize hierarchies (centered / non-centered / partially centered).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbm import constraints
from hbm.errors import ModelError


class Standardized(NamedTuple):
    """A location-scale family written as ``link(loc + scale * z)`` with ``z ~ base``.

    ``base`` is the standard member of the family (loc 0, scale 1) with the same batch
    shape; ``link`` is ``"identity"`` or ``"exp"`` (LogNormal: log-space location-scale).
    """

    base: "Distribution"
    loc: jax.Array
    scale: jax.Array
    link: str


def _shape(x):
    return tuple(jnp.shape(x))


class Distribution:
    """Base class. Subclasses set ``arg_constraints`` and ``support`` and implement
    ``log_prob`` and ``sample``; ``param_event_ndims`` names the parameters whose
    trailing axes are event axes (e.g. a MultivariateNormal's ``loc`` has 1)."""

    arg_constraints: dict = {}
    support: constraints.Constraint = constraints.real
    param_event_ndims: dict = {}
    #: Constructor arguments that are not arrays (e.g. a dimension): kept as they are
    #: by :meth:`expand`.
    static_params: tuple = ()

    def __init__(self, batch_shape=(), event_shape=()):
        self._batch_shape = tuple(batch_shape)
        self._event_shape = tuple(event_shape)

    # ----------------------------------------------------------------- shapes
    @property
    def batch_shape(self) -> tuple:
        return self._batch_shape

    @property
    def event_shape(self) -> tuple:
        return self._event_shape

    @property
    def event_dim(self) -> int:
        return len(self._event_shape)

    @property
    def shape(self) -> tuple:
        """``batch_shape + event_shape``: the shape of one draw."""
        return self._batch_shape + self._event_shape

    @property
    def is_discrete(self) -> bool:
        return self.support.is_discrete

    # ------------------------------------------------------------- parameters
    def params(self) -> dict:
        """The constructor keyword arguments that rebuild this distribution."""
        return {name: getattr(self, name) for name in self.arg_constraints}

    def expand(self, batch_shape) -> "Distribution":
        """The same family with every parameter broadcast to ``batch_shape``."""
        batch_shape = tuple(int(s) for s in np.atleast_1d(batch_shape)) if not isinstance(
            batch_shape, tuple) else tuple(int(s) for s in batch_shape)
        try:
            jnp.broadcast_shapes(self.batch_shape, batch_shape)
        except ValueError as e:
            raise ModelError(
                f"cannot expand {type(self).__name__} with batch shape {self.batch_shape} "
                f"to {batch_shape}"
            ) from e
        kwargs = {}
        for name, value in self.params().items():
            if value is None or name in self.static_params:
                kwargs[name] = value
                continue
            nd = self.param_event_ndims.get(name, 0)
            value = jnp.asarray(value)
            tail = _shape(value)[len(_shape(value)) - nd :] if nd else ()
            kwargs[name] = jnp.broadcast_to(value, batch_shape + tail)
        return type(self)(**kwargs)

    # ------------------------------------------------------------ densities
    def log_prob(self, value) -> jax.Array:
        raise NotImplementedError

    def sample(self, key, sample_shape=()) -> jax.Array:
        raise NotImplementedError

    @property
    def mean(self):
        raise NotImplementedError(f"{type(self).__name__} has no closed-form mean")

    @property
    def variance(self):
        raise NotImplementedError(f"{type(self).__name__} has no closed-form variance")

    def standardized(self) -> Standardized | None:
        """The location-scale decomposition, or ``None`` for other families."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}(batch_shape={self.batch_shape}, event_shape={self.event_shape})"


def promote_shapes(*args):
    """Convert to float arrays and return them with their broadcast batch shape."""
    arrays = [jnp.asarray(a) for a in args]
    batch_shape = jnp.broadcast_shapes(*[a.shape for a in arrays])
    return arrays, batch_shape


def as_float(x):
    """Integer and boolean inputs become the default float dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x
