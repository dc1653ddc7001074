"""Lockstep-free warmup and sampling follow the engine's chains (float64).

The sampling loop alone is bit-identical to the standard kernel
(``test_lockstep_free.py``). With warmup, the same adaptation arithmetic is compiled in
another program (vmapped selects instead of a scan's conditionals), and XLA may round a
scalar update of dual averaging differently in the last bit; on a chaotic target such a
difference grows until a U-turn decision flips. On a Gaussian (stable trajectories) the
comparison is therefore: every discrete decision (leapfrog steps, tree depths,
divergences) identical, every real value equal to grown rounding (``CLOSE``). Measured
with Stan's schedule, whose identity metric is kept for 53 of the 60 warmup
iterations: the step sizes differ by 5e-13 (relative) after 20 warmup iterations, 2e-11
after 40 and 1e-8 after 60, and the positions by up to 9.4e-7 after the 50 draws; with the
early schedule by 1e-13 and 9e-11. The bound leaves a factor of 10 over the largest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError
from hbm.inference import engine
from hbm.inference.settings import KernelSettings
from hbm.samplers import adaptation
from hbm.samplers.lockstep_free import run_lockstep_free_chains

from ._helpers import funnel

NUM_WARMUP, NUM_DRAWS, MEMBERS, DEPTH = 60, 50, 5, 5
CLOSE = dict(rtol=1e-5, atol=1e-5)  # grown rounding, see above; scales are ~1
SCALES = np.exp(np.linspace(-1.0, 1.0, 6))  # needs adaptation; depth 5 is reached early


def _gaussian(x):
    return -0.5 * jnp.sum((x / SCALES) ** 2)


def _runs(metric, schedule, slots=None, seed=0):
    assert jax.config.jax_enable_x64
    logdensity = _gaussian
    settings = KernelSettings(max_tree_depth=DEPTH, metric=metric, warmup_schedule=schedule)
    program = engine.build_chain_program(lambda x, data, weights: logdensity(x), settings)
    keys = jax.random.split(jax.random.PRNGKey(seed), 3 * MEMBERS).reshape(MEMBERS, 3, 2)
    positions = 3.0 * np.random.default_rng(0).normal(size=(MEMBERS, len(SCALES)))
    chains = jax.jit(jax.vmap(lambda k, x: program.init(k, x, None, None, None)))(
        keys[:, 0], positions)
    flags = engine.slice_schedule(
        engine.schedule_for_chunks(schedule, NUM_WARMUP, NUM_WARMUP, metric), 0, NUM_WARMUP)

    def standard(chain, warmup_key, draw_key):
        chain, warm = program.run(chain, warmup_key, 0, NUM_WARMUP, True, flags, None, None)
        chain, out = program.run(chain, draw_key, 0, NUM_DRAWS, False,
                                 engine.no_adaptation(NUM_DRAWS), None, None)
        return chain, warm, out

    reference = jax.jit(jax.vmap(standard))(chains, keys[:, 1], keys[:, 2])
    free = run_lockstep_free_chains(
        keys[:, 1], keys[:, 2], chains, logdensity, NUM_WARMUP, NUM_DRAWS, flags,
        estimator=adaptation.metric_estimator(metric, schedule), max_tree_depth=DEPTH,
        target_accept=settings.target_accept, slots=slots)
    return reference, free


@pytest.mark.parametrize("slots", [4, None])
def test_compacted_tail_follows_the_engine(monkeypatch, slots):
    """Once no member waits and few lanes still run, the running lanes move to a narrower
    loop (forced here: 4 refilled lanes, or one lane per member, then 1): the same draws,
    warmup counts and final adaptation states, and a useful fraction above that of the
    loop that keeps every lane to the end."""
    import hbm.samplers.lockstep_free as lockstep_free

    # a seed whose last member runs alone long enough to be compacted in both layouts
    (chain, warm, out), wide = _runs("diag_grad", "early", slots, seed=1)
    monkeypatch.setattr(lockstep_free, "_TAIL_MIN_LANES", 1)
    _, free = _runs("diag_grad", "early", slots, seed=1)
    lanes = slots or MEMBERS
    np.testing.assert_array_equal(free.infos.num_steps, out["n_steps"])
    np.testing.assert_array_equal(free.infos.tree_depth, out["tree_depth"])
    np.testing.assert_array_equal(free.warmup_steps, warm["n_steps"].sum(1))
    np.testing.assert_array_equal(free.warmup_divergences, warm["diverging"].sum(1))
    close = CLOSE
    np.testing.assert_allclose(free.positions, out["position"], **close)
    np.testing.assert_allclose(free.logdensity, out["lp"], **close)
    np.testing.assert_allclose(free.chains.step_size, chain.step_size, **close)
    np.testing.assert_allclose(free.chains.inverse_mass_matrix,
                               chain.inverse_mass_matrix, **close)
    # the same loop iterations, fewer of them on every lane
    assert int(free.loop_iterations) == int(wide.loop_iterations)
    total = free.warmup_steps.sum() + free.infos.num_steps.sum()
    assert float(free.useful_leapfrog_fraction) > float(wide.useful_leapfrog_fraction)
    assert float(free.useful_leapfrog_fraction) > float(
        total / (lanes * free.loop_iterations))
    assert 0.0 < free.useful_leapfrog_fraction <= 1.0


@pytest.mark.parametrize("metric, schedule, slots", [
    ("diag_grad", "early", None), ("diag", "stan", None), ("lowrank", "early", None),
    ("diag_grad", "early", 2)])
def test_warmup_and_sampling_follow_the_engine(metric, schedule, slots):
    """With ``slots=2`` the five members run two at a time, each slot refilled with the
    next member when its member is done: same draws and final adaptation states."""
    (chain, warm, out), free = _runs(metric, schedule, slots)
    np.testing.assert_array_equal(free.infos.num_steps, out["n_steps"])
    np.testing.assert_array_equal(free.infos.is_divergent, out["diverging"])
    np.testing.assert_array_equal(free.infos.tree_depth, out["tree_depth"])
    np.testing.assert_array_equal(free.warmup_steps, warm["n_steps"].sum(1))
    np.testing.assert_array_equal(free.warmup_divergences, warm["diverging"].sum(1))
    close = CLOSE
    np.testing.assert_allclose(free.positions, out["position"], **close)
    np.testing.assert_allclose(free.logdensity, out["lp"], **close)
    np.testing.assert_allclose(free.chains.step_size, chain.step_size, **close)
    for mine, theirs in zip(jax.tree.leaves(free.chains.inverse_mass_matrix),
                            jax.tree.leaves(chain.inverse_mass_matrix)):
        np.testing.assert_allclose(mine, theirs, **close)
    # the metric was adapted (the diagonal left 1), and maximal-depth transitions occur
    assert not np.allclose(jax.tree.leaves(free.chains.inverse_mass_matrix)[0], 1.0)
    assert (warm["tree_depth"] == DEPTH).any()
    total = free.warmup_steps.sum() + free.infos.num_steps.sum()
    assert float(free.useful_leapfrog_fraction) == pytest.approx(
        float(total / ((slots or MEMBERS) * free.loop_iterations)), rel=1e-12)
    assert 0.0 < free.useful_leapfrog_fraction <= 1.0


def test_bad_arguments_raise():
    flags = engine.no_adaptation(10)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    with pytest.raises(ConfigurationError, match="num_draws"):
        run_lockstep_free_chains(keys, keys, None, funnel(2), 10, 0, flags, estimator=None)
    with pytest.raises(ConfigurationError, match="flags"):
        run_lockstep_free_chains(keys, keys, None, funnel(2), 12, 5, flags, estimator=None)
