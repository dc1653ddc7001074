"""hbm.study_diagnostics: on-device rank-normalized R-hat and bulk ESS equal ArviZ's.

ArviZ 0.x (``arviz.rhat`` / ``arviz.ess``) and 1.x (``arviz_stats`` behind the same
names) implement Vehtari et al. (2021); the JAX versions must agree with the installed one
to floating-point rounding (float64), on AR(1) draws, with ties, odd chain lengths, one
chain, and vmapped over data sets.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hbm.diagnostics import load_arviz, quiet_arviz
from hbm.study_diagnostics import (
    ess_bulk,
    fractional_ranks,
    rank_normalize,
    rank_normalized_rhat,
)

TOL = 1e-10


def ar1(rng, chains, draws, phis, offsets):
    """AR(1) chains ``(chains, draws, k)`` with coefficients ``phis`` and chain offsets."""
    k = len(phis)
    out = np.empty((chains, draws, k))
    out[:, 0] = rng.standard_normal((chains, k))
    for t in range(1, draws):
        out[:, t] = phis * out[:, t - 1] + rng.standard_normal((chains, k))
    return out + offsets[:, None, :]


def arviz_reference(draws):
    """ArviZ's rank R-hat and bulk ESS of ``draws`` (chains, draws, k)."""
    import xarray as xr

    az = load_arviz()
    ds = xr.Dataset({"x": (("chain", "draw", "d"), draws)})
    with quiet_arviz(az):
        rhat = np.asarray(az.rhat(ds)["x"].values, float)
        ess = np.asarray(az.ess(ds, method="bulk")["x"].values, float)
    return rhat, ess


CASES = [  # chains, draws, ties
    (4, 200, False),
    (4, 101, False),  # odd: the middle draw is dropped
    (2, 7, False),
    (3, 60, True),  # rounded values: ties share their average rank
    (1, 50, False),  # one chain: R-hat undefined (NaN), ESS defined
]


@pytest.mark.parametrize("chains,draws,ties", CASES)
def test_rhat_and_ess_bulk_equal_arviz(chains, draws, ties):
    rng = np.random.default_rng([chains, draws, ties])
    phis = np.array([-0.4, 0.0, 0.5, 0.9, 0.99])
    offsets = rng.normal(0.0, [0.0, 0.3, 0.0, 1.0, 0.1], (chains, 5))
    x = ar1(rng, chains, draws, phis, offsets)
    if ties:
        x = np.round(x, 1)
    rhat_ref, ess_ref = arviz_reference(x)
    rhat = np.asarray(jax.jit(rank_normalized_rhat)(jnp.asarray(x)))
    ess = np.asarray(jax.jit(ess_bulk)(jnp.asarray(x)))
    np.testing.assert_allclose(rhat, rhat_ref, rtol=TOL, atol=0, equal_nan=True)
    np.testing.assert_allclose(ess, ess_ref, rtol=TOL, atol=0)
    if chains == 1:
        assert np.all(np.isnan(rhat))
    else:
        assert np.all(np.isfinite(rhat))


def test_vmapped_over_datasets_equals_one_at_a_time():
    rng = np.random.default_rng(3)
    x = np.stack([ar1(rng, 4, 40, np.array([0.3, 0.8]), rng.normal(size=(4, 2)))
                  for _ in range(3)])
    both = jax.jit(jax.vmap(lambda d: (rank_normalized_rhat(d), ess_bulk(d))))(jnp.asarray(x))
    for s in range(3):
        rhat_ref, ess_ref = arviz_reference(x[s])
        np.testing.assert_allclose(np.asarray(both[0][s]), rhat_ref, rtol=TOL, atol=0)
        np.testing.assert_allclose(np.asarray(both[1][s]), ess_ref, rtol=TOL, atol=0)


def test_fractional_ranks_average_ties_as_scipy():
    from scipy.stats import rankdata

    values = np.array([[3.0, 1.0], [1.0, 1.0], [2.0, 5.0], [1.0, 1.0], [9.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(fractional_ranks(jnp.asarray(values))),
                                  rankdata(values, method="average", axis=0))


def test_rank_normalize_uses_blom_offsets():
    from scipy.stats import norm

    x = jnp.asarray([[[0.5], [-1.0]], [[2.0], [0.0]]])  # (2 chains, 2 draws, 1)
    ranks = np.array([3.0, 1.0, 4.0, 2.0])
    expected = norm.ppf((ranks - 0.375) / (4 + 0.25)).reshape(2, 2, 1)
    np.testing.assert_allclose(np.asarray(rank_normalize(x)), expected, rtol=1e-13)


def test_constant_draws():
    x = jnp.ones((2, 10, 1))
    assert float(ess_bulk(x)[0]) == 20.0  # ArviZ: a constant chain has ESS = its size
    assert np.isnan(float(rank_normalized_rhat(x)[0]))
