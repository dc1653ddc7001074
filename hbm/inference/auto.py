"""The automatic driver: :func:`fit`, NUTS with an explicit fallback to ADVI
(the policy is :func:`hbm.fallback.fallback_reason`)."""

from __future__ import annotations

import time

from hbm.errors import ConfigurationError, HbmError
from hbm.inference import mode, nuts, variational
from hbm.model import Model

__all__ = ["fit"]


class _FallBack(HbmError):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def fit(model: Model, data=None, method: str = "auto", *, time_budget: float | None = None,
        seed: int = 0, advi_method: str = "fullrank", **kwargs):
    """Fit with ``method``: ``"nuts"``, ``"advi"``, ``"map"``, ``"laplace"`` or ``"auto"``.

    ``"auto"`` runs NUTS and falls back to full-rank ADVI, with a warning, when NUTS cannot
    start (no finite initial point), when warmup collapses (step size below 1e-8, or more
    than 20% of warmup transitions divergent), or when the measured warmup speed predicts
    that the requested draws will not finish within ``time_budget`` seconds. The decision
    is :func:`hbm.fallback.fallback_reason`; the result records ``fit.method`` and
    ``fit.fallback_reason``. Extra keyword arguments go to the chosen method."""
    import warnings

    from hbm.diagnostics import HbmWarning
    from hbm.errors import InitializationError
    from hbm.fallback import NUTSDiagnostics, fallback_reason

    methods = ("auto", "nuts", "advi", "map", "laplace")
    if method not in methods:
        raise ConfigurationError(f"method must be one of {methods}, got {method!r}")
    if method == "nuts":
        return nuts.sample(model, data, seed=seed, **kwargs)
    if method == "advi":
        return variational.advi(model, data, method=advi_method, seed=seed, **kwargs)
    if method in ("map", "laplace"):
        return mode.find_map(model, data, seed=seed, laplace=method == "laplace", **kwargs)

    if time_budget is not None and not (isinstance(time_budget, (int, float))
                                        and time_budget > 0):
        raise ConfigurationError(f"time_budget must be a number of seconds > 0, got "
                                 f"{time_budget!r}")
    draws = kwargs.get("draws", 1000) * kwargs.get("thin", 1)
    start = time.perf_counter()

    def check(diag: NUTSDiagnostics):
        budget = None
        if time_budget is not None:
            elapsed = time.perf_counter() - start
            budget = time_budget - elapsed
            if not budget > 0:  # warmup alone spent it: no sampling time is left
                raise _FallBack(f"NUTS warmup took {elapsed:.3g} s, the whole time budget "
                                f"of {time_budget:.3g} s")
        reason = fallback_reason(diag, num_draws=draws, time_budget=budget)
        if reason is not None:
            raise _FallBack(reason)

    try:
        result = nuts.sample(model, data, seed=seed, _after_warmup=check, **kwargs)
        result.fallback_reason = None
        return result
    except _FallBack as e:
        reason = e.reason
    except InitializationError as e:
        reason = fallback_reason(NUTSDiagnostics(False, float("nan"), float("nan")),
                                 num_draws=draws) + f" ({e})"
    warnings.warn(f"NUTS was abandoned ({reason}); falling back to full-rank ADVI. Treat the "
                  "result as approximate.", HbmWarning, stacklevel=2)
    advi_kwargs = {k: kwargs[k] for k in ("draws", "progress") if k in kwargs}
    result = variational.advi(model, data, method=advi_method, seed=seed, **advi_kwargs)
    result.fallback_reason = reason
    result.info["fallback_reason"] = reason
    result.info["requested_method"] = "auto"
    return result
