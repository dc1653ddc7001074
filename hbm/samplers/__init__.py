"""Samplers: integrators, metrics, the NUTS tree and kernel, and Stan-style warmup."""

from hbm.samplers.adaptation import (
    DualAveragingState,
    Schedule,
    WarmupState,
    WelfordState,
    build_schedule,
    dual_averaging,
    find_reasonable_step_size,
    warmup_final,
    warmup_init,
    warmup_step,
    welford_estimate,
    welford_variance,
)
from hbm.samplers.integrators import IntegratorState, velocity_verlet
from hbm.samplers.lockstep_free import run_lockstep_free
from hbm.samplers.metrics import LowRankInverseMass, Metric, gaussian_euclidean, metric_from
from hbm.samplers.nuts import HMCState, NUTSInfo, build_kernel, init
from hbm.samplers.trajectory import TrajectoryResult, build_trajectory

__all__ = [
    "DualAveragingState",
    "HMCState",
    "IntegratorState",
    "LowRankInverseMass",
    "Metric",
    "NUTSInfo",
    "Schedule",
    "TrajectoryResult",
    "WarmupState",
    "WelfordState",
    "build_kernel",
    "build_schedule",
    "build_trajectory",
    "dual_averaging",
    "find_reasonable_step_size",
    "gaussian_euclidean",
    "init",
    "metric_from",
    "run_lockstep_free",
    "velocity_verlet",
    "warmup_final",
    "warmup_init",
    "warmup_step",
    "welford_estimate",
    "welford_variance",
]
