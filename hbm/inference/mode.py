"""The mode driver: :func:`find_map` (MAP with or without the Jacobian, and Laplace)."""

from __future__ import annotations

import time

import jax
import numpy as np

from hbm.errors import ConfigurationError
from hbm.inference.common import (bind, constrain_draws, describe_indices,
                                  logdensity_closure, observed)
from hbm.inference.settings import check_int
from hbm.model import Model

__all__ = ["find_map"]


def find_map(model: Model, data=None, *, jacobian: bool = False, optimizer=None,
             restarts: int = 4, seed: int = 0, laplace: bool = False, draws: int = 1000,
             max_iters: int = 2000, tol: float | None = None, reparam=None):
    """The posterior mode, by L-BFGS from ``restarts`` random initial points.

    ``jacobian=False`` gives the classical MAP (the mode of the density of the model's own
    constrained parameters); ``jacobian=True`` the mode of the unconstrained density (what
    a Laplace approximation in unconstrained space is centred on). The classical MAP uses
    the centered parameterization of hierarchical nodes (it is a property of the model's
    own parameters); the unconstrained mode depends on the parameterization, which
    ``reparam`` chooses (default ``"noncentered"``, as :func:`sample`). A mode on the boundary of the parameter space
    (a group scale driven to zero, or a log density growing without bound) is reported
    with a warning and in ``info["boundary"]``. With ``laplace=True`` the result holds
    ``draws`` Gaussian draws from the inverse negative Hessian at the unconstrained mode
    (which needs ``jacobian=True`` semantics, so the mode is then taken with the Jacobian).

    Returns a :class:`~hbm.results.Fit` with ``method="map"`` (one draw: the mode) or
    ``"laplace"``; ``fit.params`` is the mode in the model's own parameters.
    """
    import warnings

    from hbm.diagnostics import HbmWarning
    from hbm.results import Fit
    from hbm.samplers import optimize

    restarts = check_int("restarts", restarts, 1)
    draws = check_int("draws", draws, 1)
    seed = check_int("seed", seed, 0)
    max_iters = check_int("max_iters", max_iters, 1)
    if laplace:
        jacobian = True
    if not jacobian:
        if reparam not in (None, "centered"):
            raise ConfigurationError("the classical MAP (jacobian=False) is defined in the "
                                     "centered parameterization; leave reparam unset")
        reparam = "centered"
    elif reparam is None:
        reparam = "noncentered"
    bound = bind(model, data, reparam)
    key = jax.random.PRNGKey(seed)
    init_key, draw_key = jax.random.split(key)
    inits = bound.init_many(init_key, restarts)
    logdensity_fn = logdensity_closure(bound, bool(jacobian))
    tol = (1e-8 if jax.config.jax_enable_x64 else 1e-4) if tol is None else float(tol)
    t0 = time.perf_counter()
    result = optimize.find_mode(logdensity_fn, inits, optimizer=optimizer, max_iters=max_iters,
                                tol=tol)
    report = optimize.boundary_report(result, logdensity_fn,
                                      finite_limits=bound.finite_limits())
    elapsed = time.perf_counter() - t0
    restart_params, _ = constrain_draws(bound, result.all_positions, False)
    best = int(np.argmax(np.where(np.isfinite(np.asarray(result.all_logdensities)),
                                  np.asarray(result.all_logdensities), -np.inf)))
    mode_params = {k: v[0, best] for k, v in restart_params.items()}
    spread = {k: float(np.max(np.ptp(v[0], axis=0))) for k, v in restart_params.items()}
    described = describe_indices(bound, report.indices, mode_params)
    boundary = [label for label, _ in described]
    info = dict(
        jacobian=bool(jacobian), logdensity=float(result.logdensity),
        converged=bool(result.converged), num_iterations=np.asarray(result.num_iterations),
        restart_logdensities=np.asarray(result.all_logdensities), restart_spread=spread,
        grad_norm=float(np.asarray(result.grad_norm).max()) if np.size(result.grad_norm)
        else None,
        boundary=boundary, boundary_reason=report.reason, mode=mode_params,
        reparam=reparam if isinstance(reparam, str) else "custom",
        unconstrained_mode=np.asarray(result.position), times={"optimize": elapsed},
        seed=seed,
    )
    if boundary:
        where = ", ".join(f"{name} = {value:.3g}" if value is not None else name
                          for name, value in described)
        warnings.warn(f"the mode lies on the boundary of the parameter space at "
                      f"{where}: {report.reason}. The reported mode is only "
                      "where the optimizer stopped; a group scale whose MAP collapses to 0 "
                      "is common in hierarchical models - use the posterior (hbm.sample).",
                      HbmWarning, stacklevel=2)
    if laplace:
        xs, cov = optimize.laplace_draws(draw_key, logdensity_fn, result.position, draws)
        posterior, loglik = constrain_draws(bound, xs)
        info["covariance"] = np.asarray(cov)
        method = "laplace"
    else:
        posterior = {k: v[None, None] for k, v in mode_params.items()}
        loglik = None
        method = "map"
    fit = Fit(posterior, None, method=method, model=model, data=bound.data, dims=model.dims,
              coords=model.coords, log_likelihood=loglik, observed_data=observed(bound),
              info=info)
    fit.params = mode_params
    return fit
