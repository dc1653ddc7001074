"""Correlated effects as hierarchical nodes: a MultivariateNormal whose location or
Cholesky factor depends on other parameters is sampled centered, non-centered or partially
centered (:mod:`hbm.reparam`).

The ladder: the reparameterization is an exact change of variables (float64, the
log-Jacobian against the analytic ``sum (1 - w) log diag L`` and against the log-determinant
of ``jax.jacfwd`` of the map), the three choices give the same posterior (z-tests on the
Monte Carlo standard error, fixed seeds), ``auto`` resumes from a checkpoint to the same
draws, the other drivers run on such a node, and the classical MAP of the centered
sleepstudy model is what it is: on the boundary (the joint mode of a centered hierarchy is
degenerate), reported with a warning.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbm
from hbm import dist
from hbm.diagnostics import HbmWarning
from hbm.errors import ModelError
from hbm.reparam import mvn_from_coordinates, mvn_to_coordinates

N_GROUP, N_TERM, PER_GROUP = 8, 2, 10
Z_MAX = 4.5  # about 70 comparisons per pair of runs: Bonferroni at family-wise ~1e-3


def correlated_model(n_group=N_GROUP, n_term=N_TERM):
    """Varying intercepts and slopes, written centered as a textbook does."""
    prior = {
        "beta": dist.Normal(0.0, 5.0).expand((n_term,)),
        "sigma_g": dist.HalfNormal(1.0).expand((n_term,)),
        "L_g": dist.LKJCholesky(n_term, 2.0),
        "g_effect": lambda p, d: dist.MultivariateNormal(
            p["beta"], scale_tril=p["sigma_g"][:, None] * p["L_g"]).expand((n_group,)),
        "sigma": dist.HalfNormal(1.0),
    }

    def likelihood(p, d):
        mean = jnp.sum(p["g_effect"][d["g"]] * d["x"], axis=-1)
        return {"y": dist.Normal(mean, p["sigma"])}

    return hbm.Model(prior=prior, likelihood=likelihood,
                     dims={"g_effect": ("g", "term")},
                     coords={"g": list(range(n_group)), "term": list(range(n_term))})


def correlated_data(n_group=N_GROUP, n_term=N_TERM, per_group=PER_GROUP, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_group), per_group).astype(np.int32)
    x = np.column_stack([np.ones(len(g))] + [rng.normal(size=len(g))
                                             for _ in range(n_term - 1)])
    effect = np.array([1.0, -0.5] + [0.0] * (n_term - 2))[:n_term] + rng.normal(
        size=(n_group, n_term)) * np.array([1.0, 0.5] + [0.3] * (n_term - 2))[:n_term]
    y = np.sum(effect[g] * x, axis=1) + 0.5 * rng.normal(size=len(g))
    return {"y": y, "g": g, "x": x}


MODEL, DATA = correlated_model(), correlated_data()


# --------------------------------------------------------------- exact change of variables
def _map_and_logdet(model, data, reparam, x):
    """(lp in ``reparam`` coordinates, lp centered at the mapped point, log|det| of the map
    to centered coordinates by autodiff)."""
    centered = model.bind(data, reparam="centered")
    other = model.bind(data, reparam=reparam)

    def to_centered(v):
        return centered.unconstrain(other.constrain(v, deterministic=False))

    logdet = jnp.linalg.slogdet(jax.jacfwd(to_centered)(x))[1]
    return float(other.logdensity(x)), float(centered.logdensity(to_centered(x))), \
        float(logdet), other


@pytest.mark.parametrize("n_term", [2, 3, 17])  # 17: past the unrolled substitution
def test_noncentered_is_an_exact_change_of_variables(n_term):
    model = correlated_model(n_group=3 if n_term == 17 else N_GROUP, n_term=n_term)
    data = correlated_data(n_group=3 if n_term == 17 else N_GROUP, n_term=n_term)
    rng = np.random.default_rng(n_term)
    for _ in range(3):
        size = model.bind(data, reparam="noncentered").size
        x = jnp.asarray(rng.uniform(-1.5, 1.5, size))
        lp_nc, lp_c, logdet, bound = _map_and_logdet(model, data, "noncentered", x)
        np.testing.assert_allclose(lp_nc, lp_c + logdet, rtol=1e-10)
        # the log-Jacobian is sum_rows sum_k log L_kk (non-centered -> centered: theta = loc
        # + L z); the other nodes are unconstrained identically in both
        p = bound.constrain(x, deterministic=False)
        tril = np.asarray(p["sigma_g"])[:, None] * np.asarray(p["L_g"])
        n_group = p["g_effect"].shape[0]
        np.testing.assert_allclose(logdet, n_group * np.sum(np.log(np.diag(tril))),
                                   rtol=1e-10)
        # round trip through the model's own parameters
        back = bound.unconstrain(bound.constrain(x, deterministic=False))
        np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-10)


@pytest.mark.parametrize("n_term", [2, 17])
def test_partial_centering_is_an_exact_change_of_variables(n_term):
    n_group = 3 if n_term == 17 else N_GROUP
    model, data = correlated_model(n_group, n_term), correlated_data(n_group, n_term)
    rng = np.random.default_rng(10 + n_term)
    weights = rng.uniform(0, 1, (n_group, n_term))
    weights[0] = 0.0  # whole rows non-centered and centered among the partial ones
    weights[1] = 1.0
    size = model.bind(data, reparam="noncentered").size
    for _ in range(3):
        x = jnp.asarray(rng.uniform(-1.5, 1.5, size))
        lp_w, lp_c, logdet, bound = _map_and_logdet(model, data, {"g_effect": weights}, x)
        np.testing.assert_allclose(lp_w, lp_c + logdet, rtol=1e-10)
        p = bound.constrain(x, deterministic=False)
        log_d = np.log(np.diag(np.asarray(p["sigma_g"])[:, None] * np.asarray(p["L_g"])))
        np.testing.assert_allclose(logdet, np.sum((1 - weights) * log_d), rtol=1e-9,
                                   atol=1e-10)
        back = bound.unconstrain(bound.constrain(x, deterministic=False))
        np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-10)
    assert bound.reparam["g_effect"].shape == (n_group, n_term)


def test_weights_one_and_zero_are_the_fixed_parameterizations():
    """w = 1 is the multivariate normal density of theta itself, w = 0 the standard
    normal density of z with theta = loc + L z."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 3, 3))
    tril = np.tril(a, -1) + np.eye(3) * np.exp(rng.normal(size=(4, 1, 3)))
    loc, x = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    theta, lp = mvn_from_coordinates(x, loc, tril, 1.0)
    np.testing.assert_allclose(theta, x, rtol=1e-12)
    np.testing.assert_allclose(lp, dist.MultivariateNormal(loc, scale_tril=tril).log_prob(x),
                               rtol=1e-12)
    theta, lp = mvn_from_coordinates(x, loc, tril, 0.0)
    np.testing.assert_allclose(theta, loc + np.einsum("bij,bj->bi", tril, x), rtol=1e-12)
    np.testing.assert_allclose(lp, dist.Normal(0.0, 1.0).log_prob(x).sum(-1), rtol=1e-12)
    w = rng.uniform(size=(4, 3))
    back = mvn_to_coordinates(mvn_from_coordinates(x, loc, tril, w)[0], loc, tril, w)
    np.testing.assert_allclose(back, x, rtol=1e-10, atol=1e-12)


