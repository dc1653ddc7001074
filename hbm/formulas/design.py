"""Host-side (numpy) design matrices, group codes and response for a parsed formula.

Built once, before anything is compiled. Population terms go through formulae's design
matrix machinery (contrasts, stateful transforms such as ``scale(x)`` are remembered for
new data). A group-specific block is stored *indexed*, never as a one-hot matrix: integer
codes ``0..J-1`` of the grouping factor per observation, and the block's per-observation
predictor columns ``Z`` (n, k), so the linear predictor gains
``sum_k r_g[code_i, k] * Z[i, k]``.

The predictor columns of every block on one grouping factor are evaluated together (so a
categorical predictor is coded against the intercept of that factor, as lme4 does), then
each block takes its columns.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from formulae.environment import Environment
from formulae.matrices import DesignMatrices
from formulae.terms import Model as TermModel

from hbm.errors import ConfigurationError, DataError
from hbm.formulas.terms import ParsedFormula, term_label

__all__ = ["BlockDesign", "Design", "build_design", "group_codes", "new_design"]


class BlockDesign(NamedTuple):
    factor: str          # the grouping factor, also its data key and dim name
    columns: list        # the block's predictor column labels
    correlated: bool
    z: np.ndarray        # (n, k) predictor values
    slices: list         # slices of the factor's predictor matrix making up z


class Design(NamedTuple):
    response: np.ndarray           # (n,) values (successes for cbind)
    response_name: str
    trials: np.ndarray | None      # binomial trials
    X: np.ndarray                  # (n, p)
    coef_names: list
    blocks: list                   # BlockDesign
    codes: dict                    # factor -> (n,) int32 codes
    levels: dict                   # factor -> list of level labels
    frame: pd.DataFrame            # the rows used
    state: Any                     # what new data needs (formulae objects)


def _env():
    return Environment.capture(0).with_outer_namespace({"np": np})


def _cbind(ast):
    """``(successes, failures)`` column names when the response is ``cbind(s, f)``."""
    if type(ast).__name__ == "Call" and getattr(ast.callee, "name", None) is not None \
            and ast.callee.name.lexeme == "cbind":
        args = ast.args
        if len(args) != 2 or not all(type(a).__name__ == "Variable" for a in args):
            raise ConfigurationError("cbind() in the response takes two column names: "
                                     "cbind(successes, failures)")
        return args[0].name.lexeme, args[1].name.lexeme
    return None


def group_codes(frame: pd.DataFrame, factor_vars) -> tuple[np.ndarray, list]:
    """Codes ``0..J-1`` of the observed (combinations of) levels, sorted; labels joined
    with ``:`` for an interaction factor."""
    if len(factor_vars) == 1:
        codes, labels = pd.factorize(frame[factor_vars[0]], sort=True)
        labels = [str(v) for v in labels]
    else:
        keys = pd.Series([":".join(str(v) for v in row)
                          for row in frame[list(factor_vars)].itertuples(index=False)],
                         index=frame.index)
        codes, labels = pd.factorize(keys, sort=True)
        labels = [str(v) for v in labels]
    return codes.astype(np.int32), labels


def _labels_of(matrix) -> list:
    labels = []
    for term in matrix.terms.values():
        labels.extend(term.labels if hasattr(term, "labels") and term.labels else [term.name])
    return labels


def _columns(parsed: ParsedFormula, extra=()) -> list:
    cols = set(parsed.variables)
    cb = _cbind(parsed.response_ast)
    if cb:
        cols.discard("cbind")
        cols.update(cb)
    return sorted(cols | set(extra))


def select_rows(parsed: ParsedFormula, df, na_action: str, extra_columns=()) -> pd.DataFrame:
    """Check the columns the formula reads exist; drop or refuse rows with NaN."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(df).__name__}")
    if na_action not in ("error", "drop"):
        raise ConfigurationError(f"na_action must be 'error' or 'drop', got {na_action!r}")
    needed = _columns(parsed, extra_columns)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"formula {parsed.formula!r} names column(s) {missing} that the data "
                        f"frame lacks; it has {list(df.columns)}")
    if len(df) == 0:
        raise DataError("the data frame has no rows")
    na = df[needed].isna()
    if na.values.any():
        rows = na.any(axis=1)
        bad_cols = [c for c in needed if na[c].any()]
        if na_action == "error":
            raise DataError(f"column(s) {bad_cols} hold missing values in {int(rows.sum())} "
                            "row(s); drop or impute them, or pass na_action='drop'")
        from hbm.diagnostics import HbmWarning

        warnings.warn(f"hbm.formula: dropped {int(rows.sum())} row(s) with missing values in "
                      f"column(s) {bad_cols}", HbmWarning, stacklevel=3)
        df = df.loc[~rows]
        if len(df) == 0:
            raise DataError("every row has a missing value in a column the formula reads")
    return df


def _evaluate(term_model, frame, what: str):
    try:
        return DesignMatrices(term_model, frame, _env())
    except Exception as e:  # formulae raises plain exceptions on bad data
        raise DataError(f"cannot evaluate {what}: {type(e).__name__}: {e}") from e


