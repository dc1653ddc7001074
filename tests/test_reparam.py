"""reparam="auto": per-element centering weights learned in warmup.

The partially centered density is an exact change of variables of the centered one
(tests/test_model.py checks that in float64 for random weights); here the automatic choice
is checked end to end: its draws match the exact eight-schools posterior and a reference
run on radon by z-tests on the Monte Carlo standard error, the weights follow how
informative each group's data are, and the choice is deterministic for a seed."""

import numpy as np
import pytest

import hbm
from test_sample import eight_schools_exact_moments, z_scores

Z_MAX = 4.0
EIGHT, EIGHT_DATA = hbm.models.eight_schools(centered=True)
RADON, RADON_DATA = hbm.models.radon_varying_intercept()


def test_auto_on_centered_eight_schools_matches_exact_posterior():
    exact = eight_schools_exact_moments()
    fit = hbm.sample(EIGHT, EIGHT_DATA, chains=4, warmup=600, draws=1000, seed=11,
                     reparam="auto", progress=False)
    assert fit.info["reparam_method"] == "auto"
    weights = np.asarray(fit.info["reparam"]["theta"])
    assert weights.shape == (8,) and np.all((weights >= 0) & (weights <= 1))
    for name in ("mu", "tau", "theta"):
        z = z_scores(fit.posterior[name], exact[name][0])
        assert np.all(np.abs(z) < Z_MAX), (name, z)
    # the funnel is tamed: fewer than 0.5% divergent transitions
    assert fit.sample_stats["diverging"].mean() < 0.005
    # the choice is recorded for ArviZ too
    idata = fit.to_arviz()
    assert "theta" in str(idata.posterior.attrs.get("hbm_reparam", ""))


def test_auto_on_radon_matches_reference_and_follows_group_sizes():
    kwargs = dict(chains=4, warmup=500, draws=500, progress=False)
    auto = hbm.sample(RADON, RADON_DATA, seed=1, reparam="auto", **kwargs)
    ref = hbm.sample(RADON, RADON_DATA, seed=2, reparam="noncentered", **kwargs)
    import arviz as az

    for name in ("mu", "sigma_county", "beta", "sigma", "county_effect"):
        if name not in auto.posterior:
            continue
        a = auto.posterior[name].reshape(4, 500, -1)
        r = ref.posterior[name].reshape(4, 500, -1)
        for i in range(a.shape[-1]):
            mcse_a = a[..., i].std() / np.sqrt(az.ess(a[..., i]))
            mcse_r = r[..., i].std() / np.sqrt(az.ess(r[..., i]))
            z = (a[..., i].mean() - r[..., i].mean()) / np.hypot(mcse_a, mcse_r)
            # 90 comparisons: Bonferroni at family-wise level ~1e-3
            assert abs(z) < 4.5, (name, i, z)
    weights = np.asarray(auto.info["reparam"]["county_effect"])
    counts = np.bincount(np.asarray(RADON_DATA["county"]), minlength=weights.size)
    # big counties are centered more than small ones
    assert np.corrcoef(np.log(counts), weights)[0, 1] > 0.5
    assert weights[counts >= 20].mean() > 0.5 > weights[counts <= 2].mean()


# the two short runs below use 4 chains, as the first test does, so that they reuse its
# compiled programs instead of compiling their own for 2 chains
def test_auto_choice_is_deterministic_for_a_seed():
    kwargs = dict(chains=4, warmup=200, draws=50, seed=5, reparam="auto", progress=False)
    a = hbm.sample(EIGHT, EIGHT_DATA, **kwargs)
    b = hbm.sample(EIGHT, EIGHT_DATA, **kwargs)
    assert a.info["reparam"] == b.info["reparam"]
    np.testing.assert_array_equal(a.posterior["theta"], b.posterior["theta"])


def test_auto_with_short_warmup_falls_back_to_noncentered():
    fit = hbm.sample(EIGHT, EIGHT_DATA, chains=4, warmup=100, draws=20, seed=0,
                     reparam="auto", progress=False)
    assert fit.info["reparam_method"] == "fixed"
    assert fit.info["reparam"] == {"theta": "noncentered"}
