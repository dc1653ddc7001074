"""The one NUTS engine: settings object, shared per-chain program, raw-density runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbm
from hbm.errors import ConfigurationError
from hbm.inference import engine
from hbm.inference.settings import KernelSettings, SampleSettings

ARGS = dict(chains=2, warmup=10, draws=5, thin=1, seed=3, target_accept=0.9, max_tree_depth=6,
            dense_mass=False, chain_method="vectorized", chunk_size=7, step_size=None,
            log_likelihood=None, reparam="auto", store=None)


def test_settings_are_frozen_validated_and_round_trip_through_checkpoint_meta():
    settings = SampleSettings.validated(**ARGS)
    assert SampleSettings.from_meta(settings.to_meta()) == settings
    assert settings.kernel == KernelSettings(6, 0.9, False, "diag_grad", "early")
    assert hash(settings.kernel) == hash(KernelSettings(6, 0.9, False, "diag_grad", "early"))
    # a checkpoint written before metric= and warmup_schedule= existed ran Stan's
    legacy = {k: v for k, v in settings.to_meta().items()
              if k not in ("metric", "warmup_schedule")}
    restored = SampleSettings.from_meta(legacy)
    assert (restored.metric, restored.warmup_schedule) == ("diag", "stan")
    with pytest.raises(Exception):
        settings.chains = 3
    with pytest.raises(ConfigurationError, match="target_accept"):
        SampleSettings.validated(**dict(ARGS, target_accept=1.5))
    with pytest.raises(ConfigurationError, match="chunk_size"):
        SampleSettings.validated(**dict(ARGS, chunk_size=0))
    with pytest.raises(ConfigurationError, match="unknown settings"):
        SampleSettings.from_meta(dict(settings.to_meta(), mass="diag"))
    with pytest.raises(ConfigurationError, match="metric"):
        SampleSettings.validated(**dict(ARGS, metric="diagonal"))
    with pytest.raises(ConfigurationError, match="dense_mass"):
        SampleSettings.validated(**dict(ARGS, metric="lowrank", dense_mass=True))
    with pytest.raises(ConfigurationError, match="warmup_schedule"):
        SampleSettings.validated(**dict(ARGS, warmup_schedule="nutpie"))
    assert SampleSettings.validated(**dict(ARGS, dense_mass=True)).metric == "dense"
    stan = SampleSettings.validated(**dict(ARGS, metric="diag", warmup_schedule="stan"))
    assert stan.kernel == KernelSettings(6, 0.9, False, "diag", "stan")
    # thinning windows fit whole in a chunk
    assert SampleSettings.validated(**dict(ARGS, thin=3)).chunk_size == 9


def test_chunked_engine_equals_one_scan():
    """Splitting a phase into chunks (the driver's progress and checkpoints) changes no
    draw: iteration i's key is fold_in(chain_key, i) and the schedule is sliced."""
    program = engine.build_chain_program(lambda x, d, w: -0.5 * jnp.sum((x - d) ** 2),
                                         KernelSettings(5))
    data = jnp.arange(3.0)
    key = jax.random.PRNGKey(0)
    total = 40
    schedule = engine.schedule_for_chunks("stan", total, 15)
    state0 = program.init(key, jnp.zeros(3), data, None, None)
    run = jax.jit(program.run)
    whole, out = run(state0, key, 0, total, True, engine.slice_schedule(schedule, 0, total),
                     data, None)
    state, chunks = state0, []
    for start in range(0, total, 15):
        state, part = run(state, key, start, total, True,
                          engine.slice_schedule(schedule, start, start + 15), data, None)
        chunks.append(np.asarray(part["position"]))
    np.testing.assert_array_equal(np.concatenate(chunks)[:total], np.asarray(out["position"]))
    np.testing.assert_array_equal(np.asarray(state.step_size), np.asarray(whole.step_size))


def test_sample_and_batch_share_the_engine(monkeypatch):
    """hbm.sample and hbm.batch build their per-chain program with the same function."""
    import hbm.batch as batch

    built = []
    original = engine.build_chain_program

    def recording(*args, **kwargs):
        built.append(args[1] if len(args) > 1 else kwargs.get("settings"))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "build_chain_program", recording)
    model = hbm.Model({"mu": hbm.dist.Normal(0.0, 1.0)},
                      lambda p, d: {"y": hbm.dist.Normal(p["mu"], 1.0)})
    hbm.sample(model, {"y": jnp.zeros(3)}, chains=1, warmup=0, step_size=0.5, draws=5,
               progress=False, chain_method="vectorized")
    bound = model.bind({"y": jnp.zeros(3)})
    batch.build_batched_nuts(bound, chains=1, warmup=0, draws=5, max_tree_depth=4)
    assert [s.max_tree_depth for s in built] == [10, 4]


def test_every_metric_and_schedule_runs_through_hbm_sample():
    """metric= and warmup_schedule= reach the engine and are recorded on the Fit."""
    model = hbm.Model({"x": hbm.dist.Normal(0.0, 1.0).expand((3,))})
    for metric, schedule in (("diag_grad", "early"), ("lowrank", "stan"), (None, None)):
        fit = hbm.sample(model, {}, chains=2, warmup=60, draws=30, progress=False,
                         metric=metric, warmup_schedule=schedule, chain_method="vectorized")
        expected = (metric or "diag_grad", schedule or "early")  # the defaults
        assert (fit.info["metric"], fit.info["warmup_schedule"]) == expected
        attrs = fit.to_arviz().posterior.attrs
        assert (attrs["hbm_metric"], attrs["hbm_warmup_schedule"]) == expected
        assert np.all(np.isfinite(fit.posterior["x"]))
        assert fit.posterior["x"].shape == (2, 30, 3)
