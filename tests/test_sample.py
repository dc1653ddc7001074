"""hbm.sample end to end: statistical tests against exact posteriors (by quadrature),
chain methods, compile-once, the Fit it returns, and argument validation.

Every statistical test is a z-test of the posterior mean against the exact value with
the Monte Carlo standard error sd / sqrt(ESS) (ArviZ bulk ESS), fixed seeds, and a
threshold of 4 (per-parameter false-alarm probability 6e-5)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from scipy import special, stats

import hbm
from hbm import dist
from hbm.errors import ConfigurationError

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
DATA = {"y": Y, "sigma": SIGMA}
Z_MAX = 4.0


def eight_schools():
    return hbm.Model(
        prior={
            "mu": dist.Normal(0.0, 5.0),
            "tau": dist.HalfCauchy(5.0),
            "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand(d["y"].shape),
        },
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"], d["sigma"])},
        dims={"theta": ("school",)},
        coords={"school": list("ABCDEFGH")},
    )


# one model object for the short plumbing runs below (2 chains, default settings): its
# compiled NUTS program is reused, as compiling is most of each such test's time
SCHOOLS = eight_schools()


def eight_schools_exact_moments():
    """Posterior means and sds of mu, tau and theta by quadrature: theta integrates out in
    closed form (y_j | mu, tau ~ N(mu, sigma_j^2 + tau^2)) and theta_j | mu, tau, y is
    normal, so a 2-d grid over (mu, log tau) gives every first and second moment."""
    mu = np.linspace(-30, 40, 1401)
    log_tau = np.linspace(-12, 6.5, 1851)
    M, LT = np.meshgrid(mu, log_tau, indexing="ij")
    T = np.exp(LT)
    logp = (stats.norm.logpdf(M, 0, 5) + stats.halfcauchy.logpdf(T, scale=5) + LT)
    v = SIGMA[None, None, :] ** 2 + T[..., None] ** 2
    logp = logp + stats.norm.logpdf(Y, M[..., None], np.sqrt(v)).sum(-1)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    prec = 1 / SIGMA[None, None, :] ** 2 + 1 / T[..., None] ** 2
    cond_mean = (Y / SIGMA**2 + M[..., None] / T[..., None] ** 2) / prec
    cond_var = 1 / prec
    out = {}
    for name, f, f2 in [("mu", M, M**2), ("tau", T, T**2)]:
        m = (w * f).sum()
        out[name] = (m, np.sqrt((w * f2).sum() - m**2))
    m = (w[..., None] * cond_mean).sum((0, 1))
    s2 = (w[..., None] * (cond_var + cond_mean**2)).sum((0, 1)) - m**2
    out["theta"] = (m, np.sqrt(s2))
    return out


def z_scores(draws, exact_mean):
    import arviz as az

    draws = np.asarray(draws)
    flat = draws.reshape(draws.shape[0], draws.shape[1], -1)
    ess = np.array([az.ess(flat[..., i], method="bulk") for i in range(flat.shape[-1])])
    mean = flat.mean((0, 1))
    sd = flat.std((0, 1))
    return (mean - np.ravel(exact_mean)) / (sd / np.sqrt(ess))


def test_eight_schools_noncentered_matches_exact_posterior():
    exact = eight_schools_exact_moments()
    fit = hbm.sample(eight_schools(), DATA, chains=4, warmup=500, draws=1000, seed=1,
                     reparam="noncentered", progress=False)
    assert fit.posterior["theta"].shape == (4, 1000, 8)
    assert fit.info["reparam"] == {"theta": "noncentered"}
    for name in ("mu", "tau", "theta"):
        z = z_scores(fit.posterior[name], exact[name][0])
        assert np.all(np.abs(z) < Z_MAX), (name, z)
    # the sds too, loosely through their own z (MCSE of sd ~ sd / sqrt(2 ESS))
    mu = fit.posterior["mu"]
    import arviz as az
    ess = az.ess(mu, method="bulk")
    assert abs(mu.std() - exact["mu"][1]) / (exact["mu"][1] / np.sqrt(2 * ess)) < Z_MAX
    assert int(fit.sample_stats["diverging"].sum()) <= 4


def logistic_data():
    rng = np.random.default_rng(11)
    x = rng.normal(size=40)
    y = rng.binomial(1, special.expit(0.5 + 1.5 * x))
    return {"x": x, "y": y}


def logistic_exact(data):
    """Posterior moments of (alpha, beta) on a fine grid (exact up to quadrature error)."""
    a = np.linspace(-4, 5, 901)
    b = np.linspace(-3, 7, 1001)
    A, B = np.meshgrid(a, b, indexing="ij")
    eta = A[..., None] + B[..., None] * data["x"]
    loglik = (data["y"] * -np.logaddexp(0, -eta) + (1 - data["y"]) * -np.logaddexp(0, eta))
    logp = stats.norm.logpdf(A, 0, 2.5) + stats.norm.logpdf(B, 0, 2.5) + loglik.sum(-1)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    return {"alpha": (w * A).sum(), "beta": (w * B).sum()}


@pytest.mark.parametrize("dense_mass", [False, True])
def test_logistic_regression_matches_exact_posterior(dense_mass):
    data = logistic_data()
    model = hbm.Model(
        prior={"alpha": dist.Normal(0.0, 2.5), "beta": dist.Normal(0.0, 2.5)},
        likelihood=lambda p, d: {"y": dist.Bernoulli(logits=p["alpha"] + p["beta"] * d["x"])},
    )
    exact = logistic_exact(data)
    fit = hbm.sample(model, data, chains=4, warmup=400, draws=1000, seed=2,
                     dense_mass=dense_mass, progress=False)
    for name in ("alpha", "beta"):
        z = z_scores(fit.posterior[name], exact[name])
        assert np.all(np.abs(z) < Z_MAX), (name, z)
    if dense_mass:
        assert fit.info["inverse_mass_matrix"].shape == (4, 2, 2)


def test_chain_methods_give_the_same_draws():
    """Each chain's draws depend only on its own key, not on how the chains are mapped.
    vmap may sum in a different order, so equality holds up to rounding; Hamiltonian
    trajectories amplify rounding differences over many iterations, so the draws are
    compared with a fixed step size and metric, and the warmup's adapted values after a
    short warmup."""
    model = eight_schools()
    fits = {m: hbm.sample(model, DATA, chains=4, warmup=0, step_size=0.4, draws=40, seed=3,
                          chain_method=m, progress=False)
            for m in ("vectorized", "sequential", "sharded")}
    a = fits["vectorized"]
    for other in (fits["sequential"], fits["sharded"]):
        np.testing.assert_allclose(a.posterior["theta"], other.posterior["theta"],
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(a.sample_stats["n_steps"], other.sample_stats["n_steps"])
    warm = {m: hbm.sample(model, DATA, chains=4, warmup=20, draws=1, seed=3, chain_method=m,
                          progress=False)
            for m in ("vectorized", "sequential")}
    np.testing.assert_allclose(warm["vectorized"].info["step_size"],
                               warm["sequential"].info["step_size"], rtol=1e-9)


def test_same_seed_same_draws_and_chunking_does_not_matter():
    model = SCHOOLS
    a = hbm.sample(model, DATA, chains=2, warmup=50, draws=30, seed=4, progress=False)
    b = hbm.sample(model, DATA, chains=2, warmup=50, draws=30, seed=4, progress=False)
    c = hbm.sample(model, DATA, chains=2, warmup=50, draws=30, seed=4, progress=False,
                   chunk_size=7)
    np.testing.assert_array_equal(a.posterior["mu"], b.posterior["mu"])
    np.testing.assert_allclose(a.posterior["mu"], c.posterior["mu"], rtol=1e-10)
    d = hbm.sample(model, DATA, chains=2, warmup=50, draws=30, seed=5, progress=False)
    assert not np.allclose(a.posterior["mu"], d.posterior["mu"])


def test_second_run_on_same_shaped_data_does_not_recompile():
    model = eight_schools()
    kwargs = dict(chains=2, warmup=30, draws=20, seed=0, progress=False)
    hbm.sample(model, DATA, **kwargs)
    programs = [v for k, v in model._bind_cache.items() if k[0] == "nuts"]
    assert len(programs) == 1
    sizes = (programs[0].init._cache_size(), programs[0].chunk._cache_size())
    assert sizes == (1, 1)
    other = {"y": Y[::-1].copy(), "sigma": SIGMA + 1.0}
    fit = hbm.sample(model, other, **kwargs)
    programs = [v for k, v in model._bind_cache.items() if k[0] == "nuts"]
    assert len(programs) == 1
    assert (programs[0].init._cache_size(), programs[0].chunk._cache_size()) == sizes
    np.testing.assert_array_equal(fit.observed_data["y"] if hasattr(fit, "observed_data")
                                  else other["y"], other["y"])


def test_thinning_keeps_every_kth_draw():
    model = SCHOOLS
    fit = hbm.sample(model, DATA, chains=2, warmup=40, draws=25, thin=3, seed=6,
                     progress=False)
    assert fit.posterior["mu"].shape == (2, 25)
    assert fit.sample_stats["n_steps"].min() >= 3


def test_warmup_zero_with_given_step_size():
    model = SCHOOLS
    fit = hbm.sample(model, DATA, chains=2, warmup=0, draws=20, step_size=0.3, seed=0,
                     progress=False)
    np.testing.assert_allclose(fit.sample_stats["step_size"], 0.3)


def test_fit_outputs_for_arviz():
    fit = hbm.sample(SCHOOLS, DATA, chains=2, warmup=100, draws=50, seed=7,
                     progress=False)
    for key in ("diverging", "tree_depth", "n_steps", "step_size", "energy", "lp",
                "acceptance_rate"):
        assert fit.sample_stats[key].shape == (2, 50), key
    idata = fit.to_arviz()
    assert "log_likelihood" in idata.groups() and "observed_data" in idata.groups()
    assert idata.log_likelihood["y"].shape == (2, 50, 8)
    assert list(idata.posterior["theta"].coords["school"].values) == list("ABCDEFGH")
    summary = fit.summary()
    assert "r_hat" in summary.columns
    # the pointwise log likelihood equals the likelihood at the draws
    th = fit.posterior["theta"]
    expected = stats.norm.logpdf(Y, th, SIGMA)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, expected, rtol=1e-8)


def test_user_init_is_used_and_validated():
    model = SCHOOLS
    fit = hbm.sample(model, DATA, chains=2, warmup=0, draws=1, step_size=1e-9,
                     init={"mu": 1.5, "tau": 2.0}, seed=0, progress=False)
    np.testing.assert_allclose(fit.posterior["mu"], 1.5, atol=1e-6)
    with pytest.raises(hbm.ModelError, match="unknown parameters"):
        hbm.sample(model, DATA, init={"nu": 1.0}, progress=False)
    with pytest.raises(hbm.ModelError, match="shape"):
        hbm.sample(model, DATA, init={"theta": np.zeros(3)}, progress=False)
    with pytest.raises(hbm.ModelError, match="support"):
        hbm.sample(model, DATA, init={"tau": -1.0}, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(chains=0), "chains"),
    (dict(draws=0), "draws"),
    (dict(warmup=-1), "warmup"),
    (dict(warmup=0), "step_size"),
    (dict(target_accept=1.5), "target_accept"),
    (dict(chain_method="parallel"), "chain_method"),
    (dict(thin=0), "thin"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        hbm.sample(eight_schools(), DATA, progress=False, **kwargs)


def test_simulation_based_calibration_two_level_normal():
    """SBC (Talts et al. 2018): for parameters drawn from the prior and data simulated from
    them, the rank of the true value among posterior draws is uniform. 60 replications,
    ranks among 99 thinned draws binned in 10 bins, chi-square test at level 1e-3."""
    J = 4
    model = hbm.Model(
        prior={"mu": dist.Normal(0.0, 1.0), "tau": dist.HalfNormal(1.0),
               "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand((J,))},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"][d["g"]], 1.0)},
    )
    g = np.repeat(np.arange(J), 3)
    reps, L = 60, 99
    ranks = {"mu": [], "tau": []}
    keys = jax.random.split(jax.random.PRNGKey(12), reps)
    for r in range(reps):
        sim = model.simulate(keys[r], {"g": g, "y": np.zeros(len(g))})
        data = {"g": g, "y": np.asarray(sim["y"])}
        fit = hbm.sample(model, data, chains=1, warmup=150, draws=L, thin=2, seed=r,
                         progress=False)
        for name in ranks:
            ranks[name].append(int(np.sum(fit.posterior[name][0] < float(sim[name]))))
    for name, rk in ranks.items():
        counts = np.bincount(np.asarray(rk) * 10 // (L + 1), minlength=10)
        p_value = stats.chisquare(counts).pvalue
        assert p_value > 1e-3, (name, counts)
