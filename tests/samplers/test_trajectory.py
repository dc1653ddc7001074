"""The iterative NUTS tree equals the recursive reference, case by case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.samplers import build_kernel, init
from hbm.samplers.reference import reference_kernel

from ._helpers import correlated_gaussian, funnel, logistic_regression

MAX_TREE_DEPTH = 7
NUM_CASES = 50


def _targets():
    gaussian, _ = correlated_gaussian(dim=5)
    return {
        "correlated_gaussian": (gaussian, 5, 1.0),
        "funnel": (funnel(5), 5, 1.5),
        "logistic_regression": (logistic_regression(), 4, 0.5),
    }


def _cases(dim, spread, seed, num_cases):
    rng = np.random.default_rng(seed)
    positions = rng.normal(scale=spread, size=(num_cases, dim))
    # log-uniform step sizes from far below to far above the stable range
    step_sizes = np.exp(rng.uniform(np.log(1e-3), np.log(8.0), size=num_cases))
    step_sizes[:3] = [1e-4, 10.0, 0.2]  # guaranteed max depth / divergence / typical
    inverse_masses = np.exp(rng.uniform(-1.0, 1.0, size=(num_cases, dim)))
    keys = jax.random.split(jax.random.PRNGKey(seed), num_cases)
    return keys, positions, step_sizes, inverse_masses


def _compare(new, info, ref_state, ref_info):
    np.testing.assert_allclose(new.position, ref_state.position, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(new.logdensity, ref_state.logdensity, rtol=1e-6, atol=1e-10)
    assert int(info.tree_depth) == ref_info.tree_depth
    assert int(info.num_steps) == ref_info.num_steps
    assert bool(info.is_divergent) == ref_info.is_divergent
    assert bool(info.is_turning) == ref_info.is_turning
    np.testing.assert_allclose(info.acceptance_rate, ref_info.acceptance_rate, rtol=1e-6)
    np.testing.assert_allclose(info.symmetric_acceptance_rate,
                               ref_info.symmetric_acceptance_rate, rtol=1e-6)
    np.testing.assert_allclose(info.energy, ref_info.energy, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["correlated_gaussian", "funnel", "logistic_regression"])
def test_iterative_tree_equals_recursive_reference(name):
    logdensity, dim, spread = _targets()[name]
    keys, positions, step_sizes, inverse_masses = _cases(dim, spread, 7, NUM_CASES)
    kernel = build_kernel(max_tree_depth=MAX_TREE_DEPTH)

    def one(key, position, step_size, inverse_mass):
        return kernel(key, init(position, logdensity), logdensity, step_size, inverse_mass)

    new, info = jax.jit(jax.vmap(one))(keys, positions, step_sizes, inverse_masses)
    events = {"turning": 0, "max_depth": 0, "divergent": 0}
    for c in range(NUM_CASES):
        state = init(jnp.asarray(positions[c]), logdensity)
        ref_state, ref_info = reference_kernel(
            keys[c],
            state,
            logdensity,
            step_sizes[c],
            inverse_masses[c],
            max_tree_depth=MAX_TREE_DEPTH,
        )
        case = jax.tree.map(lambda a: a[c], (new, info))
        _compare(*case, ref_state, ref_info)
        events["turning"] += ref_info.is_turning
        events["divergent"] += ref_info.is_divergent
        events["max_depth"] += ref_info.tree_depth == MAX_TREE_DEPTH
    assert all(count > 0 for count in events.values()), events


def test_iterative_tree_equals_reference_with_dense_metric():
    logdensity, cov = correlated_gaussian(dim=5)
    keys, positions, step_sizes, _ = _cases(5, 1.0, 11, 20)
    kernel = jax.jit(build_kernel(max_tree_depth=MAX_TREE_DEPTH), static_argnums=2)
    dense = jnp.asarray(0.7 * cov + 0.1 * np.eye(5))  # deliberately not the exact covariance
    events = {"turning": 0, "max_depth": 0, "divergent": 0}
    for c in range(20):
        state = init(jnp.asarray(positions[c]), logdensity)
        new, info = kernel(keys[c], state, logdensity, step_sizes[c], dense)
        ref_state, ref_info = reference_kernel(
            keys[c], state, logdensity, step_sizes[c], dense, max_tree_depth=MAX_TREE_DEPTH
        )
        _compare(new, info, ref_state, ref_info)
        events["turning"] += ref_info.is_turning
        events["divergent"] += ref_info.is_divergent
        events["max_depth"] += ref_info.tree_depth == MAX_TREE_DEPTH
    assert all(count > 0 for count in events.values()), events


def test_deep_trees_agree_at_default_depth():
    """A few long trajectories at max_tree_depth=10 exercise the high checkpoint slots."""
    logdensity, _ = correlated_gaussian(dim=3, seed=3)
    kernel = jax.jit(build_kernel(max_tree_depth=10), static_argnums=2)
    rng = np.random.default_rng(5)
    depths = []
    for c, step_size in enumerate([2e-3, 5e-3, 1e-2]):
        key = jax.random.PRNGKey(100 + c)
        state = init(jnp.asarray(rng.normal(size=3)), logdensity)
        new, info = kernel(key, state, logdensity, step_size, jnp.ones(3))
        ref_state, ref_info = reference_kernel(key, state, logdensity, step_size, jnp.ones(3))
        _compare(new, info, ref_state, ref_info)
        depths.append(ref_info.tree_depth)
    assert max(depths) >= 8, depths


def test_fast_leaf_uniform_is_used_and_equals_jax_random_inside_a_trace():
    from hbm.samplers import threefry as trajectory

    @jax.jit
    def uniforms(key, indices):
        return jax.vmap(lambda i: trajectory.leaf_uniform(key, i, jnp.float64))(indices)

    key, indices = jax.random.PRNGKey(42), jnp.arange(0, 4000, 37, dtype=jnp.int32)
    got = uniforms(key, indices)
    expected = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i),
                                                     dtype=jnp.float64))(indices)
    np.testing.assert_array_equal(got, expected)
    assert trajectory._use_fast(key)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_fast_depth_draws_are_used_and_equal_jax_random(dtype):
    """The doubling's direction, leaf key and merge uniform from the unrolled hash are
    bit for bit ``bernoulli`` / ``depth_keys`` / ``uniform`` of jax.random, over many
    keys and every depth; and the fast path is the one taken here."""
    from hbm.samplers import threefry as trajectory

    keys = jax.random.split(jax.random.PRNGKey(7), 64)
    depths = jnp.arange(16, dtype=jnp.int32)

    def draws(fn):
        return jax.jit(jax.vmap(jax.vmap(lambda k, j: fn(k, j, dtype), (None, 0)),
                                (0, None)))(keys, depths)

    fast = draws(trajectory._fast_depth_draws)
    expected = draws(trajectory._jax_depth_draws)
    used = draws(trajectory.depth_draws)
    by_depth = jax.jit(jax.vmap(lambda k: trajectory.draws_by_depth(k, 16, dtype)))(keys)
    for got in (fast, used, by_depth):
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    assert 0.3 < float(np.mean(expected[0])) < 0.7  # directions do vary
    assert trajectory._use_fast(keys[0])


def test_stepwise_trajectory_equals_the_nested_one():
    """build_trajectory_stepwise (a while loop of the one-leapfrog trajectory_step) takes
    the same decisions and returns the same point as build_trajectory.

    The two are different compiled programs of the same arithmetic: XLA may contract
    ``x + eps * v`` into a fused multiply-add in one and not the other (jax 0.10 on this
    CPU does, for 6 of 300 coordinates: 1 ulp). Every decision must be identical and
    every value equal to a few ulp; the recursive reference test above is exact."""
    from hbm.samplers import IntegratorState, gaussian_euclidean, velocity_verlet
    from hbm.samplers.trajectory import build_trajectory, build_trajectory_stepwise

    logdensity = funnel(5)
    _, positions, step_sizes, inverse_masses = _cases(5, 1.5, 13, 60)
    keys = jax.random.split(jax.random.PRNGKey(13), 60)

    def run(builder):
        def one(key, position, step_size, inverse_mass):
            metric = gaussian_euclidean(inverse_mass)
            step = velocity_verlet(logdensity, metric.kinetic_energy, metric.velocity)
            momentum_key, tree_key = jax.random.split(key)
            state = init(position, logdensity)
            start = IntegratorState(position, metric.sample_momentum(momentum_key, position),
                                    state.logdensity, state.logdensity_grad)
            return builder(tree_key, start, step, metric, step_size,
                           max_tree_depth=MAX_TREE_DEPTH)

        return jax.jit(jax.vmap(one))(keys, positions, step_sizes, inverse_masses)

    nested, stepwise = run(build_trajectory), run(build_trajectory_stepwise)
    for field in ("position", "logdensity", "logdensity_grad"):
        np.testing.assert_allclose(getattr(stepwise.proposal, field),
                                   getattr(nested.proposal, field), rtol=1e-12, atol=1e-14)
    for field in ("tree_depth", "num_steps", "is_divergent", "is_turning"):
        np.testing.assert_array_equal(getattr(stepwise, field), getattr(nested, field))
    # the energy reduction may round differently in the two compiled programs
    np.testing.assert_allclose(stepwise.proposal.energy, nested.proposal.energy, rtol=1e-13)
    np.testing.assert_allclose(stepwise.sum_acceptance, nested.sum_acceptance, rtol=1e-12)
    np.testing.assert_allclose(stepwise.sum_symmetric_acceptance,
                               nested.sum_symmetric_acceptance, rtol=1e-12)
    assert int(np.sum(nested.is_divergent)) > 0 and int(np.sum(nested.is_turning)) > 0
    assert int(np.sum(nested.tree_depth == MAX_TREE_DEPTH)) > 0


def test_leaf_acceptance_statistics():
    """Stan's ``min(1, exp(d))`` and the symmetric ``2 / (1 + exp(|d|))`` of an energy
    change ``d = H0 - H``, in float64 and float32, at the extremes included."""
    from hbm.samplers.trajectory import leaf_acceptance

    deltas = np.array([0.0, 1e-3, -1e-3, 0.7, -0.7, 5.0, -5.0, 40.0, -800.0, np.inf, -np.inf])
    with np.errstate(over="ignore"):
        stan = np.minimum(1.0, np.exp(deltas))
        symmetric = 2.0 / (1.0 + np.exp(np.abs(deltas)))
    for dtype, rtol in ((jnp.float64, 1e-14), (jnp.float32, 1e-6)):
        got_stan, got_symmetric = leaf_acceptance(jnp.asarray(deltas, dtype))
        assert got_stan.dtype == got_symmetric.dtype == dtype
        np.testing.assert_allclose(got_stan, stan, rtol=rtol, atol=0)
        np.testing.assert_allclose(got_symmetric, symmetric, rtol=rtol, atol=1e-300)
    # symmetric in d and 1 only at d = 0: an energy fall counts against the step size
    got_stan, got_symmetric = leaf_acceptance(jnp.asarray(deltas))
    flipped = leaf_acceptance(jnp.asarray(-deltas))[1]
    np.testing.assert_array_equal(got_symmetric, flipped)
    assert float(got_symmetric[0]) == 1.0 and bool(jnp.all(got_symmetric[1:] < 1.0))
    assert all(bool(jnp.isnan(s)) for s in leaf_acceptance(jnp.asarray(np.nan)))
