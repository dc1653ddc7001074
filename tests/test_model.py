"""The model layer: exact log densities, reparameterization, constrain/unconstrain, init,
simulation and eager validation."""

import numpy as np
import jax
import jax.numpy as jnp
import pandas as pd
import pytest
from scipy import stats

import hbm
from hbm import constraints, dist
from hbm.errors import (DataError, HbmError, InitializationError, ModelError,
                        ModelTypeError)

Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
DATA = {"y": Y, "sigma": SIGMA}


def eight_schools():
    return hbm.Model(
        prior={
            "mu": dist.Normal(0.0, 5.0),
            "tau": dist.HalfCauchy(5.0),
            "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand(d["y"].shape),
        },
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"], d["sigma"])},
        dims={"theta": ("school",)},
    )


def eight_schools_centered_formula(x):
    mu, log_tau, theta = x[0], x[1], x[2:]
    tau = np.exp(log_tau)
    return (stats.norm.logpdf(mu, 0, 5) + stats.halfcauchy.logpdf(tau, scale=5) + log_tau
            + stats.norm.logpdf(theta, mu, tau).sum() + stats.norm.logpdf(Y, theta, SIGMA).sum())


def eight_schools_noncentered_formula(x):
    mu, log_tau, z = x[0], x[1], x[2:]
    tau = np.exp(log_tau)
    return (stats.norm.logpdf(mu, 0, 5) + stats.halfcauchy.logpdf(tau, scale=5) + log_tau
            + stats.norm.logpdf(z).sum() + stats.norm.logpdf(Y, mu + tau * z, SIGMA).sum())


@pytest.mark.parametrize("reparam, formula", [
    ("centered", eight_schools_centered_formula),
    ("noncentered", eight_schools_noncentered_formula),
])
def test_eight_schools_logdensity_equals_formula(reparam, formula):
    bound = eight_schools().bind(DATA, reparam=reparam)
    assert bound.size == 10
    rng = np.random.default_rng(1)
    logdensity = jax.jit(bound.logdensity)
    for _ in range(10):
        x = rng.uniform(-2, 2, size=10)
        np.testing.assert_allclose(float(logdensity(jnp.asarray(x))), formula(x), rtol=1e-8)


def test_noncentered_written_by_hand_matches_automatic():
    by_hand = hbm.Model(
        prior={"mu": dist.Normal(0.0, 5.0), "tau": dist.HalfCauchy(5.0),
               "theta_z": dist.Normal(0.0, 1.0).expand((8,))},
        likelihood=lambda p, d: {"y": dist.Normal(p["mu"] + p["tau"] * p["theta_z"],
                                                  d["sigma"])},
    ).bind(DATA)
    auto = eight_schools().bind(DATA, reparam="noncentered")
    x = jnp.asarray(np.random.default_rng(2).normal(size=10))
    np.testing.assert_allclose(float(by_hand.logdensity(x)), float(auto.logdensity(x)),
                               rtol=1e-12)


def _radon():
    return hbm.datasets.load("radon_mn")


def test_radon_varying_intercept_logdensity_equals_formula():
    df = _radon()
    county = pd.factorize(df["county"])[0]
    n_county = int(county.max()) + 1
    data = {"y": df["log.radon"].to_numpy(), "x": df["basement"].to_numpy().astype(float),
            "county": county}
    model = hbm.Model(
        prior={
            "mu": dist.Normal(0.0, 10.0),
            "sigma_county": dist.HalfNormal(1.0),
            "county_effect": lambda p, d: dist.Normal(p["mu"], p["sigma_county"]).expand(
                (n_county,)),
            "beta": dist.Normal(0.0, 10.0),
            "sigma": dist.HalfNormal(1.0),
        },
        likelihood=lambda p, d: {"y": dist.Normal(
            p["county_effect"][d["county"]] + p["beta"] * d["x"], p["sigma"])},
    )
    y, x = data["y"], data["x"]

    def formula(v):
        mu, log_s_a, a, beta, log_s = v[0], v[1], v[2:2 + n_county], v[-2], v[-1]
        s_a, s = np.exp(log_s_a), np.exp(log_s)
        return (stats.norm.logpdf(mu, 0, 10) + stats.halfnorm.logpdf(s_a) + log_s_a
                + stats.norm.logpdf(a, mu, s_a).sum() + stats.norm.logpdf(beta, 0, 10)
                + stats.halfnorm.logpdf(s) + log_s
                + stats.norm.logpdf(y, a[county] + beta * x, s).sum())

    bound = model.bind(data, reparam="centered")
    assert bound.size == n_county + 4
    rng = np.random.default_rng(3)
    for _ in range(5):
        v = rng.uniform(-2, 2, size=bound.size)
        np.testing.assert_allclose(float(bound.logdensity(jnp.asarray(v))), formula(v),
                                   rtol=1e-8)