def build_design(parsed: ParsedFormula, frame: pd.DataFrame, trials=None) -> Design:
    """The design of the formula on ``frame`` (rows already selected)."""
    frame = frame.reset_index(drop=True)
    # response
    cb = _cbind(parsed.response_ast)
    if cb:
        succ = _numeric(frame, cb[0])
        fail = _numeric(frame, cb[1])
        response, trials_arr, name = succ, succ + fail, cb[0]
    else:
        dm = _evaluate(TermModel(response=parsed.response), frame, "the response")
        values = np.asarray(dm.response.design_matrix)
        if values.ndim == 2 and values.shape[1] != 1:
            raise DataError(f"the response {parsed.response.term.name!r} must be numeric (one "
                            f"column), got {values.shape[1]} columns (a categorical column?)")
        response = np.asarray(values, dtype=np.float64).reshape(-1)
        name = parsed.response.term.name
        trials_arr = None
        if trials is not None:
            if isinstance(trials, str):
                if trials not in frame.columns:
                    raise DataError(f"trials={trials!r} is not a column of the data frame")
                trials_arr = _numeric(frame, trials)
            else:
                trials_arr = np.broadcast_to(np.asarray(trials, dtype=np.float64),
                                             response.shape).copy()
    # population part
    common_dm = None
    if parsed.common:
        common_dm = _evaluate(TermModel(*parsed.common), frame, "the population terms")
        X = np.asarray(common_dm.common.design_matrix, dtype=np.float64)
        coef_names = _labels_of(common_dm.common)
    else:
        X = np.zeros((len(frame), 0))
        coef_names = []
    # group part
    codes, levels, blocks, group_dms = {}, {}, [], {}
    by_factor: dict[str, list] = {}
    for block in parsed.blocks:
        by_factor.setdefault(block.factor, []).append(block)
    for factor, fblocks in by_factor.items():
        codes[factor], levels[factor] = group_codes(frame, fblocks[0].factor_vars)
        if len(levels[factor]) < 2:
            raise DataError(f"grouping factor {factor!r} has a single level "
                            f"({levels[factor]}); a group-level sd needs at least 2 levels")
        exprs = [e for b in fblocks for e in b.exprs]
        dm = _evaluate(TermModel(*exprs), frame, f"the predictors of the {factor!r} terms")
        group_dms[factor] = dm
        matrix = np.asarray(dm.common.design_matrix, dtype=np.float64)
        for b in fblocks:
            cols, names, slices = [], [], []
            for e in b.exprs:
                sl = dm.common.slices[term_label(e)]
                slices.append(sl)
                cols.append(matrix[:, sl])
                term = dm.common.terms[term_label(e)]
                names.extend(term.labels if getattr(term, "labels", None) else [term.name])
            z = np.column_stack(cols)
            blocks.append(BlockDesign(factor, names, b.correlated and z.shape[1] > 1, z,
                                      slices))
    return Design(response, name, trials_arr, X, coef_names, blocks, codes, levels, frame,
                  {"common": common_dm, "groups": group_dms, "parsed": parsed})


def _numeric(frame, column) -> np.ndarray:
    try:
        return pd.to_numeric(frame[column], errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"column {column!r} is not numeric") from e


def new_design(design: Design, df: pd.DataFrame) -> tuple[np.ndarray, dict, list]:
    """``(X, {factor: labels}, [z of each block])`` of new data.

    Group labels are strings (joined with ``:`` for interaction factors);
    :func:`hbm.predict` maps labels it has not seen to new groups. Stateful transforms
    (``scale(x)``, contrasts) keep the values learnt on the fitted data."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"new data must be a pandas DataFrame, got {type(df).__name__}")
    df = df.reset_index(drop=True)
    X = np.zeros((len(df), 0))
    if design.state["common"] is not None:
        X = _evaluate_new(design.state["common"], df, "the population terms")
    labels, matrices = {}, {}
    for block in design.blocks:
        if block.factor in labels:
            continue
        parsed_block = next(b for b in design.state["parsed"].blocks
                            if b.factor == block.factor)
        missing = [c for c in parsed_block.factor_vars if c not in df.columns]
        if missing:
            raise DataError(f"the new data lack the grouping column(s) {missing}")
        rows = df[list(parsed_block.factor_vars)].itertuples(index=False)
        labels[block.factor] = np.array([":".join(str(v) for v in row) for row in rows],
                                        dtype=object)
        matrices[block.factor] = _evaluate_new(design.state["groups"][block.factor], df,
                                               f"the predictors of the {block.factor!r} terms")
    zs = [np.column_stack([matrices[b.factor][:, sl] for sl in b.slices])
          for b in design.blocks]
    return X, labels, zs


def _evaluate_new(dm, df, what) -> np.ndarray:
    try:
        return np.asarray(dm.common.evaluate_new_data(df).design_matrix, dtype=np.float64)
    except Exception as e:  # formulae raises plain exceptions on bad data
        raise DataError(f"cannot evaluate {what} on the new data: {type(e).__name__}: "
                        f"{e}") from e
