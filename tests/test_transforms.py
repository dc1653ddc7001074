"""Tests for hbm.transforms: round trips, log-det against autodiff, shapes, support,
jit/vmap/grad, float32 edge stability and the biject_to registry."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm import constraints
from hbm.constraints import Constraint
from hbm.errors import ConstraintError, HbmError
from hbm.transforms import (
    CorrCholeskyTransform,
    ExpTransform,
    GreaterThanTransform,
    IdentityTransform,
    IntervalTransform,
    LowerCholeskyTransform,
    OrderedTransform,
    PositiveDefiniteTransform,
    StickBreakingTransform,
    Transform,
    biject_to,
    register_bijector,
)

BATCH_SHAPES = [(), (2, 3)]
SEEDS = [0, 1, 2]


# ----------------------------------------------------------------------------- inputs
# Inputs are drawn with NumPy (seeded) so that the tests compile only the code under test.


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _sample_interval(lower, upper):
    def sample(rng, batch, event):
        return lower + (upper - lower) * rng.uniform(1e-3, 1 - 1e-3, size=batch + event)

    return sample


def _sample_simplex(rng, batch, event):
    return rng.dirichlet(np.ones(event[-1]), size=batch)


def _sample_ordered(rng, batch, event):
    return np.sort(3.0 * rng.standard_normal(batch + event), axis=-1)


def _sample_spd(rng, batch, event):
    a = rng.standard_normal(batch + event)
    return a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(event[-1])


def _sample_corr_cholesky(rng, batch, event):
    cov = _sample_spd(rng, batch, event)
    scale = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    return np.linalg.cholesky(cov / (scale[..., :, None] * scale[..., None, :]))


def _sample_lower_cholesky(rng, batch, event):
    off = np.tril(rng.standard_normal(batch + event), -1)
    diag = np.exp(rng.standard_normal(batch + event[:-1]))
    return off + diag[..., :, None] * np.eye(event[-1])


def _sample_real(rng, batch, event):
    return rng.standard_normal(batch + event)


def _sample_positive(rng, batch, event):
    return np.exp(rng.standard_normal(batch + event))


def _sample_greater_than(bound):
    def sample(rng, batch, event):
        return bound + np.exp(rng.standard_normal(batch + event))

    return sample


# ----------------------------------------------------------------------------- coordinates


def _scalar_coords(y):
    return jnp.reshape(y, (1,))


def _vector_coords(y):
    return y


def _simplex_coords(y):
    return y[:-1]


def _strict_lower_coords(y):
    rows, cols = np.tril_indices(y.shape[-1], -1)
    return y[rows, cols]


def _lower_coords(y):
    rows, cols = np.tril_indices(y.shape[-1])
    return y[rows, cols]


class Case(NamedTuple):
    name: str
    constraint: Constraint
    transform: Transform
    x_event: tuple  # unconstrained event shape
    y_event: tuple  # constrained event shape
    sample_support: Callable
    coords: Callable  # constrained event -> its independent coordinates
    support_at_float32_edges: bool = True


CASES = [
    Case("real", constraints.real, IdentityTransform(0), (), (),
         _sample_real, _scalar_coords),
    Case("real_vector", constraints.real_vector, IdentityTransform(1), (4,), (4,),
         _sample_real, _vector_coords),
    Case("positive", constraints.positive, ExpTransform(), (), (),
         _sample_positive, _scalar_coords),
    Case("greater_than", constraints.greater_than(-2.5), GreaterThanTransform(-2.5), (), (),
         _sample_greater_than(-2.5), _scalar_coords),
    Case("interval", constraints.interval(-1.0, 3.0), IntervalTransform(-1.0, 3.0), (), (),
         _sample_interval(-1.0, 3.0), _scalar_coords),
    Case("unit_interval", constraints.unit_interval, IntervalTransform(0.0, 1.0), (), (),
         _sample_interval(0.0, 1.0), _scalar_coords),
    Case("simplex", constraints.simplex, StickBreakingTransform(), (3,), (4,),
         _sample_simplex, _simplex_coords),
    Case("ordered_vector", constraints.ordered_vector, OrderedTransform(), (5,), (5,),
         _sample_ordered, _vector_coords, support_at_float32_edges=False),
    Case("corr_cholesky", constraints.corr_cholesky, CorrCholeskyTransform(), (6,), (4, 4),
         _sample_corr_cholesky, _strict_lower_coords),
    Case("lower_cholesky", constraints.lower_cholesky, LowerCholeskyTransform(), (6,), (3, 3),
         _sample_lower_cholesky, _lower_coords),
    Case("positive_definite", constraints.positive_definite, PositiveDefiniteTransform(),
         (6,), (3, 3), _sample_spd, _lower_coords, support_at_float32_edges=False),
]


def _case(name):
    return next(c for c in CASES if c.name == name)


case_params = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


class Jitted(NamedTuple):
    forward: Callable
    inverse: Callable
    log_det: Callable
    check: Callable  # the constraint's check


_JITTED: dict[str, Jitted] = {}


def _jitted(case):
    """Jitted forward, inverse and log-det of a case (compiled once per input shape)."""
    if case.name not in _JITTED:
        t = case.transform
        _JITTED[case.name] = Jitted(
            jax.jit(t.forward),
            jax.jit(t.inverse),
            jax.jit(t.log_abs_det_jacobian),
            jax.jit(lambda y: jnp.all(case.constraint.check(y))),
        )
    return _JITTED[case.name]


# ----------------------------------------------------------------------------- round trips


@case_params
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=str)
def test_inverse_of_forward_is_identity_and_forward_lands_in_support(case, batch):
    fns = _jitted(case)
    for seed in SEEDS:
        x = 1.5 * _normal(seed, batch + case.x_event)
        np.testing.assert_allclose(fns.inverse(fns.forward(x)), x, rtol=1e-10, atol=1e-10)
        wide = 3.0 * _normal(600 + seed, batch + case.x_event)
        assert bool(fns.check(fns.forward(wide)))


@case_params
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=str)
def test_forward_of_inverse_is_identity_on_support(case, batch):
    fns = _jitted(case)
    for seed in SEEDS:
        rng = np.random.default_rng(100 + seed)
        y = jnp.asarray(case.sample_support(rng, batch, case.y_event))
        assert bool(fns.check(y)), "test sampler left the support"
        x = fns.inverse(y)
        assert x.shape == batch + case.x_event
        np.testing.assert_allclose(fns.forward(x), y, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- log-det vs autodiff


def _reference_log_det(case, x_event):
    """log |det| of the Jacobian of the forward map onto independent coordinates."""

    def flat_forward(flat_x):
        return case.coords(case.transform.forward(flat_x.reshape(case.x_event)))

    jac = jax.jacfwd(flat_forward)(jnp.reshape(x_event, (-1,)))
    assert jac.shape[0] == jac.shape[1], "independent coordinates must match the input size"
    sign, log_det = jnp.linalg.slogdet(jac)
    return sign, log_det


@case_params
def test_log_det_matches_autodiff_jacobian(case):
    """Single events (no batch) for several seeds, then one batch against vmap."""
    reference = jax.jit(functools.partial(_reference_log_det, case))
    log_det = _jitted(case).log_det
    for seed in SEEDS:
        x = 1.5 * _normal(200 + seed, case.x_event)
        sign, expected = reference(x)
        assert float(sign) != 0.0
        actual = log_det(x)
        assert actual.shape == ()
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-10)

    batch = (2, 3)
    x = 1.5 * _normal(300, batch + case.x_event)
    flat = x.reshape((-1,) + case.x_event)
    sign, expected = jax.jit(jax.vmap(functools.partial(_reference_log_det, case)))(flat)
    assert bool(jnp.all(sign != 0))
    actual = log_det(x)
    assert actual.shape == batch
    np.testing.assert_allclose(actual, expected.reshape(batch), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- shapes


@case_params
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=str)
def test_shapes(case, batch):
    t = case.transform
    x = jax.ShapeDtypeStruct(batch + case.x_event, jnp.float64)
    y = jax.eval_shape(t.forward, x)
    assert y.shape == batch + case.y_event
    assert t.forward_shape(x.shape) == y.shape
    assert t.inverse_shape(y.shape) == x.shape
    assert jax.eval_shape(t.inverse, y).shape == x.shape
    assert jax.eval_shape(t.log_abs_det_jacobian, x).shape == batch
    assert t.event_dim == len(case.y_event)
    assert t.unconstrained_event_dim == len(case.x_event)


@pytest.mark.parametrize(
    "transform, shape",
    [
        (CorrCholeskyTransform(), (5,)),
        (LowerCholeskyTransform(), (4,)),
        (PositiveDefiniteTransform(), (2, 5)),
        (StickBreakingTransform(), ()),
    ],
    ids=["corr_len5", "lower_len4", "pd_len5", "simplex_scalar"],
)
def test_forward_rejects_impossible_unconstrained_shapes(transform, shape):
    with pytest.raises(ConstraintError):
        transform.forward_shape(shape)
    with pytest.raises(ConstraintError):
        transform.forward(jnp.zeros(shape))


@pytest.mark.parametrize(
    "transform",
    [CorrCholeskyTransform(), LowerCholeskyTransform(), PositiveDefiniteTransform()],
    ids=["corr", "lower", "pd"],
)
def test_matrix_inverse_shape_rejects_non_square(transform):
    with pytest.raises(ConstraintError):
        transform.inverse_shape((3, 4))
    with pytest.raises(ConstraintError):
        transform.inverse_shape((3,))


def _forward(transform, x):
    return jax.jit(transform.forward)(x)


def test_smallest_dimensions():
    np.testing.assert_array_equal(
        _forward(StickBreakingTransform(), jnp.zeros((2, 0))), [[1.0], [1.0]]
    )
    np.testing.assert_array_equal(_forward(CorrCholeskyTransform(), jnp.zeros((0,))), [[1.0]])
    assert jax.jit(CorrCholeskyTransform().log_abs_det_jacobian)(jnp.zeros((0,))) == 0.0
    np.testing.assert_allclose(
        _forward(LowerCholeskyTransform(), jnp.array([0.7])), [[math.exp(0.7)]]
    )
    np.testing.assert_allclose(
        _forward(PositiveDefiniteTransform(), jnp.array([0.7])), [[math.exp(1.4)]], rtol=1e-14
    )


# ----------------------------------------------------------------------------- exact values


def test_exact_values():
    x = jnp.zeros(3)
    np.testing.assert_allclose(_forward(StickBreakingTransform(), x), jnp.full(4, 0.25), rtol=1e-14)
    np.testing.assert_allclose(_forward(OrderedTransform(), x), [0.0, 1.0, 2.0], rtol=1e-14)
    np.testing.assert_allclose(_forward(IntervalTransform(-1.0, 3.0), 0.0), 1.0, rtol=1e-14)
    np.testing.assert_allclose(_forward(GreaterThanTransform(2.0), 0.0), 3.0, rtol=1e-14)
    np.testing.assert_allclose(_forward(CorrCholeskyTransform(), jnp.zeros(6)), jnp.eye(4), atol=0)
    np.testing.assert_allclose(_forward(PositiveDefiniteTransform(), jnp.zeros(6)), jnp.eye(3))
    # K = 2 correlation factor: [[1, 0], [tanh x, sech x]].
    a = 0.8
    np.testing.assert_allclose(
        _forward(CorrCholeskyTransform(), jnp.array([a])),
        [[1.0, 0.0], [math.tanh(a), 1.0 / math.cosh(a)]],
        rtol=1e-14,
    )
    # Lower Cholesky: row-major lower triangle, exp on the diagonal.
    np.testing.assert_allclose(
        _forward(LowerCholeskyTransform(), jnp.array([0.1, 2.0, 0.3, 4.0, 5.0, 0.6])),
        [[math.exp(0.1), 0, 0], [2.0, math.exp(0.3), 0], [4.0, 5.0, math.exp(0.6)]],
        rtol=1e-14,
    )
    # Stick breaking, K = 3: z1 = sigmoid(x1 - log 2), z2 = sigmoid(x2).
    x1, x2 = 0.4, -1.1
    z1 = 1 / (1 + math.exp(-(x1 - math.log(2))))
    z2 = 1 / (1 + math.exp(-x2))
    np.testing.assert_allclose(
        _forward(StickBreakingTransform(), jnp.array([x1, x2])),
        [z1, (1 - z1) * z2, (1 - z1) * (1 - z2)],
        rtol=1e-14,
    )


# ----------------------------------------------------------------------------- array bounds


def test_array_bounds_broadcast():
    lower = jnp.array([-1.0, 0.0, 2.0])
    upper = jnp.array([1.0, 5.0, 2.5])
    x = 1.5 * _normal(500, (2, 3))
    for t in (IntervalTransform(lower, upper), GreaterThanTransform(lower)):
        y = t.forward(x)
        assert bool(jnp.all(t.codomain.check(y)))
        np.testing.assert_allclose(t.inverse(y), x, rtol=1e-10, atol=1e-10)
        slope = jax.vmap(jax.vmap(jax.grad(lambda v, i: t.forward(v * jnp.ones(3))[i]),
                                  in_axes=(0, 0)), in_axes=(0, None))(x, jnp.arange(3))
        np.testing.assert_allclose(t.log_abs_det_jacobian(x), jnp.log(slope), rtol=1e-10)
        assert t.forward_shape((3,)) == (3,)
        assert t.forward_shape((2, 1)) == (2, 3)


# ----------------------------------------------------------------------------- jit, vmap, grad


@case_params
def test_jit_vmap_grad(case):
    """Eager, jitted and vmapped evaluations agree; the gradient matches differences."""
    t = case.transform
    fns = _jitted(case)
    x = _normal(700, (2, 3) + case.x_event)
    y = t.forward(x)  # eager
    np.testing.assert_allclose(fns.forward(x), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(fns.inverse(y), t.inverse(y), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(fns.log_det(x), t.log_abs_det_jacobian(x), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(jax.jit(jax.vmap(t.forward))(x), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        jax.jit(jax.vmap(t.log_abs_det_jacobian))(x), fns.log_det(x), rtol=1e-13, atol=1e-13
    )

    @jax.jit
    def objective(v):
        return jnp.sum(t.log_abs_det_jacobian(v)) + jnp.sum(jnp.sin(t.forward(v)))

    grad = jax.jit(jax.grad(objective))(x)
    # Compare the gradient with a central finite difference along a random direction.
    direction = _normal(701, x.shape)
    h = 1e-6
    fd = (objective(x + h * direction) - objective(x - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- float32 edges


def _edge_inputs(event_shape, limit=50.0):
    """float32 inputs in [-limit, limit]: all at either end, alternating, random."""
    n = int(np.prod(event_shape, dtype=int))
    alternating = np.where(np.arange(n) % 2 == 0, limit, -limit)
    rows = [
        np.full(n, limit),
        np.full(n, -limit),
        alternating,
        -alternating,
        np.zeros(n),
    ]
    rng = np.random.default_rng(0)
    rows += list(rng.uniform(-limit, limit, size=(16, n)))
    rows += list(rng.choice([-limit, -0.4 * limit, 0.0, 0.4 * limit, limit], size=(16, n)))
    return jnp.asarray(np.stack(rows).reshape((-1,) + event_shape), dtype=jnp.float32)


@case_params
def test_float32_edges_are_finite(case):
    t = case.transform
    fns = _jitted(case)
    x = _edge_inputs(case.x_event)
    y = fns.forward(x)
    log_det = fns.log_det(x)
    grad = jax.jit(
        jax.grad(lambda v: jnp.sum(t.log_abs_det_jacobian(v)) + jnp.sum(t.forward(v)))
    )(x)
    for name, value in [("forward", y), ("log_det", log_det), ("grad", grad)]:
        assert value.dtype == jnp.float32, name
        assert bool(jnp.all(jnp.isfinite(value))), name
    if case.support_at_float32_edges:
        assert bool(fns.check(y))
        back = fns.inverse(y)
        assert back.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(back)))
    # Accurate, not just finite: float32 log-det agrees with float64 at the same inputs.
    # (The float32 covariance transform saturates its log-diagonal at about 43.)
    if case.name == "positive_definite":
        x = _edge_inputs(case.x_event, limit=40.0)
        log_det = fns.log_det(x)
    np.testing.assert_allclose(log_det, fns.log_det(x.astype(jnp.float64)), rtol=2e-6, atol=1e-4)


def test_float32_ordered_edges_stay_non_decreasing():
    fns = _jitted(_case("ordered_vector"))
    y = fns.forward(_edge_inputs((5,)))
    assert bool(jnp.all(jnp.diff(y, axis=-1) >= 0))
    assert bool(jnp.all(jnp.isfinite(fns.inverse(y))))


def test_float32_positive_definite_edges_symmetric_and_inverse_finite_when_conditioned():
    fns = _jitted(_case("positive_definite"))
    y = fns.forward(_edge_inputs((6,)))
    np.testing.assert_array_equal(y, jnp.swapaxes(y, -1, -2))
    assert bool(jnp.all(jnp.diagonal(y, axis1=-2, axis2=-1) > 0))
    # Moderate inputs whose image is well conditioned in float32 round trip finitely.
    x = _edge_inputs((6,), limit=1.5)
    y = fns.forward(x)
    assert bool(fns.check(y))
    back = fns.inverse(y)
    assert back.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(back)))


def test_float32_interval_clamps_inside_bounds():
    t = IntervalTransform(-1.0, 3.0)
    y = t.forward(jnp.array([-50.0, 50.0, -1e4, 1e4], dtype=jnp.float32))
    assert bool(jnp.all((y > -1.0) & (y < 3.0)))
    g = GreaterThanTransform(5.0).forward(jnp.array([-50.0], dtype=jnp.float32))
    assert bool(jnp.all(g > 5.0))


# ----------------------------------------------------------------------------- biject_to


@pytest.mark.parametrize(
    "constraint, expected_type",
    [
        (constraints.real, IdentityTransform),
        (constraints.real_vector, IdentityTransform),
        (constraints.positive, ExpTransform),
        (constraints.greater_than(1.5), GreaterThanTransform),
        (constraints.interval(-2.0, 4.0), IntervalTransform),
        (constraints.unit_interval, IntervalTransform),
        (constraints.simplex, StickBreakingTransform),
        (constraints.ordered_vector, OrderedTransform),
        (constraints.corr_cholesky, CorrCholeskyTransform),
        (constraints.lower_cholesky, LowerCholeskyTransform),
        (constraints.positive_definite, PositiveDefiniteTransform),
    ],
    ids=repr,
)
def test_biject_to_dispatch(constraint, expected_type):
    t = biject_to(constraint)
    assert type(t) is expected_type
    assert t.event_dim == constraint.event_dim
    assert t.codomain == constraint


def test_biject_to_keeps_bounds():
    t = biject_to(constraints.interval(-2.0, 4.0))
    assert (t.lower_bound, t.upper_bound) == (-2.0, 4.0)
    assert biject_to(constraints.greater_than(1.5)).lower_bound == 1.5


@pytest.mark.parametrize(
    "constraint",
    [constraints.nonnegative_integer, constraints.boolean, constraints.integer_interval(0, 3)],
    ids=repr,
)
def test_biject_to_rejects_discrete(constraint):
    with pytest.raises(ConstraintError, match=re.escape(repr(constraint))):
        biject_to(constraint)


def test_biject_to_rejects_unknown():
    class _Weird(Constraint):
        def check(self, value):
            return value == value

    with pytest.raises(ConstraintError, match="Weird"):
        biject_to(_Weird())
    with pytest.raises(ConstraintError, match="'positive'"):
        biject_to("positive")
    assert issubclass(ConstraintError, HbmError)


def test_register_bijector_extends_registry():
    class _Negative(Constraint):
        def check(self, value):
            return value < 0

    class NegExpTransform(ExpTransform):
        def forward(self, x):
            return -super().forward(x)

        def inverse(self, y):
            return super().inverse(-y)

    register_bijector(_Negative, lambda c: NegExpTransform())
    t = biject_to(_Negative())
    assert isinstance(t, NegExpTransform)
    assert float(t.forward(0.0)) == -1.0
