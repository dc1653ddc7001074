"""Eight schools: the SAT coaching experiments (Rubin 1981).

The classic example of a hierarchical normal model with known sampling standard errors,
and of the funnel that makes the centered parameterization hard for HMC (Betancourt and
Girolami 2015, "Hamiltonian Monte Carlo for hierarchical models"). Priors as in
posteriordb's ``eight_schools_centered`` / ``eight_schools_noncentered``.
"""

from __future__ import annotations

import numpy as np

from hbm import dist
from hbm.errors import DataError
from hbm.models._common import build, frame, numeric

#: The textbook values (Gelman et al., Bayesian Data Analysis, table 5.2).
TEXTBOOK_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
TEXTBOOK_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
SCHOOLS = ("A", "B", "C", "D", "E", "F", "G", "H")


def eight_schools(df=None, *, centered: bool = True):
    """The eight schools model.

    .. math::

        \\mu &\\sim \\mathrm{Normal}(0, 5), \\qquad \\tau \\sim \\mathrm{HalfCauchy}(5), \\\\
        \\theta_j &\\sim \\mathrm{Normal}(\\mu, \\tau), \\qquad
        y_j \\sim \\mathrm{Normal}(\\theta_j, \\sigma_j), \\quad j = 1..8.

    Non-centered (``centered=False``): :math:`\\tilde\\theta_j \\sim \\mathrm{Normal}(0, 1)`
    (parameter ``theta_z``) and the deterministic :math:`\\theta_j = \\mu + \\tau
    \\tilde\\theta_j`.

    Parameters
    ----------
    df : pandas.DataFrame, optional
        Columns ``est`` (the estimate ``y``) and ``se`` (its standard error ``sigma``),
        and optionally ``school`` (labels). ``None`` uses the textbook values
        ``y = 28, 8, -3, 7, -1, 1, 18, 12``, ``sigma = 15, 10, 16, 11, 9, 11, 10, 18``
        (the bundled CSV holds the unrounded estimates; pass
        ``hbm.datasets.load("eight_schools")`` to use them).
    centered : bool
        Write ``theta`` centered (the default) or non-centered explicitly. (The model
        layer may still reparameterize the centered form automatically.)

    Returns
    -------
    (Model, dict)
        The model and its data ``{"y": (J,), "sigma": (J,)}``.
    """
    if df is None:
        y = np.asarray(TEXTBOOK_Y)
        sigma = np.asarray(TEXTBOOK_SIGMA)
        schools = list(SCHOOLS)
    else:
        df = frame(df, "eight_schools", ["est", "se"])
        y = numeric(df, "est")
        sigma = numeric(df, "se")
        if np.any(sigma <= 0):
            raise DataError("standard errors 'se' must be positive")
        schools = (
            [str(s) for s in df["school"]] if "school" in df.columns else list(range(len(df)))
        )
    n_school = len(y)
    data = {"y": y, "sigma": sigma}
    if centered:
        prior = {
            "mu": dist.Normal(0.0, 5.0),
            "tau": dist.HalfCauchy(5.0),
            "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand((n_school,)),
        }
        deterministic = None
        dims = {"theta": ("school",)}
    else:
        prior = {
            "mu": dist.Normal(0.0, 5.0),
            "tau": dist.HalfCauchy(5.0),
            "theta_z": dist.Normal(0.0, 1.0).expand((n_school,)),
        }
        deterministic = {"theta": _theta}
        dims = {"theta": ("school",), "theta_z": ("school",)}
    model = build(
        prior=prior,
        likelihood=lambda p, d: {"y": dist.Normal(_theta(p, d), d["sigma"])},
        dims=dims,
        coords={"school": schools},
        deterministic=deterministic,
    )
    return model, data


def _theta(p, d):
    """School effects: sampled when centered, ``mu + tau * theta_z`` otherwise."""
    if "theta" in p:
        return p["theta"]
    return p["mu"] + p["tau"] * p["theta_z"]
