"""Confirmatory factor analysis of the Holzinger and Swineford (1939) mental ability tests.

The classic three-factor model of Joreskog (1969), "A general approach to confirmatory
maximum likelihood factor analysis", Psychometrika 34, as in lavaan's tutorial: factors
visual (x1-x3), textual (x4-x6) and speed (x7-x9), with 301 children. Bayesian CFA as in
Merkle and Rosseel (2018), "blavaan: Bayesian structural equation models via parameter
expansion", J. Stat. Softw. 85(4). Identification: factor variances fixed to 1 (the
factors are standardized, their correlation has an LKJ prior) and loadings positive.
"""

from __future__ import annotations

import numpy as np

from hbm import dist
from hbm.models._common import build, deprecated_centered, frame, numeric, positive_float

#: lavaan's x1..x9 in the sem::HS.data names.
TESTS = (
    "visual", "cubes", "flags",
    "paragrap", "sentence", "wordm",
    "addition", "counting", "straight",
)
FACTORS = ("visual", "textual", "speed")
#: Factor measured by each test.
TEST_FACTOR = (0, 0, 0, 1, 1, 1, 2, 2, 2)


def holzinger_swineford(df=None, *, centered=None, lkj_concentration=2.0):
    """Three correlated factors measured by nine standardized tests.

    .. math::

        L &\\sim \\mathrm{LKJCholesky}(3, \\nu), \\qquad
        \\eta_i \\sim \\mathrm{MultivariateNormal}(0, L L^T), \\\\
        x_{ik} &\\sim \\mathrm{Normal}(\\nu_k + \\lambda_k \\eta_{i, f(k)}, \\sigma_k),

    with :math:`f(k)` the factor of test ``k``, tests standardized (mean 0, sd 1).
    Priors: ``nu ~ Normal(0, 1)``, ``loading ~ HalfNormal(1)`` (positive),
    ``sigma ~ HalfNormal(1)``, LKJ shape ``nu = lkj_concentration`` (2).
    Deterministic ``factor_corr = L L^T``.

    Parameters
    ----------
    df : pandas.DataFrame, optional
        Columns named as :data:`TESTS`; the bundled ``holzinger_swineford`` when None.
    centered : None
        Deprecated and ignored (a DeprecationWarning): ``factor_score`` is always the
        MultivariateNormal node above, and ``hbm.sample(..., reparam=...)`` chooses how
        it is sampled.

    Returns
    -------
    (Model, dict)
        Data ``{"x" (person, test), "factor" (test,)}``; parameters ``nu``, ``loading``,
        ``sigma`` (test,), ``L_factor`` (3, 3), ``factor_score`` (person, factor).
    """
    deprecated_centered("holzinger_swineford", centered)
    df = frame(df, "holzinger_swineford", list(TESTS))
    raw = np.column_stack([numeric(df, t) for t in TESTS])
    sd = raw.std(axis=0, ddof=1)
    sd[sd == 0] = 1.0
    x = (raw - raw.mean(axis=0)) / sd
    n_person, n_factor = len(x), len(FACTORS)
    data = {"x": x, "factor": np.asarray(TEST_FACTOR, dtype=np.int32)}
    n_test = len(TESTS)
    prior = {
        "nu": dist.Normal(0.0, 1.0).expand((n_test,)),
        "loading": dist.HalfNormal(1.0).expand((n_test,)),
        "sigma": dist.HalfNormal(1.0).expand((n_test,)),
        "L_factor": dist.LKJCholesky(
            n_factor, positive_float("lkj_concentration", lkj_concentration)
        ),
    }
    prior["factor_score"] = lambda p, d: dist.MultivariateNormal(
        np.zeros(n_factor), scale_tril=p["L_factor"]
    ).expand((n_person,))

    def likelihood(p, d):
        scores = p["factor_score"][:, d["factor"]]
        return {"x": dist.Normal(p["nu"] + p["loading"] * scores, p["sigma"])}

    deterministic = {"factor_corr": lambda p, d: p["L_factor"] @ p["L_factor"].T}
    model = build(
        prior=prior,
        likelihood=likelihood,
        dims={
            "nu": ("test",),
            "loading": ("test",),
            "sigma": ("test",),
            "factor_score": ("person", "factor"),
        },
        coords={"test": list(TESTS), "factor": list(FACTORS), "person": list(range(n_person))},
        deterministic=deterministic,
    )
    return model, data