def test_mvn_node_is_hierarchical_and_needs_no_lapack():
    """Bound as a hierarchical node; the forward substitution keeps LAPACK out of the
    log density, so sharded chains stay available on CPU."""
    from hbm.inference.chains import calls_linear_algebra

    for reparam in ("centered", "noncentered", {"g_effect": 0.5}):
        bound = MODEL.bind(DATA, reparam=reparam)
        node = next(n for n in bound.nodes if n.name == "g_effect")
        assert node.locscale and node.multivariate
        assert not calls_linear_algebra(bound.logdensity, jnp.zeros(bound.size))


def test_fixed_covariance_mvn_is_not_reparameterized():
    model = hbm.Model(prior={"theta": dist.MultivariateNormal(
        jnp.zeros(2), scale_tril=jnp.eye(2)).expand((3,))})
    node = model.bind({}).nodes[0]
    assert not node.locscale and not node.multivariate


def test_bad_mvn_node_names_the_node():
    model = hbm.Model(prior={
        "sigma": dist.HalfNormal(1.0).expand((2,)),
        "eff": lambda p, d: dist.MultivariateNormal(
            jnp.zeros(3), scale_tril=jnp.diag(p["sigma"])).expand((4,))})
    with pytest.raises(ModelError, match="prior node 'eff'.*3 components.*scale_tril has 2"):
        model.bind({})
    model = hbm.Model(prior={
        "sigma": dist.HalfNormal(1.0).expand((2,)),
        "eff": lambda p, d: dist.MultivariateNormal(
            jnp.zeros((5, 2)), scale_tril=jnp.diag(p["sigma"])).expand((4,))})
    with pytest.raises(ModelError, match="prior node 'eff'"):
        model.bind({})
    with pytest.raises(ModelError, match="centering weights for 'g_effect'"):
        MODEL.bind(DATA, reparam={"g_effect": np.full((N_GROUP, N_TERM), 1.5)})


