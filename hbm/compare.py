"""MAP versus posterior mean: where the mode of a hierarchical model misleads.

In a hierarchical model the joint mode of the model's own parameters often sits at a group
scale of zero (all group effects pooled to their mean), because the density of the group
effects, ``prod_j Normal(eta_j | 0, tau)``, grows without bound as ``tau -> 0`` with the
effects at the mean. The posterior mean of ``tau`` can be far from zero at the same time
(Gelman et al. 2013, "Bayesian Data Analysis", 3rd ed., sections 5.5 and 13.2; O'Hagan
1976, "On posterior joint and marginal modes", Biometrika 63). The unconstrained mode
*with* the Jacobian of the log transform (the centre of a Laplace approximation in
unconstrained space) is usually away from the boundary (Chung et al. 2013, "A
nondegenerate penalized likelihood estimator for variance parameters in multilevel
models", Psychometrika 78).

:func:`map_vs_mean` puts the three side by side, one row per scalar parameter element,
and flags the elements where the MAP has collapsed.

Which parameters are group scales
---------------------------------
A parameter is a *group scale* when its support is positive and either

1. it enters the scale of a hierarchical prior node (``bound.nodes`` with
   ``locscale=True``): the derivative of that node's scale (:func:`hbm.reparam.node_scale`:
   a location-scale family's ``standardized().scale``, a multivariate normal's marginal
   sds) with respect to the parameter, taken by autodiff at the posterior median, is
   non-zero; this finds ``tau`` in ``theta ~ Normal(mu, tau)`` and ``sigma_county`` in
   ``county_effect ~ MultivariateNormal(0, scale_tril=diag(sigma_county) L)`` whatever
   their names; or
2. :func:`hbm.find_map` reported its mode on the boundary of the parameter space (this
   also catches scales of group effects written non-centered by hand, which no prior node
   shows).

A group-scale element is *collapsed* when its MAP is below ``1e-3`` times its posterior
median, or when it is reported on the boundary and its MAP lies below the posterior's 5%
quantile, i.e. the MAP has gone to zero while the posterior has not.

The MAP at a collapsed scale
----------------------------
Where find_map reports a group scale on the boundary, the optimizer stopped where the
unbounded growth outran it, and the other parameters are not converged. The ``map``
column then reports the limit: the collapsed scales at (numerically) zero, their group
effects at their location, and every other parameter maximizing the remaining terms of
the log density (see :func:`_limit_map`); ``attrs["map_is_limit"]`` says so.

The ``mode_jacobian`` column is :func:`hbm.find_map` with ``jacobian=True`` in its
default (non-centered) parameterization: with the Jacobian, a centered hierarchy is still
unbounded for more than one group, a non-centered one is not.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from hbm.errors import ConfigurationError

__all__ = ["map_vs_mean", "hierarchical_scales", "group_scale_parameters", "COLLAPSE_RATIO"]

#: A group scale whose MAP is below this fraction of its posterior median has collapsed.
COLLAPSE_RATIO = 1e-3

_COLUMNS = ["map", "mode_jacobian", "mean", "median", "sd", "std_distance", "q05", "q95",
            "group_scale", "boundary", "collapsed", "outside_90", "group_effect"]


def _is_positive(support) -> bool:
    return getattr(support, "lower_bound", None) is not None and type(support).__name__ in (
        "_Positive", "_GreaterThan") and float(np.asarray(support.lower_bound)) == 0.0


def hierarchical_scales(bound, params: dict) -> dict[str, set[str]]:
    """For each hierarchical node, the positive parameters its scale depends on (by
    autodiff of :func:`hbm.reparam.node_scale` at ``params``).

    Parameters
    ----------
    bound : :class:`~hbm.model.BoundModel`
    params : dict
        A point of the model's own (constrained) parameters at which the dependence is
        checked (use an interior point, e.g. the posterior median).

    Returns
    -------
    dict node name -> set of parameter names (nodes without such a scale are left out).
    """
    from hbm.model import _Data, _node_fn
    from hbm.reparam import node_scale

    model = bound.model
    if not model.can_simulate:
        return {}
    positive = {n.name for n in bound.nodes if _is_positive(n.support)}
    found: dict[str, set[str]] = {}
    names = [n.name for n in bound.nodes]
    data = _Data(bound.data)
    for index, node in enumerate(bound.nodes):
        if not node.locscale:
            continue
        earlier = {k: jnp.asarray(params[k], dtype=jnp.result_type(float))
                   for k in names[:index]}
        candidates = {k: v for k, v in earlier.items() if k in positive}
        if not candidates:
            continue
        node_fn = _node_fn(model.prior[node.name])

        def total_scale(cands, node_fn=node_fn, earlier=earlier):
            p = dict(earlier)
            p.update(cands)
            return jnp.sum(node_scale(node_fn(p, data)))

        grads = jax.grad(total_scale)(candidates)
        depends = {k for k, g in grads.items() if bool(jnp.any(g != 0))}
        if depends:
            found[node.name] = depends
    return found


def group_scale_parameters(bound, params: dict) -> set[str]:
    """Positive parameters on which the scale of a hierarchical prior node depends
    (the union of :func:`hierarchical_scales`)."""
    return set().union(*hierarchical_scales(bound, params).values())


def _limit_map(model, data, collapsed: set[str], scales_of: dict, seed: int, restarts: int):
    """The classical MAP in the limit where the ``collapsed`` scales go to 0.

    The log density without Jacobian is unbounded there (``-n log tau`` from the group
    effects' density), so an optimizer stops wherever the growth outran it and leaves the
    other parameters unconverged. In the limit the group effects equal their location and
    the divergent term does not depend on the other parameters, so their MAP maximizes the
    remaining terms: the nodes whose scale is collapsed are written non-centered (which
    drops the ``-log scale`` terms), the collapsed scales are pinned at the smallest
    normal float, and L-BFGS optimizes the rest. Returns constrained params, or ``None``
    when a collapsed scale is not a plain positive node (then find_map's point is kept).
    """
    from hbm.errors import HbmError
    from hbm.samplers.optimize import find_mode

    reparam = {name: ("noncentered" if depends & collapsed else "centered")
               for name, depends in scales_of.items()}
    bound = model.bind(data, reparam=reparam)
    covered = set().union(*scales_of.values()) if scales_of else set()
    if not collapsed <= covered:
        # a collapsed scale of a node that is not hierarchical: the limit cannot be
        # written; keep find_map's point
        return None
    fixed = []
    for node in bound.nodes:
        if node.name in collapsed:
            if node.locscale or not _is_positive(node.support):
                return None
            fixed.extend(range(node.offset, node.offset + node.size))
    fixed = np.asarray(fixed, dtype=int)
    free = np.setdiff1d(np.arange(bound.size), fixed)
    dtype = jnp.result_type(float)
    pinned = float(np.log(np.finfo(np.dtype(dtype)).tiny)) + 1.0

    def full(x_free):
        x = jnp.zeros(bound.size, dtype).at[free].set(x_free)
        return x.at[fixed].set(pinned)

    def logdensity_free(x_free):
        return bound.logdensity(full(x_free), jacobian=False)

    inits = bound.init_many(jax.random.PRNGKey(seed), restarts)[:, free]
    try:
        result = find_mode(logdensity_free, inits)
    except HbmError:
        return None
    params = bound.constrain(full(result.position), deterministic=False)
    return {k: np.asarray(v) for k, v in params.items()}


def _quiet_find_map(model, data, **kwargs):
    """find_map with its boundary warning turned into data (``info["boundary"]``)."""
    from hbm.diagnostics import HbmWarning
    from hbm.inference import find_map

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HbmWarning)
        return find_map(model, data, **kwargs)


def _boundary_elements(boundary_names, shapes) -> dict[str, np.ndarray]:
    """find_map's boundary labels ("tau", "theta[3]") -> boolean masks per parameter."""
    masks = {name: np.zeros(shape, bool) for name, shape in shapes.items()}
    for label in boundary_names:
        name, _, rest = label.partition("[")
        if name not in masks:
            continue
        mask = masks[name]
        if not rest:
            mask[...] = True
            continue
        flat = int(rest.rstrip("]"))
        if flat < mask.size:  # an elementwise transform: flat index = element index
            mask.reshape(-1)[flat] = True
        else:
            mask[...] = True
    return masks


def map_vs_mean(model, data=None, *, fit=None, seed: int = 0, restarts: int = 4,
                **sample_kwargs):
    """Per-parameter MAP, Jacobian-adjusted mode and posterior summaries, with flags.

    Parameters
    ----------
    model, data
        The :class:`~hbm.Model` and its data.
    fit : :class:`~hbm.results.Fit`, optional
        A NUTS (or other draw-based) fit of the same model and data; when ``None``,
        :func:`hbm.sample` runs with ``seed`` and ``sample_kwargs``.
    seed
        Seed of the optimizers (and of the sampler when it runs here).
    restarts
        L-BFGS restarts of each mode search.
    **sample_kwargs
        Passed to :func:`hbm.sample` (``chains``, ``warmup``, ``draws``, ...).

    Returns
    -------
    pandas.DataFrame
        One row per scalar element of every parameter (index ``"mu"``, ``"theta[A]"``),
        columns ``map`` (classical MAP: mode of the constrained density, no Jacobian),
        ``mode_jacobian`` (mode of the unconstrained density, mapped back), ``mean``,
        ``median``, ``sd``, ``std_distance`` (``(map - mean) / sd``), ``q05``, ``q95``,
        ``group_scale``, ``boundary`` (find_map put this element's mode on the boundary),
        ``collapsed`` (see the module docstring) and ``outside_90`` (MAP outside
        ``[q05, q95]``), ``group_effect`` (an element of a hierarchical node: a group
        effect, univariate or multivariate). ``attrs`` holds ``"fit"``, ``"map"`` and ``"mode_jacobian"``
        (the three :class:`~hbm.results.Fit` objects) and ``"group_scales"``.
    """
    import pandas as pd

    from hbm.diagnostics import element_labels
    from hbm.inference import sample
    from hbm.model import Model

    if not isinstance(model, Model):
        raise ConfigurationError(f"expected an hbm.Model, got {type(model).__name__}")
    if fit is None:
        fit = sample(model, data, seed=seed, **sample_kwargs)
    elif sample_kwargs:
        raise ConfigurationError("sampler options were given together with a fit; pass one "
                                 f"or the other (got {sorted(sample_kwargs)})")
    map_fit = _quiet_find_map(model, data, jacobian=False, restarts=restarts, seed=seed)
    jac_fit = _quiet_find_map(model, data, jacobian=True, restarts=restarts, seed=seed)

    bound = model.bind(data, reparam="centered")
    shapes = bound.param_shapes
    missing = [name for name in shapes if name not in fit.posterior]
    if missing:
        raise ConfigurationError(f"the fit has no draws of {missing}; is it a fit of this "
                                 "model?")
    draws = {name: np.asarray(fit.posterior[name], dtype=float).reshape(
        (-1,) + tuple(shapes[name])) for name in shapes}
    medians = {name: np.median(d, axis=0) for name, d in draws.items()}
    scales_of = hierarchical_scales(bound, medians)
    scales = set().union(*scales_of.values())
    boundary_names = list(map_fit.info.get("boundary", []))
    boundary = _boundary_elements(boundary_names, shapes)
    scales |= {name for name, mask in boundary.items()
               if mask.any() and _is_positive(next(n for n in bound.nodes
                                                   if n.name == name).support)}

    map_params = {k: np.asarray(v, dtype=float) for k, v in map_fit.params.items()}
    collapsed_names = {name for name, mask in boundary.items() if mask.any() and name in scales}
    limit = None
    if collapsed_names:
        limit = _limit_map(model, data, collapsed_names, scales_of, seed, restarts)
        if limit is not None:
            map_params.update({k: np.asarray(v, dtype=float) for k, v in limit.items()})

    rows, labels = [], []
    for node in bound.nodes:
        name = node.name
        d = draws[name]
        mode = np.asarray(map_params[name], dtype=float).reshape(shapes[name])
        mode_jac = np.asarray(jac_fit.params[name], dtype=float).reshape(shapes[name])
        mean = d.mean(axis=0)
        sd = d.std(axis=0, ddof=1) if d.shape[0] > 1 else np.full(mean.shape, np.nan)
        q05, q95 = np.quantile(d, [0.05, 0.95], axis=0)
        median = medians[name]
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = (mode - mean) / sd
        on_boundary = boundary[name]
        is_scale = np.full(mode.shape, name in scales)
        collapsed = is_scale & ((mode < COLLAPSE_RATIO * median) | (on_boundary & (mode < q05)))
        outside = (mode < q05) | (mode > q95)
        columns = (mode, mode_jac, mean, median, sd, distance, q05, q95, is_scale,
                   on_boundary, collapsed, outside, np.full(mode.shape, node.locscale))
        labels.extend(element_labels(name, tuple(shapes[name]), model.dims.get(name),
                                     model.coords))
        for values in zip(*(np.ravel(c) for c in columns)):
            rows.append(values)
    report = pd.DataFrame(rows, index=pd.Index(labels, name="parameter"), columns=_COLUMNS)
    for column in ("group_scale", "boundary", "collapsed", "outside_90", "group_effect"):
        report[column] = report[column].astype(bool)
    report.attrs.update(fit=fit, map=map_fit, mode_jacobian=jac_fit, map_params=map_params,
                        map_is_limit=limit is not None,
                        group_scales=sorted(scales),
                        boundary_reason=map_fit.info.get("boundary_reason", ""))
    return report
