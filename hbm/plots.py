"""Figures for fits and reports (matplotlib, imported on first use).

:func:`map_vs_mean` draws the report of :func:`hbm.map_vs_mean`: each scalar parameter's
MAP against its posterior mean, with the 90% central posterior interval, so points far
from the identity line are parameters whose mode misleads (Gelman et al. 2013, "Bayesian
Data Analysis", 3rd ed., section 13.2).
"""

from __future__ import annotations

import numpy as np

from hbm.errors import ConfigurationError

__all__ = ["map_vs_mean", "study", "sbc"]

_REQUIRED = ("map", "mean", "q05", "q95", "collapsed")


def map_vs_mean(report, path=None, ax=None):
    """Plot MAP (x) against posterior mean (y) with 90% intervals and the identity line.

    Parameters
    ----------
    report : pandas.DataFrame
        The output of :func:`hbm.map_vs_mean`.
    path : str or path-like, optional
        Save the figure there as PNG (with the Agg backend).
    ax : matplotlib Axes, optional
        Draw into it instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    missing = [c for c in _REQUIRED if c not in getattr(report, "columns", ())]
    if missing:
        raise ConfigurationError(f"report lacks the columns {missing}; pass the output of "
                                 "hbm.map_vs_mean")
    if path is not None and ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6))
    else:
        fig = ax.figure
    x = report["map"].to_numpy(dtype=float)
    mean = report["mean"].to_numpy(dtype=float)
    low = report["q05"].to_numpy(dtype=float)
    high = report["q95"].to_numpy(dtype=float)
    collapsed = report["collapsed"].to_numpy(dtype=bool)
    errors = np.vstack([mean - low, high - mean])
    for mask, color, label in ((~collapsed, "C0", "parameter"),
                               (collapsed, "C3", "collapsed group scale")):
        if mask.any():
            ax.errorbar(x[mask], mean[mask], yerr=errors[:, mask], fmt="o", color=color,
                        ecolor=color, alpha=0.8, capsize=2, label=label)
    finite = np.concatenate([x, low, high])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1,
                ls="--", label="MAP = mean")
    for label, xi, yi in zip(report.index[collapsed], x[collapsed], mean[collapsed]):
        ax.annotate(str(label), (xi, yi), textcoords="offset points", xytext=(5, 5),
                    color="C3", fontsize=8)
    ax.set_xlabel("MAP (no Jacobian)")
    ax.set_ylabel("posterior mean (90% interval)")
    ax.set_title("MAP versus posterior mean")
    ax.legend(fontsize=8, loc="best")
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig


def study(result, parameter=None, path=None, ax=None):
    """Standardized distance ``(MAP - posterior mean) / posterior sd`` of a study.

    One box per configuration for ``parameter`` (default: the first parameter of the
    table), over data sets and elements; collapsed MAPs are drawn as red crosses.

    Parameters
    ----------
    result : hbm.studies.StudyResult
        The output of :func:`hbm.study`.
    parameter : str, optional
        Which parameter to draw.
    path, ax
        As :func:`map_vs_mean`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    table = getattr(result, "table", None)
    if table is None or "distance" not in getattr(table, "columns", ()):
        raise ConfigurationError("pass the result of hbm.study")
    if parameter is None:
        parameter = table["parameter"].iloc[0]
    rows = table[table["parameter"] == parameter]
    if rows.empty:
        raise ConfigurationError(f"parameter {parameter!r} is not in the study; it has "
                                 f"{list(dict.fromkeys(table['parameter']))}")
    if path is not None and ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    configurations = sorted(rows["configuration"].unique())
    values = []
    for position, config in enumerate(configurations, start=1):
        part = rows[rows["configuration"] == config]
        distance = part["distance"].to_numpy(float)
        values.append(distance[np.isfinite(distance)])
        collapsed = part["collapsed"].to_numpy(bool) & np.isfinite(distance)
        if collapsed.any():
            ax.plot(np.full(collapsed.sum(), position), distance[collapsed], "x", color="C3",
                    label="collapsed MAP" if position == 1 else None)
    ax.boxplot(values, positions=range(1, len(configurations) + 1))
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(1, len(configurations) + 1))
    ax.set_xticklabels([str(c) for c in configurations])
    ax.set_xlabel("configuration")
    ax.set_ylabel(f"(MAP - mean) / sd of {parameter}")
    ax.set_title("MAP versus posterior mean over simulated data sets")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig


def sbc(result, elements=None, path=None, ax=None):
    """ECDF-difference plot of simulation-based calibration ranks with the simultaneous
    95% band of Säilynoja, Bürkner & Vehtari (2022), Statistics and Computing 32:32.

    For each element the ECDF of ``rank / (max_rank + 1)`` minus the uniform CDF, at the
    band's fractions; a line leaving the grey band rejects uniformity at the 5% level.

    Parameters
    ----------
    result : hbm.studies.SBCResult
        The output of :func:`hbm.sbc`.
    elements : list of str, optional
        Element labels to draw (default: all).
    path, ax
        As :func:`map_vs_mean`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    ranks = getattr(result, "ranks", None)
    band = getattr(result, "band", None)
    if ranks is None or band is None:
        raise ConfigurationError("pass the result of hbm.sbc")
    labels = list(dict.fromkeys(ranks["element"])) if elements is None else list(elements)
    unknown = [e for e in labels if e not in set(ranks["element"])]
    if unknown:
        raise ConfigurationError(f"elements {unknown} are not in the SBC result")
    if path is not None and ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    z = np.asarray(band["z"], dtype=float)
    levels = int(ranks["max_rank"].iloc[0]) + 1
    thresholds = np.rint(z * levels).astype(int) - 1
    ax.fill_between(z, band["lower"] - z, band["upper"] - z, color="grey", alpha=0.3,
                    step="mid", label="95% simultaneous band")
    for label in labels:
        r = ranks.loc[ranks["element"] == label, "rank"].to_numpy()
        ecdf = (r[:, None] <= thresholds[None, :]).mean(axis=0)
        ax.step(z, ecdf - z, where="mid", label=label)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("fractional rank")
    ax.set_ylabel("ECDF difference")
    ax.set_title("simulation-based calibration")
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig
