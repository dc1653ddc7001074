"""The batched simulation driver (hbm.batch) and benchmarks/map_vs_mean.py --smoke."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbm
from hbm import batch, dist

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("map_vs_mean_benchmark",
                                                  ROOT / "benchmarks" / "map_vs_mean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_draws_matches_numpy():
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((3, 41, 5)) * np.arange(1, 6) + np.arange(5)
    s = batch.summarize_draws(jnp.asarray(draws))
    pooled = draws.reshape(-1, 5)
    np.testing.assert_allclose(s.mean, pooled.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sd, pooled.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(np.stack([s.q05, s.median, s.q95]),
                               np.quantile(pooled, [0.05, 0.5, 0.95], axis=0), rtol=1e-12)
    # split R-hat by the textbook formula (BDA3 11.4), written out with numpy
    halves = np.concatenate([draws[:, :20], draws[:, 21:]], axis=0)
    n = 20
    w = halves.var(axis=1, ddof=1).mean(0)
    b = n * halves.mean(axis=1).var(axis=0, ddof=1)
    np.testing.assert_allclose(s.rhat, np.sqrt(((n - 1) / n * w + b / n) / w), rtol=1e-12)


def test_split_rhat_flags_chains_stuck_apart():
    rng = np.random.default_rng(1)
    draws = rng.standard_normal((4, 100, 1))
    assert float(batch.split_rhat(jnp.asarray(draws))[0]) < 1.05
    draws[0] += 5.0
    assert float(batch.split_rhat(jnp.asarray(draws))[0]) > 1.5


def _conjugate_model(n):
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)})
    return model.bind({"y": np.zeros(n)})


def test_batched_map_equals_closed_form_per_dataset():
    n = 7
    bound = _conjugate_model(n)
    y = np.random.default_rng(2).normal(1.0, 1.0, (3, n))
    program = batch.build_batched_map(bound, restarts=2)
    out = program(batch.dataset_keys(0, 0, 3), {"y": jnp.asarray(y)}, {})
    np.testing.assert_allclose(np.asarray(out.constrained)[:, 0], y.sum(1) / (n + 1),
                               rtol=1e-8)
    assert np.all(np.asarray(out.converged))
    # a second call with other data of the same shapes does not retrace
    program(batch.dataset_keys(0, 3, 3), {"y": jnp.asarray(y + 1.0)}, {})
    assert program.traces() == 1


def test_batched_nuts_keys_do_not_depend_on_batch_size():
    n = 5
    bound = _conjugate_model(n)
    y = jnp.asarray(np.random.default_rng(3).normal(0.0, 1.0, (2, n)))
    program = batch.build_batched_nuts(bound, chains=2, warmup=30, draws=20)
    both = program(batch.dataset_keys(0, 0, 2), {"y": y}, {})
    second = program(batch.dataset_keys(0, 1, 1), {"y": y[1:]}, {})
    np.testing.assert_allclose(np.asarray(both.summary.mean)[1],
                               np.asarray(second.summary.mean)[0], rtol=1e-10)
    assert np.asarray(both.step_size).shape == (2, 2)


def test_smoke_run_writes_json_and_png_and_compiles_once(tmp_path):
    bench = _load_benchmark()
    report = bench.main(["--smoke", "--families", "normal", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["device"] == jax.devices()[0].platform
    assert len(saved["results"]) == 2  # two tau values
    # the two tau values share shapes: one MAP and one NUTS compilation in all
    assert saved["compilations"] == {"normal/J=8": {"map": 1, "nuts": 1}}
    for row in saved["results"]:
        assert row["datasets"] == 4 and row["groups"] == 8
        for key in ("coverage90_tau", "coverage90_eta", "collapsed_fraction"):
            assert 0.0 <= row[key] <= 1.0
        assert np.isfinite(row["rhat_max"]) and row["divergences"] >= 0
        assert row["distance_tau"]["q25"] <= row["distance_tau"]["median"] \
            <= row["distance_tau"]["q75"]
    assert report["results"] == saved["results"]
    png = tmp_path / "map_vs_mean.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_group_sizes_follow_radon():
    bench = _load_benchmark()
    sizes = bench.group_sizes(85)
    assert sizes.sum() == 919 and len(sizes) == 85
    small = bench.group_sizes(8)
    assert len(small) == 8 and set(small) <= set(sizes)


def test_bad_options_are_rejected():
    bench = _load_benchmark()
    with pytest.raises(SystemExit):
        bench._parse(["--datasets", "0"])
