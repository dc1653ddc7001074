"""Helpers shared by the model library: default data, column checks, group codes, scales.

Every model function in :mod:`hbm.models` takes a :class:`pandas.DataFrame` (or ``None``
for the bundled data set), checks the columns it needs, turns grouping columns into
integer codes ``0..J-1`` with their labels as ArviZ coords, and sets weakly informative
priors from the scale of the data (in the spirit of rstanarm's autoscaled defaults: Gabry
and Goodrich, "Prior distributions for rstanarm models", rstanarm vignette).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from hbm import datasets, dist
from hbm.errors import ConfigurationError, DataError


def frame(df, dataset: str, columns) -> pd.DataFrame:
    """The bundled ``dataset`` when ``df`` is None, else ``df``; checks ``columns``.

    Raises
    ------
    DataError
        If ``df`` is not a DataFrame, a column is missing, or a needed column has
        missing values.
    """
    if df is None:
        df = datasets.load(dataset)
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"data frame lacks column(s) {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise DataError("data frame has no rows")
    na = [c for c in columns if df[c].isna().any()]
    if na:
        raise DataError(f"column(s) {na} have missing values; drop or impute them first")
    return df


def group_codes(column: pd.Series) -> tuple[np.ndarray, list]:
    """Integer codes ``0..J-1`` (sorted labels) and the labels, for coords.

    Labels are returned as Python ints or strings so that they serialize cleanly.
    """
    codes, labels = pd.factorize(column, sort=True)
    labels = [label.item() if hasattr(label, "item") else label for label in labels]
    return codes.astype(np.int32), labels


def numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    """A column as a float64 array; non-numeric columns raise :class:`DataError`."""
    try:
        values = pd.to_numeric(df[column], errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"column {column!r} is not numeric") from e
    if not np.all(np.isfinite(values)):
        raise DataError(f"column {column!r} has non-finite values")
    return values


def integer(df: pd.DataFrame, column: str, lower: int = 0) -> np.ndarray:
    """A column of whole numbers ``>= lower`` as an int array (counts, trials)."""
    values = numeric(df, column)
    if np.any(values != np.round(values)) or np.any(values < lower):
        raise DataError(f"column {column!r} must hold whole numbers >= {lower}")
    return values.astype(np.int64)


def scale(values) -> float:
    """The sample standard deviation, or 1.0 when it is zero (constant column)."""
    values = np.asarray(values, dtype=np.float64)
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return sd if sd > 0 else 1.0


def positive_float(name: str, value) -> float:
    """Checks a positive scalar option (a prior scale, a concentration)."""
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}") from e
    if not np.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    return value


def build(prior, likelihood, *, dims=None, coords=None, deterministic=None):
    """``hbm.Model`` from the parts, passing the optional ones only when given.

    ``dims`` entries for names the model does not have (the variable of another
    parameterization) are dropped.
    """
    from hbm.model import Model

    kwargs = {}
    names = set(prior) | set(deterministic or {})
    dims = {name: value for name, value in (dims or {}).items() if name in names}
    if dims:
        kwargs["dims"] = dims
    if coords:
        kwargs["coords"] = coords
    if deterministic:
        kwargs["deterministic"] = deterministic
    return Model(prior=prior, likelihood=likelihood, **kwargs)


def population_prior(design: np.ndarray, intercept_loc: float, outcome_scale: float):
    """Weakly informative ``Normal`` prior on ``beta`` for a design with an intercept.

    The intercept gets ``Normal(intercept_loc, 2.5 * outcome_scale)``; the coefficient of
    column ``k`` gets ``Normal(0, 2.5 * outcome_scale / sd(x_k))``, as rstanarm's
    autoscaled defaults (``outcome_scale`` is ``sd(y)`` for a Gaussian outcome, 1 on a
    link scale).
    """
    design = np.asarray(design, dtype=np.float64)
    loc = np.zeros(design.shape[1])
    loc[0] = intercept_loc
    scales = [2.5 * outcome_scale]
    scales += [2.5 * outcome_scale / scale(design[:, k]) for k in range(1, design.shape[1])]
    return dist.Normal(loc, np.asarray(scales))


def lkj_scale_tril(sigma, cholesky_corr):
    """``diag(sigma) @ L``: the Cholesky factor of the covariance of correlated effects."""
    return sigma[..., :, None] * cholesky_corr


def correlated_effects(prior, group, n_group, n_term):
    """Adds correlated effects of ``group`` to ``prior``; returns ``fn(p, d) -> effects``.

    Needs ``sigma_<group>`` (n_term,) and ``L_<group>`` (n_term, n_term) in ``prior``;
    adds the centered node ``<group>_effect ~ MultivariateNormal(0, scale_tril=diag(sigma)
    L)``, one row per group, as a textbook writes it. The model layer samples it centered,
    non-centered or partially centered (``reparam=``, :mod:`hbm.reparam`).
    """
    sigma_name, chol_name = f"sigma_{group}", f"L_{group}"
    effect_name = f"{group}_effect"
    prior[effect_name] = lambda p, d: dist.MultivariateNormal(
        np.zeros(n_term), scale_tril=lkj_scale_tril(p[sigma_name], p[chol_name])
    ).expand((n_group,))
    return lambda p, d: p[effect_name]


def deprecated_centered(function: str, centered) -> None:
    """Warn that ``centered=`` of a library model no longer changes the model.

    The correlated-effects models are written centered (a MultivariateNormal node) and
    the model layer chooses how to sample them (``hbm.sample(..., reparam=...)``), so the
    hand-written non-centered variant (``<group>_z``) is gone.
    """
    if centered is None:
        return
    warnings.warn(
        f"{function}(centered=...) is deprecated and ignored: the model is always written "
        "centered (a MultivariateNormal node) and hbm chooses its parameterization; pass "
        "reparam='centered', 'noncentered' or 'auto' (the default) to hbm.sample instead",
        DeprecationWarning, stacklevel=3)
