"""Convergence and sampler diagnostics for fitted models.

Every check here reads arrays shaped ``(chain, draw, ...)`` and says, in words, what went
wrong and what to try:

- Divergent transitions: the numerical integrator failed (energy error too large), a sign
  that the sampler cannot explore a region of high curvature, typically the neck of a
  hierarchical funnel (Betancourt, 2017, "A Conceptual Introduction to Hamiltonian Monte
  Carlo", arXiv:1701.02434).
- Tree-depth saturation: NUTS stopped doubling because it reached ``max_tree_depth``,
  not because the trajectory made a U-turn (Hoffman & Gelman, 2014, JMLR 15:1593).
- Rank-normalized split R-hat and bulk effective sample size (Vehtari, Gelman, Simpson,
  Carpenter & Buerkner, 2021, "Rank-normalization, folding, and localization: an
  improved R-hat", Bayesian Analysis 16(2)), computed one block of elements at a time, so
  the memory used stays bounded however many parameters there are: with ArviZ, or (the
  end-of-run checks of ``hbm.sample``) with the compiled :mod:`hbm.study_diagnostics`,
  equal to ArviZ's to rounding, which spares a sampling run the ~3 s import of ArviZ,
  SciPy's stats and matplotlib.
- E-BFMI, the energy Bayesian fraction of missing information (Betancourt, 2016,
  "Diagnosing suboptimal cotangent disintegrations in Hamiltonian Monte Carlo",
  arXiv:1604.00695): ``sum(diff(E)^2) / sum((E - mean(E))^2)`` per chain.
- Pareto k-hat of importance ratios (Vehtari, Simpson, Gelman, Yao & Gabry, 2024,
  "Pareto smoothed importance sampling", JMLR 25(72)), used to judge variational
  approximations (Yao, Vehtari, Simpson & Gelman, 2018, "Yes, but did it work?").

ArviZ is imported lazily, only by the functions that need it; JAX likewise.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from hbm.draws import file_map as _mapped_file
from hbm.draws import release_map as _release_pages
from hbm.errors import DataError

__all__ = [
    "HbmWarning",
    "DivergenceReport",
    "TreeDepthReport",
    "RHAT_THRESHOLD",
    "ESS_BULK_THRESHOLD",
    "EBFMI_THRESHOLD",
    "DEFAULT_MAX_TREE_DEPTH",
    "load_arviz",
    "arviz_major_version",
    "quiet_arviz",
    "divergence_report",
    "treedepth_report",
    "ebfmi",
    "pareto_khat",
    "rhat_by_element",
    "ess_bulk_by_element",
    "convergence_by_element",
    "DIAGNOSTICS_BLOCK_BYTES",
    "element_labels",
    "diagnose",
]

RHAT_THRESHOLD = 1.01
ESS_BULK_THRESHOLD = 400.0
EBFMI_THRESHOLD = 0.3
DEFAULT_MAX_TREE_DEPTH = 10
_MAX_NAMES_LISTED = 10
# Most bytes of float64 draws handed to ArviZ at once by ``convergence_by_element``.
DIAGNOSTICS_BLOCK_BYTES = 64 * 2**20
# The ArviZ statistics computed per block: rank-normalized split R-hat and bulk ESS.
_STATISTICS = (("rhat", {}), ("ess", {"method": "bulk"}))


class HbmWarning(UserWarning):
    """A warning about the quality of a fit (divergences, R-hat, ESS, E-BFMI, ...)."""


class DivergenceReport(NamedTuple):
    """Divergent transitions after warmup.

    Attributes
    ----------
    count : int
        Number of divergent transitions over all chains.
    total : int
        Number of transitions over all chains.
    fraction : float
        ``count / total`` (0 when there are no transitions).
    per_chain : np.ndarray
        Divergences in each chain, shape ``(chain,)``.
    """

    count: int
    total: int
    fraction: float
    per_chain: np.ndarray


class TreeDepthReport(NamedTuple):
    """Transitions that stopped at the maximum tree depth.

    Attributes
    ----------
    count : int
        Number of transitions with ``tree_depth >= max_tree_depth``.
    total : int
        Number of transitions over all chains.
    fraction : float
        ``count / total`` (0 when there are no transitions).
    per_chain : np.ndarray
        Saturated transitions in each chain, shape ``(chain,)``.
    max_tree_depth : int
        The limit the counts refer to.
    """

    count: int
    total: int
    fraction: float
    per_chain: np.ndarray
    max_tree_depth: int


def load_arviz():
    """Import and return ArviZ, silencing its import-time ``FutureWarning``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def arviz_major_version(arviz_module=None) -> int:
    """Major version of the installed ArviZ (0 for the InferenceData API, >= 1 for DataTree)."""
    arviz_module = load_arviz() if arviz_module is None else arviz_module
    major = str(arviz_module.__version__).split(".", 1)[0]
    return int(major) if major.isdigit() else 0


