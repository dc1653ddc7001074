"""Lockstep-free NUTS equals the standard kernel member by member, transition by transition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError
from hbm.samplers import build_kernel, init
from hbm.samplers.lockstep_free import lockstep_useful_leapfrog_fraction, run_lockstep_free

from ._helpers import funnel

MAX_TREE_DEPTH = 6
NUM_TRANSITIONS = 5
# very different trajectory lengths: typical, tiny step (max depth every time), huge step
# (divergent at once), and in between
STEP_SIZES = np.array([0.3, 1e-4, 3.0, 0.05, 0.8, 0.2])


def _setup():
    logdensity = funnel(4)
    members = len(STEP_SIZES)
    keys = jax.random.split(jax.random.PRNGKey(3), members)
    positions = np.random.default_rng(1).normal(size=(members, 4))
    inverse_masses = np.exp(np.random.default_rng(2).uniform(-1, 1, (members, 4)))
    return logdensity, keys, positions, inverse_masses


@pytest.fixture(scope="module")
def runs():
    assert jax.config.jax_enable_x64
    logdensity, keys, positions, inverse_masses = _setup()
    result = run_lockstep_free(keys, positions, logdensity, STEP_SIZES, inverse_masses,
                               NUM_TRANSITIONS, max_tree_depth=MAX_TREE_DEPTH)
    kernel = build_kernel(max_tree_depth=MAX_TREE_DEPTH)

    def chain(key, position, step_size, inverse_mass):
        def body(state, t):
            new, info = kernel(jax.random.fold_in(key, t), state, logdensity, step_size,
                               inverse_mass)
            return new, (new, info)

        _, out = jax.lax.scan(body, init(position, logdensity), jnp.arange(NUM_TRANSITIONS))
        return out

    states, infos = jax.jit(jax.vmap(chain))(keys, positions, STEP_SIZES, inverse_masses)
    return result, states, infos


def test_every_member_equals_the_standard_kernel(runs):
    result, states, infos = runs
    assert result.positions.dtype == jnp.float64
    np.testing.assert_array_equal(result.positions, states.position)
    np.testing.assert_array_equal(result.logdensity, states.logdensity)
    for field in ("num_steps", "tree_depth", "is_divergent", "is_turning", "momentum"):
        np.testing.assert_array_equal(getattr(result.infos, field), getattr(infos, field),
                                      err_msg=field)
    for field in ("energy", "energy_error", "acceptance_rate", "symmetric_acceptance_rate"):
        np.testing.assert_allclose(getattr(result.infos, field), getattr(infos, field),
                                   rtol=1e-12, atol=1e-12, err_msg=field)
    # the cases are what they claim: divergent, max-depth and very unequal members
    assert bool(np.all(infos.is_divergent[2]))
    assert bool(np.all(infos.tree_depth[1] == MAX_TREE_DEPTH))
    assert bool(np.all(infos.num_steps[1] == 2**MAX_TREE_DEPTH - 1))
    totals = np.asarray(infos.num_steps).sum(axis=1)
    assert totals.max() >= 20 * totals.min()
    assert bool(np.any(infos.is_turning))


def test_loop_iterations_and_useful_fraction_are_consistent(runs):
    result, _, infos = runs
    num_steps = np.asarray(result.infos.num_steps)
    members = num_steps.shape[0]
    # a member takes one step per iteration and never waits: the loop runs exactly as
    # long as the member with the most leapfrog steps in total
    assert int(result.loop_iterations) == num_steps.sum(axis=1).max()
    assert float(result.useful_leapfrog_fraction) == pytest.approx(
        num_steps.sum() / (members * int(result.loop_iterations)), rel=1e-12)
    lockstep = float(lockstep_useful_leapfrog_fraction(infos.num_steps))
    assert lockstep == pytest.approx(
        num_steps.sum() / (members * num_steps.max(axis=0).sum()), rel=1e-12)
    assert float(result.useful_leapfrog_fraction) >= lockstep


def test_bad_arguments_raise():
    logdensity, keys, positions, inverse_masses = _setup()
    with pytest.raises(ConfigurationError, match="num_transitions"):
        run_lockstep_free(keys, positions, logdensity, 0.1, inverse_masses, 0)
    with pytest.raises(ConfigurationError, match="max_tree_depth"):
        run_lockstep_free(keys, positions, logdensity, 0.1, inverse_masses, 2,
                          max_tree_depth=0)
    with pytest.raises(ConfigurationError, match="inverse_mass_matrix"):
        run_lockstep_free(keys, positions, logdensity, 0.1, np.ones((2, 3)), 2)
    with pytest.raises(ConfigurationError, match="step_size"):
        run_lockstep_free(keys, positions, logdensity, np.ones(2), inverse_masses, 2)
    with pytest.raises(ConfigurationError, match="keys"):
        run_lockstep_free(keys[:2], positions, logdensity, 0.1, inverse_masses, 2)


def test_per_member_data_sets():
    """Members may be different data sets: logdensity_fn(position, data_m)."""

    def logdensity(position, data):
        return -0.5 * jnp.sum(((position - data["mean"]) / data["scale"]) ** 2)

    data = {"mean": jnp.array([[0.0, 1.0], [5.0, -5.0]]), "scale": jnp.array([1.0, 0.1])}
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    positions = jnp.zeros((2, 2))
    result = run_lockstep_free(keys, positions, logdensity, 0.05, jnp.ones(2), 3,
                               max_tree_depth=4, data=data)
    kernel = build_kernel(max_tree_depth=4)
    for m in range(2):
        member_data = jax.tree.map(lambda a: a[m], data)
        member_logdensity = lambda x, d=member_data: logdensity(x, d)
        state = init(positions[m], member_logdensity)
        for t in range(3):
            state, info = kernel(jax.random.fold_in(keys[m], t), state, member_logdensity,
                                 0.05, jnp.ones(2))
            # the kernel runs op by op here, so last-bit rounding may differ; the trees not
            np.testing.assert_allclose(result.positions[m, t], state.position, rtol=1e-13,
                                       atol=1e-14)
            assert int(result.infos.num_steps[m, t]) == int(info.num_steps)
            assert int(result.infos.tree_depth[m, t]) == int(info.tree_depth)


@pytest.mark.parametrize("slots", [1, 3])
def test_fewer_slots_than_members_give_the_same_draws(runs, slots):
    """Slots refilled with the next member: each member's draws are bit for bit those of
    the run with every member at once (per-member step sizes, metrics and data)."""
    result = runs[0]
    logdensity, keys, positions, inverse_masses = _setup()

    def with_data(position, data):  # per-member data: a shift that is zero for all
        return logdensity(position - data)

    refilled = run_lockstep_free(keys, positions, with_data, STEP_SIZES, inverse_masses,
                                 NUM_TRANSITIONS, max_tree_depth=MAX_TREE_DEPTH,
                                 data=jnp.zeros_like(positions), slots=slots)
    np.testing.assert_array_equal(refilled.positions, result.positions)
    for field in ("num_steps", "tree_depth", "is_divergent", "momentum"):
        np.testing.assert_array_equal(getattr(refilled.infos, field),
                                      getattr(result.infos, field), err_msg=field)
    # a reduction over d may round its last bit differently at another batch size
    np.testing.assert_allclose(refilled.infos.energy, result.infos.energy, rtol=1e-14)
    members = len(STEP_SIZES)
    used = int(np.sum(result.infos.num_steps))
    assert float(refilled.useful_leapfrog_fraction) == pytest.approx(
        used / (slots * int(refilled.loop_iterations)), rel=1e-12)
    # the loop ran every member's steps on `slots` lanes: at least used / slots iterations
    assert int(refilled.loop_iterations) >= used / slots
    if slots == 1:  # one lane runs the members one after another
        assert int(refilled.loop_iterations) == used
    assert members > slots


def test_slots_must_be_a_positive_integer():
    logdensity, keys, positions, inverse_masses = _setup()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigurationError, match="slots"):
            run_lockstep_free(keys, positions, logdensity, 0.1, inverse_masses, 2, slots=bad)
