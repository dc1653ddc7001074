"""Leapfrog: exact values, second-order energy error, time reversibility."""

import jax
import jax.numpy as jnp
import numpy as np

from hbm.samplers import IntegratorState, gaussian_euclidean, velocity_verlet

from ._helpers import funnel


def _start(logdensity, position, momentum):
    position = jnp.asarray(position, jnp.float64)
    value, grad = jax.value_and_grad(logdensity)(position)
    return IntegratorState(position, jnp.asarray(momentum, jnp.float64), value, grad)


def _run(step, state, step_size, num_steps):
    def body(s, _):
        s = step(s, step_size)
        return s, s

    return jax.lax.scan(body, state, None, length=num_steps)


def test_exact_leapfrog_on_one_dimensional_quadratic():
    # H = x^2 / 2 + m p^2 / 2 with inverse mass m: one step is a linear map of (x, p).
    inverse_mass, eps, num_steps = 0.7, 0.3, 25
    metric = gaussian_euclidean(jnp.array([inverse_mass]))
    logdensity = lambda x: -0.5 * jnp.sum(x**2)
    step = velocity_verlet(logdensity, metric.kinetic_energy)
    one_step = np.array(
        [
            [1 - eps**2 * inverse_mass / 2, eps * inverse_mass],
            [-eps * (1 - eps**2 * inverse_mass / 4), 1 - eps**2 * inverse_mass / 2],
        ]
    )
    start = _start(logdensity, [1.3], [-0.4])
    final, path = _run(jax.jit(step), start, eps, num_steps)
    expected = np.linalg.matrix_power(one_step, num_steps) @ np.array([1.3, -0.4])
    np.testing.assert_allclose([final.position[0], final.momentum[0]], expected, rtol=1e-12)
    np.testing.assert_allclose(final.logdensity, -0.5 * expected[0] ** 2, rtol=1e-12)
    np.testing.assert_allclose(final.logdensity_grad, [-expected[0]], rtol=1e-12)


def test_velocity_fn_matches_autodiff_of_kinetic_energy():
    inverse_mass = jnp.array([[2.0, 0.3], [0.3, 0.5]])
    metric = gaussian_euclidean(inverse_mass)
    logdensity = lambda x: -0.5 * jnp.sum(x**2) - 0.1 * x[0] ** 4
    start = _start(logdensity, [0.5, -1.0], [0.2, 0.9])
    by_autodiff = velocity_verlet(logdensity, metric.kinetic_energy)(start, 0.1)
    closed_form = velocity_verlet(logdensity, metric.kinetic_energy, metric.velocity)(start, 0.1)
    for a, b in zip(by_autodiff, closed_form):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_energy_error_is_second_order():
    precision = jnp.diag(jnp.array([1.0, 4.0]))
    logdensity = lambda x: -0.5 * x @ precision @ x
    metric = gaussian_euclidean(jnp.ones(2))
    step = jax.jit(velocity_verlet(logdensity, metric.kinetic_energy))

    def max_energy_error(eps, num_steps):
        start = _start(logdensity, [1.0, 0.5], [0.3, -0.8])
        h0 = -start.logdensity + metric.kinetic_energy(start.momentum)
        _, path = _run(step, start, eps, num_steps)
        h = -path.logdensity + jax.vmap(metric.kinetic_energy)(path.momentum)
        return float(jnp.max(jnp.abs(h - h0)))

    # same integration time (10 units, > one period of each mode)
    coarse = max_energy_error(0.02, 500)
    fine = max_energy_error(0.01, 1000)
    assert 3.9 < coarse / fine < 4.1, coarse / fine
    assert coarse < 1e-3


def test_time_reversibility():
    logdensity = funnel(5)
    metric = gaussian_euclidean(jnp.array([1.0, 0.5, 2.0, 1.0, 0.8]))
    step = jax.jit(velocity_verlet(logdensity, metric.kinetic_energy, metric.velocity))
    start = _start(logdensity, [0.5, 0.3, -0.2, 0.8, -1.0], [0.4, -0.3, 0.2, 0.1, 0.5])
    forward, _ = _run(step, start, 0.05, 40)
    flipped = forward._replace(momentum=-forward.momentum)
    back, _ = _run(step, flipped, 0.05, 40)
    np.testing.assert_allclose(back.position, start.position, atol=1e-10)
    np.testing.assert_allclose(-back.momentum, start.momentum, atol=1e-10)
    # a negative step size integrates backwards as well
    backwards, _ = _run(step, forward, -0.05, 40)
    np.testing.assert_allclose(backwards.position, start.position, atol=1e-10)
