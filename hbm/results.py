"""The result of every inference method: :class:`Fit`.

NUTS, ADVI, MAP and Laplace all return a ``Fit``: constrained posterior draws shaped
``(chain, draw, *param_shape)``, sampler statistics under ArviZ's names, and free-form
``info`` (reparameterization choices, warmup step sizes, ELBO history, k-hat, timings...).
``to_arviz()`` converts to the installed ArviZ's container (``InferenceData`` for ArviZ
0.x, ``xarray.DataTree`` for ArviZ >= 1; Kumar, Carroll, Hartikainen & Martin, 2019,
"ArviZ a unified library for exploratory analysis of Bayesian models in Python", JOSS
4(33)); ``summary()`` and ``warn()`` report on it (see :mod:`hbm.diagnostics`).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from hbm.diagnostics import (
    DEFAULT_MAX_TREE_DEPTH,
    HbmWarning,
    arviz_major_version,
    diagnose,
    load_arviz,
    quiet_arviz,
)
from hbm.errors import ConfigurationError, DataError, HbmError

__all__ = ["Fit", "METHODS", "UnknownVariableError"]

METHODS = ("nuts", "advi", "laplace", "map")
"""The inference methods a :class:`Fit` can come from."""

_DATA_GROUPS = ("observed_data",)
_PREDICTION_GROUPS = ("predictions", "predictions_constant_data")
"""Out-of-sample groups: their axes may differ from the fitted data's (ArviZ ``pred_dims``)."""


class UnknownVariableError(HbmError, KeyError):
    """A parameter name that the fit's posterior does not contain."""


class _ArvizInputs(NamedTuple):
    """What both ArviZ branches need: groups of arrays, dims, coords and attributes, and
    the dims and coords of the out-of-sample groups (``pred_dims``, ``pred_coords``)."""

    groups: dict[str, dict[str, np.ndarray]]
    dims: dict[str, list[str]]
    coords: dict[str, list]
    attrs: dict[str, Any]
    pred_dims: dict[str, list[str]]
    pred_coords: dict[str, list]


def _to_numpy_dict(values: Mapping[str, Any] | None, what: str) -> dict[str, np.ndarray]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise DataError(f"{what} must be a dict of arrays; got {type(values).__name__}.")
    return {str(name): np.asarray(array) for name, array in values.items()}


def _check_leading_shape(
    arrays: dict[str, np.ndarray], expected: tuple[int, int], what: str
) -> None:
    for name, array in arrays.items():
        if array.ndim < 2 or array.shape[:2] != expected:
            raise DataError(
                f"{what}[{name!r}] has shape {array.shape}; expected leading "
                f"(chain, draw) = {expected}."
            )