@contextlib.contextmanager
def quiet_arviz(arviz_module=None) -> Iterator[None]:
    """Silence ArviZ's logger and warnings (e.g. "Shape validation failed" for one chain).

    Used where hbm itself interprets the NaN that ArviZ returns for an undefined statistic.
    """
    arviz_module = load_arviz() if arviz_module is None else arviz_module
    loggers = [logging.getLogger("arviz")]
    private_logger = getattr(arviz_module, "_log", None)
    if isinstance(private_logger, logging.Logger):
        loggers.append(private_logger)
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _as_chain_draw(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as an array of shape ``(chain, draw)``; 1-D means one chain."""
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise DataError(f"{name} must have shape (chain, draw); got shape {array.shape}.")
    return array


def divergence_report(sample_stats: dict[str, Any]) -> DivergenceReport:
    """Count divergent transitions in ``sample_stats["diverging"]``.

    Parameters
    ----------
    sample_stats : dict
        Must contain ``"diverging"``, boolean of shape ``(chain, draw)``.

    Returns
    -------
    DivergenceReport
    """
    diverging = _as_chain_draw(sample_stats["diverging"], "diverging").astype(bool)
    per_chain = diverging.sum(axis=1).astype(int)
    count = int(per_chain.sum())
    total = int(diverging.size)
    return DivergenceReport(count, total, count / total if total else 0.0, per_chain)


def treedepth_report(sample_stats: dict[str, Any], max_tree_depth: int) -> TreeDepthReport:
    """Count transitions whose ``tree_depth`` reached ``max_tree_depth``.

    Parameters
    ----------
    sample_stats : dict
        Must contain ``"tree_depth"``, integers of shape ``(chain, draw)``.
    max_tree_depth : int
        The sampler's limit on the tree depth.

    Returns
    -------
    TreeDepthReport
    """
    depth = _as_chain_draw(sample_stats["tree_depth"], "tree_depth")
    per_chain = (depth >= max_tree_depth).sum(axis=1).astype(int)
    count = int(per_chain.sum())
    total = int(depth.size)
    return TreeDepthReport(
        count, total, count / total if total else 0.0, per_chain, int(max_tree_depth)
    )


def ebfmi(energy: Any) -> np.ndarray:
    """Energy Bayesian fraction of missing information, one value per chain.

    ``E-BFMI = sum_n (E_n - E_{n-1})^2 / sum_n (E_n - mean(E))^2`` (Betancourt, 2016).
    Values below 0.3 suggest the momentum resampling explores the energy distribution
    poorly, usually because of heavy tails or a funnel.

    Parameters
    ----------
    energy : array_like
        Hamiltonian energy at each draw, shape ``(chain, draw)`` (or ``(draw,)``).

    Returns
    -------
    np.ndarray
        Shape ``(chain,)``; NaN for a chain whose energy is constant.
    """
    energy = _as_chain_draw(energy, "energy").astype(float)
    numerator = np.sum(np.diff(energy, axis=1) ** 2, axis=1)
    centered = energy - energy.mean(axis=1, keepdims=True)
    denominator = np.sum(centered**2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(denominator > 0, denominator, 1.0)
        return np.where(denominator > 0, numerator / safe, np.nan)


def pareto_khat(log_ratios: Any) -> float:
    """Pareto k-hat of importance ratios ``log p(theta) - log q(theta)``.

    The shape of a generalized Pareto fit to the largest ratios (PSIS). Below 0.5 the
    importance-sampling estimate is reliable, up to 0.7 usable, above 0.7 the proposal
    (e.g. an ADVI approximation) misses the target's tails.

    Parameters
    ----------
    log_ratios : array_like
        Log importance ratios, any shape (flattened); ``-inf`` means a zero weight.

    Returns
    -------
    float
        k-hat. ``inf`` if any ratio is NaN or ``+inf``, or too few draws for a tail fit
        (fewer than 5 in the tail), or the fit fails; ``-inf`` if the ratios in the tail
        that PSIS fits (the largest ``min(0.2 S, 3 sqrt(S))`` of ``S``) are equal to within
        ``sqrt(eps)``: the weights are then bounded (the proposal equals the target up to
        a constant there), and no Pareto shape can be fitted to ties.
    """
    ratios = np.asarray(log_ratios, dtype=float).ravel()
    if ratios.size == 0 or np.any(np.isnan(ratios)) or np.any(ratios == np.inf):
        return float("inf")
    finite = ratios[np.isfinite(ratios)]
    if finite.size == 0:
        return float("inf")
    tail_size = int(np.ceil(min(0.2 * ratios.size, 3.0 * np.sqrt(ratios.size))))
    if tail_size < 5 or finite.size < tail_size:
        return float("inf")
    tail = np.partition(finite, finite.size - tail_size)[-tail_size:]
    if np.ptp(tail) <= np.sqrt(np.finfo(np.float64).eps):
        return float("-inf")
    arviz = load_arviz()
    with quiet_arviz(arviz):
        try:
            if arviz_major_version(arviz) >= 1:
                # arviz-stats smooths the right tail of the negated input (it expects a
                # log-likelihood), so negate the ratios to fit their right tail.
                from arviz_stats.base import array_stats

                _, khat = array_stats.psislw(-ratios, r_eff=1.0, axis=-1)
            else:
                _, khat = arviz.psislw(ratios, reff=1.0)
        except (ValueError, IndexError, FloatingPointError):
            return float("inf")
    khat = float(np.asarray(khat))
    return float("inf") if np.isnan(khat) else khat


def element_labels(
    name: str,
    shape: tuple[int, ...],
    dims: tuple[str, ...] | None = None,
    coords: dict[str, Any] | None = None,
) -> list[str]:
    """ArviZ-style labels of the elements of a parameter, in C order.

    ``"mu"`` for a scalar, ``"theta[0]"`` or, with coordinates, ``"theta[A]"``; several
    axes are joined as ArviZ does: ``"Sigma[0, 1]"``.
    """
    if len(shape) == 0:
        return [name]
    dims = tuple(dims or ())
    coords = coords or {}
    axis_labels = []
    for axis, size in enumerate(shape):
        dim = dims[axis] if axis < len(dims) else None
        values = coords.get(dim) if dim is not None else None
        if values is not None and len(values) == size:
            axis_labels.append([str(v) for v in values])
        else:
            axis_labels.append([str(i) for i in range(size)])
    labels = []
    for index in np.ndindex(*shape):
        inner = ", ".join(axis_labels[axis][i] for axis, i in enumerate(index))
        labels.append(f"{name}[{inner}]")
    return labels


def _numeric_arrays(posterior: dict[str, Any]) -> dict[str, np.ndarray]:
    """The numeric (and boolean) parameters as arrays, without copying them."""
    numeric = {}
    for name, values in posterior.items():
        array = np.asarray(values)
        if np.issubdtype(array.dtype, np.number) or array.dtype == bool:
            if array.ndim < 2:
                raise DataError(
                    f"posterior[{name!r}] must have shape (chain, draw, ...); "
                    f"got {array.shape}."
                )
            numeric[name] = array
    return numeric


def _as_columns(array: np.ndarray) -> np.ndarray | None:
    """``array`` viewed as ``(chain, draw, k)``, one column per element; None if only a
    copy could give that shape (then blocks are gathered by index)."""
    chain, draw = array.shape[:2]
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return array
    if array.flags.c_contiguous:
        return array.reshape(chain, draw, -1)
    return None


def _fill_block(
    block: np.ndarray, array: np.ndarray, columns: np.ndarray | None, start: int, mapped
) -> None:
    """Copy elements ``start : start + b`` of ``array`` into the float64 ``block``
    ``(chain, draw, b)``, a slab of draws at a time so no full-size temporary appears.

    A slab read from a file map touches the pages of all elements of its draws, so there
    the slabs are sized by those pages, which are released after each slab.
    """
    chain, draws, width = block.shape
    row_bytes = width * 8
    if mapped is not None:
        row_bytes = max(row_bytes, array.itemsize * int(np.prod(array.shape[2:], dtype=int)))
    step = max(1, DIAGNOSTICS_BLOCK_BYTES // 8 // max(1, chain * row_bytes))
    if columns is None:
        index = np.unravel_index(np.arange(start, start + width), array.shape[2:])
    for r0 in range(0, draws, step):
        r1 = min(draws, r0 + step)
        if columns is None:
            block[:, r0:r1] = array[(slice(None), slice(r0, r1), *index)]
        else:
            block[:, r0:r1] = columns[:, r0:r1, start : start + width]
        if mapped is not None:
            _release_pages(mapped)


def _block_convergence(arviz, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R-hat and bulk ESS (ArviZ) of each column of a float64 ``(chain, draw, b)`` block."""
    import xarray as xr

    dataset = xr.Dataset({"x": (("chain", "draw", "x_dim_0"), block)})
    results = []
    with quiet_arviz(arviz):
        for statistic, kwargs in _STATISTICS:
            result = getattr(arviz, statistic)(dataset, **kwargs)
            results.append(np.asarray(result["x"].values, dtype=float))
    return results[0], results[1]


@functools.cache
def _compiled_statistics():
    """``(bulk ranks, folded ranks, invalid) -> (R-hat, bulk ESS)``, jitted once: the
    normal scores, split R-hat and Geyer ESS of :mod:`hbm.study_diagnostics`."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import ndtri

    from hbm.study_diagnostics import _BLOM_OFFSET, _ess, _rhat

    def statistics(bulk_ranks, tail_ranks, invalid):
        size = bulk_ranks.shape[0] * bulk_ranks.shape[1]

        def scores(ranks):
            return ndtri((ranks - _BLOM_OFFSET) / (size - 2 * _BLOM_OFFSET + 1))

        bulk = scores(bulk_ranks)
        rhat_bulk, rhat_tail = _rhat(bulk), _rhat(scores(tail_ranks))
        rhat = jnp.where(invalid | jnp.isnan(rhat_bulk) | jnp.isnan(rhat_tail),
                         jnp.nan, jnp.maximum(rhat_bulk, rhat_tail))
        return rhat, jnp.where(invalid, jnp.nan, _ess(bulk))

    return jax.jit(statistics)


def host_fractional_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N along the last axis of ``values`` (k, N), ties given their average rank
    (as :func:`hbm.study_diagnostics.fractional_ranks` along its first axis), by NumPy:
    XLA's CPU sort takes ~0.2 us per element (4,000 draws: 0.8 ms a column), NumPy's
    a tenth of that."""
    values = np.ascontiguousarray(values)
    n = values.shape[-1]
    order = np.argsort(values, axis=-1)  # ties get one average rank: any order will do
    ordered = np.take_along_axis(values, order, axis=-1)
    positions = np.arange(n)
    differs = ordered[..., 1:] != ordered[..., :-1]  # NaNs differ from everything
    edge = np.ones(differs.shape[:-1] + (1,), bool)
    starts = np.concatenate([edge, differs], axis=-1)
    ends = np.concatenate([differs, edge], axis=-1)
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=-1)
    last = np.minimum.accumulate(np.where(ends, positions, n - 1)[..., ::-1], axis=-1)
    ranks = np.empty(values.shape)
    np.put_along_axis(ranks, order, (first + last[..., ::-1] + 2) / 2, axis=-1)
    return ranks


