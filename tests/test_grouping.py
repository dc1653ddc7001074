"""take_groups: the value of ``values[index]`` and its gradient, under jit / vmap / grad.

The gradient of take_groups sums each group's cotangents in ``lanes`` interleaved partial
sums, so it equals the plain gather's scatter-add exactly when the cotangents are
integers (every order of summation is exact in float64) or when ``lanes=1``, and
otherwise up to the rounding bound of a reordered sum, checked per group.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbm
import hbm.grouping
from hbm import dist
from hbm.errors import ConfigurationError, DataError
from hbm.grouping import take_groups

EPS = np.finfo(np.float64).eps


@pytest.fixture(autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def codes(rng, num_groups, size, order):
    index = rng.integers(0, num_groups, size=size).astype(np.int32)
    index.reshape(-1)[:num_groups] = np.arange(num_groups)  # every group used
    flat = index.reshape(-1)
    if order == "sorted":
        flat.sort()
    else:
        rng.shuffle(flat)
    return jnp.asarray(flat.reshape(size))


def run_sum_bound(index, terms, num_groups):
    """Per group, a bound on the difference of two float64 sums of the same terms in
    different orders: 2 (n - 1) eps sum |terms| (Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., sec. 4.2), n the group's count."""
    flat = np.asarray(index).reshape(-1)
    size = np.bincount(flat, minlength=num_groups).astype(float)
    abs_terms = np.abs(np.asarray(terms)).reshape((flat.size, -1))
    total = np.zeros((num_groups, abs_terms.shape[1]))
    np.add.at(total, flat, abs_terms)
    bound = 2 * np.maximum(size - 1, 0)[:, None] * EPS * total
    return bound.reshape((num_groups,) + np.shape(terms)[np.ndim(index):])


@pytest.mark.parametrize("order", ["sorted", "unsorted"])
@pytest.mark.parametrize("row_shape", [(), (3,)])
@pytest.mark.parametrize("index_shape", [(200,), (40, 5)])
def test_value_is_the_gather_and_integer_gradient_is_exact(order, row_shape, index_shape):
    rng = np.random.default_rng(0)
    num_groups = 13
    index = codes(rng, num_groups, index_shape, order)
    values = jnp.asarray(rng.normal(size=(num_groups,) + row_shape))
    weights = jnp.asarray(rng.integers(-5, 6, size=index_shape + row_shape).astype(float))
    np.testing.assert_array_equal(take_groups(values, index), values[index])
    np.testing.assert_array_equal(jax.jit(take_groups)(values, index), values[index])
    for lanes in (1, 2, 4, 7):
        grad = jax.grad(lambda v: jnp.sum(weights * take_groups(v, index, lanes=lanes)))
        reference = jax.grad(lambda v: jnp.sum(weights * v[index]))(values)
        np.testing.assert_array_equal(grad(values), reference)
        np.testing.assert_array_equal(jax.jit(grad)(values), reference)


@pytest.mark.parametrize("order", ["sorted", "unsorted"])
def test_gradient_of_a_nonlinear_density(order):
    rng = np.random.default_rng(1)
    num_groups, size = 17, 500
    index = codes(rng, num_groups, (size,), order)
    values = jnp.asarray(rng.normal(size=(num_groups, 2)))
    y = jnp.asarray(rng.normal(size=(size, 2)))

    def density(take):
        return lambda v: jnp.sum(jnp.log1p(jnp.square(y - jnp.sin(take(v)))))

    reference = jax.jit(jax.grad(density(lambda v: v[index])))(values)
    exact = jax.jit(jax.grad(density(lambda v: take_groups(v, index, lanes=1))))(values)
    np.testing.assert_array_equal(exact, reference)
    # the per-observation cotangents, to bound the rounding of the reordered group sums
    terms = jax.grad(lambda e: jnp.sum(jnp.log1p(jnp.square(y - jnp.sin(e)))))(values[index])
    bound = run_sum_bound(index, terms, num_groups)
    for lanes in (2, 4):
        grad = jax.jit(jax.grad(density(lambda v: take_groups(v, index, lanes=lanes))))
        assert np.all(np.abs(grad(values) - reference) <= bound)


def test_vmap_over_values_index_and_both():
    rng = np.random.default_rng(2)
    num_groups, size, batch = 7, 60, 3
    # small integers: every partial sum of the gradient is exact, in any order
    values = jnp.asarray(rng.integers(-4, 5, size=(batch, num_groups)).astype(float))
    index = jnp.stack([codes(rng, num_groups, (size,), "unsorted") for _ in range(batch)])
    weights = jnp.asarray(rng.integers(-3, 4, size=(size,)).astype(float))

    def value_and_grad(take):
        return jax.value_and_grad(lambda v, i: jnp.sum(weights * jnp.square(take(v, i))))

    ours = value_and_grad(take_groups)
    plain = value_and_grad(lambda v, i: v[i])
    for axes in [(0, None), (None, 0), (0, 0)]:
        v = values if axes[0] == 0 else values[0]
        i = index if axes[1] == 0 else index[0]
        got = jax.jit(jax.vmap(ours, in_axes=axes))(v, i)
        want = jax.vmap(plain, in_axes=axes)(v, i)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_second_derivatives_hessian_and_grad_of_grad():
    rng = np.random.default_rng(3)
    num_groups, size = 5, 40
    index = codes(rng, num_groups, (size,), "sorted")
    values = jnp.asarray(rng.normal(size=num_groups))
    weights = jnp.asarray(rng.integers(-3, 4, size=size).astype(float))

    def density(take):
        return lambda v: jnp.sum(weights * jnp.square(take(v)))  # Hessian: integer sums

    reference = jax.hessian(density(lambda v: v[index]))(values)
    ours = density(lambda v: take_groups(v, index))
    np.testing.assert_array_equal(jax.hessian(ours)(values), reference)
    np.testing.assert_array_equal(jax.jacrev(jax.jacrev(ours))(values), reference)


