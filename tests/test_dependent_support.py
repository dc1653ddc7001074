"""Priors whose support depends on earlier parameters or on the data.

The bijection of such a node must follow the bounds at the current parameter values (and
at the data passed in), not the bounds at the placeholder values used when the model was
bound. The statistical test is a z-test of NUTS posterior means against the exact ones
by quadrature, with the Monte Carlo standard error sd / sqrt(ESS) (ArviZ bulk ESS) and
the threshold 4 of tests/test_sample.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hbm
from hbm import dist
from hbm.transforms import IntervalTransform
from test_sample import Z_MAX, z_scores

Y = np.array([4.6, 5.3, 5.1, 4.8])


def upper_model():
    """upper ~ Uniform(2, 10), x | upper ~ Uniform(0, upper), y_i | x ~ Normal(x, 1)."""
    return hbm.Model(
        prior={"upper": dist.Uniform(2.0, 10.0),
               "x": lambda p, d: dist.Uniform(0.0, p["upper"])},
        likelihood=lambda p, d: {"y": dist.Normal(p["x"], 1.0)},
    )


def capped_model():
    """x | cap ~ Uniform(0, cap) with the cap given as data, y_i | x ~ Normal(x, 1)."""
    return hbm.Model(
        prior={"x": lambda p, d: dist.Uniform(0.0, d["cap"])},
        likelihood=lambda p, d: {"y": dist.Normal(p["x"], 1.0)},
    )


def exact_means(y, n=2000):
    """Posterior means of ``upper`` and ``x`` by the midpoint rule on a 2-d grid.

    With ``x = s * upper``, ``s`` in (0, 1), the triangle ``0 < x < upper`` becomes a
    rectangle and the prior density ``1/8 * 1/upper`` times the Jacobian ``upper`` is
    constant, so the posterior density of ``(upper, s)`` is the likelihood alone."""
    upper = 2.0 + 8.0 * (np.arange(n) + 0.5) / n
    s = (np.arange(n) + 0.5) / n
    x = upper[:, None] * s[None, :]
    loglik = -0.5 * ((y[None, None, :] - x[..., None]) ** 2).sum(-1)
    w = np.exp(loglik - loglik.max())
    w /= w.sum()
    return float((w * upper[:, None]).sum()), float((w * x).sum())


def test_quadrature_is_sane():
    mean_upper, mean_x = exact_means(Y)
    coarse = exact_means(Y, n=500)
    np.testing.assert_allclose((mean_upper, mean_x), coarse, atol=1e-4)
    assert 5.0 < mean_upper < 10.0 and 4.0 < mean_x < mean_upper


def test_transforms_follow_the_current_parameters():
    bound = upper_model().bind({"y": Y})
    t = bound.transforms({"upper": 3.0, "x": 1.0})
    assert isinstance(t["x"], IntervalTransform)
    assert float(t["x"].upper_bound) == 3.0
    # the flat vector and the constrained parameters give the same transforms
    x = bound.unconstrain({"upper": 7.5, "x": 7.0})
    assert float(bound.transforms(x)["x"].upper_bound) == pytest.approx(7.5)
    assert bound.supports({"upper": 7.5})["x"].check(7.0)
    assert not bound.supports({"upper": 3.0})["x"].check(4.0)


def test_constrain_and_unconstrain_use_the_current_bound():
    bound = upper_model().bind({"y": Y})
    for upper, x in [(2.5, 2.4), (9.5, 9.0), (4.0, 0.1)]:
        params = {"upper": jnp.asarray(upper), "x": jnp.asarray(x)}
        flat = bound.unconstrain(params)
        back = bound.constrain(flat)
        assert float(back["upper"]) == pytest.approx(upper, rel=1e-12)
        assert float(back["x"]) == pytest.approx(x, rel=1e-12)
    # under jit, with the bound a tracer
    xs = jax.random.normal(jax.random.PRNGKey(0), (200, 2)) * 3.0
    draws = jax.jit(jax.vmap(lambda v: bound.constrain(v)))(xs)
    assert np.all((draws["x"] > 0) & (draws["x"] < draws["upper"]))


def test_log_density_matches_change_of_variables():
    """log p(u) = log p(upper, x) + log |d(upper, x) / du| with x's Jacobian
    ``upper * sigmoid(u_x) * (1 - sigmoid(u_x))`` at the current upper."""
    from scipy import special, stats

    bound = upper_model().bind({"y": Y})
    u = np.array([0.3, -1.2])
    upper = 2.0 + 8.0 * special.expit(u[0])
    x = upper * special.expit(u[1])
    expected = (np.log(1 / 8) + np.log(8 * special.expit(u[0]) * special.expit(-u[0]))
                - np.log(upper) + np.log(upper * special.expit(u[1]) * special.expit(-u[1]))
                + stats.norm.logpdf(Y, x, 1.0).sum())
    np.testing.assert_allclose(float(bound.logdensity(jnp.asarray(u))), expected, rtol=1e-12)


def test_nuts_matches_quadrature_for_a_parameter_dependent_bound():
    mean_upper, mean_x = exact_means(Y)
    fit = hbm.sample(upper_model(), {"y": Y}, chains=2, warmup=400, draws=600, seed=3,
                     progress=False)
    upper, x = fit.posterior["upper"], fit.posterior["x"]
    assert np.all((x > 0) & (x < upper)), "a draw of x left (0, upper)"
    assert fit.sample_stats["diverging"].mean() < 0.005
    for draws, exact in ((upper, mean_upper), (x, mean_x)):
        z = z_scores(draws, exact)
        assert np.all(np.abs(z) < Z_MAX), (draws.mean(), exact, z)


@pytest.mark.filterwarnings("ignore::hbm.HbmWarning")  # short runs: ESS warnings
def test_data_dependent_bound_follows_new_data_of_the_same_shape():
    """The compiled program is reused for same-shaped data (the data is an argument);
    the bound must come from the data of each call, not from the first binding."""
    model = capped_model()
    kwargs = dict(chains=2, warmup=150, draws=150, seed=0, progress=False)
    wide = hbm.sample(model, {"y": Y, "cap": 10.0}, **kwargs)
    assert wide.posterior["x"].max() > 3.5  # the data pull x towards 5
    narrow = hbm.sample(model, {"y": Y, "cap": 3.0}, **kwargs)
    x = narrow.posterior["x"]
    assert np.all((x > 0) & (x < 3.0)), x.max()
    # a stale interval (0, 10) would make every step past 3 a divergence
    assert narrow.sample_stats["diverging"].mean() < 0.005
    assert x.mean() > 2.5  # piled up under the cap
    # and the flat views of one binding follow data passed explicitly
    bound = model.bind({"y": Y, "cap": 10.0})
    other = {"y": jnp.asarray(Y), "cap": jnp.asarray(3.0)}
    assert float(bound.constrain(jnp.array([5.0]), other)["x"]) < 3.0
    flat = bound.unconstrain({"x": 2.0}, other)
    assert float(bound.constrain(flat, other)["x"]) == pytest.approx(2.0, rel=1e-12)
