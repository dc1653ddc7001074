"""Figures for fits and reports (matplotlib, imported on first use).

:func:`map_vs_mean` draws the report of :func:`hbm.map_vs_mean`: each scalar parameter's
MAP against its posterior mean, with the 90% central posterior interval, so points far
from the identity line are parameters whose mode misleads (Gelman et al. 2013, "Bayesian
Data Analysis", 3rd ed., section 13.2). Population parameters and scales are drawn in one
panel, group effects (the elements of hierarchical nodes) in another.

:func:`forest` draws a fit the same way round: population parameters and scales as a
forest plot, group effects as a caterpillar plot (each effect's posterior mean and 90%
interval, sorted by the mean, as in the county plots of Gelman & Hill 2007, "Data Analysis
Using Regression and Multilevel/Hierarchical Models").
"""

from __future__ import annotations

import numpy as np

from hbm.errors import ConfigurationError

__all__ = ["map_vs_mean", "forest", "study", "sbc"]

_REQUIRED = ("map", "mean", "q05", "q95", "collapsed")


def map_vs_mean(report, path=None, ax=None):
    """Plot MAP (x) against posterior mean (y) with 90% intervals and the identity line.

    When the report has group effects (its ``group_effect`` column) and other parameters,
    the figure has two panels: population parameters and scales (each labelled; elements
    with zero posterior sd, e.g. the fixed entries of a Cholesky factor, are left out) and
    the group effects.

    Parameters
    ----------
    report : pandas.DataFrame
        The output of :func:`hbm.map_vs_mean`.
    path : str or path-like, optional
        Save the figure there as PNG (with the Agg backend).
    ax : matplotlib Axes, optional
        Draw every row into it (one panel) instead of a new figure.

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

    groups = report["group_effect"].to_numpy(bool) if "group_effect" in report.columns \
        else np.zeros(len(report), bool)
    if ax is None and groups.any() and not groups.all():
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.8))
        constant = report["sd"].to_numpy(float) == 0
        _map_vs_mean_panel(report[~groups & ~constant], left, labels=True)
        left.set_title("population parameters and scales")
        n = int(groups.sum())
        _map_vs_mean_panel(report[groups], right, labels=False, alpha=0.35,
                           kind="group effect")
        right.set_title(f"group effects ({n} elements)")
        fig.suptitle("MAP versus posterior mean")
        fig.tight_layout()
    else:
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 6))
        else:
            fig = ax.figure
        _map_vs_mean_panel(report, ax, labels=False)
        ax.set_title("MAP versus posterior mean")
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig


def _map_vs_mean_panel(report, ax, labels: bool, alpha: float = 0.8, kind: str = "parameter"):
    """One MAP-versus-mean scatter: collapsed group scales in red and named."""
    x = report["map"].to_numpy(dtype=float)
    mean = report["mean"].to_numpy(dtype=float)
    low = report["q05"].to_numpy(dtype=float)
    high = report["q95"].to_numpy(dtype=float)
    collapsed = report["collapsed"].to_numpy(dtype=bool)
    errors = np.vstack([mean - low, high - mean])
    for mask, color, label in ((~collapsed, "C0", kind),
                               (collapsed, "C3", "collapsed group scale")):
        if mask.any():
            ax.errorbar(x[mask], mean[mask], yerr=errors[:, mask], fmt="o", color=color,
                        ecolor=color, alpha=alpha if color == "C0" else 0.9, capsize=2,
                        label=label, markersize=4)
    finite = np.concatenate([x, low, high])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1,
                ls="--", label="MAP = mean")
    named = np.ones(len(x), bool) if labels else collapsed
    for label, xi, yi, red in zip(report.index[named], x[named], mean[named],
                                  collapsed[named]):
        ax.annotate(str(label), (xi, yi), textcoords="offset points", xytext=(5, 5),
                    color="C3" if red else "black", fontsize=8)
    ax.set_xlabel("MAP (no Jacobian)")
    ax.set_ylabel("posterior mean (90% interval)")
    ax.legend(fontsize=8, loc="best")


def forest(fit, path=None, groups=None, max_population: int = 40):
    """Population parameters and scales as a forest plot, group effects as sorted
    caterpillar plots (one panel per group node, one series per effect term), side by
    side.

    Parameters
    ----------
    fit : hbm.results.Fit
        A fit with draws (NUTS, ADVI, Laplace).
    path : str or path-like, optional
        Save the figure there as PNG (with the Agg backend).
    groups : list of str, optional
        The parameters drawn as group effects; default: the model's hierarchical nodes
        (``locscale`` nodes of :meth:`hbm.Model.bind`), or none for a model without them.
    max_population : int
        At most this many population elements are drawn (the first ones).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    from hbm.diagnostics import element_labels

    posterior = getattr(fit, "posterior", None)
    if not isinstance(posterior, dict) or not posterior:
        raise ConfigurationError("pass a fit with posterior draws")
    model = getattr(fit, "model", None)
    dims = getattr(model, "dims", {}) or {}
    coords = getattr(model, "coords", {}) or {}
    if groups is None:
        groups = []
        if model is not None and model.can_simulate:
            bound = model.bind(fit.data, reparam="centered")
            groups = [n.name for n in bound.nodes if n.locscale]
    unknown = [g for g in groups if g not in posterior]
    if unknown:
        raise ConfigurationError(f"groups {unknown} are not parameters of the fit")
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []  # (label, mean, q05, q25, q75, q95) of the population elements
    for name, draws in posterior.items():
        if name in groups:
            continue
        flat = np.asarray(draws, float).reshape((-1,) + np.shape(draws)[2:])
        labels = element_labels(name, flat.shape[1:], dims.get(name), coords)
        flat = flat.reshape(flat.shape[0], -1)
        qs = np.quantile(flat, [0.05, 0.25, 0.75, 0.95], axis=0)
        for i, label in enumerate(labels):
            if np.std(flat[:, i]) > 0:
                rows.append((label, flat[:, i].mean(), *qs[:, i]))
    rows = rows[:max_population]
    ncols = int(bool(rows)) + len(groups)
    ratios = [1.0] * int(bool(rows)) + [1.4] * len(groups)
    fig, axes = plt.subplots(1, max(ncols, 1), figsize=(max(5.5 * sum(ratios), 5.5), max(
        4.5, 0.32 * len(rows) + 1.5)), squeeze=False,
        gridspec_kw={"width_ratios": ratios} if ncols > 1 else None)
    axes = list(axes[0])
    if rows:
        ax = axes.pop(0)
        ypos = np.arange(len(rows))[::-1]
        _, mean, q05, q25, q75, q95 = (np.array(c) for c in zip(*rows))
        ax.hlines(ypos, q05, q95, color="C0", lw=1.2)
        ax.hlines(ypos, q25, q75, color="C0", lw=3.5)
        ax.plot(mean, ypos, "o", color="white", markeredgecolor="C0", markersize=5)
        ax.set_yticks(ypos)
        ax.set_yticklabels([r[0] for r in rows], fontsize=9)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_title("population parameters and scales")
        ax.set_xlabel("posterior mean, 50% and 90% intervals")
    for name in groups:
        ax = axes.pop(0)
        draws = np.asarray(posterior[name], float)
        flat = draws.reshape((-1,) + draws.shape[2:])
        n_group = flat.shape[1] if flat.ndim > 1 else 1
        flat = flat.reshape(flat.shape[0], n_group, -1)  # (draws, group, term)
        names = dims.get(name, ())
        term_dim = names[-1] if flat.shape[-1] > 1 and len(names) == flat.ndim - 1 else None
        terms = coords.get(term_dim) if term_dim else None
        for k in range(flat.shape[-1]):
            mean = flat[..., k].mean(0)
            q05, q95 = np.quantile(flat[..., k], [0.05, 0.95], axis=0)
            order = np.argsort(mean)
            rank = np.arange(n_group)
            color = f"C{k}"
            ax.vlines(rank, q05[order], q95[order], color=color, alpha=0.45, lw=1)
            label = str(terms[k]) if terms is not None and len(terms) == flat.shape[-1] \
                else (f"term {k}" if flat.shape[-1] > 1 else name)
            ax.plot(rank, mean[order], "o", color=color, markersize=2.5, label=label)
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        group_dim = names[0] if names else "group"
        ax.set_title(f"{name}: {n_group} {group_dim} effects, sorted by posterior mean")
        ax.set_xlabel(f"{group_dim} (rank of the posterior mean)")
        ax.set_ylabel("posterior mean and 90% interval")
        if flat.shape[-1] > 1:
            ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
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
