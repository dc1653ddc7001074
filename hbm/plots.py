"""Figures for fits and reports (matplotlib, imported on first use).

:func:`map_vs_mean` draws the report of :func:`hbm.map_vs_mean`: each scalar parameter's
MAP against its posterior mean, with the 90% central posterior interval, so points far
from the identity line are parameters whose mode misleads (Gelman et al. 2013, "Bayesian
Data Analysis", 3rd ed., section 13.2).
"""

from __future__ import annotations

import numpy as np

from hbm.errors import ConfigurationError

__all__ = ["map_vs_mean"]

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