# ------------------------------------------------------------------ same posterior
@pytest.fixture(scope="module")
def three_fits():
    # target_accept 0.9: at the default 0.8 about one noncentered run in ten (seeds 0-10,
    # float64) has a chain that sticks in the large-sigma_g tail with a step size too
    # big there (18% divergent transitions); 0.9, what hbm's divergence warning advises,
    # gave at most 1 divergence in 4000 over seeds 0-11
    kwargs = dict(chains=4, warmup=500, draws=1000, progress=False, target_accept=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HbmWarning)
        return {reparam: hbm.sample(MODEL, DATA, seed=seed, reparam=reparam, **kwargs)
                for seed, reparam in enumerate(("centered", "noncentered", "auto"))}


def _mean_and_mcse(draws):
    import arviz as az

    flat = np.asarray(draws).reshape(draws.shape[0], draws.shape[1], -1)
    ess = np.array([az.ess(flat[..., i], method="bulk") for i in range(flat.shape[-1])])
    return flat.mean((0, 1)), flat.std((0, 1)) / np.sqrt(ess)


def test_centered_noncentered_and_auto_agree(three_fits):
    names = ("beta", "sigma_g", "L_g", "g_effect", "sigma")
    pairs = [("centered", "noncentered"), ("centered", "auto"), ("noncentered", "auto")]
    for a, b in pairs:
        for name in names:
            mean_a, mcse_a = _mean_and_mcse(three_fits[a].posterior[name])
            mean_b, mcse_b = _mean_and_mcse(three_fits[b].posterior[name])
            keep = (mcse_a > 0) | (mcse_b > 0)  # L_g[0, 0] = 1 and L_g[0, 1] = 0 exactly
            z = (mean_a - mean_b)[keep] / np.hypot(mcse_a, mcse_b)[keep]
            assert np.all(np.abs(z) < Z_MAX), (a, b, name, z)
    for fit in three_fits.values():
        assert fit.posterior["g_effect"].shape == (4, 1000, N_GROUP, N_TERM)
        assert fit.sample_stats["diverging"].mean() < 0.01


def test_auto_records_per_element_weights(three_fits):
    fit = three_fits["auto"]
    assert fit.info["reparam_method"] == "auto"
    weights = np.asarray(fit.info["reparam"]["g_effect"])
    assert weights.shape == (N_GROUP, N_TERM)
    assert np.all((weights >= 0) & (weights <= 1))
    # ten observations per group with noise sd 0.5 identify the intercepts well: centered
    assert weights[:, 0].mean() > 0.5
    assert three_fits["centered"].info["reparam"] == {"g_effect": "centered"}