def _change_of_variables_check(model, data, reparam, rng):
    """lp_reparam(x) == lp_centered(T(x)) + log|det dT/dx| where T maps the reparameterized
    coordinates to the centered ones through the model's own parameters."""
    centered = model.bind(data, reparam="centered")
    other = model.bind(data, reparam=reparam)

    def to_centered(x):
        return centered.unconstrain(other.constrain(x, deterministic=False))

    for _ in range(5):
        x = jnp.asarray(rng.uniform(-1.5, 1.5, size=other.size))
        jac = jax.jacfwd(to_centered)(x)
        logdet = jnp.linalg.slogdet(jac)[1]
        np.testing.assert_allclose(float(other.logdensity(x)),
                                   float(centered.logdensity(to_centered(x)) + logdet),
                                   rtol=1e-9)
        # round trip through the model's own parameters
        back = other.unconstrain(other.constrain(x, deterministic=False))
        np.testing.assert_allclose(np.asarray(back), np.asarray(x), rtol=1e-9, atol=1e-9)


def test_partial_centering_is_an_exact_change_of_variables():
    rng = np.random.default_rng(4)
    weights = rng.uniform(0, 1, size=8)
    _change_of_variables_check(eight_schools(), DATA, {"theta": weights}, rng)
    _change_of_variables_check(eight_schools(), DATA, "noncentered", rng)


@pytest.mark.parametrize("family", ["studentt", "lognormal", "laplace"])
def test_reparam_other_location_scale_families(family):
    def node(p, d):
        if family == "studentt":
            return dist.StudentT(4.0, p["mu"], p["tau"]).expand((5,))
        if family == "lognormal":
            return dist.LogNormal(p["mu"], p["tau"]).expand((5,))
        return dist.Laplace(p["mu"], p["tau"]).expand((5,))

    model = hbm.Model(
        prior={"mu": dist.Normal(0.0, 1.0), "tau": dist.HalfNormal(1.0), "theta": node},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"], 1.0)},
    )
    data = {"y": np.array([0.5, 1.0, 2.0, 0.1, 3.0])}
    rng = np.random.default_rng(5)
    _change_of_variables_check(model, data, {"theta": rng.uniform(0, 1, 5)}, rng)
    _change_of_variables_check(model, data, "noncentered", rng)


def test_constrain_reports_model_parameters_and_deterministics():
    model = hbm.Model(
        prior={"mu": dist.Normal(0.0, 5.0), "tau": dist.HalfCauchy(5.0),
               "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand((8,))},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"], d["sigma"])},
        deterministic={"theta_mean": lambda p, d: jnp.mean(p["theta"])},
    )
    bound = model.bind(DATA)  # non-centered by default
    x = jnp.asarray(np.random.default_rng(6).normal(size=10))
    params = bound.constrain(x)
    tau = np.exp(float(x[1]))
    np.testing.assert_allclose(params["theta"], float(x[0]) + tau * np.asarray(x[2:]),
                               rtol=1e-12)
    np.testing.assert_allclose(params["tau"], tau, rtol=1e-12)
    np.testing.assert_allclose(params["theta_mean"], np.mean(params["theta"]), rtol=1e-12)
    assert bound.reparam == {"theta": "noncentered"}


def test_init_is_finite_and_in_range():
    bound = eight_schools().bind(DATA)
    xs = bound.init_many(jax.random.PRNGKey(0), 7)
    assert xs.shape == (7, 10)
    assert bool(jnp.all(jnp.abs(xs) < 2))
    assert bool(jnp.all(jnp.isfinite(jax.vmap(bound.logdensity)(xs))))


def test_init_error_names_the_nonfinite_term():
    model = hbm.Model.from_logdensity(lambda p, d: -jnp.inf * (p["a"] ** 2 + 1.0),
                                      params={"a": constraints.real})
    with pytest.raises(InitializationError, match="logdensity"):
        model.bind({}).init(jax.random.PRNGKey(0))


