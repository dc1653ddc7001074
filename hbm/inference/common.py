"""Helpers the drivers share: binding, the compiled-program cache, flat draws to named
parameters, observed data, progress bars and the cached flat log density."""

from __future__ import annotations

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hbm.errors import ConfigurationError
from hbm.model import BoundModel, Model

__all__ = [
    "check_model",
    "bind",
    "data_signature",
    "reparam_signature",
    "cached",
    "progress_bar",
    "observed_keys",
    "observed",
    "constrain_draws",
    "describe_indices",
    "logdensity_closure",
    "logdensity_many",
]


def check_model(model) -> None:
    if not isinstance(model, Model):
        raise ConfigurationError(f"expected an hbm.Model, got {type(model).__name__}")


def bind(model, data, reparam) -> BoundModel:
    """Validate ``model`` and ``data`` (once per call) and bind them."""
    check_model(model)
    return model.bind(data, reparam=reparam)


def data_signature(data) -> tuple:
    """The tree structure, shapes and dtypes of ``data``: what a compiled program of it
    depends on."""
    leaves, treedef = jax.tree_util.tree_flatten(data)
    return (treedef, tuple((tuple(jnp.shape(x)), str(jnp.asarray(x).dtype)) for x in leaves))


def reparam_signature(reparam):
    if isinstance(reparam, str):
        return reparam
    return tuple(sorted((k, v if isinstance(v, str) else "partial") for k, v in reparam.items()))


def cached(model: Model, key, build):
    """``build()`` once per ``model`` and ``key`` (compiled programs live on the model)."""
    cache = model._bind_cache
    if key not in cache:
        cache[key] = build()
    return cache[key]


def progress_bar(progress, total, desc):
    from tqdm.auto import tqdm

    enabled = bool(progress) and (progress == "force" or sys.stderr.isatty())
    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True)


def observed_keys(bound: BoundModel) -> list:
    """The data keys the likelihood explains (found by tracing it once, abstractly, per
    model structure and data shapes, like every compiled program)."""
    model = bound.model
    if model.likelihood is None:
        return []
    key = ("observed_keys", bound.signature)
    cache = model._bind_cache
    if key not in cache:
        keys = []

        def trace(x):
            p = bound.constrain(x, deterministic=False)
            keys.extend(model.likelihood(p, bound.data))
            return jnp.zeros(())

        jax.eval_shape(trace, jnp.zeros(bound.size))
        cache[key] = keys
    return list(cache[key])


def observed(bound: BoundModel) -> dict:
    return {k: np.asarray(bound.data[k]) for k in observed_keys(bound)}


def constrain_draws(bound: BoundModel, xs, store_log_likelihood=True):
    """(n, d) flat unconstrained draws -> posterior dict and log likelihood, (1, n, ...)."""
    key = ("constrain_draws", bound.signature, bool(store_log_likelihood))
    cache = bound.model._bind_cache
    if key not in cache:  # compiled once per model structure; data and weights are arguments
        def one(x, data, weights):
            params = bound.constrain(x, data, weights)
            loglik = bound.log_likelihood(params, data) if store_log_likelihood else {}
            return params, loglik

        cache[key] = jax.jit(lambda v, data, weights: jax.lax.map(
            lambda x: one(x, data, weights), v))
    params, loglik = cache[key](jnp.asarray(xs), bound.data, bound.weights)
    params = {k: np.asarray(v)[None] for k, v in params.items()}
    loglik = {k: np.asarray(v)[None] for k, v in loglik.items()}
    return params, loglik


def describe_indices(bound: BoundModel, indices, params: dict | None = None) -> list:
    """``(label, value)`` for each flat unconstrained index: the element's name and, with
    ``params``, its constrained value where the node's transform keeps its shape
    (elementwise maps; ``None`` otherwise)."""
    described = []
    for i in indices:
        for n in bound.nodes:
            if n.offset <= i < n.offset + n.size:
                label = n.name if n.size == 1 else f"{n.name}[{i - n.offset}]"
                value = None
                if params is not None and n.shape == n.unconstrained_shape:
                    value = float(np.ravel(params[n.name])[i - n.offset])
                described.append((label, value))
    return described


def _bound_logdensity(bound, jacobian, data, weights, x):
    return bound.logdensity(x, data, weights, jacobian=jacobian)


def logdensity_closure(bound: BoundModel, jacobian: bool = True) -> jax.tree_util.Partial:
    """The flat log density of ``bound`` at its data, as a
    :class:`jax.tree_util.Partial` over ``(data, weights)``. Its function is kept per model
    structure and data shapes, so the compiled optimizers and ADVI chunks that take it are
    reused for new same-shaped data (:mod:`hbm.samplers.closures`)."""
    key = ("logdensity", bound.signature, bool(jacobian))
    fn = cached(bound.model, key, lambda: partial(_bound_logdensity, bound, bool(jacobian)))
    return jax.tree_util.Partial(fn, bound.data, bound.weights)


@jax.jit
def logdensity_many(logdensity_fn, xs):
    """A :func:`logdensity_closure` at each row of ``xs``."""
    return jax.vmap(logdensity_fn)(xs)