# ------------------------------------------------------------------ the other drivers
def test_auto_resumes_from_a_checkpoint_to_identical_draws(tmp_path, monkeypatch):
    import hbm.inference.checkpointing as checkpointing

    settings = dict(chains=2, warmup=200, draws=100, seed=7, chunk_size=20, progress=False,
                    reparam="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HbmWarning)
        reference = hbm.sample(MODEL, DATA, **settings)
        original = checkpointing.save

        def interrupt(run, path, new_draws=None):
            original(run, path, new_draws)
            if run.phase == "warmup" and run.done >= 40:  # after auto chose the weights
                raise KeyboardInterrupt

        monkeypatch.setattr(checkpointing, "save", interrupt)
        with pytest.raises(KeyboardInterrupt):  # in warmup: no partial fit, a checkpoint
            hbm.sample(MODEL, DATA, checkpoint=tmp_path / "run", **settings)
        monkeypatch.setattr(checkpointing, "save", original)
        resumed = hbm.resume(tmp_path / "run", MODEL, progress=False)
    np.testing.assert_array_equal(resumed.posterior["g_effect"],
                                  reference.posterior["g_effect"])
    np.testing.assert_array_equal(np.asarray(resumed.info["reparam"]["g_effect"]),
                                  np.asarray(reference.info["reparam"]["g_effect"]))


def test_advi_and_predict_on_correlated_effects():
    approx = hbm.advi(MODEL, DATA, method="fullrank", seed=0, progress=False)
    assert approx.posterior["g_effect"].shape[-2:] == (N_GROUP, N_TERM)
    assert np.all(np.isfinite(approx.posterior["g_effect"]))
    new = {"g": np.array([0, N_GROUP, N_GROUP]), "x": np.array([[1.0, 0.0]] * 3)}
    pred = approx.predict(new, new_groups="sample", seed=1)["y"]
    assert pred.shape[-1] == 3 and np.all(np.isfinite(pred))


def test_study_runs_on_correlated_effects():
    result = hbm.study(MODEL, {"sigma": 0.5}, data=DATA, datasets=2, chains=2, warmup=150,
                       draws=100, seed=0, progress=False)
    table = result.table
    assert set(table["parameter"]) >= {"g_effect", "sigma_g", "L_g"}
    assert np.all(np.isfinite(table.loc[table["parameter"] == "g_effect", "mean"]))


# ------------------------------------------------------------------ sleepstudy's MAP
def test_sleepstudy_classical_map_is_on_the_boundary():
    """The model is written centered, so find_map's classical MAP is the joint mode of
    the model as written: the density of the subject effects grows without bound as
    their covariance becomes singular (a scale to 0 or the correlation to +-1, with the
    effects following), so there is no interior mode to find (lme4's REML sds 24.7 and 5.9
    maximize a marginal likelihood, the effects integrated out). find_map says so."""
    model, data = hbm.models.sleepstudy()
    with pytest.warns(HbmWarning, match="boundary"):
        fit = hbm.find_map(model, data, seed=0)
    boundary = fit.info["boundary"]
    assert any(label.startswith(("sigma_subject", "L_subject")) for label in boundary)
    sd = np.asarray(fit.params["sigma_subject"])
    corr = float(np.asarray(fit.params["L_subject"])[1, 0])
    # the effects' covariance has collapsed: its determinant is a tiny fraction of lme4's
    det = (sd[0] * sd[1]) ** 2 * (1 - corr**2)
    assert det < 1e-6 * (24.7 * 5.9) ** 2


def test_forest_figure_has_population_and_caterpillar_panels(three_fits, tmp_path):
    fig = hbm.plots.forest(three_fits["auto"], path=tmp_path / "forest.png")
    left, right = fig.axes
    labels = [t.get_text() for t in left.get_yticklabels()]
    assert "sigma" in labels and not any(label.startswith("g_effect") for label in labels)
    assert "L_g[0, 0]" not in labels  # constant elements are left out
    assert "g_effect" in right.get_title() and "sorted" in right.get_title()
    assert (tmp_path / "forest.png").stat().st_size > 1000
