"""The many-data-set NUTS program without lockstep follows the lockstep one (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbm
from hbm import batch
from hbm.batch import build_batched_nuts, dataset_keys

MODEL = hbm.Model(
    {"mu": hbm.dist.Normal(0.0, 1.0), "sigma": hbm.dist.HalfNormal(1.0)},
    lambda p, d: {"y": hbm.dist.Normal(p["mu"], p["sigma"])},
)


@pytest.mark.parametrize("refill", [1, 4])
def test_lockstep_free_batch_follows_the_lockstep_batch(refill, monkeypatch):
    """Same keys, same decisions: leapfrog counts and divergences equal; summaries and
    step sizes equal to rounding (differences in the last bit of the adaptation's
    arithmetic, compiled in two programs, grow a little; see
    tests/samplers/test_lockstep_free_warmup.py). With ``refill=4`` the 12 chains run on
    3 lanes, each taking the next chain when its own is done (the floor of MIN_LANES
    lanes is lowered for this small batch)."""
    monkeypatch.setattr(batch, "MIN_LANES", 1)
    assert jax.config.jax_enable_x64
    y = np.random.default_rng(0).normal(0.5, 1.5, size=(6, 8))
    bound = MODEL.bind({"y": jnp.asarray(y[0])})
    options = dict(chains=2, warmup=60, draws=40, max_tree_depth=6)
    keys = dataset_keys(3, 0, 6)
    batched = {"y": jnp.asarray(y)}
    lockstep = build_batched_nuts(bound, **options)(keys, batched, {})
    free = build_batched_nuts(bound, lockstep_free=True, refill=refill, **options)(
        keys, batched, {})
    np.testing.assert_array_equal(free.mean_steps, lockstep.mean_steps)
    np.testing.assert_array_equal(free.divergences, lockstep.divergences)
    close = dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(free.step_size, lockstep.step_size, **close)
    for name in ("mean", "sd", "q05", "q95"):
        np.testing.assert_allclose(getattr(free.summary, name),
                                   getattr(lockstep.summary, name), **close, err_msg=name)
    assert lockstep.useful_leapfrog_fraction is None
    fraction = np.asarray(free.useful_leapfrog_fraction)
    assert fraction.shape == (6,) and np.all(fraction == fraction[0])
    assert 0.0 < fraction[0] <= 1.0


def test_lockstep_free_program_compiles_once_per_shape():
    y = np.random.default_rng(1).normal(size=(2, 4, 5))
    bound = MODEL.bind({"y": jnp.asarray(y[0, 0])})
    run = build_batched_nuts(bound, chains=2, warmup=30, draws=10, lockstep_free=True)
    for s in range(2):
        run(dataset_keys(0, 4 * s, 4), {"y": jnp.asarray(y[s])}, {})
    assert run.traces() == 1


def test_refill_must_be_a_positive_integer():
    bound = MODEL.bind({"y": jnp.zeros(3)})
    with pytest.raises(hbm.errors.ConfigurationError, match="refill"):
        build_batched_nuts(bound, lockstep_free=True, refill=0)
