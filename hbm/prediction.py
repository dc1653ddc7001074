"""Prior and posterior predictive draws, for the fitted groups and for new ones.

Every hbm model is a generative program: each prior node and each likelihood entry is a
distribution. :func:`prior_predictive` draws parameters and data from the prior;
:func:`predict` draws data from the posterior predictive distribution

    p(y_new | y) = ∫ p(y_new | theta, x_new) p(theta | y) d theta,

one replicated data set per posterior draw (Gelman, Carlin, Stern, Dunson, Vehtari and
Rubin 2013, *Bayesian Data Analysis*, 3rd ed., sec. 6.3; for new groups of a multilevel
model, Gelman and Hill 2007, *Data Analysis Using Regression and Multilevel/Hierarchical
Models*, sec. 12.8 and ch. 16).

Groups and how new data name them
---------------------------------
hbm's models index group effects by integer codes held in the data, e.g.
``p["county_effect"][d["county"]]``, and carry the group labels in ``model.coords``
(``coords={"county": [...labels...]}``) with ``dims={"county_effect": ("county",)}``.
The convention is: **a data key whose name is a dim with coords is a grouping**, and the
prior nodes whose ``dims`` mention that dim hold one entry per group along that axis.

In new data a grouping key holds, for every observation, either

- integer codes ``0..J-1`` (the fitted groups, in the order of the coords); a code
  ``>= J`` names a *new* group (distinct codes are distinct new groups), or
- labels (strings, compared with ``str`` of the coords labels), e.g.
  ``{"county": ["AITKIN", "NEWCOUNTY"], "floor": [0.0, 1.0]}``; a label not among the
  coords is a new group. Integer arrays are always read as codes: to name groups whose
  labels are integers, pass the labels as strings (``["308", "372"]``).

``new_groups`` says what a new group's effect is, per posterior draw:

- ``"sample"``: a fresh draw from the fitted hierarchy. The prior node's function is
  evaluated with that draw's parameters (and the fit's data), which gives the
  distribution of one group's entry (for example ``Normal(0, sigma_county)``, or a
  ``MultivariateNormal`` for correlated intercepts and slopes, or the standard normal of
  a hand-written non-centered ``theta_z`` that a deterministic maps to the effects), and
  one entry
  per new group is drawn from it. Observations of the same new group share that entry.
- ``"fitted_gaussian"``: a draw from the Gaussian with the mean and covariance of that
  draw's fitted groups' entries: the spread the fitted groups actually show, whatever
  the node's family (a heavy-tailed or skewed population, a hand-written non-centered
  node); all entries of a group (its intercept and slope, ...) are drawn jointly. Needs
  at least two fitted groups.
- ``"mean"``: the population location of that distribution (its ``loc`` for the
  location-scale families, else its mean): the prediction for an "average" new group.
- ``"error"``: raise :class:`hbm.errors.DataError` naming the unknown labels (or codes).

In brms's terms (``sample_new_levels``), ``"sample"`` is ``"gaussian"`` (the normal
implied by the group-level sds and correlations, per draw) and ``"error"`` is
``allow_new_levels = FALSE``; brms's ``"uncertainty"`` (an existing level's effects at
random) is not offered.

The parameter arrays are extended with one entry per new group along the group axis,
the codes are remapped to ``J, J+1, ...``, and the likelihood is evaluated on the
extended parameters and sampled. A new group's entry is drawn from the distribution the
node gives the fitted groups, so every fitted group must have the same distribution
along that axis (exchangeable groups): a node whose distribution differs between groups
(e.g. a group-level predictor inside the prior's location) is refused with a
:class:`hbm.errors.ModelError`; put such predictors in the likelihood instead and pass
their values for the new groups in the data.

Data keys the new data do not give are taken from the fit's data. When new groups are
present, a fit data key whose leading axis has one entry per fitted group (a group-level
covariate such as ``log_uranium``) must be passed explicitly, extended to the new groups,
because indexing it with a new code would silently read the wrong entry.

ArviZ
-----
``fit.to_arviz(posterior_predictive=True, seed=...)`` adds fresh in-sample draws as the
``posterior_predictive`` group (laid out like ``observed_data``, for ``plot_ppc``), and
``predict(..., arviz=True)`` returns the fit's ArviZ conversion with the new draws in
``posterior_predictive`` (``data=None``) or ``predictions`` and
``predictions_constant_data`` (new data), ArviZ's names for in- and out-of-sample draws.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hbm.errors import ConfigurationError, DataError, ModelError
from hbm.model import _as_data_dict, _convert_leaf, _Data, _node_fn, _Params

__all__ = ["prior_predictive", "predict", "posterior_predictive_draws", "NEW_GROUP_MODES"]

NEW_GROUP_MODES = ("sample", "fitted_gaussian", "mean", "error")
"""How :func:`predict` treats groups that were not in the fitted data."""

_BATCH = 256  # posterior draws per vectorized batch


# ------------------------------------------------------------------ prior predictive
def prior_predictive(model, data=None, draws: int = 1000, seed: int = 0) -> dict:
    """Draws of the parameters and of every likelihood key from the prior.

    Parameters
    ----------
    model : hbm.Model
        A model written as a prior DAG and a likelihood (not ``from_logdensity``).
    data : dict, optional
        The data the model reads (covariates, group codes; observed keys set the shape).
    draws : int, default 1000
        Number of prior predictive draws.
    seed : int, default 0
        Seed of the random key.

    Returns
    -------
    dict
        Name -> array of shape ``(draws, ...)`` for every parameter, deterministic and
        likelihood key.
    """
    draws = _positive_int("draws", draws)
    if not model.can_simulate:
        raise ModelError("a model built with Model.from_logdensity cannot simulate; write "
                         "it as a prior DAG and likelihood")
    converted = {}
    for key, value in _as_data_dict(data).items():
        if not isinstance(key, str):
            raise DataError(f"data keys must be strings, got {key!r}")
        converted[key] = _convert_leaf(key, value)
    keys = jax.random.split(jax.random.PRNGKey(int(seed)), draws)
    simulate = jax.jit(jax.vmap(lambda key, d: model.simulate(key, d), in_axes=(0, None)))
    out = simulate(keys, converted)
    return {name: np.asarray(value) for name, value in out.items()}


# ------------------------------------------------------------------ group handling
def _grouping_dims(model, fit_data: dict) -> list[str]:
    """Dims with coords whose name is also an integer data key of the fit."""
    dims = []
    for dim in model.coords:
        value = fit_data.get(dim)
        if value is not None and jnp.issubdtype(jnp.asarray(value).dtype, jnp.integer):
            dims.append(dim)
    return dims


def _encode(dim: str, values, labels: list) -> tuple[np.ndarray, list]:
    """Codes for one grouping key and the names of its new groups (in code order).

    Known groups keep their codes ``0..J-1``; new groups get ``J, J+1, ...`` in order of
    first appearance (labels) or of increasing code (codes).
    """
    n_fitted = len(labels)
    arr = np.asarray(values)
    if arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and arr.size
                                  and np.all(arr == np.round(arr))):
        codes = arr.astype(np.int64)
        if np.any(codes < 0):
            raise DataError(f"group codes in data key '{dim}' must be >= 0, got "
                            f"{sorted(set(codes[codes < 0].tolist()))[:5]}")
        unseen = sorted(set(codes[codes >= n_fitted].tolist()))
        remap = {code: n_fitted + k for k, code in enumerate(unseen)}
        out = np.array([remap.get(c, c) for c in codes.ravel().tolist()],
                       dtype=np.int32).reshape(codes.shape)
        return out, [f"code {c}" for c in unseen]
    if arr.dtype.kind in "OUS":
        index = {str(label): j for j, label in enumerate(labels)}
        new: dict[str, int] = {}
        flat = []
        for value in arr.ravel().tolist():
            text = str(value)
            if text not in index:
                new.setdefault(text, n_fitted + len(new))
                flat.append(new[text])
            else:
                flat.append(index[text])
        return np.asarray(flat, dtype=np.int32).reshape(arr.shape), list(new)
    raise DataError(f"data key '{dim}' names groups and must hold integer codes or labels, "
                    f"got dtype {arr.dtype}")


def _group_axis(model, name: str, new_dims: dict) -> tuple[str, int] | None:
    """The (dim, axis) along which prior node ``name`` gains entries, if any."""
    names = tuple(model.dims.get(name, ()))
    hits = [(dim, names.index(dim)) for dim in new_dims if dim in names]
    if len(hits) > 1:
        raise ModelError(f"prior node '{name}' has several grouping dims with new groups "
                         f"{[h[0] for h in hits]}; new levels of crossed dims in one node "
                         "are not supported")
    return hits[0] if hits else None


def _rows_like_first(d, axis: int, n_new: int):
    """The distribution ``d`` restricted to ``n_new`` copies of its entry 0 along ``axis``
    (a batch axis): the distribution of one more exchangeable group."""
    batch = d.batch_shape
    kwargs = {}
    for pname, value in d.params().items():
        if value is None:
            kwargs[pname] = None
            continue
        value = jnp.asarray(value)
        nd = d.param_event_ndims.get(pname, 0)
        tail = tuple(value.shape[value.ndim - nd:]) if nd else ()
        full = jnp.broadcast_to(value, batch + tail)
        kwargs[pname] = jnp.take(full, jnp.zeros(n_new, dtype=jnp.int32), axis=axis)
    return type(d)(**kwargs)


def _population_location(d):
    std = d.standardized()
    if std is not None and std.link == "identity":
        return jnp.broadcast_to(std.loc, d.shape)
    return jnp.broadcast_to(d.mean, d.shape)


def _check_exchangeable(d, name: str, axis: int):
    """Every entry along ``axis`` must have the same distribution (eager check)."""
    batch = d.batch_shape
    for pname, value in d.params().items():
        if value is None:
            continue
        value = jnp.asarray(value)
        nd = d.param_event_ndims.get(pname, 0)
        tail = tuple(value.shape[value.ndim - nd:]) if nd else ()
        full = np.asarray(jnp.broadcast_to(value, batch + tail))
        first = np.take(full, [0], axis=axis)
        if not np.allclose(full, first, rtol=1e-12, atol=0.0, equal_nan=True):
            raise ModelError(
                f"prior node '{name}' gives its groups different distributions (parameter "
                f"'{pname}' varies along its group axis), so a new group's distribution is "
                "not defined; move group-level predictors into the likelihood and pass "
                "their values for the new groups in the data"
            )


# ------------------------------------------------------------------ prediction
def _draw_indices(num_draws: int, draws) -> np.ndarray:
    if draws is None:
        return np.arange(num_draws)
    draws = _positive_int("draws", draws)
    if draws > num_draws:
        raise ConfigurationError(f"draws={draws} exceeds the fit's {num_draws} draws per chain")
    return np.unique(np.round(np.linspace(0, num_draws - 1, draws)).astype(int))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _prepare_data(model, fit_data: dict, data, new_groups: str, observed=()):
    """Converted new data with codes, and {dim: (n_fitted, [new group names])}.

    Keys missing from ``data`` are filled from ``fit_data``, except the ``observed``
    keys (their shape would be the fitted data's, not the new data's)."""
    dims = _grouping_dims(model, fit_data)
    raw = _as_data_dict(data)
    converted: dict[str, Any] = {}
    groups: dict[str, tuple[int, list]] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise DataError(f"data keys must be strings, got {key!r}")
        if key in dims:
            codes, new = _encode(key, value, list(model.coords[key]))
            converted[key] = jnp.asarray(codes)
            if new:
                groups[key] = (len(model.coords[key]), new)
        else:
            converted[key] = _convert_leaf(key, value)
    if groups and new_groups == "error":
        named = "; ".join(f"'{dim}': {new}" for dim, (_, new) in groups.items())
        raise DataError(f"the new data name groups that were not fitted ({named}); pass "
                        "new_groups='sample', 'fitted_gaussian' or 'mean' to predict "
                        "for new groups")
    for key, value in fit_data.items():
        if key in converted or key in observed:
            continue
        shape = tuple(jnp.shape(value))
        for dim, (n_fitted, new) in groups.items():
            if shape and shape[0] == n_fitted:
                raise DataError(
                    f"data key '{key}' has one entry per fitted '{dim}' group ({n_fitted}) "
                    f"and the new data name {len(new)} new '{dim}' group(s); pass '{key}' "
                    f"with {n_fitted + len(new)} entries (fitted groups first, then the new "
                    "ones in the order of their codes)"
                )
        converted[key] = value
    return converted, groups


def _group_nodes(model, fit_data: dict, posterior: dict, groups: dict) -> dict:
    """{node: (axis, n_new)} for the prior nodes that gain entries; checked eagerly on
    the first posterior draw."""
    nodes = {}
    if not groups:
        return nodes
    first = _Params({k: jnp.asarray(posterior[k][0]) for k in model.prior})
    for name, node in model.prior.items():
        hit = _group_axis(model, name, groups)
        if hit is None:
            continue
        dim, axis = hit
        d = _node_fn(node)(first, _Data(fit_data, reader=f"prior node '{name}'"))
        n_fitted = len(model.coords[dim])
        if axis >= len(d.batch_shape) or d.batch_shape[axis] != n_fitted:
            raise ModelError(
                f"prior node '{name}' has dims {tuple(model.dims[name])} but its "
                f"distribution has batch shape {d.batch_shape}; axis {axis} must be a batch "
                f"axis with one entry per '{dim}' group ({n_fitted})"
            )
        _check_exchangeable(d, name, axis)
        nodes[name] = (axis, len(groups[dim][1]))
    return nodes


def _sample_likelihood(model, p, data, key) -> dict:
    lik = model.likelihood(_Params(p), _Data(data, reader="the likelihood"))
    out = {}
    for obs_key, d in lik.items():
        key, sub = jax.random.split(key)
        sample_shape = ()
        if obs_key in data:
            obs_shape = tuple(jnp.shape(data[obs_key]))
            extra = len(obs_shape) - len(d.shape)
            sample_shape = obs_shape[:extra] if extra > 0 else ()
        out[obs_key] = d.sample(sub, sample_shape)
    return out


def _one_draw_fn(model, nodes, new_groups):
    """``(key, params, fit_data, data) -> {data_key: draw}`` for one posterior draw."""
    def one(key, params, fit_data, data):
        node_key, lik_key = jax.random.split(key)
        fitted = _Params(params)
        extended = dict(params)
        for i, (name, (axis, n_new)) in enumerate(nodes.items()):
            d = _node_fn(model.prior[name])(fitted, _Data(fit_data))
            rows = _rows_like_first(d, axis, n_new)
            if new_groups == "sample":
                value = rows.sample(jax.random.fold_in(node_key, i))
            elif new_groups == "fitted_gaussian":
                value = _fitted_gaussian_draw(jax.random.fold_in(node_key, i),
                                              params[name], axis, n_new)
            else:
                value = _population_location(rows)
            value = jnp.asarray(value, dtype=params[name].dtype)
            extended[name] = jnp.concatenate([params[name], value], axis=axis)
        return _sample_likelihood(model, extended, data, lik_key)
    return one


def _fitted_gaussian_draw(key, fitted, axis: int, n_new: int):
    """``n_new`` entries along ``axis`` drawn from the Gaussian with the mean and
    covariance (over ``axis``, the groups) of the fitted entries: each group's entries
    (all other axes, flattened) are one vector. The covariance's square root comes from
    its eigendecomposition, so a singular covariance (fewer groups than entries per
    group, or a constant entry) is fine."""
    values = jnp.moveaxis(jnp.asarray(fitted), axis, 0)
    groups, rest = values.shape[0], values.shape[1:]
    flat = values.reshape(groups, -1)
    mean = jnp.mean(flat, axis=0)
    centered = flat - mean
    covariance = centered.T @ centered / (groups - 1)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    root = eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))
    z = jax.random.normal(key, (n_new, flat.shape[1]), flat.dtype)
    draws = (mean + z @ root.T).reshape((n_new,) + rest)
    return jnp.moveaxis(draws, 0, axis)


def posterior_predictive_draws(fit, data, new_groups: str, draws,
                               seed) -> tuple[dict, dict, dict]:
    """Posterior predictive draws without touching the fit.

    Returns the draws ``{key: (chain, draw, *obs_shape)}``, the converted data they were
    drawn for, and ``{dim: (n_fitted, [new group names])}``. One PRNG key per posterior
    draw is split from ``seed`` and passed to the simulation; no key is kept.
    """
    if new_groups not in NEW_GROUP_MODES:
        raise ConfigurationError(f"new_groups must be one of {NEW_GROUP_MODES}, got "
                                 f"{new_groups!r}")
    model = getattr(fit, "model", None)
    if model is None:
        raise ConfigurationError("this fit does not hold its model; predict needs a fit from "
                                 "hbm.sample, hbm.advi or hbm.find_map")
    if not model.can_simulate or model.likelihood is None:
        raise ModelError("predict needs a model written as a prior DAG and a likelihood "
                         "(a Model.from_logdensity model cannot simulate)")
    fit_data = {k: jnp.asarray(v) if not isinstance(v, dict) else v
                for k, v in _as_data_dict(fit.data).items()}
    if data is None:
        new_data, groups = fit_data, {}
    else:
        observed = set(getattr(fit, "observed_data", None) or {})
        new_data, groups = _prepare_data(model, fit_data, data, new_groups, observed)

    index = _draw_indices(fit.num_draws, draws)
    chains, kept = fit.num_chains, len(index)
    posterior = {name: np.asarray(fit.posterior[name])[:, index] for name in model.prior
                 if name in fit.posterior}
    missing = [name for name in model.prior if name not in posterior]
    if missing:
        raise DataError(f"the fit's posterior lacks the parameters {missing}")
    flat = {name: jnp.asarray(v.reshape((chains * kept,) + v.shape[2:]))
            for name, v in posterior.items()}
    nodes = _group_nodes(model, fit_data, flat, groups)
    if new_groups == "fitted_gaussian":
        few = {dim: n for dim, (n, _) in groups.items() if n < 2}
        if few:
            raise DataError(f"new_groups='fitted_gaussian' needs at least two fitted groups "
                            f"to estimate their covariance; {few} has fewer")

    one = _one_draw_fn(model, nodes, new_groups)
    keys = jax.random.split(jax.random.PRNGKey(int(seed)), chains * kept)
    batch = min(_BATCH, chains * kept)

    def run(ks, ps, fd, nd):
        return jax.lax.map(lambda a: one(a[0], a[1], fd, nd), (ks, ps), batch_size=batch)

    out = jax.jit(run)(keys, flat, fit_data, new_data)
    result = {k: np.asarray(v).reshape((chains, kept) + tuple(v.shape[1:]))
              for k, v in out.items()}
    return result, new_data, groups


def predict(fit, data=None, *, new_groups: str = "sample", draws: int | None = None,
            seed: int = 0, arviz: bool = False):
    """Posterior predictive draws of every likelihood key, for fitted and new groups.

    Also available as ``hbm.predict(fit, ...)`` and ``fit.predict(...)``.

    Parameters
    ----------
    fit : hbm.Fit
        A fit that kept its model and data (every hbm driver does).
    data : dict or pandas.DataFrame, optional
        New data (covariates and grouping keys, see the module docstring); ``None``
        replicates the fitted data (the posterior predictive of the observations).
        Keys not given are taken from the fit's data. For a model built by
        :func:`hbm.formula`, a DataFrame of new rows with the formula's columns (as
        brms's ``newdata``), turned into data by ``model.formula_spec.new_data``; its
        grouping columns hold level labels, so levels not seen in fitting are new groups.
    new_groups : {"sample", "fitted_gaussian", "mean", "error"}, default "sample"
        What a group not seen in fitting gets, per posterior draw: a fresh draw from the
        fitted hierarchy (brms's ``sample_new_levels = "gaussian"``), a draw from the
        Gaussian with the mean and covariance of the fitted groups' effects, the
        population location, or a :class:`hbm.errors.DataError` (see the module
        docstring).
    draws : int, optional
        Posterior draws per chain to use, evenly spaced; all by default.
    seed : int, default 0
        Seed of the random key; the same seed gives the same draws.
    arviz : bool, default False
        Return ``fit.to_arviz()`` (after storing the draws on the fit) instead of the
        dict: ArviZ's ``InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ >= 1) with
        the draws in ``posterior_predictive`` (``data=None``, in-sample, next to
        ``observed_data``, ready for ``plot_ppc``) or in ``predictions`` with the new
        data in ``predictions_constant_data`` (new data, out-of-sample), as ArviZ names
        them. Prediction groups stored on the fit by earlier calls are kept.

    Returns
    -------
    dict or arviz.InferenceData or xarray.DataTree
        Data key -> array ``(chain, draw, *obs_shape)`` (or its ArviZ conversion with
        ``arviz=True``). Also stored on the fit as ``fit.posterior_predictive``
        (``data=None``) or ``fit.predictions`` (new data, whose arrays are kept in
        ``fit.predictions_constant_data``), and the new groups' names in
        ``fit.info["predict_new_groups"]``.
    """
    data = _formula_rows(fit, data)
    result, new_data, groups = posterior_predictive_draws(fit, data, new_groups, draws, seed)
    if data is None:
        fit.posterior_predictive = result
    else:
        fit.predictions = result
        fit.predictions_constant_data = {
            k: np.asarray(v) for k, v in new_data.items()
            if k not in result and not isinstance(v, dict) and k in _as_data_dict(data)
        }
    fit.info["predict_new_groups"] = {dim: list(new) for dim, (_, new) in groups.items()}
    if arviz:
        return fit.to_arviz()
    return result


def _formula_rows(fit, data):
    """New rows as a DataFrame -> the data dict of the fit's formula model."""
    import pandas as pd

    if not isinstance(data, pd.DataFrame):
        return data
    spec = getattr(fit.model, "formula_spec", None)
    if spec is None:
        raise DataError(
            "predict takes a DataFrame of new rows only for models built by hbm.formula; "
            "pass a dict of arrays keyed by the model's data keys "
            f"({sorted(fit.data) if isinstance(fit.data, dict) else 'see the model'})")
    return spec.new_data(data)


def _arviz_groups(fit) -> dict:
    """The prediction groups a fit holds, for its ArviZ conversion."""
    groups = {}
    for attr in ("posterior_predictive", "predictions", "predictions_constant_data"):
        value = getattr(fit, attr, None)
        if value:
            groups[attr] = dict(value)
    return groups