def test_from_logdensity_gets_transforms_and_jacobians():
    def fn(p, d):
        return (stats_norm_logpdf(p["mu"], 0.0, 1.0)
                + jnp.sum(-p["s"]) + jnp.sum(jnp.log(p["w"]) * 0.0))

    model = hbm.Model.from_logdensity(
        fn, params={"mu": constraints.real, "s": constraints.positive,
                    "w": constraints.simplex},
        shapes={"s": (2,), "w": (3,)})
    bound = model.bind({})
    assert bound.size == 1 + 2 + 2
    x = jnp.asarray([0.3, 0.1, -0.2, 0.5, -0.4])
    params = bound.constrain(x)
    assert params["s"].shape == (2,) and params["w"].shape == (3,)
    np.testing.assert_allclose(float(jnp.sum(params["w"])), 1.0, rtol=1e-12)
    t = hbm.transforms.biject_to(constraints.simplex)
    expected = (stats.norm.logpdf(0.3) - np.exp(0.1) - np.exp(-0.2) + 0.1 - 0.2
                + float(t.log_abs_det_jacobian(x[3:])))
    np.testing.assert_allclose(float(bound.logdensity(x)), expected, rtol=1e-10)
    with pytest.raises(ModelError, match="cannot simulate"):
        model.simulate(jax.random.PRNGKey(0))


def stats_norm_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi)


def test_simulate_prior_predictive_shapes_and_moments():
    model = eight_schools()
    keys = jax.random.split(jax.random.PRNGKey(7), 4000)
    sims = jax.vmap(lambda k: model.simulate(k, DATA))(keys)
    assert sims["theta"].shape == (4000, 8) and sims["y"].shape == (4000, 8)
    # mu ~ N(0, 5): z-test on the mean and on the variance
    mu = np.asarray(sims["mu"])
    assert abs(mu.mean() / (5 / np.sqrt(len(mu)))) < 4
    var_se = np.sqrt(np.var((mu - mu.mean()) ** 2) / len(mu))
    assert abs((mu.var() - 25.0) / var_se) < 4
    assert np.all(np.asarray(sims["tau"]) > 0)


# ------------------------------------------------------------------ validation errors
def test_prior_reads_undefined_parameter():
    model = hbm.Model(prior={"theta": lambda p, d: dist.Normal(p["mu"], 1.0),
                             "mu": dist.Normal(0.0, 1.0)})
    with pytest.raises(ModelError, match=r"prior node 'theta' reads parameter 'mu'"):
        model.bind({})


def test_likelihood_key_missing_from_data():
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)})
    with pytest.raises(DataError, match="'y'"):
        model.bind({"x": np.ones(3)})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_observed_data_with_nan_or_inf(bad):
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)})
    y = np.ones(50)
    y[40] = bad
    with pytest.raises(DataError, match=r"'y'.*index \(40,\)"):
        model.bind({"y": y})


def test_shapes_that_do_not_broadcast():
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0).expand((3,))},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)})
    with pytest.raises(DataError, match="'y'.*does not broadcast"):
        model.bind({"y": np.ones(4)})


def test_discrete_prior_is_refused():
    model = hbm.Model(prior={"k": dist.Poisson(3.0)})
    with pytest.raises(ModelError, match="'k'.*discrete"):
        model.bind({})


def test_likelihood_must_return_dict_of_distributions():
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: dist.Normal(p["mu"], 1.0))
    with pytest.raises(ModelError, match="dict"):
        model.bind({"y": np.ones(3)})
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": 3.0})
    with pytest.raises(ModelError, match="dict"):
        model.bind({"y": np.ones(3)})


def test_non_numeric_data():
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)})
    with pytest.raises(DataError, match="'group'.*not numeric"):
        model.bind({"y": np.ones(3), "group": np.array(["a", "b", "c"])})


def test_prior_node_of_wrong_type():
    with pytest.raises(ModelTypeError, match="'mu'"):
        hbm.Model(prior={"mu": 3.0})


def test_bad_scale_constant_in_prior():
    model = hbm.Model(prior={"mu": dist.Normal(0.0, -1.0)})
    with pytest.raises(ModelError, match="'mu'.*scale"):
        model.bind({})


def test_count_likelihood_rejects_non_integers_and_negatives():
    model = hbm.Model(prior={"rate": dist.Gamma(2.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Poisson(p["rate"])})
    with pytest.raises(DataError, match="'y'.*integer"):
        model.bind({"y": np.array([1.0, 2.5, 3.0])})
    with pytest.raises(DataError, match="'y'.*support"):
        model.bind({"y": np.array([1, -2, 3])})
    model.bind({"y": np.array([1, 2, 3])})  # integers are fine


def test_integer_data_for_continuous_likelihood_is_converted():
    model = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)})
    bound = model.bind({"y": np.array([1, 2, 3])})
    assert jnp.issubdtype(bound.data["y"].dtype, jnp.floating)


def test_all_errors_are_hbm_errors():
    for cls in (DataError, ModelError, ModelTypeError, InitializationError):
        assert issubclass(cls, HbmError)
    assert issubclass(DataError, ValueError) and issubclass(ModelTypeError, TypeError)
