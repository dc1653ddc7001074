"""Automatic chunk lengths of hbm.sample: chunks of any length run the one compiled
program (its loop count is an argument), give the draws of fixed chunks, and their
length follows the measured time per iteration within the memory-bounded capacity."""

import itertools
import types
import warnings

import numpy as np
import pytest

import hbm
import hbm.inference.nuts as nuts_driver
from hbm.inference.settings import SampleSettings

def _schools():
    return hbm.models.eight_schools()


def _sample(schools, **kwargs):
    model, data = schools
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hbm.sample(model, data, chains=2, warmup=60, draws=45, seed=11,
                          progress=False, **kwargs)


def test_chunks_of_varying_length_give_the_draws_of_fixed_chunks(monkeypatch):
    schools = _schools()
    model = schools[0]
    fixed = _sample(schools, chunk_size=99, thin=3)
    monkeypatch.setattr(nuts_driver, "chunk_capacity", lambda run: 99)
    lengths = itertools.cycle([7, 1, 23, 3, 60])
    seen = []

    def next_length(run, capacity, thin):
        n = next(lengths)
        seen.append(n)
        return max(thin, n - n % thin)

    monkeypatch.setattr(nuts_driver, "_next_chunk_length", next_length)
    varying = _sample(schools, thin=3)
    assert len(seen) > 5  # the chunks did vary
    for name in ("mu", "tau", "theta"):
        np.testing.assert_array_equal(varying.posterior[name], fixed.posterior[name])
    for name in ("n_steps", "diverging", "lp", "step_size"):
        np.testing.assert_array_equal(varying.sample_stats[name], fixed.sample_stats[name])
    np.testing.assert_array_equal(varying.info["step_size"], fixed.info["step_size"])
    # every length ran the one compiled chunk and emit program (capacity 99 both times)
    programs = [v for k, v in model._bind_cache.items() if k[0] == "nuts"]
    assert len(programs) == 1
    assert programs[0].chunk._cache_size() == 1
    assert programs[0].emit._cache_size() == 1


def _run(size, *, chains=4, thin=1, log_likelihood=False, n_obs=0, spi=None):
    bound = types.SimpleNamespace(size=size, data={"y": np.zeros(n_obs)})
    settings = SampleSettings.validated(
        chains=chains, warmup=10, draws=10, thin=thin, seed=0, target_accept=0.8,
        max_tree_depth=10, dense_mass=False, chain_method="vectorized", chunk_size=None,
        step_size=None, log_likelihood=None, reparam="noncentered", store=None)
    return types.SimpleNamespace(settings=settings, bound=bound, log_likelihood=log_likelihood,
                                 seconds_per_iteration=spi)


def test_chunk_capacity_is_bounded_by_iterations_and_bytes(monkeypatch):
    monkeypatch.setattr(nuts_driver, "observed_keys", lambda bound: ["y"])
    itemsize = np.dtype(np.result_type(float)).itemsize
    # small models: the iteration cap
    assert nuts_driver.chunk_capacity(_run(10)) == nuts_driver.MAX_CHUNK
    # per iteration: chains x (2 d + statistics + observations) values
    size, n_obs = 1000, 10_000
    values = 2 * size + len(nuts_driver.engine.STATISTICS) + n_obs
    expected = nuts_driver.CHUNK_BYTES // (4 * values * itemsize)
    assert nuts_driver.MIN_CHUNK < expected < nuts_driver.MAX_CHUNK
    assert nuts_driver.chunk_capacity(
        _run(size, log_likelihood=True, n_obs=n_obs)) == expected
    # huge models keep today's floor; thinning windows stay whole
    assert nuts_driver.chunk_capacity(_run(10**7)) == nuts_driver.MIN_CHUNK
    assert nuts_driver.chunk_capacity(_run(10**7, thin=7)) == 98


@pytest.mark.parametrize("spi, capacity, thin, expected", [
    (None, 1000, 1, 100),  # nothing measured yet
    (1e-4, 1000, 1, 1000),  # fast: capped by the capacity
    (1e-3, 1000, 1, 250),  # CHUNK_SECONDS / seconds per iteration
    (1e-3, 1000, 4, 248),  # whole thinning windows
    (10.0, 1000, 1, 1),  # slow: one iteration per chunk
    (10.0, 1000, 5, 5),
])
def test_next_chunk_length_follows_the_measured_time(spi, capacity, thin, expected):
    assert nuts_driver.CHUNK_SECONDS == 0.25
    run = _run(10, spi=spi)
    assert nuts_driver._next_chunk_length(run, capacity, thin) == expected
