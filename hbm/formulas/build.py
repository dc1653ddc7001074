"""Assembling an ordinary :class:`hbm.Model` from a parsed formula and its design.

Parameters (brms' names):

- ``b`` (dims ``("b_coef",)``): population coefficients of the *uncentered* design, one
  per column, coords the column names (``"Intercept"``, ``"Days"``, ``"h[b]"``, ...). The
  intercept is the coefficient ``b[Intercept]`` (we do not split it off as brms'
  ``Intercept`` of centered predictors).
- For each set of group-specific terms, named ``<g>`` after the grouping factor (``:``
  becomes ``_``; a factor with several sets gets ``<g>_1``, ``<g>_2``, ...): ``sd_<g>``
  (the effect sds, coords the term names), ``r_<g>`` (levels x terms, coords level names
  x term names) and, for a correlated set, ``L_<g>`` (Cholesky factor of the
  correlation, ``LKJCholesky``) with the deterministic ``cor_<g> = L L^T``.
- Family parameters ``sigma``, ``nu``, ``shape``, ``phi``.

Uncorrelated terms on a factor (``(1 | g)``, ``(x || g)``, several single terms) form one
centered node ``r_<g> ~ Normal(0, sd_<g>)`` of shape (levels, terms), which hbm's
automatic reparameterization handles. A correlated block ``(1 + x | g)`` is the centered
node ``r_<g> ~ MultivariateNormal(0, scale_tril = diag(sd_<g>) L_<g>)`` per level: the
Model API expresses such a node directly (its scale depends on earlier parameters), so
no non-centered rewrite is done here: the model layer reparameterizes both kinds of
node (centered, non-centered or partially centered, :mod:`hbm.reparam`).

The linear predictor is ``eta = X b + sum_g sum_k r_g[code_g, k] Z_g[:, k] + offset``,
from integer group codes and per-observation predictor columns (never a one-hot matrix),
summed column by column for narrow designs (:data:`UNROLLED_COLUMNS`), with a group term
on a population column folded into its coefficient (``(b_x + r_g[code_g, x]) x``).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import pandas as pd

from hbm import dist
from hbm.errors import ConfigurationError, DataError
from hbm.formulas.design import Design, build_design, new_design, select_rows
from hbm.formulas.families import Weighted, get_family
from hbm.formulas.priors import data_scale, resolve_priors
from hbm.formulas.terms import parse_formula

__all__ = ["FormulaSpec", "GroupNode", "formula"]


class GroupNode(NamedTuple):
    """One group-effect parameter: its names, factor, terms and data keys."""

    base: str             # "Subject", "g1_g2", "Subject_2"
    factor: str           # grouping factor = data key of its codes = dim of its levels
    terms: list           # term (column) names
    correlated: bool
    blocks: list          # indices of the design blocks it gathers
    z_key: str            # data key of its (n, k) predictor columns


class FormulaSpec:
    """What :func:`formula` built: the formula, family, link, prior table, parameter
    layout, and :meth:`new_data` for predictions. Attached to the model as
    ``model.formula_spec``."""

    def __init__(self, formula, family, link, priors, design, group_nodes, response_key,
                 has_offset, has_weights):
        self.formula = formula
        self.family = family
        self.link = link
        self.priors = priors
        self.design = design
        self.group_nodes = group_nodes
        self.response_key = response_key
        self.coef_names = list(design.coef_names)
        self._has_offset = has_offset
        self._has_weights = has_weights

    def __repr__(self):
        return (f"FormulaSpec({self.formula!r}, family={self.family!r}, link={self.link!r})"
                f"\n{self.priors.to_string()}")

    def new_data(self, df: pd.DataFrame, *, trials=None, offset=None) -> dict:
        """The data dict of new rows for ``fit.predict(new_data, new_groups=...)``.

        Grouping keys hold level labels, so levels not seen in fitting are new groups
        (``new_groups="sample"`` draws their effects from the fitted population
        distribution). ``trials`` (binomial: a column name, array or number; taken from
        the ``cbind`` columns when the formula has them) and ``offset`` (a column name
        or array; zero when not given) as for :func:`formula`."""
        X, labels, zs = new_design(self.design, df)
        n = len(df)
        out = {}
        if self.coef_names:
            out["X"] = X
        for node in self.group_nodes:
            out[node.factor] = labels[node.factor]
            out[node.z_key] = np.column_stack([zs[i] for i in node.blocks])
        if self.family == "binomial":
            out["trials"] = _new_trials(self.design, df, trials, n)
        if self._has_offset:
            out["offset"] = np.zeros(n) if offset is None else _column(df, offset, "offset")
        if self._has_weights:
            out["weights"] = np.ones(n)
        return out


def _new_trials(design: Design, df, trials, n):
    from hbm.formulas.design import _cbind  # the response's cbind columns, if any

    cb = _cbind(design.state["parsed"].response_ast)
    if trials is None and cb and all(c in df.columns for c in cb):
        return (df[cb[0]].to_numpy(float) + df[cb[1]].to_numpy(float))
    if trials is None:
        raise DataError("binomial predictions need trials=: a column name, array or number")
    if isinstance(trials, str):
        return _column(df, trials, "trials")
    return np.broadcast_to(np.asarray(trials, dtype=np.float64), (n,)).copy()


def _column(df, value, what) -> np.ndarray:
    """A column name or an array of one value per row, as float64."""
    if isinstance(value, str):
        if value not in df.columns:
            raise DataError(f"{what}={value!r} is not a column of the data frame")
        arr = pd.to_numeric(df[value], errors="coerce").to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(len(df), float(arr))
    if arr.shape != (len(df),):
        raise DataError(f"{what} must have one value per row ({len(df)}), got shape "
                        f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what} holds missing or non-finite values")
    return arr


def _identifier(name: str) -> str:
    out = re.sub(r"\W", "_", name)
    return out if out.isidentifier() else f"g_{out}"


def _check_response(family: str, y: np.ndarray, trials, name: str):
    def whole(v):
        return np.all(v == np.round(v))

    if not np.all(np.isfinite(y)):
        raise DataError(f"response {name!r} holds non-finite values")
    if family == "bernoulli" and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5].tolist()
        raise DataError(f"family 'bernoulli' needs a 0/1 response; {name!r} holds {bad}")
    if family == "binomial":
        if trials is None:
            raise ConfigurationError("family 'binomial' needs trials: write the response as "
                                     "cbind(successes, failures) or pass trials=")
        if not (whole(y) and np.all(y >= 0)):
            raise DataError(f"family 'binomial' needs whole-number successes >= 0 in {name!r}")
        if not (whole(trials) and np.all(trials >= 0)):
            raise DataError("binomial trials must be whole numbers >= 0")
        if np.any(trials < y):
            i = int(np.argmax(trials < y))
            raise DataError(f"binomial trials are smaller than the successes {name!r} in "
                            f"{int(np.sum(trials < y))} row(s), first at row {i} "
                            f"({trials[i]:g} < {y[i]:g})")
    if family in ("poisson", "negbinomial") and not (whole(y) and np.all(y >= 0)):
        raise DataError(f"family {family!r} needs whole-number counts >= 0; {name!r} holds "
                        f"{np.unique(y[(y < 0) | (y != np.round(y))])[:5].tolist()}")
    if family in ("gamma", "lognormal") and not np.all(y > 0):
        raise DataError(f"family {family!r} needs a positive response; {name!r} has "
                        f"{int(np.sum(y <= 0))} value(s) <= 0")
    if family == "beta" and not np.all((y > 0) & (y < 1)):
        raise DataError(f"family 'beta' needs a response strictly between 0 and 1; {name!r} "
                        f"has {int(np.sum((y <= 0) | (y >= 1)))} value(s) outside")


def _group_nodes(design: Design) -> list[GroupNode]:
    """Uncorrelated blocks of a factor merge into one node; each correlated block is a
    node of its own."""
    per_factor: dict[str, list] = {}
    for i, block in enumerate(design.blocks):
        per_factor.setdefault(block.factor, [])
        groups = per_factor[block.factor]
        if block.correlated:
            groups.append([i])
        else:
            plain = next((g for g in groups if not design.blocks[g[0]].correlated), None)
            if plain is None:
                groups.append([i])
            else:
                plain.append(i)
    nodes = []
    for factor, groups in per_factor.items():
        for k, idx in enumerate(groups):
            base = _identifier(factor) + (f"_{k + 1}" if len(groups) > 1 else "")
            terms = [t for i in idx for t in design.blocks[i].columns]
            if len(set(terms)) != len(terms):
                raise ConfigurationError(f"the group-specific terms of {factor!r} repeat the "
                                         f"column(s) {terms}")
            nodes.append(GroupNode(base, factor, terms, design.blocks[idx[0]].correlated,
                                   idx, f"Z_{base}"))
    return nodes


def formula(formula: str, data, family: str = "gaussian", priors=None, link=None,
            offset=None, weights=None, trials=None, na_action: str = "error"):
    """An lme4/brms formula and a data frame -> ``(hbm.Model, data dict)``.

    Parameters
    ----------
    formula : str
        ``"y ~ x + (x | g)"``: population terms (numeric and categorical columns,
        ``a:b``, ``a*b``, ``np.log(x)``, ``scale(x)``, ``C(h)``), group-specific terms
        ``(1 | g)``, ``(x | g)`` (correlated), ``(x || g)`` (uncorrelated),
        ``(1 | g1:g2)``, ``(1 | g1/g2)``, crossed ``(1 | g1) + (1 | g2)``. A binomial
        response may be ``cbind(successes, failures)``.
    data : pandas.DataFrame
    family : str
        ``gaussian``, ``student``, ``bernoulli``, ``binomial``, ``poisson``,
        ``negbinomial``, ``gamma``, ``lognormal``, ``beta`` (see
        :mod:`hbm.formulas.families`).
    priors : dict, optional
        Overrides of the autoscaled defaults by class (``"b"``, ``"sd"``, ``"sigma"``,
        ...), parameter (``"sd_Subject"``) or coefficient (``"b[Days]"``); see
        :mod:`hbm.formulas.priors`. ``model.formula_spec.priors`` is the table.
    link : str, optional
        The family's link (default: the first of its links).
    offset : str or array, optional
        A column name or values added to the linear predictor.
    weights : str or array, optional
        A column name or non-negative values; observation ``i`` contributes
        ``weights[i] * log p(y_i | theta)`` to the log density (the log-likelihood terms
        are multiplied by the weights, as brms' ``weights()``).
    trials : str, array or int, optional
        Binomial trials when the response is not written ``cbind(s, f)``.
    na_action : {"error", "drop"}
        What to do with rows holding a missing value in a column the formula reads:
        raise :class:`hbm.errors.DataError`, or drop them with a warning naming the count.

    Returns
    -------
    (hbm.Model, dict)
        The model (with ``dims``, ``coords`` and ``formula_spec``) and its data:
        ``"X"`` (population design), the response under its own name, for every grouping
        factor its integer codes under the factor's name, ``"Z_<g>"`` the group
        predictors, and ``"trials"``, ``"offset"``, ``"weights"`` when used.
    """
    from hbm.model import Model

    fam, link = get_family(family, link)
    parsed = parse_formula(formula)
    extra = [v for v in (offset, weights, trials) if isinstance(v, str)]
    frame = select_rows(parsed, data, na_action, extra)
    design = build_design(parsed, frame, trials)
    frame = design.frame
    y = design.response
    if fam.name != "binomial" and design.trials is not None:
        raise ConfigurationError(f"a cbind(successes, failures) response and trials= are for "
                                 f"the binomial family, not {fam.name!r}")
    _check_response(fam.name, y, design.trials, design.response_name)
    nodes = _group_nodes(design)

    data_dict: dict[str, Any] = {}
    has_b = bool(design.coef_names)
    if has_b:
        data_dict["X"] = design.X
    response_key = design.response_name
    data_dict[response_key] = y.astype(np.int64) if fam.discrete else y
    for node in nodes:
        data_dict[node.factor] = design.codes[node.factor]
        data_dict[node.z_key] = np.column_stack([design.blocks[i].z for i in node.blocks])
    if fam.name == "binomial":
        data_dict["trials"] = design.trials.astype(np.int64)
    if offset is not None:
        data_dict["offset"] = _column(frame, offset, "offset")
    if weights is not None:
        w = _column(frame, weights, "weights")
        if np.any(w < 0):
            raise DataError("weights must be >= 0")
        data_dict["weights"] = w
    keys = [response_key, "X", "trials", "offset", "weights"] + \
        list(dict.fromkeys(nd.factor for nd in nodes)) + [nd.z_key for nd in nodes]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise ConfigurationError(f"formula {formula!r}: the column name(s) {clash} clash with "
                                 f"the data keys hbm.formula uses ({sorted(set(keys))}); "
                                 "rename them")

    # ---- autoscaled default priors
    if fam.name in ("gaussian", "student") and link == "identity":
        s_y, m_y = data_scale(y), float(np.mean(y))
    elif fam.name == "lognormal":
        s_y, m_y = data_scale(np.log(y)), float(np.mean(np.log(y)))
    else:
        s_y, m_y = 1.0, 0.0
    prior_nodes = []
    if has_b:
        loc = np.zeros(len(design.coef_names))
        scale = np.empty(len(design.coef_names))
        for k, name in enumerate(design.coef_names):
            col = design.X[:, k]
            if name == "Intercept":
                loc[k], scale[k] = m_y, 2.5 * s_y
            else:
                scale[k] = 2.5 * s_y / data_scale(col)
        prior_nodes.append(("b", "b", (len(loc),), design.coef_names, dist.Normal(loc, scale)))
    for node in nodes:
        z = data_dict[node.z_key]
        rates = np.array([(1.0 if np.ptp(z[:, k]) == 0 else data_scale(z[:, k])) / s_y
                          for k in range(z.shape[1])])
        k = len(node.terms)
        prior_nodes.append((f"sd_{node.base}", "sd", (k,), node.terms, dist.Exponential(rates)))
        if node.correlated:
            prior_nodes.append((f"L_{node.base}", "L", (k, k), [], dist.LKJCholesky(k, 1.0)))
    aux_defaults = {"sigma": dist.Exponential(1.0 / s_y), "nu": dist.Gamma(2.0, 0.1),
                    "shape": dist.Exponential(1.0), "phi": dist.Exponential(1.0)}
    for name in fam.aux:
        prior_nodes.append((name, name, (), [], aux_defaults[name]))
    chosen, table = resolve_priors(prior_nodes, priors)

    # ---- the prior DAG (b, then per group sd, L, r, then the family's parameters)
    prior: dict[str, Any] = {}
    if has_b:
        prior["b"] = chosen["b"]
    dims: dict[str, tuple] = {}
    coords: dict[str, list] = {}
    deterministic = {}
    if has_b:
        dims["b"] = ("b_coef",)
        coords["b_coef"] = list(design.coef_names)
    for node in nodes:
        n_levels, k = len(design.levels[node.factor]), len(node.terms)
        sd_name, l_name, r_name = f"sd_{node.base}", f"L_{node.base}", f"r_{node.base}"
        prior[sd_name] = chosen[sd_name]
        coef_dim = f"{node.base}_coef"
        coords[coef_dim] = list(node.terms)
        coords[node.factor] = list(design.levels[node.factor])
        dims[sd_name] = (coef_dim,)
        dims[r_name] = (node.factor, coef_dim)
        if node.correlated:
            prior[l_name] = chosen[l_name]
            prior[r_name] = _mvn_node(sd_name, l_name, n_levels, k)
            coords[f"{coef_dim}_2"] = list(node.terms)
            dims[l_name] = (coef_dim, f"{coef_dim}_2")
            dims[f"cor_{node.base}"] = (coef_dim, f"{coef_dim}_2")
            deterministic[f"cor_{node.base}"] = _correlation(l_name)
        else:
            prior[r_name] = _normal_node(sd_name, n_levels, k)
    for name in fam.aux:
        prior[name] = chosen[name]

    use_offset, use_weights = offset is not None, weights is not None
    linear_predictor = _linear_predictor(design, nodes, data_dict, has_b, response_key,
                                         use_offset=use_offset)
    make = fam.make

    def likelihood(p, d):
        response = make(linear_predictor(p, d), link, p, d)
        if use_weights:
            response = Weighted(response, d["weights"])
        return {response_key: response}

    model = Model(prior=prior, likelihood=likelihood, dims=dims, coords=coords,
                  deterministic=deterministic or None, name=f"formula: {formula}")
    model.formula_spec = FormulaSpec(formula, fam.name, link, table, design, nodes,
                                     response_key, use_offset, use_weights)
    return model, data_dict


#: designs with at most this many columns are summed column by column, which XLA fuses
#: with the rest of the linear predictor into one loop; wider ones use a matrix product.
#: On XLA's CPU backend a small dot is a library call of its own, forward and backward:
#: radon's varying-intercept gradient took 1.7x the hand-written model's with ``X @ b``
#: and the same time summed by columns (``benchmarks/formula.py``).
UNROLLED_COLUMNS = 8


def _linear_predictor(design, nodes, data_dict, has_b, response_key, *, use_offset):
    """``eta(p, d) = X b + sum_g sum_k r_g[code_g, k] Z_g[:, k] + offset``, in the
    cheapest form for the design's structure (all decided here, on the host):

    - an intercept column (named so, all ones) adds its coefficient, no product;
    - a group term on a population column (``x`` in ``x + (x | g)``) is folded into
      that column's coefficient, ``(b_x + r_g[code_g, x]) * x``, as a hand-written
      model writes it: one product per observation instead of two;
    - designs wider than :data:`UNROLLED_COLUMNS` use a matrix product / row sums.
    """
    n_x = len(design.coef_names) if has_b else 0
    unrolled_x = has_b and n_x <= UNROLLED_COLUMNS
    x_ones = _intercept_columns(design.coef_names, design.X) if has_b else ()
    groups = []  # (r name, factor, z key, per column: intercept?, folded population column)
    for nd in nodes:
        z = np.asarray(data_dict[nd.z_key])
        unrolled = len(nd.terms) <= UNROLLED_COLUMNS
        folds = tuple(
            _same_column(design, name, z[:, k]) if unrolled and unrolled_x else None
            for k, name in enumerate(nd.terms))
        ones = _intercept_columns(nd.terms, z) if unrolled else None
        groups.append((f"r_{nd.base}", nd.factor, nd.z_key, ones, folds))
    # a key with one entry per observation that new data for predictions also hold
    rows_key = "X" if has_b else (nodes[0].factor if nodes else response_key)

    def linear_predictor(p, d):
        eta = 0.0
        coefficients = [p["b"][j] for j in range(n_x)] if unrolled_x else None
        for r_name, factor, z_key, ones, folds in groups:
            rows = p[r_name][d[factor]]  # (n, terms): each observation's level's effects
            if ones is None:
                eta = eta + jnp.sum(rows * d[z_key], axis=-1)
                continue
            for k, (is_one, j) in enumerate(zip(ones, folds)):
                if j is not None:
                    coefficients[j] = coefficients[j] + rows[:, k]
                else:
                    eta = eta + (rows[:, k] if is_one else rows[:, k] * d[z_key][:, k])
        if unrolled_x:
            for j, is_one in enumerate(x_ones):
                eta = eta + (coefficients[j] if is_one else d["X"][:, j] * coefficients[j])
        elif has_b:
            eta = eta + d["X"] @ p["b"]
        if use_offset:
            eta = eta + d["offset"]
        return jnp.broadcast_to(eta, jnp.shape(d[rows_key])[:1])

    return linear_predictor


def _intercept_columns(names, columns) -> tuple:
    """Per column, whether it is an intercept: named so and all ones in the data."""
    columns = np.asarray(columns)
    return tuple(name == "Intercept" and bool(np.all(columns[:, k] == 1))
                 for k, name in enumerate(names))


def _same_column(design, name, column):
    """The population column of the same name and values as a group term's, or None."""
    names = list(design.coef_names)
    if name not in names:
        return None
    j = names.index(name)
    return j if np.array_equal(np.asarray(design.X)[:, j], column) else None


def _normal_node(sd_name, n_levels, k):
    def node(p, d):
        return dist.Normal(0.0, p[sd_name]).expand((n_levels, k))
    return node


def _mvn_node(sd_name, l_name, n_levels, k):
    def node(p, d):
        tril = p[sd_name][:, None] * p[l_name]
        return dist.MultivariateNormal(jnp.zeros(k), scale_tril=tril).expand((n_levels,))
    return node


def _correlation(l_name):
    def cor(p, d):
        return p[l_name] @ p[l_name].T
    return cor
