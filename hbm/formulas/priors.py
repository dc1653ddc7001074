"""Default priors autoscaled to the data, user overrides, and the printable prior table.

The defaults follow rstanarm's documented autoscaling (Gabry and Goodrich, "Prior
Distributions for rstanarm Models", rstanarm vignette), with the outcome scale
``s_y = sd(y)`` for the gaussian and student families, ``sd(log y)`` for lognormal, and
``s_y = 1`` for every other family (their parameters live on the link scale):

- ``b[Intercept] ~ Normal(m_y, 2.5 s_y)``, ``m_y = mean(y)`` (gaussian, student),
  ``mean(log y)`` (lognormal), else ``0``. As in the hbm model library the intercept
  is the coefficient of the *uncentered* design (rstanarm puts its intercept prior on
  centered predictors; for a design with centered predictors the two coincide).
- ``b[k] ~ Normal(0, 2.5 s_y / sd(x_k))`` for every other population column.
- ``sigma ~ Exponential(1 / s_y)`` (rstanarm's ``prior_aux``).
- ``sd_<group>[k] ~ Exponential(1 / s_y)`` for a constant predictor column (a varying
  intercept) and ``Exponential(sd(z_k) / s_y)`` otherwise: each group-level sd gets an
  exponential prior with mean ``s_y / sd(z_k)``, the same scale rule as the
  coefficients. This is *decov-like*, not rstanarm's ``decov()``: the sds are
  independent exponentials and the correlation is separate.
- ``L_<group> ~ LKJCholesky(k, 1)`` (brms' and rstanarm's default eta = 1: uniform over
  correlation matrices).
- ``shape`` (negbinomial, gamma) and ``phi`` (beta) ``~ Exponential(1)`` (rstanarm's
  ``prior_aux`` and ``prior_phi``), ``nu`` (student) ``~ Gamma(2, 0.1)`` (brms' default).

Overrides (``priors=``) are hbm distributions keyed by class (``"b"``, ``"sd"``,
``"L"``, ``"sigma"``, ``"nu"``, ``"shape"``, ``"phi"``), by parameter (``"sd_Subject"``,
``"L_Subject"``), or by coefficient (``"b[Days]"``, also ``"Intercept"`` for
``"b[Intercept]"``); a coefficient override must be a Normal. The most specific key wins.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hbm import constraints, dist
from hbm.dist.base import Distribution
from hbm.errors import ConfigurationError

__all__ = ["data_scale", "describe", "resolve_priors"]

_POSITIVE_CLASSES = ("sd", "sigma", "nu", "shape", "phi")


def data_scale(values) -> float:
    """Sample sd (divisor n - 1), or 1.0 for a constant column."""
    values = np.asarray(values, dtype=np.float64)
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return sd if sd > 0 else 1.0


def describe(d: Distribution, index=None) -> str:
    """``Normal(loc=0, scale=2.5)``; with ``index``, the element at that batch index."""
    parts = []
    for name, value in d.params().items():
        if value is None or name in getattr(d, "static_params", ()):
            if value is not None:
                parts.append(f"{name}={value}")
            continue
        arr = np.asarray(value)
        if index is not None and arr.ndim >= 1 and d.batch_shape:
            arr = np.broadcast_to(arr, d.batch_shape)[index]
        if arr.size == 1:
            parts.append(f"{name}={float(arr.reshape(-1)[0]):.4g}")
        else:
            parts.append(f"{name}={np.array2string(arr, precision=4)}")
    return f"{type(d).__name__}({', '.join(parts)})"


def _is_positive(d: Distribution) -> bool:
    return isinstance(d.support, type(constraints.positive))


def _expand(key: str, d, shape: tuple) -> Distribution:
    if not isinstance(d, Distribution):
        raise ConfigurationError(f"priors[{key!r}] must be an hbm distribution, got "
                                 f"{type(d).__name__}")
    batch = shape[: len(shape) - d.event_dim] if d.event_dim else shape
    try:
        return d.expand(batch) if tuple(d.batch_shape) != batch else d
    except Exception as e:
        raise ConfigurationError(f"priors[{key!r}] has batch shape {d.batch_shape}, which does "
                                 f"not broadcast to the parameter's shape {shape}") from e


def resolve_priors(nodes: list, overrides) -> tuple[dict, pd.DataFrame]:
    """``({node: Distribution}, prior table)``.

    ``nodes`` lists ``(name, cls, shape, coefs, default)``: the parameter, its class
    (``"b"``, ``"sd"``, ``"L"``, ``"sigma"``, ...), shape, coefficient labels and
    default distribution.
    """
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"priors keys must be strings, got {key!r}")
        if not isinstance(value, Distribution):
            raise ConfigurationError(f"priors[{key!r}] must be an hbm distribution, got "
                                     f"{type(value).__name__}")
    if "Intercept" in overrides:
        overrides["b[Intercept]"] = overrides.pop("Intercept")
    valid, used = set(), set()
    out, rows = {}, []
    for name, cls, shape, coefs, default in nodes:
        valid.update({name, cls} | {f"{name}[{c}]" for c in coefs})
        prior, source = default, "default"
        for key in (cls, name):  # the more specific key last
            if key in overrides:
                prior, source = _expand(key, overrides[key], shape), f"user ({key})"
                used.add(key)
                if cls in _POSITIVE_CLASSES and not _is_positive(prior):
                    raise ConfigurationError(
                        f"priors[{key!r}] must have positive support (e.g. Exponential, "
                        f"HalfNormal), got {type(prior).__name__} on {prior.support}")
                if cls == "L" and not isinstance(prior, dist.LKJCholesky):
                    raise ConfigurationError(f"priors[{key!r}] must be an LKJCholesky")
                if tuple(prior.shape) != tuple(shape):
                    raise ConfigurationError(f"priors[{key!r}] gives shape {prior.shape}; "
                                             f"{name!r} has shape {tuple(shape)}")
        element_sources = {}
        element_keys = [f"{name}[{c}]" for c in coefs if f"{name}[{c}]" in overrides]
        if element_keys:
            if not isinstance(prior, dist.Normal):
                raise ConfigurationError(
                    f"coefficient priors {element_keys} need the class prior of {name!r} to "
                    f"be a Normal, got {type(prior).__name__}")
            loc = np.array(np.broadcast_to(np.asarray(prior.loc), shape), dtype=float)
            scale = np.array(np.broadcast_to(np.asarray(prior.scale), shape), dtype=float)
            for k, c in enumerate(coefs):
                key = f"{name}[{c}]"
                if key not in overrides:
                    continue
                d = overrides[key]
                if not isinstance(d, dist.Normal) or d.batch_shape != ():
                    raise ConfigurationError(f"priors[{key!r}] must be a scalar Normal (a "
                                             "coefficient's prior is one entry of the Normal "
                                             f"on {name!r}), got {type(d).__name__}")
                loc[k], scale[k] = float(d.loc), float(d.scale)
                element_sources[k] = f"user ({key})"
                used.add(key)
            prior = dist.Normal(loc, scale)
        out[name] = prior
        if coefs and cls != "L":
            for k, c in enumerate(coefs):
                rows.append((f"{name}[{c}]", cls, c, describe(prior, k),
                             element_sources.get(k, source)))
        else:
            rows.append((name, cls, "", describe(prior), source))
    unknown = [k for k in overrides if k not in used]
    if unknown:
        raise ConfigurationError(f"priors names {unknown}, which the model does not have; "
                                 f"valid keys: {sorted(valid)}")
    table = pd.DataFrame(rows, columns=["parameter", "class", "coef", "prior", "source"])
    return out, table.set_index("parameter")
