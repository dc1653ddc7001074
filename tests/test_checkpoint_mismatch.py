"""resume refuses a checkpoint written for another model or another float64 setting,
naming what differs, instead of failing obscurely or sampling the wrong posterior."""

import subprocess
import sys
import textwrap

import pytest

import hbm
from hbm import dist
from hbm.checkpoint import CheckpointError

SETTINGS = dict(chains=2, warmup=40, draws=40, seed=1, chunk_size=20, progress=False,
                reparam="noncentered")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "run"
    model, data = hbm.models.eight_schools()
    hbm.sample(model, data, checkpoint=path, **SETTINGS)
    return path


def eight_schools_with(extra_prior=None, theta_name="theta"):
    prior = {"mu": dist.Normal(0.0, 5.0), "tau": dist.HalfCauchy(5.0)}
    prior.update(extra_prior or {})
    prior[theta_name] = lambda p, d: dist.Normal(p["mu"], p["tau"]).expand(d["y"].shape)
    return hbm.Model(prior=prior, likelihood=lambda p, d: {
        "y": dist.Normal(p[theta_name], d["sigma"])})


def test_the_same_model_resumes(run):
    model, _ = hbm.models.eight_schools()
    fit = hbm.resume(run, model, progress=False, checkpoint=False)
    assert fit.posterior["theta"].shape == (2, 40, 8)


def test_a_model_with_another_parameter_is_refused(run):
    model = eight_schools_with({"nu": dist.Exponential(1.0)})
    with pytest.raises(CheckpointError, match="parameter 'nu' is not in the checkpoint"):
        hbm.resume(run, model, progress=False, checkpoint=False)


def test_a_model_with_renamed_parameters_is_refused(run):
    model = eight_schools_with(theta_name="school_effect")
    with pytest.raises(CheckpointError, match="parameter 'theta' is missing from the model"):
        hbm.resume(run, model, progress=False, checkpoint=False)


def test_another_float64_setting_is_refused(run):
    child = textwrap.dedent(f"""
        import jax
        jax.config.update("jax_enable_x64", False)
        import hbm
        from hbm.checkpoint import CheckpointError
        model, _ = hbm.models.eight_schools()
        try:
            hbm.resume({str(run)!r}, model, progress=False, checkpoint=False)
        except CheckpointError as e:
            print("REFUSED:", e)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REFUSED:" in out.stdout and "float64 enabled" in out.stdout, out.stdout
