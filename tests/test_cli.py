"""The `hbm` command, end to end in subprocesses."""

import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hbm.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


def test_models_lists_the_library():
    out = run("models")
    assert out.returncode == 0, out.stderr
    for name in ("eight_schools", "radon_varying_intercept", "sleepstudy", "cbpp"):
        assert name in out.stdout


def test_fit_a_library_model(tmp_path):
    out = run("fit", "eight_schools", "--chains", "2", "--warmup", "150", "--draws", "100",
              "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "method: nuts" in out.stdout and "tau" in out.stdout
    assert (tmp_path / "fit.nc").stat().st_size > 0


def test_fit_with_checkpoint_and_store_then_resume(tmp_path):
    settings = ("--chains", "2", "--warmup", "150", "--draws", "100")
    out = run("fit", "eight_schools", *settings, "--checkpoint", str(tmp_path / "ckpt"),
              "--store", str(tmp_path / "draws"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "draws" / "posterior.tau.npy").exists()
    resumed = run("resume", str(tmp_path / "ckpt"), "eight_schools")
    assert resumed.returncode == 0, resumed.stderr
    # a finished run resumes to the same draws: the same summary table
    assert resumed.stdout == out.stdout
    again = run("fit", "eight_schools", *settings, "--checkpoint", str(tmp_path / "ckpt"))
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr
    wrong = run("fit", "eight_schools", "--method", "map", "--store", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "--method nuts" in wrong.stderr


def test_fit_a_model_from_a_file(tmp_path):
    (tmp_path / "my_model.py").write_text(
        "import hbm\nfrom hbm import dist\n"
        "def build():\n"
        "    m = hbm.Model(prior={'mu': dist.Normal(0., 1.)},\n"
        "                  likelihood=lambda p, d: {'y': dist.Normal(p['mu'], 1.)})\n"
        "    return m, {'y': [0.1, -0.3, 0.5]}\n")
    out = run("fit", f"{tmp_path / 'my_model.py'}:build", "--method", "map")
    assert out.returncode == 0, out.stderr
    assert "method: map" in out.stdout


def test_errors_are_one_clear_line():
    out = run("fit", "no_such_model")
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "unknown model 'no_such_model'" in lines[0]


def test_demo_runs_end_to_end(tmp_path):
    out = run("demo", "--chains", "2", "--warmup", "150", "--draws", "100", "--out",
              str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MAP" in out.stdout and "NUTS posterior summary" in out.stdout
    for name in ("radon_nuts.nc", "radon_rank.png", "radon_forest.png", "radon_ppc.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 1000, name
