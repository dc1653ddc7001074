"""The model library: classic hierarchical models, ready to fit.

Every function ``name(df=None, **options) -> (model, data)`` builds an
:class:`hbm.Model` and its data dict from a :class:`pandas.DataFrame` (the bundled data
set of :mod:`hbm.datasets` when ``df`` is None, or simulated data for the simulation
models), with integer group codes and ArviZ coords. Naming conventions: population-level
effects ``beta`` (design-matrix order, intercept first), group-level sds
``sigma_<group>``, correlation Cholesky factors ``L_<group>``, group effects
``<group>_effect``, residual scale ``sigma``, a single grand mean ``mu``. Each docstring
writes the model out and states its priors.
"""

from __future__ import annotations

from hbm.models.cbpp import cbpp
from hbm.models.cfa import holzinger_swineford
from hbm.models.crt import crt, simulate_crt
from hbm.models.eight_schools import eight_schools
from hbm.models.epil import epil
from hbm.models.exam import exam
from hbm.models.insteval import insteval
from hbm.models.measurement_error import measurement_error, simulate_measurement_error
from hbm.models.penicillin import penicillin
from hbm.models.radon import (
    radon_pooled,
    radon_unpooled,
    radon_uranium,
    radon_varying_intercept,
    radon_varying_intercept_slope,
    radon_varying_slope,
)
from hbm.models.sleepstudy import sleepstudy

#: Every library model by name.
MODELS = {
    "eight_schools": eight_schools,
    "radon_pooled": radon_pooled,
    "radon_unpooled": radon_unpooled,
    "radon_varying_intercept": radon_varying_intercept,
    "radon_varying_slope": radon_varying_slope,
    "radon_varying_intercept_slope": radon_varying_intercept_slope,
    "radon_uranium": radon_uranium,
    "sleepstudy": sleepstudy,
    "cbpp": cbpp,
    "epil": epil,
    "penicillin": penicillin,
    "exam": exam,
    "crt": crt,
    "measurement_error": measurement_error,
    "holzinger_swineford": holzinger_swineford,
    "insteval": insteval,
}


def available() -> dict:
    """The library models, name -> function (a copy of :data:`MODELS`)."""
    return dict(MODELS)


__all__ = ["MODELS", "available", "simulate_crt", "simulate_measurement_error", *MODELS]
