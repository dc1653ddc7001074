"""The settings of a NUTS run: one frozen, validated object.

:class:`SampleSettings` holds every argument of :func:`hbm.sample` that shapes the run.
It is validated once, when it is made (:meth:`SampleSettings.validated`), and then travels
unchanged: the driver reads it, :attr:`SampleSettings.kernel` (a :class:`KernelSettings`)
is part of the compiled programs' cache key, and :meth:`SampleSettings.to_meta` /
:meth:`SampleSettings.from_meta` are the checkpoint's record of it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from hbm.errors import ConfigurationError

__all__ = ["CHAIN_METHODS", "DEFAULT_METRIC", "DEFAULT_WARMUP_SCHEDULE", "REPARAM_CHOICES",
           "KernelSettings", "SampleSettings", "check_int"]

CHAIN_METHODS = ("auto", "vectorized", "sequential", "sharded")
#: The default mass-matrix estimator and warmup schedule, chosen by
#: ``benchmarks/adaptation.py`` (see benchmarks/README.md): the gradient-informed diagonal,
#: re-estimated early and often. Over the benchmark's posteriors it gives more ESS per
#: gradient than Stan's windowed variance, with a cheaper warmup.
DEFAULT_METRIC = "diag_grad"
DEFAULT_WARMUP_SCHEDULE = "early"
REPARAM_CHOICES = ("centered", "noncentered", "auto")


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an ``int`` of at least ``minimum``, or a ConfigurationError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_number(name: str, value) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None


class KernelSettings(NamedTuple):
    """What the compiled per-chain program depends on besides shapes (hashable: a cache
    key). ``given_step_size``: warmup starts from the user's step size instead of the
    step-size search; ``metric``: the mass-matrix estimator
    (:data:`hbm.samplers.mass_matrix.METRIC_NAMES`); ``warmup_schedule``:
    :data:`hbm.samplers.schedules.SCHEDULE_NAMES`."""

    max_tree_depth: int = 10
    target_accept: float = 0.8
    given_step_size: bool = False
    metric: str = "diag_grad"
    warmup_schedule: str = "early"


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """The validated settings of one :func:`hbm.sample` run (see its docstring)."""

    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    thin: int = 1
    seed: int = 0
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    chain_method: str = "auto"
    chunk_size: int | None = None  # None: chosen at run time (hbm.inference.nuts)
    step_size: float | None = None
    log_likelihood: bool | None = None
    reparam: str = "auto"  # "centered", "noncentered", "auto" or "custom" (a dict per node)
    store: str | None = None
    metric: str = "diag_grad"
    warmup_schedule: str = "early"

    @classmethod
    def validated(cls, *, chains, warmup, draws, thin, seed, target_accept, max_tree_depth,
                  dense_mass, chain_method, chunk_size, step_size, log_likelihood, reparam,
                  store, metric=None, warmup_schedule=None) -> "SampleSettings":
        """Check every argument (a ConfigurationError names the first bad one) and build
        the settings. ``reparam`` may be a dict per node; it is recorded as ``"custom"``."""
        chains = check_int("chains", chains, 1)
        warmup = check_int("warmup", warmup, 0)
        draws = check_int("draws", draws, 1)
        thin = check_int("thin", thin, 1)
        max_tree_depth = check_int("max_tree_depth", max_tree_depth, 1)
        if chunk_size is not None:
            chunk_size = check_int("chunk_size", chunk_size, 1)
        seed = check_int("seed", seed, 0)
        if seed >= 2**63:
            raise ConfigurationError(f"seed must be below 2**63, got {seed}")
        for name, value in (("chains", chains), ("warmup", warmup), ("draws", draws),
                            ("thin", thin), ("chunk_size", chunk_size or 0)):
            if value >= 2**31:
                raise ConfigurationError(f"{name} must be below 2**31, got {value}")
        target_accept = _check_number("target_accept", target_accept)
        step_size = _check_number("step_size", step_size)
        if not 0.0 < target_accept < 1.0:
            raise ConfigurationError(f"target_accept must lie in (0, 1), got {target_accept}")
        if not isinstance(chain_method, str) or chain_method not in CHAIN_METHODS:
            raise ConfigurationError(f"chain_method must be one of {CHAIN_METHODS}, got "
                                     f"{chain_method!r}")
        if warmup == 0 and step_size is None:
            raise ConfigurationError("warmup=0 needs a step_size (and uses a unit metric)")
        if step_size is not None and not (step_size > 0 and math.isfinite(step_size)):
            raise ConfigurationError(f"step_size must be a positive number, got {step_size}")
        if not (isinstance(reparam, dict)
                or (isinstance(reparam, str) and reparam in REPARAM_CHOICES)):
            raise ConfigurationError("reparam must be 'centered', 'noncentered', 'auto' or a "
                                     f"dict, got {reparam!r}")
        from hbm.samplers.mass_matrix import METRIC_NAMES
        from hbm.samplers.schedules import SCHEDULE_NAMES

        if metric is not None and (not isinstance(metric, str) or metric not in METRIC_NAMES):
            raise ConfigurationError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
        if dense_mass and metric not in (None, "dense"):
            raise ConfigurationError(f"dense_mass=True asks for the dense metric, but "
                                     f"metric={metric!r}; pass one of them")
        metric = metric or ("dense" if dense_mass else DEFAULT_METRIC)
        warmup_schedule = warmup_schedule or DEFAULT_WARMUP_SCHEDULE
        if not isinstance(warmup_schedule, str) or warmup_schedule not in SCHEDULE_NAMES:
            raise ConfigurationError(f"warmup_schedule must be one of {SCHEDULE_NAMES}, got "
                                     f"{warmup_schedule!r}")
        if chunk_size is not None and thin > 1 and chunk_size % thin:
            chunk_size += thin - chunk_size % thin  # chunks hold whole thinning windows
        return cls(chains=chains, warmup=warmup, draws=draws, thin=thin, seed=seed,
                   target_accept=target_accept, max_tree_depth=max_tree_depth,
                   dense_mass=metric == "dense", chain_method=chain_method,
                   chunk_size=chunk_size, step_size=step_size,
                   log_likelihood=None if log_likelihood is None else bool(log_likelihood),
                   reparam=reparam if isinstance(reparam, str) else "custom",
                   store=None if store is None else str(store), metric=metric,
                   warmup_schedule=warmup_schedule)

    @property
    def kernel(self) -> KernelSettings:
        return KernelSettings(self.max_tree_depth, self.target_accept,
                              self.step_size is not None, self.metric, self.warmup_schedule)

    @property
    def total_iterations(self) -> int:
        return self.warmup + self.draws * self.thin

    def to_meta(self) -> dict:
        """A JSON-ready dict (the checkpoint's record)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> "SampleSettings":
        """The settings recorded by :meth:`to_meta` (unknown keys are an error: a
        checkpoint from another version of hbm)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(meta) - fields
        if unknown:
            raise ConfigurationError(f"unknown settings in the checkpoint: {sorted(unknown)}")
        # checkpoints from before these settings existed ran Stan's diagonal and windows
        return cls(**{"metric": "diag", "warmup_schedule": "stan", **meta})
