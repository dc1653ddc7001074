"""Log densities as pytrees, so that one compiled program serves many data sets.

A kernel compiled with its log density as a static argument recompiles for every new
function object, and a closure over the data bakes the data into the program as
constants. A :class:`jax.tree_util.Partial` ``Partial(f, data, weights)`` is instead an
ordinary argument of a jitted function: ``f`` is part of its (static) structure and the
bound arrays are traced leaves. Drivers keep one ``f`` per model structure and data shapes
and bind each new data set to it, so a second fit on same-shaped data reuses the compiled
program (as ``hbm.sample`` does with its data argument).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

__all__ = ["as_pytree_function"]


def as_pytree_function(fn: Callable) -> jax.tree_util.Partial:
    """``fn`` as a :class:`jax.tree_util.Partial` (unchanged if it already is one): a
    pytree that compiled programs take as an argument. A plain function becomes a
    ``Partial`` with no bound arguments, compiled once per function object."""
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)