class Fit:
    """Posterior draws and diagnostics from NUTS, ADVI, MAP or Laplace.

    Parameters
    ----------
    posterior : dict of str to array_like
        Constrained draws, each shaped ``(chain, draw, *param_shape)``.
    sample_stats : dict of str to array_like, optional
        Per-draw statistics with ArviZ names, each ``(chain, draw)``: ``diverging``,
        ``tree_depth``, ``n_steps``, ``step_size``, ``energy``, ``lp``,
        ``acceptance_rate``.
    method : {"nuts", "advi", "laplace", "map"}
        The inference method that produced the draws.
    model, data : optional
        The :class:`hbm.Model` and its data, kept for prediction.
    dims : dict of str to tuple of str, optional
        Names of the parameter (or observation) axes after ``(chain, draw)``; a prefix
        of the axes may be named, the rest get ArviZ's default names.
    coords : dict of str to list, optional
        Labels along named dims.
    log_likelihood : dict of str to array_like, optional
        Pointwise log-likelihood, each ``(chain, draw, *obs_shape)``.
    observed_data : dict of str to array_like, optional
        The observed data, without sample dims.
    info : dict, optional
        Free-form details of the run (reparameterization, warmup step sizes, mass
        matrices, ELBO history, k-hat, ``max_tree_depth``, ``target_accept``, times,
        ``partial``, ``fallback_reason``...).
    warmup_sample_stats : dict of str to array_like, optional
        Sampler statistics during warmup, each ``(chain, warmup_draw)``.
    fallback_reason : str, optional
        Why ``hbm.fit(method="auto")`` fell back from NUTS; defaults to
        ``info["fallback_reason"]``.
    partial : bool, optional
        Whether the run was interrupted before all draws were taken; defaults to
        ``info["partial"]``.

    Raises
    ------
    ConfigurationError
        For an unknown ``method``.
    DataError
        For arrays of inconsistent shape, dims longer than the axes they name, or
        coords whose length does not match their axis.
    """

    def __init__(
        self,
        posterior: Mapping[str, Any],
        sample_stats: Mapping[str, Any] | None = None,
        *,
        method: str,
        model: Any = None,
        data: Any = None,
        dims: Mapping[str, tuple[str, ...]] | None = None,
        coords: Mapping[str, Any] | None = None,
        log_likelihood: Mapping[str, Any] | None = None,
        observed_data: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
        warmup_sample_stats: Mapping[str, Any] | None = None,
        fallback_reason: str | None = None,
        partial: bool | None = None,
    ):
        if method not in METHODS:
            raise ConfigurationError(f"Unknown method {method!r}; expected one of {METHODS}.")
        self.method = method
        self.posterior = _to_numpy_dict(posterior, "posterior")
        if not self.posterior:
            raise DataError("posterior must contain at least one parameter.")
        first = next(iter(self.posterior.values()))
        if first.ndim < 2:
            raise DataError(
                f"posterior arrays must have shape (chain, draw, ...); got {first.shape}."
            )
        leading = (int(first.shape[0]), int(first.shape[1]))
        _check_leading_shape(self.posterior, leading, "posterior")
        self.num_chains, self.num_draws = leading

        self.sample_stats = _to_numpy_dict(sample_stats, "sample_stats")
        _check_leading_shape(self.sample_stats, leading, "sample_stats")
        self.log_likelihood = _to_numpy_dict(log_likelihood, "log_likelihood")
        _check_leading_shape(self.log_likelihood, leading, "log_likelihood")
        self.observed_data = _to_numpy_dict(observed_data, "observed_data")
        self.warmup_sample_stats = _to_numpy_dict(warmup_sample_stats, "warmup_sample_stats")
        for name, array in self.warmup_sample_stats.items():
            if array.ndim < 2 or array.shape[0] != self.num_chains:
                raise DataError(
                    f"warmup_sample_stats[{name!r}] has shape {array.shape}; expected "
                    f"(chain, warmup_draw) with {self.num_chains} chains."
                )

        self.model = model
        self.data = data
        self.dims = {str(k): tuple(v) for k, v in (dims or {}).items()}
        self.coords = {str(k): list(np.asarray(v).tolist()) for k, v in (coords or {}).items()}
        self._check_dims_and_coords()

        self.info = dict(info or {})
        self.fallback_reason = (
            fallback_reason if fallback_reason is not None else self.info.get("fallback_reason")
        )
        self.partial = bool(partial if partial is not None else self.info.get("partial", False))

    def _check_dims_and_coords(self) -> None:
        sized = [(self.posterior, 2), (self.log_likelihood, 2), (self.observed_data, 0)]
        for name, names in self.dims.items():
            for arrays, offset in sized:
                if name not in arrays:
                    continue
                shape = arrays[name].shape[offset:]
                if len(names) > len(shape):
                    raise DataError(
                        f"dims[{name!r}] = {names} names {len(names)} axes but "
                        f"{name!r} has shape {shape}."
                    )
                for dim, size in zip(names, shape):
                    if dim in self.coords and len(self.coords[dim]) != size:
                        raise DataError(
                            f"coords[{dim!r}] has {len(self.coords[dim])} labels but "
                            f"axis {dim!r} of {name!r} has length {size}."
                        )

    # ----------------------------------------------------------------- access
    @property
    def var_names(self) -> list[str]:
        """Names of the parameters in the posterior."""
        return list(self.posterior)

    def __getitem__(self, name: str) -> np.ndarray:
        """Draws of one parameter, shape ``(chain, draw, *param_shape)``."""
        try:
            return self.posterior[name]
        except KeyError:
            raise UnknownVariableError(
                f"{name!r} is not in the posterior; available: {self.var_names}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.posterior

    def __repr__(self) -> str:
        params = ", ".join(
            name if array.ndim == 2 else f"{name}{tuple(array.shape[2:])}"
            for name, array in self.posterior.items()
        )
        extras = ""
        if "diverging" in self.sample_stats:
            extras += f", divergences={int(np.sum(self.sample_stats['diverging']))}"
        if self.fallback_reason is not None:
            extras += f", fallback_reason={self.fallback_reason!r}"
        if self.partial:
            extras += ", partial=True"
        return (
            f"Fit(method={self.method!r}, chains={self.num_chains}, "
            f"draws={self.num_draws}, params=[{params}]{extras})"
        )

    # ------------------------------------------------------------------ ArviZ
    def _arviz_inputs(self, posterior_predictive: Mapping[str, Any] | None = None) -> _ArvizInputs:
        """Groups, dims, coords and attributes for ArviZ; ``posterior_predictive``, when
        given, replaces the draws stored by :meth:`predict`."""
        if posterior_predictive is None:
            posterior_predictive = getattr(self, "posterior_predictive", None)
        groups = {
            "posterior": self.posterior,
            "sample_stats": self.sample_stats,
            "log_likelihood": self.log_likelihood,
            "observed_data": self.observed_data,
            "warmup_sample_stats": self.warmup_sample_stats,
            "posterior_predictive": posterior_predictive,
            "predictions": getattr(self, "predictions", None),
            "predictions_constant_data": getattr(self, "predictions_constant_data", None),
        }
        groups = {group: dict(arrays) for group, arrays in groups.items() if arrays}
        dims = _complete_dims(groups, {name: list(names) for name, names in self.dims.items()})
        coords = {dim: list(values) for dim, values in self.coords.items()}
        pred_dims, pred_coords = _prediction_dims(groups, dims, coords)
        return _ArvizInputs(groups, dims, coords, self._attrs(), pred_dims, pred_coords)

    def _attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"inference_library": "hbm", "hbm_method": self.method}
        attrs["hbm_partial"] = int(self.partial)
        if self.fallback_reason is not None:
            attrs["hbm_fallback_reason"] = str(self.fallback_reason)
        for key, value in self.info.items():
            simple = _simple_attr(value)
            if simple is not None:
                attrs.setdefault(f"hbm_{key}", simple)
        return attrs

    def to_arviz(self, *, posterior_predictive: bool = False, seed: int = 0):
        """Convert to the installed ArviZ's container.

        Parameters
        ----------
        posterior_predictive : bool, default False
            Draw every observed data key from the likelihood at each posterior draw
            (as ``fit.predict(seed=seed)`` does, without storing the draws on the fit)
            and put them in the ``posterior_predictive`` group, shaped
            ``(chain, draw, *obs_shape)`` with the observed data's dims and coords, so
            that ``arviz.plot_ppc`` (ArviZ 0.x) or ``arviz.plot_ppc_dist`` (ArviZ >= 1)
            compares them with ``observed_data``. Needs a fit that kept its model and
            data. If False, draws stored by an earlier :meth:`predict` are included.
        seed : int, default 0
            Seed of the random key of the posterior predictive draws.

        Returns
        -------
        arviz.InferenceData or xarray.DataTree
            ``InferenceData`` for ArviZ 0.x, ``DataTree`` for ArviZ >= 1, with groups
            ``posterior``, ``sample_stats``, ``log_likelihood``, ``observed_data`` and
            ``warmup_sample_stats`` (those that are present), ``posterior_predictive``
            (in-sample) and ``predictions`` / ``predictions_constant_data``
            (out-of-sample, from ``fit.predict(new_data)``) when present, the fit's dims
            and coords, and simple ``info`` entries as ``hbm_<key>`` attributes (dicts
            of simple values as JSON strings, booleans as 0/1). The out-of-sample
            groups keep the dims of their variables, and the coords of a dim only where
            its length is unchanged (else integer labels).
        """
        arviz = load_arviz()
        replicated = None
        if posterior_predictive:
            from hbm.prediction import posterior_predictive_draws

            replicated = posterior_predictive_draws(self, None, "sample", None, seed)[0]
        inputs = self._arviz_inputs(replicated)
        save_warmup = "warmup_sample_stats" in inputs.groups
        predictions = {g: a for g, a in inputs.groups.items() if g in _PREDICTION_GROUPS}
        if arviz_major_version(arviz) >= 1:
            group_attrs = {"/": dict(inputs.attrs)}
            group_attrs.update({group: dict(inputs.attrs) for group in inputs.groups})
            extra = {}
            if predictions:
                extra = {"pred_dims": inputs.pred_dims, "pred_coords": inputs.pred_coords}
            return arviz.from_dict(
                inputs.groups,
                dims=inputs.dims,
                coords=inputs.coords,
                save_warmup=save_warmup,
                attrs=group_attrs,
                **extra,
            )
        # ArviZ 0.x's from_dict gives the prediction groups the main coords whatever
        # pred_coords says, so they are converted on their own and added.
        main = {g: a for g, a in inputs.groups.items() if g not in _PREDICTION_GROUPS}
        idata = arviz.from_dict(
            **main,
            dims=inputs.dims,
            coords=inputs.coords,
            save_warmup=save_warmup,
            attrs=dict(inputs.attrs),
            posterior_attrs=dict(inputs.attrs),
            sample_stats_attrs=dict(inputs.attrs),
            sample_stats_warmup_attrs=dict(inputs.attrs),
            log_likelihood_attrs=dict(inputs.attrs),
            posterior_predictive_attrs=dict(inputs.attrs),
        )
        if predictions:
            idata.extend(
                arviz.from_dict(
                    **predictions,
                    dims=inputs.pred_dims,
                    coords=inputs.pred_coords,
                    attrs=dict(inputs.attrs),
                    predictions_attrs=dict(inputs.attrs),
                )
            )
        return idata

    def summary(self, var_names=None, hdi_prob: float = 0.94, *, round_to=None):
        """ArviZ summary: mean, sd, HDI, MCSE, bulk and tail ESS, R-hat.

        Parameters
        ----------
        var_names : str or list of str, optional
            Parameters to include; all by default.
        hdi_prob : float, default 0.94
            Probability mass of the highest-density interval.
        round_to : int, optional
            Decimals to round to; unrounded by default.

        Returns
        -------
        pandas.DataFrame
            One row per scalar element (``"mu"``, ``"theta[0]"``, or with coords
            ``"theta[A]"``). R-hat is NaN for single-chain fits.
        """
        if not 0.0 < hdi_prob < 1.0:
            raise ConfigurationError(f"hdi_prob must lie in (0, 1); got {hdi_prob}.")
        if isinstance(var_names, str):
            var_names = [var_names]
        if var_names is not None:
            for name in var_names:
                self[name]
        arviz = load_arviz()
        data = self.to_arviz()
        rounding = "none" if round_to is None else round_to
        with contextlib.ExitStack() as stack:
            if self.num_chains < 2:
                # Single-chain R-hat is undefined: ArviZ returns NaN and logs a warning.
                stack.enter_context(quiet_arviz(arviz))
            if arviz_major_version(arviz) >= 1:
                return arviz.summary(
                    data, var_names=var_names, ci_prob=hdi_prob, ci_kind="hdi", round_to=rounding
                )
            return arviz.summary(data, var_names=var_names, hdi_prob=hdi_prob, round_to=rounding)

    # ------------------------------------------------------------ diagnostics
    def diagnostics(self) -> list[str]:
        """The warnings :func:`hbm.diagnostics.diagnose` finds for this fit."""
        return diagnose(self)

    def warn(self, *, stacklevel: int = 2) -> list[str]:
        """Emit each diagnostic as an :class:`hbm.diagnostics.HbmWarning`; return them.

        ``stacklevel`` is passed to :func:`warnings.warn` (a driver calling this on the
        user's behalf can pass 3 so the warning points at the user's call).
        """
        messages = diagnose(self)
        for message in messages:
            warnings.warn(message, HbmWarning, stacklevel=stacklevel)
        return messages

    @property
    def max_tree_depth(self) -> int:
        """The NUTS tree-depth limit recorded in ``info`` (default 10)."""
        return int(self.info.get("max_tree_depth", DEFAULT_MAX_TREE_DEPTH))

    # ------------------------------------------------------------- prediction
    def predict(
        self, data=None, *, new_groups: str = "sample", draws=None, seed: int = 0,
        arviz: bool = False,
    ):
        """Posterior predictive draws, also for new groups: see :func:`hbm.predict`.

        Returns a dict of arrays ``(chain, draw, *obs_shape)``, or with ``arviz=True``
        the fit's ArviZ conversion holding them as ``posterior_predictive``
        (``data=None``) or ``predictions`` (new data).
        """
        from hbm.prediction import predict

        return predict(self, data, new_groups=new_groups, draws=draws, seed=seed, arviz=arviz)


