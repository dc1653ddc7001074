"""The inference drivers: :func:`sample` and :func:`resume` (NUTS), :func:`advi`,
:func:`find_map` and :func:`fit` (automatic, with fallback).

One module per concept: :mod:`~hbm.inference.settings` (the frozen, validated settings
of a NUTS run), :mod:`~hbm.inference.engine` (the one compiled warmup + sampling program,
also used by :mod:`hbm.batch`), :mod:`~hbm.inference.chains` (placing chains on devices),
:mod:`~hbm.inference.nuts` (the NUTS driver), :mod:`~hbm.inference.checkpointing`,
:mod:`~hbm.inference.variational` (ADVI), :mod:`~hbm.inference.mode` (MAP, Laplace),
:mod:`~hbm.inference.auto` (``fit``) and :mod:`~hbm.inference.common` (shared helpers).
"""

from hbm.inference.auto import fit
from hbm.inference.checkpointing import model_structure
from hbm.inference.common import logdensity_closure
from hbm.inference.mode import find_map
from hbm.inference.nuts import AUTO_REPARAM_MIN_WARMUP, MAX_LOG_LIKELIHOOD_SIZE, resume, sample
from hbm.inference.settings import CHAIN_METHODS, SampleSettings
from hbm.inference.variational import advi

__all__ = [
    "AUTO_REPARAM_MIN_WARMUP",
    "CHAIN_METHODS",
    "MAX_LOG_LIKELIHOOD_SIZE",
    "SampleSettings",
    "advi",
    "find_map",
    "fit",
    "logdensity_closure",
    "model_structure",
    "resume",
    "sample",
]
