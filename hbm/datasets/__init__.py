"""Small public data sets bundled with hbm.

Each data set is a CSV file shipped inside this package (see ``PROVENANCE.md`` next to
this module for sources, licences and the original studies). :func:`load` reads one into
a :class:`pandas.DataFrame` with the column names of the source R package;
:func:`available` lists the names. The model functions in :mod:`hbm.models` turn these
frames into arrays, integer group codes and coords.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from hbm.errors import DataError

__all__ = ["available", "load", "provenance"]


def _files():
    return resources.files(__name__)


def available() -> list[str]:
    """The names of the bundled data sets, sorted.

    Returns
    -------
    list of str
        Names accepted by :func:`load` (file names without ``.csv``).
    """
    return sorted(
        entry.name[: -len(".csv")]
        for entry in _files().iterdir()
        if entry.is_file() and entry.name.endswith(".csv")
    )


def load(name: str) -> pd.DataFrame:
    """Read a bundled data set.

    Parameters
    ----------
    name : str
        One of :func:`available`, e.g. ``"radon_mn"`` or ``"sleepstudy"``.

    Returns
    -------
    pandas.DataFrame
        A fresh frame (callers may modify it) with the source's column names.

    Raises
    ------
    DataError
        If ``name`` is not a bundled data set.
    """
    names = available()
    if not isinstance(name, str) or name not in names:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(names)}")
    with _files().joinpath(f"{name}.csv").open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)


def provenance() -> str:
    """The text of ``PROVENANCE.md``: where each bundled data set comes from."""
    return _files().joinpath("PROVENANCE.md").read_text(encoding="utf-8")