def test_float32_stays_float32():
    rng = np.random.default_rng(4)
    index = codes(rng, 6, (30,), "unsorted")
    values = jnp.asarray(rng.normal(size=6), jnp.float32)
    out, grad = jax.value_and_grad(lambda v: jnp.sum(take_groups(v, index)))(values)
    assert out.dtype == jnp.float32 and grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, np.bincount(np.asarray(index), minlength=6))


def test_traced_out_of_range_codes_are_clamped_and_gradient_matches():
    values = jnp.arange(4.0)
    index = jnp.array([-2, 0, 3, 9, -7, 2])
    take = jax.jit(lambda v, i: take_groups(v, i))
    np.testing.assert_array_equal(take(values, index), [0.0, 0.0, 3.0, 3.0, 0.0, 2.0])
    for lanes in (1, 4):
        grad = jax.jit(jax.grad(lambda v, i: jnp.sum(take_groups(v, i, lanes=lanes))))
        np.testing.assert_array_equal(grad(values, index), [3.0, 0.0, 1.0, 2.0])


def test_default_lanes_follow_the_index_size():
    rng = np.random.default_rng(5)
    values = jnp.asarray(rng.normal(size=9))
    for size, lanes in [(hbm.grouping.AUTO_LANES_FROM - 1, 1), (hbm.grouping.AUTO_LANES_FROM, 4)]:
        index = codes(rng, 9, (size,), "sorted")
        weights = jnp.asarray(rng.normal(size=size))

        def grad(**kwargs):
            return jax.grad(lambda v: jnp.sum(weights * take_groups(v, index, **kwargs)))(values)

        np.testing.assert_array_equal(grad(), grad(lanes=lanes))


@pytest.mark.parametrize("bad, message", [
    (np.array([0, 1, 5]), r"'index' holds 5 at position \(2,\).*5 groups.*0\.\.4.*1 code"),
    (np.array([0, -1, 2]), r"'index' holds -1 at position \(1,\)"),
    (np.array([0.0, 1.0]), r"integer group codes, got dtype float64"),
    (jnp.array([0.0, 1.0]), r"integer group codes, got dtype float64"),
    ([0, 1, 2, 7], r"holds 7"),
])
def test_bad_index_raises_data_error(bad, message):
    with pytest.raises(DataError, match=message):
        take_groups(jnp.zeros(5), bad)


def test_float_index_is_refused_under_jit_too():
    with pytest.raises(DataError, match="integer group codes"):
        jax.jit(lambda i: take_groups(jnp.zeros(3), i))(jnp.array([0.0, 1.0]))


def test_bad_values_and_lanes():
    with pytest.raises(DataError, match="group axis"):
        take_groups(jnp.float64(1.0), jnp.array([0]))
    for lanes in (0, 2.5, True):
        with pytest.raises(ConfigurationError, match="'lanes' must be a positive integer"):
            take_groups(jnp.zeros(3), jnp.array([0]), lanes=lanes)


def test_model_layer_still_checks_codes_read_through_take_groups():
    model = hbm.Model(
        prior={"alpha": dist.Normal(0.0, 1.0).expand((3,)), "sigma": dist.HalfNormal(1.0)},
        likelihood=lambda p, d: {"y": dist.Normal(take_groups(p["alpha"], d["g"]),
                                                  p["sigma"])})
    with pytest.raises(DataError, match=r"holds 3 at position \(2,\)"):
        model.bind({"y": np.ones(4), "g": np.array([0, 1, 3, 2])})
    bound = model.bind({"y": np.ones(4), "g": np.array([0, 1, 2, 2])})
    assert np.isfinite(bound.logdensity(jnp.zeros(bound.size)))


def test_radon_varying_intercept_unchanged_by_take_groups():
    """The library model rewritten with take_groups: the same log density and, with one
    lane (the same scatter-add order), the same gradient, bit for bit."""
    model, data = hbm.models.radon_varying_intercept()

    def likelihood(p, d):
        effect = take_groups(p["county_effect"], d["county"], lanes=1)
        return {"y": dist.Normal(p["beta"][0] + p["beta"][1] * d["floor"] + effect,
                                 p["sigma"])}

    fast = hbm.Model(prior=model.prior, likelihood=likelihood, dims=model.dims,
                     coords=model.coords)
    plain, ours = model.bind(data), fast.bind(data)
    x = jax.random.normal(jax.random.key(0), (plain.size,))
    want = jax.jit(jax.value_and_grad(plain.logdensity))(x)
    got = jax.jit(jax.value_and_grad(ours.logdensity))(x)
    assert float(got[0]) == float(want[0])
    np.testing.assert_array_equal(got[1], want[1])
