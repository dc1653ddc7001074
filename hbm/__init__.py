"""hbm: Bayesian hierarchical models in JAX, with our own NUTS, ADVI, MAP and Laplace.

The public names are listed in ``__all__``; each is re-exported from the module that
defines it (imported on first use, so ``import hbm`` stays light). Importing hbm asks XLA for one
CPU device per core, so that chains run on every core (opt out with ``HBM_CPU_DEVICES=1``;
see :mod:`hbm.cpu_devices`), and turns on JAX's persistent compilation cache in a per-user
directory (opt out with ``HBM_COMPILATION_CACHE=0``; see :mod:`hbm.compilation_cache`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "Model": "hbm.model",
    "BoundModel": "hbm.model",
    # inference
    "sample": "hbm.inference",
    "resume": "hbm.inference",
    "advi": "hbm.inference",
    "find_map": "hbm.inference",
    "fit": "hbm.inference",
    "predict": "hbm.prediction",
    "prior_predictive": "hbm.prediction",
    "map_vs_mean": "hbm.compare",
    "study": "hbm.studies",
    "sbc": "hbm.studies",
    "formula": "hbm.formulas",
    # results
    "Fit": "hbm.results",
    "HbmWarning": "hbm.diagnostics",
    # errors
    "HbmError": "hbm.errors",
    "ModelError": "hbm.errors",
    "ModelTypeError": "hbm.errors",
    "DataError": "hbm.errors",
    "InitializationError": "hbm.errors",
    "ConfigurationError": "hbm.errors",
    "SamplingError": "hbm.errors",
    "ConstraintError": "hbm.errors",
}
_SUBMODULES = ("dist", "constraints", "transforms", "datasets", "models", "diagnostics",
               "samplers", "plots", "errors", "checkpoint", "reparam", "compilation_cache",
               "cpu_devices")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)

from hbm.cpu_devices import request_host_devices as _request_host_devices  # noqa: E402

_request_host_devices()  # before JAX starts its CPU backend: one device per core

from hbm.compilation_cache import enable_default as _enable_compilation_cache  # noqa: E402

_enable_compilation_cache()


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"hbm.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'hbm' has no attribute {name!r}")


def __dir__():
    return __all__
