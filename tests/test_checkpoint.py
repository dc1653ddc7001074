"""Checkpoint and resume: a run killed with SIGKILL resumes to the same draws, bit for bit;
damaged checkpoints are refused with a clear message; Ctrl-C returns the draws so far."""

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import hbm
from hbm.checkpoint import CheckpointError

SETTINGS = dict(chains=2, warmup=200, draws=400, seed=3, chunk_size=20, progress=False)

CHILD = textwrap.dedent("""
    import sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    import hbm, hbm.checkpoint as ckpt
    save = ckpt.save
    def slow_save(*args, **kwargs):          # slow the run down so the parent can kill it
        save(*args, **kwargs)
        time.sleep(0.15)
    ckpt.save = slow_save
    model, data = hbm.models.eight_schools()
    hbm.sample(model, data, checkpoint=sys.argv[1], **{settings})
""").replace("{settings}", repr(SETTINGS))


@functools.cache
def _eight_schools():
    """One model object for the file, so its compiled programs are reused: compiling is
    most of each test's time. (The test that patches ``compile_programs`` builds its own.)"""
    return hbm.models.eight_schools()


@functools.cache
def _reference():
    """The uninterrupted run every resumed or partial run is compared with, made once."""
    model, data = _eight_schools()
    return model, hbm.sample(model, data, **SETTINGS)


def _kill_when(path: pathlib.Path, phase: str, done: int):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            index = path / "checkpoint.json"
            if index.exists():
                try:
                    meta = json.loads(index.read_text())
                except json.JSONDecodeError:
                    meta = None
                if meta and meta["phase"] == phase and meta["done"] >= done:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return meta
            if proc.poll() is not None:
                raise AssertionError("the run ended before it could be killed: "
                                     + proc.stderr.read().decode()[-2000:])
            time.sleep(0.02)
        raise AssertionError("timed out waiting for the checkpoint")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("phase, done", [("sampling", 100), ("warmup", 60)])
def test_killed_run_resumes_to_identical_draws(tmp_path, phase, done):
    model, reference = _reference()
    meta = _kill_when(tmp_path / "run", phase, done)
    assert meta["phase"] == phase
    resumed = hbm.resume(tmp_path / "run", model, progress=False)
    for name in reference.posterior:
        np.testing.assert_array_equal(resumed.posterior[name], reference.posterior[name])
    for name in ("diverging", "n_steps", "step_size", "energy"):
        np.testing.assert_array_equal(resumed.sample_stats[name], reference.sample_stats[name])


def test_checkpoint_is_readable_without_hbm(tmp_path):
    """The index is JSON, the state an .npz, the draws NetCDF files xarray concatenates."""
    import xarray as xr

    model, data = _eight_schools()
    fit = hbm.sample(model, data, checkpoint=tmp_path / "run", **SETTINGS)
    run = tmp_path / "run"
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["phase"] == "sampling" and meta["done"] == SETTINGS["draws"]
    assert sum(chunk["draws"] for chunk in meta["draws_files"]) == SETTINGS["draws"]
    with np.load(run / meta["data_file"]["file"]) as saved:
        np.testing.assert_array_equal(saved["data/y"], data["y"])
    with np.load(run / meta["state_file"]["file"]) as state:
        assert "weights/theta" in state
        assert state["keys/sample"].shape == (SETTINGS["chains"], 2)  # one key per chain
    for group in ("posterior", "sample_stats", "log_likelihood"):
        files = [run / chunk["files"][group]["file"] for chunk in meta["draws_files"]]
        dataset = xr.concat([xr.open_dataset(f) for f in files], dim="draw")
        np.testing.assert_array_equal(dataset["draw"], np.arange(SETTINGS["draws"]))
        expected = getattr(fit, group)
        for name in expected:
            np.testing.assert_array_equal(dataset[name].values.astype(expected[name].dtype),
                                          expected[name])
    theta = xr.open_dataset(run / meta["draws_files"][0]["files"]["posterior"]["file"])["theta"]
    assert theta.dims == ("chain", "draw", "school")  # the model's dims name the axes