_UNSAMPLED_GROUPS = ("observed_data", "predictions_constant_data")


def _complete_dims(groups: dict, dims: dict[str, list[str]]) -> dict[str, list[str]]:
    """Name the axes that ``dims`` leaves unnamed after a named prefix ``<var>_dim_<axis>``
    (ArviZ 0.x's default), so that both ArviZ versions give the same dims (1.x would count
    only the unnamed axes)."""
    out = {}
    for name, names in dims.items():
        ndim = max((np.ndim(arrays[name]) - (0 if group in _UNSAMPLED_GROUPS else 2)
                    for group, arrays in groups.items() if name in arrays), default=0)
        out[name] = names + [f"{name}_dim_{axis}" for axis in range(len(names), ndim)]
    return out


def _prediction_dims(
    groups: dict[str, dict[str, np.ndarray]],
    dims: dict[str, list[str]],
    coords: dict[str, list],
) -> tuple[dict[str, list[str]], dict[str, list]]:
    """Dims and coords for the out-of-sample groups.

    A variable keeps its dims (cut to its number of axes); a dim keeps its coords only
    if every axis it names in these groups has the coords' length, else ArviZ labels it
    with integers (new data usually has another number of observations).
    """
    shapes = {}
    for group in _PREDICTION_GROUPS:
        sample_ndim = 2 if group == "predictions" else 0
        for name, array in groups.get(group, {}).items():
            shapes[name] = np.shape(array)[sample_ndim:]
    pred_dims = {
        name: list(dims[name][: len(shape)]) for name, shape in shapes.items() if name in dims
    }
    sizes: dict[str, set[int]] = {}
    for name, names in pred_dims.items():
        for dim, size in zip(names, shapes[name]):
            sizes.setdefault(dim, set()).add(int(size))
    pred_coords = {
        dim: list(coords[dim])
        for dim, found in sizes.items()
        if dim in coords and found == {len(coords[dim])}
    }
    return pred_dims, pred_coords


def _simple_scalar(value: Any) -> Any:
    """A str/int/float for a simple scalar (booleans as 0/1), else None."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    return None


def _simple_attr(value: Any) -> Any:
    """Turn an ``info`` value into a netCDF-friendly attribute, or None to skip it."""
    scalar = _simple_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (list, tuple)):
        items = [_simple_scalar(item) for item in value]
        if items and all(item is not None for item in items):
            kinds = {isinstance(item, str) for item in items}
            if len(kinds) == 1:
                return items
        return None
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            simple = None if isinstance(item, Mapping) else _simple_attr(item)
            if simple is None:
                return None
            converted[str(key)] = simple
        return json.dumps(converted, sort_keys=True)
    return None
