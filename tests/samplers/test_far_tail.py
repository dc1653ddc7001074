"""Chains too far out for float32 are moved in before warmup; the others are untouched."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.samplers.far_tail import RESOLUTION, descend_from_far_tail, far_tail_threshold
from hbm.samplers.optimize import DEFAULT_OPTIMIZER, minimize

# A Poisson regression with a log link, the shape of the failure: far from the typical
# set the rate is exp(large) and |log p| reaches 1e9 within a few units of the origin.
COVARIATES = np.linspace(-1.0, 2.0, 40)
COUNTS = np.random.default_rng(0).poisson(np.exp(0.5 + 0.8 * COVARIATES))


def poisson_logdensity(x):
    eta = x[0] + x[1] * jnp.asarray(COVARIATES, x.dtype)
    counts = jnp.asarray(COUNTS, x.dtype)
    return jnp.sum(counts * eta - jnp.exp(eta)) - 0.5 * jnp.sum(x**2)


def test_threshold_is_the_resolution_over_epsilon():
    assert RESOLUTION == 2.0**-6
    assert far_tail_threshold(jnp.float32) == 2.0**17
    assert far_tail_threshold(jnp.float64) == 2.0**46


def test_far_chains_move_in_and_the_others_keep_their_positions_exactly():
    positions = jnp.asarray([[0.3, 0.7], [9.0, 8.0], [-0.5, 0.2], [7.0, 6.5]], jnp.float32)
    logdensities = jax.vmap(poisson_logdensity)(positions)
    threshold = far_tail_threshold(jnp.float32)
    far = np.asarray(logdensities) < -threshold
    assert far.tolist() == [False, True, False, True]

    result = descend_from_far_tail(poisson_logdensity, positions, logdensities)

    np.testing.assert_array_equal(np.asarray(result.positions)[~far],
                                  np.asarray(positions)[~far])
    after = np.asarray(jax.vmap(poisson_logdensity)(result.positions))
    assert np.all(after[far] >= -threshold)
    assert np.all(after[far] > np.asarray(logdensities)[far])
    assert result.iterations[~far].tolist() == [0, 0]
    assert result.evaluations[~far].tolist() == [0, 0]
    assert np.all(result.iterations[far] >= 1)
    assert np.all(result.evaluations[far] >= result.iterations[far] + 1)


def test_float64_positions_never_descend():
    positions = jnp.asarray([[9.0, 8.0]], jnp.float64)
    logdensities = jax.vmap(poisson_logdensity)(positions)
    assert float(logdensities[0]) < -far_tail_threshold(jnp.float32)
    result = descend_from_far_tail(poisson_logdensity, positions, logdensities)
    assert result.positions is positions
    assert result.iterations.tolist() == [0] and result.evaluations.tolist() == [0]


def test_a_descent_stops_at_the_threshold_not_at_the_mode():
    x0 = jnp.asarray([9.0, 8.0], jnp.float32)
    threshold = far_tail_threshold(jnp.float32)
    stopped = minimize(x0, poisson_logdensity, DEFAULT_OPTIMIZER, 200,
                       jnp.float32(0.0), target=jnp.float32(-threshold))
    converged = minimize(x0, poisson_logdensity, DEFAULT_OPTIMIZER, 200, jnp.float32(1e-3))
    assert float(stopped.logdensity) >= -threshold
    assert int(stopped.iterations) < int(converged.iterations)
    assert float(stopped.logdensity) < float(converged.logdensity)


def test_minimize_counts_every_log_density_evaluation():
    calls = []

    def counted(x):
        jax.debug.callback(lambda: calls.append(1))
        return poisson_logdensity(x)

    result = jax.jit(lambda x0: minimize(x0, counted, DEFAULT_OPTIMIZER, 30,
                                         jnp.float64(1e-10)))(jnp.asarray([3.0, 2.0]))
    jax.effects_barrier()
    assert int(result.iterations) >= 3
    assert int(result.evaluations) == len(calls)


@pytest.mark.slow
def test_epil_float32_lowrank_chain_is_not_left_in_the_far_tail():
    """hbm.models.epil, seed 2, metric="lowrank", float32: one chain used to start at
    log p -9.6e9 and stay at -1.1e8 with a step size of 6e-8 for the whole run."""
    child = textwrap.dedent("""
        import warnings
        import jax
        jax.config.update("jax_enable_x64", False)
        import json
        import numpy as np
        import hbm
        warnings.simplefilter("ignore")
        model, data = hbm.models.epil()
        fit = hbm.sample(model, data, chains=4, warmup=150, draws=50, seed=2,
                         metric="lowrank", reparam="noncentered", progress=False,
                         log_likelihood=False)
        print(json.dumps(dict(
            iterations=fit.info["far_tail_iterations"].tolist(),
            lowest=np.asarray(fit.sample_stats["lp"]).min(axis=1).tolist(),
            steps=np.asarray(fit.info["step_size"]).tolist())))
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    iterations = result["iterations"]
    lowest, steps = np.array(result["lowest"]), np.array(result["steps"])
    assert iterations[1] > 0 and sum(i > 0 for i in iterations) == 1, iterations
    # every chain reached epil's typical set (log p about -950) and a usable step size
    assert np.all(lowest > -2000.0), lowest
    assert np.all(steps > 0.01), steps


def test_move_in_under_jit_and_vmap_equals_the_eager_descent():
    """The traceable form the many-data-set programs call gives what hbm.sample's gets."""
    from hbm.samplers.far_tail import move_in

    positions = jnp.asarray([[0.3, 0.7], [9.0, 8.0], [7.0, 6.5]], jnp.float32)
    logdensities = jax.vmap(poisson_logdensity)(positions)
    eager = descend_from_far_tail(poisson_logdensity, positions, logdensities)
    traced = jax.jit(jax.vmap(lambda x: move_in(poisson_logdensity, x)))(positions)
    np.testing.assert_array_equal(np.asarray(traced[0]), np.asarray(eager.positions))
    assert np.asarray(traced[1]).tolist() == eager.iterations.tolist()
    assert np.asarray(traced[2]).tolist() == eager.evaluations.tolist()
    float64 = jax.jit(lambda x: move_in(poisson_logdensity, x))(positions[1].astype(jnp.float64))
    np.testing.assert_array_equal(np.asarray(float64[0]), np.asarray(positions[1], np.float64))


def test_a_float64_fit_records_that_no_chain_descended():
    import hbm

    model, data = hbm.models.eight_schools()
    fit = hbm.sample(model, data, chains=2, warmup=20, draws=10, progress=False)
    assert fit.info["far_tail_iterations"].tolist() == [0, 0]
    given = hbm.sample(model, data, chains=2, warmup=20, draws=10, progress=False,
                       init={"mu": 0.0})
    assert given.info["far_tail_iterations"].tolist() == [0, 0]
