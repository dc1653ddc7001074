"""Mass-matrix estimators: Stan's Welford, the gradient-based diagonal, low rank plus
diagonal (Seyboldt, Carlson & Carpenter 2026), overlapping windows, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.errors import ConfigurationError, HbmError
from hbm.samplers import welford_variance
from hbm.samplers.mass_matrix import (
    build_metric_adapter,
    dense,
    diag_grad,
    diag_welford,
    fisher_optimal_covariance,
    initial_inverse_mass,
    lowrank,
    overlapping,
    welford_drift,
)
from hbm.samplers.metrics import LowRankInverseMass, to_dense_inverse_mass


def _feed(adapter, draws, grads):
    """The estimator's state after the draws and gradients, in order (a compiled scan)."""

    def run(draws, grads):
        return jax.lax.scan(lambda state, xg: (adapter.update(state, *xg), None),
                            adapter.init(draws[0]), (draws, grads))[0]

    return jax.jit(run)(jnp.asarray(draws), jnp.asarray(grads))


def _gaussian_draws(cov, n, seed):
    """Exact draws x ~ N(0, cov) and their exact gradients -cov^{-1} x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cov.shape[0])) @ np.linalg.cholesky(cov).T
    return x, -np.linalg.solve(cov, x.T).T


def _lowrank_state(adapter, draws, grads):
    # the ring buffer filled at once (the same as feeding the draws in order when they
    # fit), and the window's moments (which count the draws)
    state = adapter.init(jnp.asarray(draws[0]))
    n = draws.shape[0]
    return state._replace(draws=state.draws.at[:n].set(draws),
                          grads=state.grads.at[:n].set(grads),
                          moments=_feed(diag_grad(), draws, grads))


# ---------------------------------------------------------------- Stan's estimators


@pytest.mark.parametrize("make, is_dense", [(diag_welford, False), (dense, True)])
def test_welford_adapters_are_stans_estimates(make, is_dense):
    rng = np.random.default_rng(0)
    draws, grads = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    adapter = make()
    w_init, w_update, w_final = welford_variance(is_dense)
    reference = w_init(4)
    for x in draws:
        reference = w_update(reference, jnp.asarray(x))
    np.testing.assert_allclose(adapter.final(_feed(adapter, draws, grads)),
                               w_final(reference), rtol=1e-13)
    start = adapter.initial(jnp.zeros(4), jnp.ones(4))
    np.testing.assert_array_equal(start, np.eye(4) if is_dense else np.ones(4))


# ---------------------------------------------------------------- gradient-based diagonal


def test_diag_grad_is_exact_on_a_diagonal_gaussian():
    # g_i = -x_i / s_i^2, so the sample variances satisfy Var(x_i) / Var(g_i) = s_i^4 for
    # every sample, and the estimate sqrt(Var(x) / Var(g)) = s^2 exactly, from 3 draws on;
    # from n draws it is then shrunk as Stan shrinks: (n / (n + 5)) s^2 + 1e-3 * 5 / (n + 5)
    scales = np.array([1e-3, 0.1, 1.0, 7.0, 300.0])
    adapter = diag_grad()
    for n in (3, 40):
        draws, grads = _gaussian_draws(np.diag(scales**2), n, seed=1)
        expected = (n / (n + 5)) * scales**2 + 1e-3 * 5 / (n + 5)
        np.testing.assert_allclose(adapter.final(_feed(adapter, draws, grads)), expected,
                                   rtol=1e-12)


def test_diag_grad_keeps_a_coordinate_that_barely_moved_away_from_zero():
    """A chain stuck in one coordinate during a short window (draw variance ~0 there)
    gets an inverse mass of at least 1e-3 * 5 / (n + 5), not ~0 (which would keep it
    stuck); the other coordinates are unaffected beyond the shrinkage."""
    rng = np.random.default_rng(4)
    n = 20
    draws = rng.normal(size=(n, 3))
    draws[:, 1] = 0.5 + 1e-9 * rng.normal(size=n)  # barely moved
    grads = -draws.copy()
    grads[:, 1] = rng.normal(size=n)  # the gradient still varies
    adapter = diag_grad()
    estimate = np.asarray(adapter.final(_feed(adapter, draws, grads)))
    floor = 1e-3 * 5 / (n + 5)
    assert estimate[1] >= floor
    assert estimate[1] < 2 * floor
    np.testing.assert_allclose(estimate[[0, 2]], n / (n + 5) + floor, rtol=1e-12)


def test_diag_grad_is_consistent_on_a_correlated_gaussian():
    # The limit is D_i = sqrt(Sigma_ii / (Sigma^{-1})_ii). By the delta method, with
    # Cov(x_i, g_i) = -1, Var(log D_hat_i) = (1 - 1 / (Sigma_ii (Sigma^{-1})_ii)) / n;
    # z-test every coordinate at n = 20000 (|z| < 4 for all 6: false alarm rate ~ 4e-4).
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T / 6 + 0.3 * np.eye(6)
    precision = np.linalg.inv(cov)
    n = 20000
    draws, grads = _gaussian_draws(cov, n, seed=3)
    adapter = diag_grad()
    estimate = np.asarray(adapter.final(_feed(adapter, draws, grads)))
    limit = np.sqrt(np.diag(cov) / np.diag(precision))
    standard_error = np.sqrt((1 - 1 / (np.diag(cov) * np.diag(precision))) / n)
    z = (np.log(estimate) - np.log(limit)) / standard_error
    assert np.all(np.abs(z) < 4.0), z


def test_diag_grad_without_enough_draws_is_the_identity():
    adapter = diag_grad()
    state = _feed(adapter, np.ones((1, 3)), np.ones((1, 3)))
    np.testing.assert_array_equal(adapter.final(state), np.ones(3))
    np.testing.assert_array_equal(adapter.final(adapter.init(jnp.zeros(3))), np.ones(3))


@pytest.mark.parametrize("metric", ["diag_grad", "lowrank"])
def test_a_coordinate_without_movement_gets_the_gradient_scale(metric):
    """A chain stuck where gradients are huge must not be given a unit inverse mass in
    the coordinates it did not move in: there the estimate is 1 / sqrt(mean g^2)."""
    adapter = diag_grad() if metric == "diag_grad" else lowrank(min_draws=3)
    rng = np.random.default_rng(0)
    draws = np.tile(rng.normal(size=(1, 3)), (12, 1))
    draws[:, 0] += rng.normal(size=12)  # only coordinate 0 moves
    grads = np.column_stack([-draws[:, 0], np.full(12, 4e6), rng.normal(size=12) * 1e-3 + 1e4])
    grads[:, 2] = 1e4  # coordinate 2: a constant gradient, no variation either
    final = adapter.final(_feed(adapter, draws, grads))
    diagonal = np.asarray(final if metric == "diag_grad" else final.diagonal)
    np.testing.assert_allclose(diagonal[1:], [1 / 4e6, 1 / 1e4], rtol=1e-12)


# ---------------------------------------------------------------- low rank


def _reference_lowrank(draws, grads, max_rank, cutoff, gamma, window=None):
    """The estimator written out densely in NumPy on the span of the data; the diagonal
    from ``window`` (draws, gradients), by default the same draws."""
    n = draws.shape[0]
    xc, gc = draws - draws.mean(0), grads - grads.mean(0)
    window_draws, window_grads = (draws, grads) if window is None else window
    diagonal = np.sqrt(window_draws.var(0) / window_grads.var(0))
    xs, gs = xc / np.sqrt(diagonal), gc * np.sqrt(diagonal)
    span = np.linalg.svd(np.concatenate([xs.T, gs.T], 1), full_matrices=False)[0]
    span = span[:, : np.linalg.matrix_rank(np.concatenate([xs.T, gs.T], 1))]
    px, pg = xs @ span, gs @ span
    eye = np.eye(span.shape[1])
    cx, cg = px.T @ px / n + gamma * eye, pg.T @ pg / n + gamma * eye
    w, v = np.linalg.eigh(cg)
    cg_half, cg_minus_half = (v * np.sqrt(w)) @ v.T, (v / np.sqrt(w)) @ v.T
    w, v = np.linalg.eigh(cg_half @ cx @ cg_half)
    s = cg_minus_half @ ((v * np.sqrt(w)) @ v.T) @ cg_minus_half
    values, vectors = np.linalg.eigh(s)
    order = np.argsort(-np.abs(np.log(values)))[:max_rank]
    order = order[np.abs(np.log(values[order])) > np.log(cutoff)]
    u = span @ vectors[:, order]
    inner = np.eye(draws.shape[1]) + u @ np.diag(values[order] - 1) @ u.T
    return np.sqrt(diagonal)[:, None] * inner * np.sqrt(diagonal)[None, :], len(order)


@pytest.mark.parametrize(
    "dim, buffer_size, num_draws",
    [(6, 40, 40),    # more draws than dimensions: the whole space
     (30, 8, 8),     # fewer: the subspace spanned by the draws and gradients
     (30, 8, 5),     # buffer partly filled
     (30, 8, 13)],   # ring buffer wrapped: the last 8 draws, the diagonal from all 13
)
def test_lowrank_matches_a_dense_reference(dim, buffer_size, num_draws):
    rng = np.random.default_rng(dim + num_draws)
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.05 * np.eye(dim)
    draws, grads = _gaussian_draws(cov, num_draws, seed=4)
    grads = grads + 0.3 * rng.normal(size=grads.shape)  # not a Gaussian's gradients
    adapter = lowrank(3, buffer_size=buffer_size, eigenvalue_cutoff=1.5,
                      undersampled_cutoff=4.0, regularization=1e-2, min_draws=3)
    estimate = jax.jit(adapter.final)(_feed(adapter, draws, grads))
    assert isinstance(estimate, LowRankInverseMass)
    assert estimate.eigenvectors.shape == (dim, 3) and estimate.eigenvalues.shape == (3,)
    kept = slice(max(0, num_draws - buffer_size), num_draws)
    # with no more draws than dimensions the covariances are singular: the larger cutoff
    cutoff = 1.5 if min(num_draws, buffer_size) > dim else 4.0
    reference, rank = _reference_lowrank(draws[kept], grads[kept], 3, cutoff, 1e-2,
                                         window=(draws, grads))
    np.testing.assert_allclose(to_dense_inverse_mass(estimate), reference, rtol=1e-7,
                               atol=1e-9 * np.abs(reference).max())
    assert int(np.sum(np.asarray(estimate.eigenvalues) != 1.0)) == rank


def test_fisher_optimal_covariance_solves_the_riccati_equation():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 5, 5))
    cx, cg = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    s = np.asarray(fisher_optimal_covariance(jnp.asarray(cx), jnp.asarray(cg)))
    np.testing.assert_allclose(s @ cg @ s, cx, rtol=1e-9, atol=1e-11)
    assert np.all(np.linalg.eigvalsh(s) > 0)
    # the geometric mean of A and A^{-1} is the identity
    np.testing.assert_allclose(fisher_optimal_covariance(jnp.asarray(cx), jnp.asarray(cx)),
                               np.eye(5), atol=1e-10)


def test_fisher_optimal_covariance_is_bounded_in_float32():
    # Ill-conditioned C + gamma I in float32: eigh's rounding error (~1e-7 * 1e5) exceeds
    # gamma, so a computed eigenvalue can be negative; raising it to the known floor gamma
    # keeps S within its Loewner bounds sqrt(min eig C_x / max eig C_g) I <= S <=
    # sqrt(max eig C_x / min eig C_g) I (without the floor the result here is ~1e30).
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    gamma = 1e-3
    cg = q @ np.diag([1e5, 3.0, 1e-3, 0.0]) @ q.T + gamma * np.eye(4)
    cx = q @ np.diag([1e-4, 0.5, 2e2, 0.0]) @ q.T + gamma * np.eye(4)
    s = fisher_optimal_covariance(jnp.asarray(cx, jnp.float32), jnp.asarray(cg, jnp.float32),
                                  gamma)
    assert s.dtype == jnp.float32
    values = np.linalg.eigvalsh(np.asarray(s, np.float64))
    cx_values, cg_values = np.linalg.eigvalsh(cx), np.linalg.eigvalsh(cg)
    lower = np.sqrt(cx_values.min() / cg_values.max())
    upper = np.sqrt(cx_values.max() / cg_values.min())
    assert np.all(values >= lower * (1 - 1e-5)) and np.all(values <= upper * (1 + 1e-5)), values


def _strong_directions_gaussian(dim=20, seed=0):
    """Sigma = D0^{1/2} (I + V (L - I) V^T) D0^{1/2} with V four Walsh vectors (entries
    +-1/sqrt(d)) and L = (50, 1/50, 10, 1/10): reciprocal pairs with equal squared
    loadings make sqrt(Sigma_ii / (Sigma^{-1})_ii) = D0_i, so the estimator's population
    limit has exactly these four eigenvalues outside [1/2, 2] and 1 elsewhere."""
    walsh = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], float)
    vectors = np.tile(walsh, (1, dim // 4)).T / np.sqrt(dim)
    values = np.array([50.0, 0.02, 10.0, 0.1])
    d0 = np.exp(np.random.default_rng(seed).normal(size=dim))
    inner = np.eye(dim) + vectors @ np.diag(values - 1) @ vectors.T
    return np.sqrt(d0)[:, None] * inner * np.sqrt(d0)[None, :], values


def test_lowrank_eigenvalues_converge_on_a_gaussian():
    # Exact draws and gradients: the geometric mean cancels the sampling error of the
    # covariance (G(A, A^{-1}) = I), so the error comes from the estimated diagonal D_hat:
    # to first order the relative error of each eigenvalue is -(1/d) sum_i (log D_hat_i -
    # log D0_i), log D_hat_i = (log Var_hat x_i - log Var_hat g_i) / 2, and for jointly
    # Gaussian (x, g) with covariance C, Cov(log Var_hat_k, log Var_hat_l) = 2 C_kl^2 /
    # (n C_kk C_ll): a standard error ~ 1/sqrt(n), computed exactly below (checked against
    # 300 replicates: z has mean ~0 and sd ~1). The target is the regularized limit
    # sqrt((lambda + gamma) / (1/lambda + gamma)). z-test, |z| < 4, at n = 500 and 4000.
    cov, values = _strong_directions_gaussian()
    dim, gamma = cov.shape[0], 1e-3
    target = np.sqrt((values + gamma) / (1 / values + gamma))
    joint = np.block([[cov, -np.eye(dim)], [-np.eye(dim), np.linalg.inv(cov)]])
    weights = -np.concatenate([np.ones(dim), -np.ones(dim)]) / (2 * dim)
    for n in (500, 4000):
        log_var_cov = 2 * joint**2 / np.outer(np.diag(joint), np.diag(joint)) / n
        standard_error = np.sqrt(weights @ log_var_cov @ weights)
        draws, grads = _gaussian_draws(cov, n, seed=n)
        adapter = lowrank(6, buffer_size=n, regularization=gamma)
        estimate = jax.jit(adapter.final)(_lowrank_state(adapter, draws, grads))
        found = np.asarray(estimate.eigenvalues)
        assert np.sum(found != 1.0) == 4, found  # the rank is chosen by the data
        active = np.sort(found[found != 1.0])
        z = (active / np.sort(target) - 1) / standard_error
        assert np.all(np.abs(z) < 4.0), (n, z)


def test_lowrank_has_no_more_columns_than_dimensions():
    """A cap above d gives d columns (no padding that never acts), and the same metric
    as the cap d itself; ``initial`` has the same shapes (a scan carry)."""
    cov, _ = _strong_directions_gaussian(dim=8)
    draws, grads = _gaussian_draws(cov, 40, seed=2)
    capped = lowrank(8, buffer_size=40, eigenvalue_cutoff=1.01)
    loose = lowrank(32, buffer_size=40, eigenvalue_cutoff=1.01)
    estimate = jax.jit(loose.final)(_feed(loose, draws, grads))
    assert estimate.eigenvectors.shape == (8, 8) and estimate.eigenvalues.shape == (8,)
    assert np.sum(np.asarray(estimate.eigenvalues) != 1.0) > 4  # cutoff 1.01: noise acts too
    reference = jax.jit(capped.final)(_feed(capped, draws, grads))
    for got, want in zip(estimate, reference):
        np.testing.assert_array_equal(got, want)
    start = loose.initial(jnp.asarray(draws[0]), jnp.asarray(grads[0]))
    assert jax.tree.map(jnp.shape, start) == jax.tree.map(jnp.shape, estimate)


def test_lowrank_without_enough_draws_is_its_diagonal():
    adapter = lowrank(2)
    estimate = jax.jit(adapter.final)(_feed(adapter, np.ones((2, 4)), np.ones((2, 4))))
    np.testing.assert_array_equal(estimate.eigenvalues, np.ones(2))


def test_lowrank_waits_for_min_draws():
    """Below ``min_draws`` draws the estimate is the gradient-based diagonal alone (the
    paper's ``sqrt(Var(x) / Var(g))``, without diag_grad's shrinkage); from ``min_draws``
    on the low-rank part is in use."""
    cov, _ = _strong_directions_gaussian(dim=8)
    draws, grads = _gaussian_draws(cov, 10, seed=3)
    adapter = lowrank(2, buffer_size=16, min_draws=10)
    early = jax.jit(adapter.final)(_feed(adapter, draws[:9], grads[:9]))
    np.testing.assert_array_equal(early.eigenvalues, np.ones(2))
    np.testing.assert_array_equal(early.eigenvectors, np.zeros((8, 2)))
    np.testing.assert_allclose(
        early.diagonal, np.sqrt(np.var(draws[:9], 0) / np.var(grads[:9], 0)), rtol=1e-10)
    later = jax.jit(adapter.final)(_feed(adapter, draws, grads))
    assert np.all(np.asarray(later.eigenvalues) != 1.0)


def test_lowrank_update_and_final_vmap_over_chains():
    adapter = lowrank(2, buffer_size=16)
    cov, _ = _strong_directions_gaussian(dim=8)
    draws, grads = _gaussian_draws(cov, 3 * 12, seed=7)
    draws, grads = draws.reshape(3, 12, 8), grads.reshape(3, 12, 8)

    def one_chain(x, g):
        state = jax.lax.scan(lambda s, xg: (adapter.update(s, *xg), None),
                             adapter.init(x[0]), (x, g))[0]
        return adapter.final(state)

    batched = jax.jit(jax.vmap(one_chain))(jnp.asarray(draws), jnp.asarray(grads))
    one_chain = jax.jit(one_chain)
    for chain in range(3):
        single = one_chain(jnp.asarray(draws[chain]), jnp.asarray(grads[chain]))
        np.testing.assert_allclose(
            to_dense_inverse_mass(jax.tree.map(lambda a: a[chain], batched)),
            to_dense_inverse_mass(single), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- first guess, windows


def test_initial_inverse_mass_from_the_gradient():
    grad = jnp.array([2.0, -0.5, 0.0, 1e6, jnp.nan])
    guess = initial_inverse_mass(jnp.zeros(5), grad)
    np.testing.assert_array_equal(guess, [0.5, 2.0, 1e3, 1e-3, 1.0])
    start = lowrank(3).initial(jnp.zeros(5), grad)
    np.testing.assert_array_equal(start.diagonal, guess)
    np.testing.assert_array_equal(start.eigenvalues, np.ones(3))
    np.testing.assert_array_equal(diag_grad().initial(jnp.zeros(5), grad), guess)
    np.testing.assert_array_equal(diag_grad(init_from_gradient=False).initial(
        jnp.zeros(5), grad), np.ones(5))


@pytest.mark.parametrize("name", ["diag", "diag_grad", "lowrank", "dense"])
def test_overlapping_switch_forgets_old_draws(name):
    # feed 0..4, switch, 5..9, switch, 10..12: the foreground has seen exactly 5..12
    rng = np.random.default_rng(8)
    draws, grads = rng.normal(size=(13, 3)), rng.normal(size=(13, 3))
    # the gradient-based estimators would defer the second switch of these stationary
    # draws (tested below): here every switch happens
    base = build_metric_adapter(
        name, **({"drift_tolerance": 0.0} if name in ("diag_grad", "lowrank") else {}))
    pair = overlapping(base)
    state = pair.init(jnp.zeros(3))
    update = jax.jit(pair.update)
    for i in range(13):
        state = update(state, jnp.asarray(draws[i]), jnp.asarray(grads[i]))
        if i in (4, 9):
            state = pair.switch(state)
    final = jax.jit(base.final)
    expected = final(_feed(base, draws[5:], grads[5:]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                 final(state.foreground), expected)
    restarted = pair.restart(state)
    jax.tree.map(np.testing.assert_array_equal, restarted.foreground,
                 base.init(jnp.zeros(3)))


def _drift_reference(draws, recent):
    """Mean over coordinates of the squared z-score of the difference of the means of the
    last ``recent`` draws and of the ones before them (pooled variance)."""
    old, new = draws[:-recent], draws[-recent:]
    pooled = (((old - old.mean(0)) ** 2).sum(0) + ((new - new.mean(0)) ** 2).sum(0)) / (
        len(draws) - 2)
    z2 = (old.mean(0) - new.mean(0)) ** 2 / (pooled * (1 / len(old) + 1 / len(new)))
    return z2.mean()


@pytest.mark.parametrize("num_draws, recent", [(7, 3), (12, 10), (30, 4)])
def test_welford_drift_matches_a_reference(num_draws, recent):
    rng = np.random.default_rng(num_draws)
    draws = rng.normal(size=(num_draws, 4)) + np.linspace(0, 1, num_draws)[:, None]
    draws[:, 3] = 1.0  # a coordinate that never moves counts 0
    welford_init, welford_update, _ = welford_variance(False)
    everything = recent_only = welford_init(4, jnp.float64)
    for i, x in enumerate(jnp.asarray(draws)):
        everything = welford_update(everything, x)
        if i >= num_draws - recent:
            recent_only = welford_update(recent_only, x)
    np.testing.assert_allclose(welford_drift(everything, recent_only),
                               _drift_reference(draws[:, :3], recent) * 3 / 4, rtol=1e-10)
    # too few draws on a side: inf
    assert welford_drift(everything, everything) == np.inf
    assert welford_drift(everything, welford_update(welford_init(4, jnp.float64),
                                                    jnp.asarray(draws[-1]))) == np.inf


def _overlapping_run(pair, draws, switch_at, grads=None):
    grads = np.zeros_like(draws) if grads is None else grads
    state = pair.init(jnp.asarray(draws[0]))
    update, switch = jax.jit(pair.update), jax.jit(pair.switch)
    for i, (x, g) in enumerate(zip(draws, grads)):
        state = update(state, jnp.asarray(x), jnp.asarray(g))
        if i in switch_at:
            state = switch(state)
    return state


def test_lowrank_defers_a_switch_while_the_chain_is_stationary():
    cov, _ = _strong_directions_gaussian(dim=8)
    stationary, grads = _gaussian_draws(cov, 40, seed=3)
    pair = overlapping(lowrank(4, buffer_size=16))
    # the first switch has no older draws to compare with and goes ahead; later switches
    # of a stationary chain are deferred, however long the window grows (past the buffer)
    state = _overlapping_run(pair, stationary, switch_at=(9, 19, 29), grads=grads)
    assert int(state.foreground.count) == 40 and int(state.background.count) == 30
    # the diagonal then rests on every draw of the window, the low-rank part on the
    # buffer's last 16: the dense reference with that split
    reference, rank = _reference_lowrank(stationary[-16:], grads[-16:], 4, 2.0, 1e-3,
                                         window=(stationary, grads))
    estimate = jax.jit(pair.final)(state)
    np.testing.assert_allclose(to_dense_inverse_mass(estimate), reference, rtol=1e-7,
                               atol=1e-9 * np.abs(reference).max())
    assert int(np.sum(np.asarray(estimate.eigenvalues) != 1.0)) == rank > 0
    np.testing.assert_allclose(estimate.diagonal,
                               np.sqrt(np.var(stationary, 0) / np.var(grads, 0)), rtol=1e-10)
    # a chain still drifting forgets its first window
    drifting = stationary[:30] + np.linspace(0.0, 6.0, 30)[:, None] * np.sqrt(np.diag(cov))
    state = _overlapping_run(pair, drifting, switch_at=(9, 19))
    assert int(state.foreground.count) == 20 and int(state.background.count) == 10
    assert int(state.foreground.moments.draws.count) == 20
    # drift_tolerance=0: every switch happens, as for the other metrics
    state = _overlapping_run(overlapping(lowrank(4, drift_tolerance=0.0)), stationary[:30],
                             switch_at=(9, 19))
    assert int(state.foreground.count) == 20 and int(state.background.count) == 10


def test_diag_grad_defers_a_switch_while_the_chain_is_stationary():
    rng = np.random.default_rng(4)
    stationary = rng.normal(size=(40, 5))
    pair = overlapping(diag_grad())
    # the first switch has no older draws to compare with and goes ahead; later switches
    # of a stationary chain are deferred, however long the window grows
    grads = -stationary / np.arange(1.0, 6.0) ** 2  # a Gaussian of scales 1, 2, ..., 5
    state = _overlapping_run(pair, stationary, switch_at=(9, 19, 29, 39), grads=grads)
    assert int(state.foreground.draws.count) == 40
    assert int(state.background.draws.count) == 30
    # the metric then rests on every draw: one estimator's estimate
    np.testing.assert_allclose(pair.final(state),
                               diag_grad().final(_feed(diag_grad(), stationary, grads)),
                               rtol=1e-12)
    # a chain still drifting forgets its first window
    drifting = stationary[:30] + np.linspace(0.0, 6.0, 30)[:, None]
    state = _overlapping_run(pair, drifting, switch_at=(9, 19))
    assert int(state.foreground.draws.count) == 20
    assert int(state.background.draws.count) == 10
    # drift_tolerance=0: every switch happens
    state = _overlapping_run(overlapping(diag_grad(drift_tolerance=0.0)), stationary[:30],
                             switch_at=(9, 19))
    assert int(state.foreground.draws.count) == 20
    assert int(state.background.draws.count) == 10


# ---------------------------------------------------------------- errors


def test_bad_configuration_raises():
    with pytest.raises(ConfigurationError, match="metric"):
        build_metric_adapter("diagonal")
    with pytest.raises(ConfigurationError, match="max_rank"):
        build_metric_adapter("lowrank", max_rank=0)
    with pytest.raises(ConfigurationError, match="max_rank"):
        lowrank(2.5)
    with pytest.raises(ConfigurationError, match="buffer_size"):
        lowrank(2, buffer_size=2)
    with pytest.raises(ConfigurationError, match="eigenvalue_cutoff"):
        lowrank(2, eigenvalue_cutoff=0.5)
    with pytest.raises(ConfigurationError, match="undersampled_cutoff"):
        lowrank(2, undersampled_cutoff=0.9)
    with pytest.raises(ConfigurationError, match="regularization"):
        lowrank(2, regularization=0.0)
    with pytest.raises(ConfigurationError, match="min_draws"):
        lowrank(2, min_draws=2)
    with pytest.raises(ConfigurationError, match="drift_tolerance"):
        lowrank(2, drift_tolerance=-1.0)
    with pytest.raises(ConfigurationError, match="drift_tolerance"):
        diag_grad(drift_tolerance=-0.5)
    with pytest.raises(ConfigurationError, match="drift_tolerance"):
        build_metric_adapter("diag_grad", drift_tolerance=float("nan"))
    with pytest.raises(ConfigurationError, match="max_rank"):
        build_metric_adapter("diag", max_rank=3)  # an option of another metric
    with pytest.raises(ConfigurationError, match="lower"):
        initial_inverse_mass(jnp.zeros(2), jnp.ones(2), lower=0.0)
    assert issubclass(ConfigurationError, HbmError)
