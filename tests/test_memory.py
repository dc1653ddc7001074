"""Bounded memory: draws leave the device chunk by chunk, so the device arrays alive during
a run do not grow with the number of draws, and the host holds each draw once."""

import gc
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import hbm
from hbm import constraints
from hbm.draws import DrawBuffer

DIM = 50


def _model():
    return hbm.Model.from_logdensity(lambda p, d: -0.5 * jnp.sum(p["x"] ** 2),
                                     params={"x": constraints.real}, shapes={"x": (DIM,)})


def _live_device_bytes_per_chunk(monkeypatch, draws, **kwargs):
    """Bytes of all live JAX arrays each time a sampling chunk reaches the host; checks
    that every draw is constrained on the device as part of a chunk, never all at once."""
    import hbm.inference.engine as inference

    seen, emitted = [], []
    write = DrawBuffer.write
    build = inference.compile_programs

    def recording_build(*args, **kw):
        programs = build(*args, **kw)

        def emit(out, data, weights, count, thin):
            assert out["position"].shape == (2, 50, DIM)  # one chunk, whatever the draws
            emitted.append(thin)
            return programs.emit(out, data, weights, count, thin)

        return programs._replace(emit=emit)

    def recording_write(self, groups, offset):
        seen.append(sum(a.nbytes for a in jax.live_arrays()) - before)
        write(self, groups, offset)

    monkeypatch.setattr(DrawBuffer, "write", recording_write)
    monkeypatch.setattr(inference, "compile_programs", recording_build)
    gc.collect()  # arrays of earlier tests: freed now, not at random points of the run
    gc.disable()
    try:
        before = sum(a.nbytes for a in jax.live_arrays())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = hbm.sample(_model(), {}, chains=2, warmup=0, step_size=0.5, draws=draws,
                             chunk_size=50, progress=False, **kwargs)
    finally:
        gc.enable()
    monkeypatch.setattr(DrawBuffer, "write", write)
    monkeypatch.setattr(inference, "compile_programs", build)
    assert all(isinstance(v, np.ndarray) for v in fit.posterior.values())
    del fit.info["last_position"]  # numpy, but drop every reference to the run
    after = sum(a.nbytes for a in jax.live_arrays())
    assert after - before < 2 * 50 * DIM * 4  # nothing of the size of the draws stays
    assert fit.posterior["x"].shape == (2, draws, DIM)
    assert len(emitted) == len(seen)
    return seen


def test_device_memory_does_not_grow_with_draws(monkeypatch):
    # the first run of a process keeps a few process-wide constants (48 bytes with x64):
    # counted as the run's own in the first call only, so measure after one run
    _live_device_bytes_per_chunk(monkeypatch, 100)
    short = _live_device_bytes_per_chunk(monkeypatch, 100)
    long = _live_device_bytes_per_chunk(monkeypatch, 1000)
    assert len(long) == 20
    # the same arrays are alive at every chunk, however many draws were made before (the
    # next chunk is queued before a chunk's draws are written, except after the last)
    assert max(long) == max(short)
    assert len(set(long[1:-1])) == 1 and long[-1] <= long[1]
    draws_bytes = 2 * 1000 * DIM * jnp.zeros(()).dtype.itemsize  # float64 under x64
    assert max(long) < draws_bytes / 2  # far from holding the draws on the device


def test_thinned_draws_leave_the_device_thinned(monkeypatch):
    seen = _live_device_bytes_per_chunk(monkeypatch, 100, thin=5)
    assert len(seen) == 10  # 500 iterations in chunks of 50


def test_in_memory_buffer_holds_each_draw_once():
    buffer = DrawBuffer(chains=2, draws=6)
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(2)]
    for k, chunk in enumerate(chunks):
        buffer.write({"posterior": {"x": chunk}, "sample_stats": {"lp": chunk[..., 0]}}, 3 * k)
    x = buffer.read()["posterior"]["x"]
    np.testing.assert_array_equal(x, np.concatenate(chunks, axis=1))
    assert np.shares_memory(x, buffer.arrays["posterior"]["x"])  # a view, not a copy
    assert buffer.filled == 6


def test_stored_buffer_is_plain_npy(tmp_path):
    buffer = DrawBuffer(chains=2, draws=4, directory=tmp_path)
    chunk = np.arange(16, dtype=np.float64).reshape(2, 2, 4)
    buffer.write({"posterior": {"x": chunk}}, 0)
    assert buffer.read()["posterior"]["x"].shape == (2, 2, 4)  # only the filled draws
    on_disk = np.load(tmp_path / "posterior.x.npy")
    assert on_disk.shape == (2, 4, 4)
    np.testing.assert_array_equal(on_disk[:, :2], chunk)
