"""The policy that decides when ``hbm.fit(method="auto")`` falls back from NUTS to ADVI.

NUTS (Hoffman & Gelman 2014, "The No-U-Turn Sampler", JMLR 15) is the default. It is
abandoned for ADVI (Kucukelbir et al. 2017) only for one of these reasons, checked in
this order, from diagnostics gathered during (a prefix of) warmup:

1. it cannot start: no initial point with a finite log density and gradient;
2. the adapted step size collapsed below ``min_step_size`` (default 1e-8), or is not a
   positive finite number: the posterior geometry defeats the integrator;
3. more than ``max_divergent_fraction`` (default 20%) of the warmup transitions
   diverged;
4. the predicted sampling time, seconds per warmup iteration times the number of draws,
   exceeds ``time_budget`` (only when a budget is given).

Thresholds are inclusive on the "NUTS is fine" side: a step size of exactly 1e-8, a
divergent fraction of exactly 0.2 and a predicted time of exactly the budget all keep
NUTS. The decision is pure and depends on nothing else.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from hbm.errors import ConfigurationError

__all__ = ["NUTSDiagnostics", "fallback_reason"]


class NUTSDiagnostics(NamedTuple):
    """What the driver learned from trying NUTS.

    Attributes
    ----------
    initialized : whether a finite initial point was found.
    step_size : the (adapted) step size; ignored when not initialized.
    warmup_divergent_fraction : fraction of warmup transitions that diverged.
    seconds_per_warmup_iteration : measured wall time per warmup iteration (all chains
        together), or ``None`` if not measured.
    """

    initialized: bool
    step_size: float
    warmup_divergent_fraction: float
    seconds_per_warmup_iteration: float | None = None


def fallback_reason(
    diag: NUTSDiagnostics,
    *,
    num_draws: int,
    time_budget: float | None = None,
    min_step_size: float = 1e-8,
    max_divergent_fraction: float = 0.2,
) -> str | None:
    """Why NUTS should be replaced by ADVI, or ``None`` if NUTS is fine.

    Parameters
    ----------
    diag : diagnostics of the NUTS attempt.
    num_draws : number of draws (per chain) still to sample.
    time_budget : seconds allowed for sampling, or ``None`` for no limit.
    min_step_size : step sizes strictly below this count as collapsed.
    max_divergent_fraction : divergent fractions strictly above this trigger fallback.

    Returns
    -------
    A short human-readable reason, or ``None``.
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 0:
        raise ConfigurationError(f"num_draws must be an integer >= 0, got {num_draws!r}")
    if time_budget is not None and not time_budget > 0:
        raise ConfigurationError(f"time_budget must be > 0 or None, got {time_budget!r}")
    if not min_step_size > 0:
        raise ConfigurationError(f"min_step_size must be > 0, got {min_step_size!r}")
    if not 0 <= max_divergent_fraction <= 1:
        raise ConfigurationError(
            f"max_divergent_fraction must lie in [0, 1], got {max_divergent_fraction!r}"
        )

    if not diag.initialized:
        return "NUTS cannot start: no initial point with a finite log density and gradient"

    step_size = float(diag.step_size)
    if not (math.isfinite(step_size) and step_size > 0):
        return f"NUTS step size is not a positive finite number ({step_size!r})"
    if step_size < min_step_size:
        return (
            f"NUTS step size collapsed to {step_size:.3g}, below {min_step_size:.3g}"
        )

    divergent = float(diag.warmup_divergent_fraction)
    if math.isnan(divergent) or divergent > max_divergent_fraction:
        return (
            f"{divergent:.1%} of NUTS warmup transitions diverged "
            f"(more than {max_divergent_fraction:.0%})"
        )

    seconds = diag.seconds_per_warmup_iteration
    if time_budget is not None and seconds is not None:
        predicted = float(seconds) * num_draws
        if math.isnan(predicted) or predicted > time_budget:
            return (
                f"NUTS would need about {predicted:.3g} s for {num_draws} draws "
                f"({float(seconds):.3g} s per iteration), more than the time budget "
                f"of {time_budget:.3g} s"
            )
    return None
