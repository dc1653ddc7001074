"""The ADVI driver: :func:`advi` (Kucukelbir et al. 2017, "Automatic Differentiation
Variational Inference") over the unconstrained log density of a bound model."""

from __future__ import annotations

import time

import jax
import numpy as np

from hbm.errors import ConfigurationError
from hbm.inference.common import (bind, constrain_draws, logdensity_closure, logdensity_many,
                                  observed, progress_bar)
from hbm.inference.settings import check_int
from hbm.model import Model

__all__ = ["advi"]


def advi(model: Model, data=None, *, method: str = "meanfield", max_steps: int = 10000,
         optimizer=None, mc_samples: int = 1, draws: int = 1000, seed: int = 0,
         progress=True, tol_rel_obj: float = 0.01, reparam="noncentered"):
    """Automatic differentiation variational inference (Kucukelbir et al. 2017).

    A Gaussian (``"meanfield"`` or ``"fullrank"``) approximation in the unconstrained space,
    fitted with stick-the-landing gradients; convergence on the relative change of the
    smoothed ELBO, as in Stan. Returns a :class:`~hbm.results.Fit` (one chain of ``draws``
    independent draws) whose ``info`` holds the ELBO history, the number of steps, and
    the Pareto k-hat of PSIS on ``log p - log q`` (above 0.7: the approximation is
    unreliable, and a warning says so)."""
    import warnings

    from hbm.diagnostics import HbmWarning, pareto_khat
    from hbm.results import Fit
    from hbm.samplers import advi as advi_lib

    if method not in ("meanfield", "fullrank"):
        raise ConfigurationError(f"method must be 'meanfield' or 'fullrank', got {method!r}")
    max_steps = check_int("max_steps", max_steps, 1)
    mc_samples = check_int("mc_samples", mc_samples, 1)
    draws = check_int("draws", draws, 1)
    seed = check_int("seed", seed, 0)
    bound = bind(model, data, reparam)
    key = jax.random.PRNGKey(seed)
    init_key, fit_key, draw_key = jax.random.split(key, 3)
    x0 = bound.init(init_key)
    logdensity_fn = logdensity_closure(bound)
    bar = progress_bar(progress, max_steps, f"ADVI ({method})")

    def callback(step, elbo):
        bar.n = step
        bar.set_postfix(elbo=f"{elbo:.4g}")
        bar.refresh()

    t0 = time.perf_counter()
    try:
        result = advi_lib.run_advi(fit_key, logdensity_fn, x0, method=method,
                                   optimizer=optimizer, max_steps=max_steps,
                                   mc_samples=mc_samples, tol_rel_obj=tol_rel_obj,
                                   callback=callback)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    xs, log_q = advi_lib.advi_draws(draw_key, result, draws)
    log_p = logdensity_many(logdensity_fn, xs)
    khat = pareto_khat(np.asarray(log_p - log_q))
    posterior, loglik = constrain_draws(bound, xs)
    info = dict(
        advi_method=method, num_steps=int(result.num_steps), converged=bool(result.converged),
        elbo_history=np.asarray(result.elbo_history), khat=float(khat),
        learning_rate=float(result.learning_rate) if result.learning_rate is not None
        else None,
        mean=np.asarray(result.mean), sd=np.asarray(result.sd),
        times={"fit": elapsed}, seed=seed,
    )
    fit = Fit(posterior, None, method="advi", model=model, data=bound.data,
              dims=model.dims, coords=model.coords, log_likelihood=loglik,
              observed_data=observed(bound), info=info)
    if not result.converged:
        warnings.warn(f"ADVI did not converge in {max_steps} steps (relative ELBO change "
                      f"above {tol_rel_obj}); raise max_steps", HbmWarning, stacklevel=2)
    if not khat <= 0.7:
        warnings.warn(f"ADVI's Pareto k-hat is {khat:.2f} > 0.7: the approximation is "
                      "unreliable for this posterior; use hbm.sample (NUTS)", HbmWarning,
                      stacklevel=2)
    return fit