def _compiled_block_convergence(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R-hat and bulk ESS of each column of ``block`` (chain, draw, b): the split chains'
    ranks (and the folded draws' ranks) by NumPy, the rest compiled.

    The ranks are padded with copies of the first column's to a power of two of at least
    8 columns, so a fit compiles one program per few block widths, not per parameter size
    (and later processes load them from the persistent compilation cache).
    """
    chains, draws, width = block.shape
    if draws < 4:  # too few to split: undefined, as in ArviZ
        return np.full(width, np.nan), np.full(width, np.nan)
    padded = max(8, 1 << (width - 1).bit_length())
    half = draws // 2
    split = np.concatenate([block[:, :half], block[:, draws - half:]], axis=0)
    columns = np.moveaxis(split, 2, 0).reshape(width, -1)  # (b, 2 chains x half)
    median = np.median(columns, axis=-1, keepdims=True)
    shape = (width,) + split.shape[:2]

    def ranked(values):  # (2 x chains, half, padded): padding repeats the first column
        ranks = np.moveaxis(host_fractional_ranks(values).reshape(shape), 0, 2)
        return np.concatenate(
            [ranks, np.broadcast_to(ranks[:, :, :1], ranks.shape[:2] + (padded - width,))],
            axis=2)

    bulk, tail = ranked(columns), ranked(np.abs(columns - median))
    invalid = np.isnan(block).any(axis=(0, 1))
    invalid = np.concatenate([invalid, np.full(padded - width, invalid[0])])
    rhat, ess = _compiled_statistics()(bulk, tail, invalid)
    rhat = np.asarray(rhat, dtype=float)[:width]
    if chains < 2:  # R-hat compares chains: undefined for one, as in ArviZ
        rhat = np.full(width, np.nan)
    return rhat, np.asarray(ess, dtype=float)[:width]


def convergence_by_element(
    posterior: dict[str, np.ndarray], *, compiled: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rank-normalized split R-hat and bulk ESS of every element, in one pass.

    Both statistics treat each element on its own, so each parameter is read as
    ``(chain, draw, k)`` columns in blocks of at most ``DIAGNOSTICS_BLOCK_BYTES`` of float64
    (at least one column; small parameters share a block, so a model with many scalars
    makes few calls): the working memory does not grow with the number of parameters,
    and pages of a memory-mapped file (``np.memmap``) are dropped from the RSS as soon as
    they are copied. The results equal ArviZ's on the whole posterior.

    ``compiled=True`` computes them with :mod:`hbm.study_diagnostics` (JAX, in the
    precision JAX is set to) instead of ArviZ: equal to rounding, without importing ArviZ.

    Returns
    -------
    (dict, dict)
        ``name -> R-hat`` and ``name -> bulk ESS``, arrays of the parameter's shape; NaN
        where undefined. Non-numeric parameters are left out.
    """
    numeric = _numeric_arrays(posterior)
    if not numeric:
        return {}, {}
    if compiled:
        statistics = _compiled_block_convergence
    else:
        arviz = load_arviz()
        statistics = lambda block: _block_convergence(arviz, block)  # noqa: E731
    chain, draw = next(iter(numeric.values())).shape[:2]
    width = max(1, DIAGNOSTICS_BLOCK_BYTES // max(1, chain * draw * 8))
    # pieces of at most `width` columns, packed into blocks of at most `width` columns:
    # many small parameters share one block (one compiled call, one sort per column set)
    sizes = {name: int(np.prod(a.shape[2:], dtype=int)) for name, a in numeric.items()}
    pieces = collections.deque((name, start, min(size, start + width))
                               for name, size in sizes.items()
                               for start in range(0, size, width))
    flat = {name: (np.empty(size), np.empty(size)) for name, size in sizes.items()}
    views = {name: (_as_columns(a), _mapped_file(a)) for name, a in numeric.items()}
    while pieces:
        packed, used = [], 0
        while pieces and used + (pieces[0][2] - pieces[0][1]) <= width:
            packed.append(pieces.popleft())
            used += packed[-1][2] - packed[-1][1]
        block = np.empty((chain, draw, used))
        offset = 0
        for name, start, stop in packed:
            columns, mapped = views[name]
            _fill_block(block[:, :, offset:offset + stop - start], numeric[name], columns,
                        start, mapped)
            offset += stop - start
        block_rhat, block_ess = statistics(block)
        offset = 0
        for name, start, stop in packed:
            flat[name][0][start:stop] = block_rhat[offset:offset + stop - start]
            flat[name][1][start:stop] = block_ess[offset:offset + stop - start]
            offset += stop - start
        del block
    rhat = {name: r.reshape(numeric[name].shape[2:]) for name, (r, _) in flat.items()}
    ess = {name: e.reshape(numeric[name].shape[2:]) for name, (_, e) in flat.items()}
    return rhat, ess


def rhat_by_element(posterior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rank-normalized split R-hat (ArviZ) for every element of every parameter.

    Returns ``name -> array of the parameter's shape``; NaN where undefined.
    """
    return convergence_by_element(posterior)[0]


def ess_bulk_by_element(posterior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Bulk effective sample size (ArviZ) for every element of every parameter."""
    return convergence_by_element(posterior)[1]


def _name_list(names: list[str]) -> str:
    if len(names) <= _MAX_NAMES_LISTED:
        return ", ".join(names)
    shown = ", ".join(names[:_MAX_NAMES_LISTED])
    return f"{shown} and {len(names) - _MAX_NAMES_LISTED} more"


def _flagged_elements(
    values: dict[str, np.ndarray], is_bad, dims: dict, coords: dict
) -> list[tuple[str, float]]:
    flagged = []
    for name, array in values.items():
        array = np.asarray(array)
        labels = element_labels(name, array.shape, dims.get(name), coords)
        for label, value in zip(labels, array.ravel()):
            if np.isfinite(value) and is_bad(value):
                flagged.append((label, float(value)))
    return flagged


#: Above this fraction of divergent transitions a float32 run is told about float64.
FLOAT32_DIVERGENCE_HINT = 0.05


def _divergence_message(report: DivergenceReport, target_accept: float | None,
                        single_precision: bool = False) -> str:
    raise_to = "a value closer to 1 (e.g. 0.95 or 0.99)"
    if target_accept is not None:
        raise_to = f"a value above the {target_accept:g} used (e.g. 0.95 or 0.99)"
    message = (
        f"{report.count} of {report.total} transitions after warmup "
        f"({100 * report.fraction:.1f}%) were divergent; the posterior may be biased. "
        f"Raise target_accept to {raise_to}, or reparameterize the model "
        "(e.g. reparam='noncentered' for hierarchical scales near zero)."
    )
    if single_precision and report.fraction >= FLOAT32_DIVERGENCE_HINT:
        # a NaN log density or gradient ends a trajectory as a divergence; in float32 a
        # Cholesky or solve of a near-singular matrix (a smooth Gaussian-process kernel)
        # gives one (posteriordb's gp_pois_regr: 40-60% divergent in float32, clean in
        # float64, benchmarks/adaptation.py)
        message += (
            " The run was in float32: if the model factors or inverts a near-singular "
            "matrix (e.g. a Gaussian-process kernel), run it in float64 with "
            "jax.config.update('jax_enable_x64', True) before building arrays."
        )
    return message


def _single_precision(posterior) -> bool:
    """Whether the draws are float32 or narrower (the run's precision)."""
    kinds = [np.asarray(v).dtype for v in (posterior or {}).values()]
    floats = [k for k in kinds if np.issubdtype(k, np.floating)]
    return bool(floats) and max(k.itemsize for k in floats) <= 4


def _treedepth_message(report: TreeDepthReport) -> str:
    return (
        f"{report.count} of {report.total} transitions ({100 * report.fraction:.1f}%) "
        f"stopped at the maximum tree depth {report.max_tree_depth}; the sampler is "
        f"exploring inefficiently. Raise max_tree_depth (e.g. to "
        f"{report.max_tree_depth + 2}) or reparameterize the model to reduce posterior "
        "correlations."
    )


def diagnose(fit) -> list[str]:
    """Diagnostic warnings for a fit, one sentence group per problem, each saying what to try.

    Only NUTS fits are checked: divergences after warmup, tree-depth saturation (against
    ``fit.info["max_tree_depth"]``, default 10), R-hat > 1.01, bulk ESS < 400 (both
    compiled, ``convergence_by_element(compiled=True)``) and E-BFMI < 0.3 per chain. ADVI,
    Laplace and MAP draws are independent, so none of these apply.

    Parameters
    ----------
    fit : hbm.results.Fit
        Anything with ``method``, ``posterior``, ``sample_stats``, ``info``, ``dims`` and
        ``coords`` attributes.

    Returns
    -------
    list of str
        Empty when nothing is wrong.
    """
    if fit.method != "nuts":
        return []
    messages: list[str] = []
    stats = fit.sample_stats or {}
    info = fit.info or {}
    dims = fit.dims or {}
    coords = fit.coords or {}

    if "diverging" in stats:
        report = divergence_report(stats)
        if report.count > 0:
            messages.append(_divergence_message(report, info.get("target_accept"),
                                                _single_precision(fit.posterior)))

    if "tree_depth" in stats:
        max_depth = info.get("max_tree_depth", DEFAULT_MAX_TREE_DEPTH)
        report = treedepth_report(stats, max_depth)
        if report.count > 0:
            messages.append(_treedepth_message(report))

    rhat, ess = convergence_by_element(fit.posterior, compiled=True)
    rhat_flagged = _flagged_elements(rhat, lambda r: r > RHAT_THRESHOLD, dims, coords)
    if rhat_flagged:
        worst = max(value for _, value in rhat_flagged)
        messages.append(
            f"R-hat above {RHAT_THRESHOLD} (max {worst:.3f}) for "
            f"{_name_list([label for label, _ in rhat_flagged])}: the chains have not "
            "mixed. Run longer warmup and more draws, check for multimodality, or "
            "reparameterize the model."
        )

    ess_flagged = _flagged_elements(ess, lambda e: e < ESS_BULK_THRESHOLD, dims, coords)
    if ess_flagged:
        lowest = min(value for _, value in ess_flagged)
        messages.append(
            f"Bulk ESS below {ESS_BULK_THRESHOLD:g} (min {lowest:.0f}) for "
            f"{_name_list([label for label, _ in ess_flagged])}: posterior means and "
            "intervals are unreliable. Run more draws or chains, or reparameterize the "
            "model to reduce autocorrelation."
        )

    if "energy" in stats:
        values = ebfmi(stats["energy"])
        low = [chain for chain, value in enumerate(values) if value < EBFMI_THRESHOLD]
        if low:
            listed = ", ".join(f"{chain} ({values[chain]:.2f})" for chain in low)
            messages.append(
                f"E-BFMI below {EBFMI_THRESHOLD} in chain(s) {listed}: the sampler "
                "explores the energy distribution poorly, often because of heavy tails "
                "or a funnel. Reparameterize the model (e.g. reparam='noncentered') or "
                "use a dense mass matrix."
            )
    return messages