def test_damaged_checkpoint_is_refused_and_previous_stays_readable(tmp_path):
    model, data = _eight_schools()
    run = tmp_path / "run"
    hbm.sample(model, data, checkpoint=run, **SETTINGS)
    meta = json.loads((run / "checkpoint.json").read_text())
    state = run / meta["state_file"]["file"]
    state.write_bytes(state.read_bytes()[:100])  # truncate
    with pytest.raises(CheckpointError, match="corrupted or truncated.*previous=True"):
        hbm.resume(run, model, progress=False)
    fit = hbm.resume(run, model, progress=False, previous=True, checkpoint=False)
    assert fit.posterior["mu"].shape == (2, SETTINGS["draws"])
    (run / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="index"):
        hbm.resume(run, model, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        hbm.resume(tmp_path / "nothing", model, progress=False)


def test_keyboard_interrupt_returns_partial_fit(monkeypatch):
    import hbm.inference.checkpointing as inference

    model, data = _eight_schools()
    original = inference.save
    calls = {"n": 0}

    def interrupt(run, path, new_draws=None):
        if run.phase == "sampling" and run.done >= 100:
            raise KeyboardInterrupt
        calls["n"] += 1

    monkeypatch.setattr(inference, "save", interrupt)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = hbm.sample(model, data, checkpoint="unused", **SETTINGS)
    assert fit.partial and "interrupted" in fit.info["partial_reason"]
    assert fit.posterior["mu"].shape == (2, 100)
    del original


def test_store_streams_draws_to_disk_and_matches_in_memory(tmp_path):
    import warnings

    model, data = _eight_schools()
    kwargs = dict(SETTINGS, thin=2, chunk_size=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = hbm.sample(model, data, store=tmp_path / "draws", **kwargs)
        memory = hbm.sample(model, data, **kwargs)
    assert (tmp_path / "draws" / "posterior.theta.npy").exists()
    on_disk = np.load(tmp_path / "draws" / "posterior.theta.npy", mmap_mode="r")
    assert on_disk.shape == (2, SETTINGS["draws"], 8)
    for name in memory.posterior:
        np.testing.assert_array_equal(stored.posterior[name], memory.posterior[name])
    for name in memory.sample_stats:
        np.testing.assert_array_equal(stored.sample_stats[name], memory.sample_stats[name])
    assert stored.to_arviz().log_likelihood["y"].shape == (2, SETTINGS["draws"], 8)


def test_damaged_draws_chunk_is_refused(tmp_path):
    model, data = _eight_schools()
    run = tmp_path / "run"
    hbm.sample(model, data, checkpoint=run, **SETTINGS)
    meta = json.loads((run / "checkpoint.json").read_text())
    chunk = run / meta["draws_files"][1]["files"]["posterior"]["file"]
    damaged = bytearray(chunk.read_bytes())
    damaged[-3] ^= 0xFF  # one flipped byte inside the draws
    chunk.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=f"{chunk.name} is corrupted or truncated"):
        hbm.resume(run, model, progress=False)


def test_resume_into_store_gives_identical_draws_and_files(tmp_path):
    """Resuming a ``store=`` run refills the memory-mapped files from the checkpoint."""
    import warnings

    model, reference = _reference()
    model, data = _eight_schools()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hbm.sample(model, data, checkpoint=tmp_path / "run", store=tmp_path / "draws",
                   **SETTINGS)
        (tmp_path / "draws" / "posterior.mu.npy").unlink()
        resumed = hbm.resume(tmp_path / "run", model, progress=False, previous=True,
                             checkpoint=False)
    base = resumed.posterior["mu"]
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert base is not None, "the Fit should read the stored draws memory-mapped"
    on_disk = np.load(tmp_path / "draws" / "posterior.mu.npy")
    np.testing.assert_array_equal(on_disk, reference.posterior["mu"])
    for name in reference.posterior:
        np.testing.assert_array_equal(resumed.posterior[name], reference.posterior[name])


def test_failure_mid_sampling_keeps_the_draws_made(monkeypatch):
    """A non-hbm failure mid-run (here a full disk) becomes a SamplingError that names it
    and carries the completed chunks as a partial Fit."""
    from hbm.draws import DrawBuffer

    model, reference = _reference()
    model, data = _eight_schools()
    write = DrawBuffer.write

    def failing_write(self, groups, offset):
        if offset >= 60:
            raise OSError(28, "No space left on device")
        write(self, groups, offset)

    monkeypatch.setattr(DrawBuffer, "write", failing_write)
    with pytest.raises(hbm.SamplingError, match=r"after 60 of 400 draws: OSError.*No space "
                                                r"left.*\.partial_fit") as caught:
        hbm.sample(model, data, **SETTINGS)
    assert isinstance(caught.value.__cause__, OSError)
    partial = caught.value.partial_fit
    assert partial.partial and "OSError" in partial.info["partial_reason"]
    assert partial.posterior["mu"].shape == (2, 60)
    np.testing.assert_array_equal(partial.posterior["theta"],
                                  reference.posterior["theta"][:, :60])


def test_new_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    model, data = _eight_schools()
    run = tmp_path / "run"
    hbm.sample(model, data, checkpoint=run, **dict(SETTINGS, warmup=20, draws=20))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(CheckpointError, match=r"already holds a checkpoint \(phase 'sampling', "
                                              r"20 iterations done\).*hbm.resume"):
        hbm.sample(model, data, checkpoint=run, **SETTINGS)
    assert sorted(p.name for p in run.iterdir()) == before


def _failing_on_chunk(number, message):
    """``compile_programs`` whose programs raise ``RuntimeError(message)`` at the
    ``number``-th chunk they run (the chunks before it run normally)."""
    import hbm.inference.engine as inference

    build = inference.compile_programs
    calls = {"n": 0}

    def failing_build(*args, **kwargs):
        programs = build(*args, **kwargs)

        def chunk(*chunk_args):
            calls["n"] += 1
            if calls["n"] == number:
                raise RuntimeError(message)
            return programs.chunk(*chunk_args)

        return programs._replace(chunk=chunk)

    return failing_build


def test_failure_during_warmup_names_the_phase_and_the_checkpoint(monkeypatch, tmp_path):
    import hbm.inference.engine as inference

    monkeypatch.setattr(inference, "compile_programs",
                        _failing_on_chunk(3, "RESOURCE_EXHAUSTED: out of device memory"))
    model, data = hbm.models.eight_schools()
    with pytest.raises(hbm.SamplingError, match=r"during warmup \(iteration 40 of 200\): "
                                                r"RuntimeError: RESOURCE_EXHAUSTED.*no draws "
                                                r"were kept.*hbm.resume") as caught:
        hbm.sample(model, data, checkpoint=tmp_path / "run", **SETTINGS)
    assert caught.value.partial_fit is None
    meta = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert meta["done"] == 40  # the last good chunk is on disk, ready to resume


@pytest.mark.parametrize("metric, schedule", [("lowrank", "early"), ("diag_grad", "early"),
                                              ("lowrank", "stan")])
def test_resume_mid_warmup_keeps_the_metric_estimators(monkeypatch, tmp_path, metric,
                                                       schedule):
    """A run stopped mid-warmup resumes to the uninterrupted run's draws, bit for bit: the
    estimators' states (the low-rank ring buffers, the overlapping windows) are saved."""
    import hbm.inference.engine as inference

    options = dict(SETTINGS, warmup=100, draws=60, metric=metric, warmup_schedule=schedule)
    model, data = hbm.models.eight_schools()
    reference = hbm.sample(model, data, **options)
    model, data = hbm.models.eight_schools()  # a fresh model: compiled programs are cached
    with monkeypatch.context() as patched:
        patched.setattr(inference, "compile_programs", _failing_on_chunk(3, "stopped"))
        with pytest.raises(hbm.SamplingError, match="during warmup"):
            hbm.sample(model, data, checkpoint=tmp_path / "run", **options)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["done"] == 40
    resumed = hbm.resume(tmp_path / "run", model, progress=False)
    assert resumed.info["metric"] == metric
    assert resumed.info["warmup_schedule"] == schedule
    for name in reference.posterior:
        np.testing.assert_array_equal(resumed.posterior[name], reference.posterior[name])
    np.testing.assert_array_equal(resumed.sample_stats["step_size"],
                                  reference.sample_stats["step_size"])


def test_resume_refuses_a_state_of_another_shape(monkeypatch, tmp_path):
    """A checkpoint whose sampler state has other shapes than this hbm builds (here the
    low-rank metric's number of columns, as another version would write it) is refused
    with a CheckpointError naming the mismatch, not a trace error in compiled code."""
    import functools

    import hbm.inference.engine as inference
    from hbm.samplers import mass_matrix

    options = dict(SETTINGS, warmup=100, draws=60, metric="lowrank")
    model, data = hbm.models.eight_schools()
    with monkeypatch.context() as patched:
        patched.setattr(inference, "compile_programs", _failing_on_chunk(3, "stopped"))
        with pytest.raises(hbm.SamplingError, match="during warmup"):
            hbm.sample(model, data, checkpoint=tmp_path / "run", **options)
    model, data = hbm.models.eight_schools()  # a fresh model: programs compiled anew
    monkeypatch.setattr(mass_matrix, "lowrank", functools.partial(mass_matrix.lowrank, 2))
    with pytest.raises(CheckpointError, match=r"shape \(2, 10, 10\), expected \(2, 10, 2\)"):
        hbm.resume(tmp_path / "run", model, progress=False)


def test_keyboard_interrupt_during_final_checks_keeps_the_fit(monkeypatch):
    import hbm.results as results

    def interrupted(fit):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "diagnose", interrupted)
    model, data = _eight_schools()
    with pytest.warns(hbm.HbmWarning, match="convergence checks were interrupted"):
        fit = hbm.sample(model, data, **dict(SETTINGS, warmup=50, draws=50))
    assert fit.posterior["mu"].shape == (2, 50) and not fit.partial
