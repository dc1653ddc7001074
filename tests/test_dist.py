"""Tests of hbm.dist: log densities against scipy.stats, sampling by z-tests against the
Monte Carlo standard error, shapes, expand, jit/vmap/grad, standardized(), errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st

from hbm import constraints, dist
from hbm.errors import HbmError, ModelError

Z_MAX = 4.5  # |z| bound: a correct implementation fails with negligible probability
N_DRAWS = 40_000


def _pos(rng, shape, low=0.5, high=3.0):
    return rng.uniform(low, high, size=shape)


def _real(rng, shape):
    return rng.normal(size=shape)


class _HalfT:
    """scipy-like reference for the half Student t (scipy has none)."""

    def __init__(self, df, scale):
        self.df, self.scale = np.asarray(df, float), np.asarray(scale, float)

    def logpdf(self, x):
        return math.log(2) + st.t.logpdf(x, self.df, 0.0, self.scale)

    def cdf(self, x):
        return 2 * st.t.cdf(x, self.df, 0.0, self.scale) - 1

    def ppf(self, q):
        return st.t.ppf(0.5 + 0.5 * q, self.df, 0.0, self.scale)

    def _raw_moment(self, k):
        from scipy.integrate import quad

        df, scale = np.broadcast_arrays(self.df, self.scale)
        out = np.empty(df.shape)
        for idx in np.ndindex(df.shape):
            f = lambda x, d=df[idx], s=scale[idx]: x**k * 2 * st.t.pdf(x, d, 0.0, s)  # noqa: E731
            out[idx] = quad(f, 0, np.inf, epsabs=1e-13, epsrel=1e-12)[0]
        return out

    def mean(self):
        return self._raw_moment(1)

    def var(self):
        return self._raw_moment(2) - self._raw_moment(1) ** 2


class _CategoricalRef:
    def __init__(self, probs):
        self.probs = np.asarray(probs) / np.sum(probs, axis=-1, keepdims=True)

    def logpmf(self, x):
        x = np.asarray(x)
        shape = np.broadcast_shapes(x.shape, self.probs.shape[:-1])
        x = np.broadcast_to(x, shape)
        probs = np.broadcast_to(self.probs, shape + self.probs.shape[-1:])
        out = np.empty(shape)
        for idx in np.ndindex(shape):
            if not 0 <= x[idx] < probs.shape[-1]:
                out[idx] = -np.inf
                continue
            onehot = np.eye(probs.shape[-1])[int(x[idx])]
            out[idx] = st.multinomial.logpmf(onehot, 1, probs[idx])
        return out

    def pmf(self, x):
        return np.exp(self.logpmf(x))

    def mean(self):
        k = np.arange(self.probs.shape[-1])
        return np.sum(self.probs * k, -1)

    def var(self):
        k = np.arange(self.probs.shape[-1])
        return np.sum(self.probs * k**2, -1) - self.mean() ** 2


def _int_values(rng, upper, shape):
    """Uniform integers in {0, ..., upper} (upper broadcast to shape), as floats."""
    upper = np.broadcast_to(upper, shape)
    return np.floor(rng.uniform(size=shape) * (upper + 1))


# ------------------------------------------------------------------ log_prob cases
# name -> (make params(rng), build dist(**params), scipy reference(params), values(rng, params, shape))
def _logit(p):
    return np.log(p) - np.log1p(-p)


LOGPROB_CASES = {
    "Normal": (
        lambda r: dict(loc=_real(r, (3, 1)), scale=_pos(r, (4,))),
        lambda p: dist.Normal(**p),
        lambda p: st.norm(p["loc"], p["scale"]),
        lambda r, p, s: 2 * _real(r, s),
    ),
    "HalfNormal": (
        lambda r: dict(scale=_pos(r, (3, 4))),
        lambda p: dist.HalfNormal(**p),
        lambda p: st.halfnorm(scale=p["scale"]),
        lambda r, p, s: _pos(r, s, 0.01, 5.0),
    ),
    "StudentT": (
        lambda r: dict(df=_pos(r, (3, 1), 0.5, 10.0), loc=_real(r, (4,)), scale=_pos(r, ())),
        lambda p: dist.StudentT(**p),
        lambda p: st.t(p["df"], p["loc"], p["scale"]),
        lambda r, p, s: 3 * _real(r, s),
    ),
    "HalfStudentT": (
        lambda r: dict(df=_pos(r, (3, 1), 2.5, 10.0), scale=_pos(r, (4,))),
        lambda p: dist.HalfStudentT(**p),
        lambda p: _HalfT(p["df"], p["scale"]),
        lambda r, p, s: _pos(r, s, 0.01, 6.0),
    ),
    "Cauchy": (
        lambda r: dict(loc=_real(r, (3, 1)), scale=_pos(r, (4,))),
        lambda p: dist.Cauchy(**p),
        lambda p: st.cauchy(p["loc"], p["scale"]),
        lambda r, p, s: 3 * _real(r, s),
    ),
    "HalfCauchy": (
        lambda r: dict(scale=_pos(r, (3, 4))),
        lambda p: dist.HalfCauchy(**p),
        lambda p: st.halfcauchy(scale=p["scale"]),
        lambda r, p, s: _pos(r, s, 0.01, 8.0),
    ),
    "Laplace": (
        lambda r: dict(loc=_real(r, (3, 1)), scale=_pos(r, (4,))),
        lambda p: dist.Laplace(**p),
        lambda p: st.laplace(p["loc"], p["scale"]),
        lambda r, p, s: 3 * _real(r, s),
    ),
    "Logistic": (
        lambda r: dict(loc=_real(r, (3, 1)), scale=_pos(r, (4,))),
        lambda p: dist.Logistic(**p),
        lambda p: st.logistic(p["loc"], p["scale"]),
        lambda r, p, s: 3 * _real(r, s),
    ),
    "LogNormal": (
        lambda r: dict(loc=_real(r, (3, 1)), scale=_pos(r, (4,), 0.2, 1.5)),
        lambda p: dist.LogNormal(**p),
        lambda p: st.lognorm(s=p["scale"], scale=np.exp(p["loc"])),
        lambda r, p, s: _pos(r, s, 0.05, 6.0),
    ),
    "Exponential": (
        lambda r: dict(rate=_pos(r, (3, 4))),
        lambda p: dist.Exponential(**p),
        lambda p: st.expon(scale=1 / p["rate"]),
        lambda r, p, s: _pos(r, s, 0.01, 5.0),
    ),
    "Gamma": (
        lambda r: dict(concentration=_pos(r, (3, 1), 0.3, 5.0), rate=_pos(r, (4,))),
        lambda p: dist.Gamma(**p),
        lambda p: st.gamma(p["concentration"], scale=1 / p["rate"]),
        lambda r, p, s: _pos(r, s, 0.01, 5.0),
    ),
    "InverseGamma": (
        lambda r: dict(concentration=_pos(r, (3, 1), 2.5, 6.0), scale=_pos(r, (4,))),
        lambda p: dist.InverseGamma(**p),
        lambda p: st.invgamma(p["concentration"], scale=p["scale"]),
        lambda r, p, s: _pos(r, s, 0.05, 5.0),
    ),
    "Beta": (
        lambda r: dict(concentration1=_pos(r, (3, 1), 0.3, 4.0),
                       concentration0=_pos(r, (4,), 0.3, 4.0)),
        lambda p: dist.Beta(**p),
        lambda p: st.beta(p["concentration1"], p["concentration0"]),
        lambda r, p, s: r.uniform(0.01, 0.99, size=s),
    ),
    "Uniform": (
        lambda r: dict(low=-_pos(r, (3, 1)), high=_pos(r, (4,))),
        lambda p: dist.Uniform(**p),
        lambda p: st.uniform(p["low"], p["high"] - p["low"]),
        lambda r, p, s: p["low"] + (p["high"] - p["low"]) * r.uniform(0.01, 0.99, size=s),
    ),
    "Bernoulli-probs": (
        lambda r: dict(probs=r.uniform(0.05, 0.95, (3, 4))),
        lambda p: dist.Bernoulli(probs=p["probs"]),
        lambda p: st.bernoulli(p["probs"]),
        lambda r, p, s: _int_values(r, 1, s),
    ),
    "Bernoulli-logits": (
        lambda r: dict(logits=3 * _real(r, (3, 4))),
        lambda p: dist.Bernoulli(logits=p["logits"]),
        lambda p: st.bernoulli(sp.expit(p["logits"])),
        lambda r, p, s: _int_values(r, 1, s),
    ),
    "Binomial-probs": (
        lambda r: dict(total_count=r.integers(0, 30, (3, 1)).astype(float),
                       probs=r.uniform(0.05, 0.95, (4,))),
        lambda p: dist.Binomial(p["total_count"], probs=p["probs"]),
        lambda p: st.binom(p["total_count"], p["probs"]),
        lambda r, p, s: _int_values(r, p["total_count"], s),
    ),
    "Binomial-logits": (
        lambda r: dict(total_count=r.integers(0, 30, (3, 1)).astype(float),
                       logits=3 * _real(r, (4,))),
        lambda p: dist.Binomial(p["total_count"], logits=p["logits"]),
        lambda p: st.binom(p["total_count"], sp.expit(p["logits"])),
        lambda r, p, s: _int_values(r, p["total_count"], s),
    ),
    "Poisson-rate": (
        lambda r: dict(rate=_pos(r, (3, 4), 0.1, 20.0)),
        lambda p: dist.Poisson(rate=p["rate"]),
        lambda p: st.poisson(p["rate"]),
        lambda r, p, s: _int_values(r, 30, s),
    ),
    "Poisson-log_rate": (
        lambda r: dict(log_rate=_real(r, (3, 4))),
        lambda p: dist.Poisson(log_rate=p["log_rate"]),
        lambda p: st.poisson(np.exp(p["log_rate"])),
        lambda r, p, s: _int_values(r, 10, s),
    ),
    "NegativeBinomial": (
        lambda r: dict(mean=_pos(r, (3, 1), 0.2, 30.0), concentration=_pos(r, (4,), 0.3, 50.0)),
        lambda p: dist.NegativeBinomial(**p),
        lambda p: st.nbinom(p["concentration"],
                            p["concentration"] / (p["mean"] + p["concentration"])),
        lambda r, p, s: _int_values(r, 60, s),
    ),
    "BetaBinomial": (
        lambda r: dict(total_count=r.integers(0, 30, (3, 1)).astype(float),
                       concentration1=_pos(r, (4,), 0.3, 5.0),
                       concentration0=_pos(r, (3, 4), 0.3, 5.0)),
        lambda p: dist.BetaBinomial(**p),
        lambda p: st.betabinom(p["total_count"], p["concentration1"], p["concentration0"]),
        lambda r, p, s: _int_values(r, p["total_count"], s),
    ),
    "Categorical-probs": (
        lambda r: dict(probs=r.dirichlet(np.ones(5), size=(3,))),
        lambda p: dist.Categorical(probs=p["probs"]),
        lambda p: _CategoricalRef(p["probs"]),
        lambda r, p, s: _int_values(r, 4, s),
    ),
    "Categorical-logits": (
        lambda r: dict(logits=2 * _real(r, (3, 5))),
        lambda p: dist.Categorical(logits=p["logits"]),
        lambda p: _CategoricalRef(sp.softmax(p["logits"], axis=-1)),
        lambda r, p, s: _int_values(r, 4, s),
    ),
}

DISCRETE = {n for n in LOGPROB_CASES if n.split("-")[0] in
            {"Bernoulli", "Binomial", "Poisson", "NegativeBinomial", "BetaBinomial",
             "Categorical"}}


def _setup(name, seed=0):
    make_params, build, reference, values = LOGPROB_CASES[name]
    rng = np.random.default_rng(seed)
    params = make_params(rng)
    d = build({k: jnp.asarray(v) for k, v in params.items()})
    x = values(rng, params, (2,) + d.batch_shape)  # an extra leading axis: broadcasting
    return params, d, reference(params), x


@pytest.mark.parametrize("name", sorted(LOGPROB_CASES))
def test_log_prob_matches_scipy(name):
    params, d, ref, x = _setup(name)
    ours = np.asarray(d.log_prob(jnp.asarray(x)))
    theirs = ref.logpmf(x) if name in DISCRETE else ref.logpdf(x)
    assert ours.shape == np.broadcast_shapes(x.shape, d.batch_shape)
    assert np.all(np.isfinite(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", sorted(LOGPROB_CASES))
def test_mean_and_variance_match_scipy(name):
    params, d, ref, _ = _setup(name, seed=1)
    mean, var = np.broadcast_to(ref.mean(), d.batch_shape), np.broadcast_to(ref.var(), d.batch_shape)
    assert d.mean.shape == d.batch_shape and d.variance.shape == d.batch_shape
    np.testing.assert_allclose(d.mean, mean, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(d.variance, var, rtol=1e-7, atol=1e-12)


def test_undefined_moments():
    df = jnp.array([0.8, 1.5, 3.0])
    np.testing.assert_equal(np.isnan(dist.StudentT(df).mean), [True, False, False])
    np.testing.assert_array_equal(dist.StudentT(df).variance[:2], [np.nan, np.inf])
    np.testing.assert_array_equal(dist.HalfStudentT(df).mean[:1], [np.inf])
    np.testing.assert_array_equal(dist.InverseGamma(jnp.array([0.5, 1.5])).variance, np.inf)
    assert np.isnan(dist.Cauchy(0.0, 1.0).mean) and np.isinf(dist.HalfCauchy(1.0).mean)


@pytest.mark.parametrize(
    "d, value",
    [
        (dist.HalfNormal(1.0), -0.5),
        (dist.HalfStudentT(3.0, 1.0), -0.5),
        (dist.HalfCauchy(1.0), -0.5),
        (dist.LogNormal(0.0, 1.0), -0.5),
        (dist.Exponential(1.0), -0.5),
        (dist.Gamma(2.0, 1.0), -0.5),
        (dist.InverseGamma(2.0, 1.0), -0.5),
        (dist.Beta(2.0, 2.0), 1.5),
        (dist.Uniform(0.0, 1.0), 1.5),
        (dist.Bernoulli(probs=0.3), 2.0),
        (dist.Bernoulli(logits=0.3), 0.5),
        (dist.Binomial(5, probs=0.3), 6.0),
        (dist.Binomial(5, logits=0.3), -1.0),
        (dist.Poisson(2.0), 2.5),
        (dist.NegativeBinomial(2.0, 3.0), -1.0),
        (dist.BetaBinomial(4, 2.0, 3.0), 5.0),
        (dist.Categorical(probs=jnp.array([0.5, 0.5])), 2.0),
        (dist.Dirichlet(jnp.ones(3)), jnp.array([0.5, 0.6, -0.1])),
    ],
)
def test_log_prob_outside_support_is_minus_inf(d, value):
    assert d.log_prob(value) == -jnp.inf


def test_integer_and_float_values_agree():
    for d in (dist.Poisson(3.0), dist.Binomial(7, logits=0.2), dist.NegativeBinomial(3.0, 2.0),
              dist.BetaBinomial(7, 2.0, 3.0), dist.Bernoulli(probs=0.2),
              dist.Categorical(logits=jnp.array([0.1, 0.2, 0.3]))):
        k = jnp.array([0, 1, 2]) if not isinstance(d, dist.Bernoulli) else jnp.array([0, 1])
        np.testing.assert_allclose(d.log_prob(k), d.log_prob(k.astype(float)), rtol=1e-14)


# ---------------------------------------------------- jit, vmap, gradients, expand
_INTEGER_PARAMS = {"total_count"}


@pytest.mark.parametrize("name", sorted(LOGPROB_CASES))
def test_jit_vmap_and_gradient(name):
    params, d, _, x = _setup(name, seed=2)
    build = LOGPROB_CASES[name][1]
    params = {k: jnp.asarray(v) for k, v in params.items()}
    x = jnp.asarray(x)

    def total(p):
        return jnp.sum(build(p).log_prob(x))

    eager = d.log_prob(x)

    @jax.jit
    def total_grad_and_vmapped(p):
        # vmap over two stacked copies of the parameters (and of the value)
        stacked = {k: jnp.stack([v, v]) for k, v in p.items()}
        vmapped = jax.vmap(lambda q, v: build(q).log_prob(v))(stacked, jnp.stack([x, x]))
        return jax.value_and_grad(total)(p), vmapped

    (value, grads), vmapped = total_grad_and_vmapped(params)
    np.testing.assert_allclose(vmapped, jnp.stack([eager, eager]), rtol=1e-12)
    np.testing.assert_allclose(value, jnp.sum(eager), rtol=1e-12)
    rng = np.random.default_rng(3)
    h = 1e-6
    for k, v in params.items():
        if k in _INTEGER_PARAMS:
            continue
        direction = jnp.asarray(rng.uniform(-1, 1, v.shape))
        if name.startswith("Categorical-probs"):  # stay on the simplex
            direction = direction - jnp.mean(direction, -1, keepdims=True)
        up = total_grad_and_vmapped({**params, k: v + h * direction})[0][0]
        down = total_grad_and_vmapped({**params, k: v - h * direction})[0][0]
        numeric = (up - down) / (2 * h)
        assert np.all(np.isfinite(grads[k]))
        np.testing.assert_allclose(jnp.sum(grads[k] * direction), numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(LOGPROB_CASES))
def test_params_rebuild_and_expand(name):
    _, d, _, x = _setup(name, seed=4)
    rebuilt = type(d)(**d.params())
    np.testing.assert_array_equal(rebuilt.log_prob(x), d.log_prob(x))
    big = d.expand((5,) + d.batch_shape)
    assert big.batch_shape == (5,) + d.batch_shape and big.event_shape == d.event_shape
    assert {k for k, v in big.params().items() if v is None} == {
        k for k, v in d.params().items() if v is None}
    np.testing.assert_allclose(big.log_prob(x[:1]), jnp.broadcast_to(d.log_prob(x[:1]),
                                                                      (5,) + d.batch_shape))
    draws = jax.eval_shape(lambda k: big.sample(k, (2,)), jax.random.key(0))
    assert draws.shape == (2, 5) + d.shape
    with pytest.raises(ModelError):
        d.expand((7,))


# -------------------------------------------------------------------- sampling
def _moment_z(draws, mean, var):
    """z statistics of the sample mean and the sample variance (elementwise)."""
    draws = np.asarray(draws, dtype=float)
    n = draws.shape[0]
    m = draws.mean(0)
    z_mean = (m - mean) / np.sqrt(var / n)
    centered = draws - m
    s2 = np.sum(centered**2, 0) / (n - 1)
    m4 = np.mean(centered**4, 0)
    z_var = (s2 - var) / np.sqrt((m4 - s2**2) / n)
    return z_mean, z_var


A = jnp.array
# name -> (distribution, scipy-like reference or None); batch shape (2,) throughout
SAMPLING_CASES = {
    "Normal": (dist.Normal(A([0.0, 2.0]), A([1.0, 0.5])), st.norm([0.0, 2.0], [1.0, 0.5])),
    "HalfNormal": (dist.HalfNormal(A([1.0, 2.0])), st.halfnorm(scale=[1.0, 2.0])),
    "StudentT": (dist.StudentT(A([12.0, 20.0]), A([0.0, 1.0]), A([1.0, 2.0])),
                 st.t([12.0, 20.0], [0.0, 1.0], [1.0, 2.0])),
    "HalfStudentT": (dist.HalfStudentT(A([12.0, 20.0]), A([1.0, 2.0])),
                     _HalfT([12.0, 20.0], [1.0, 2.0])),
    "Cauchy": (dist.Cauchy(A([0.0, 1.0]), A([1.0, 2.0])), st.cauchy([0.0, 1.0], [1.0, 2.0])),
    "HalfCauchy": (dist.HalfCauchy(A([1.0, 2.0])), st.halfcauchy(scale=[1.0, 2.0])),
    "Laplace": (dist.Laplace(A([0.0, 1.0]), A([1.0, 2.0])), st.laplace([0.0, 1.0], [1.0, 2.0])),
    "Logistic": (dist.Logistic(A([0.0, 1.0]), A([1.0, 2.0])),
                 st.logistic([0.0, 1.0], [1.0, 2.0])),
    "LogNormal": (dist.LogNormal(A([0.0, 1.0]), A([0.3, 0.2])),
                  st.lognorm(s=[0.3, 0.2], scale=np.exp([0.0, 1.0]))),
    "Exponential": (dist.Exponential(A([1.0, 3.0])), st.expon(scale=[1.0, 1 / 3.0])),
    "Gamma": (dist.Gamma(A([3.0, 8.0]), A([2.0, 1.0])), st.gamma([3.0, 8.0], scale=[0.5, 1.0])),
    "InverseGamma": (dist.InverseGamma(A([12.0, 15.0]), A([2.0, 5.0])),
                     st.invgamma([12.0, 15.0], scale=[2.0, 5.0])),
    "Beta": (dist.Beta(A([2.0, 0.5]), A([3.0, 0.8])), st.beta([2.0, 0.5], [3.0, 0.8])),
    "Uniform": (dist.Uniform(A([0.0, -1.0]), A([1.0, 3.0])), st.uniform([0.0, -1.0], [1.0, 4.0])),
    "Bernoulli-probs": (dist.Bernoulli(probs=A([0.3, 0.8])), st.bernoulli([0.3, 0.8])),
    "Bernoulli-logits": (dist.Bernoulli(logits=A([-1.0, 2.0])),
                         st.bernoulli(sp.expit([-1.0, 2.0]))),
    "Binomial-probs": (dist.Binomial(A([10.0, 25.0]), probs=A([0.3, 0.6])),
                       st.binom([10, 25], [0.3, 0.6])),
    "Binomial-logits": (dist.Binomial(10, logits=A([-1.0, 0.5])),
                        st.binom(10, sp.expit([-1.0, 0.5]))),
    "Poisson-rate": (dist.Poisson(rate=A([3.0, 20.0])), st.poisson([3.0, 20.0])),
    "Poisson-log_rate": (dist.Poisson(log_rate=A([0.0, 2.5])), st.poisson(np.exp([0.0, 2.5]))),
    "NegativeBinomial": (dist.NegativeBinomial(A([3.0, 10.0]), A([2.0, 5.0])),
                         st.nbinom([2.0, 5.0], [2.0 / 5.0, 5.0 / 15.0])),
    "BetaBinomial": (dist.BetaBinomial(10, A([2.0, 0.5]), A([3.0, 0.5])),
                     st.betabinom(10, [2.0, 0.5], [3.0, 0.5])),
    "Categorical-probs": (dist.Categorical(probs=A([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.25, 0.0]])),
                          _CategoricalRef([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.25, 0.0]])),
    "Categorical-logits": (dist.Categorical(logits=A([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])),
                           _CategoricalRef(sp.softmax([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]], -1))),
    "Dirichlet": (dist.Dirichlet(A([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0]])), None),
    "MultivariateNormal": (
        dist.MultivariateNormal(A([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]]),
                                A([[[1.0, 0, 0], [0.5, 2.0, 0], [-0.3, 0.2, 0.7]]])),
        None,
    ),
}
NO_MOMENTS = {"Cauchy", "HalfCauchy"}

_DRAWS: dict = {}


def _draws(name):
    """N_DRAWS draws of a sampling case, made once per session under jit."""
    if name not in _DRAWS:
        d = SAMPLING_CASES[name][0]
        seed = sorted(SAMPLING_CASES).index(name)
        _DRAWS[name] = np.asarray(jax.jit(lambda k: d.sample(k, (N_DRAWS,)))(jax.random.key(seed)))
    return _DRAWS[name]


@pytest.mark.parametrize("name", sorted(set(SAMPLING_CASES) - NO_MOMENTS))
def test_sample_moments(name):
    d = SAMPLING_CASES[name][0]
    draws = _draws(name)
    mean, var = np.asarray(d.mean), np.asarray(d.variance)
    z_mean, z_var = _moment_z(draws, mean, var)
    assert np.max(np.abs(z_mean)) < Z_MAX, z_mean
    assert np.max(np.abs(z_var)) < Z_MAX, z_var
    # power: the same test rejects draws whose standard deviation is 5% too large
    inflated = mean + 1.05 * (draws - mean)
    _, z_bad = _moment_z(inflated, mean, var)
    positive_var = var > 0
    assert np.min(np.abs(z_bad[positive_var])) > Z_MAX, z_bad


@pytest.mark.parametrize("name", sorted(n for n, (_, ref) in SAMPLING_CASES.items()
                                        if ref is not None and n not in DISCRETE))
def test_sample_cdf_continuous(name):
    """The empirical CDF at the 10/30/50/70/90% quantiles, by binomial z-tests."""
    ref = SAMPLING_CASES[name][1]
    draws = _draws(name)
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        x = ref.ppf(q)
        z = (np.mean(draws <= x, axis=0) - q) / np.sqrt(q * (1 - q) / N_DRAWS)
        assert np.max(np.abs(z)) < Z_MAX, (q, z)


@pytest.mark.parametrize("name", sorted(n for n in SAMPLING_CASES if n in DISCRETE))
def test_sample_pmf_discrete(name):
    """The empirical frequency of every value with probability above 1%, by z-tests."""
    ref = SAMPLING_CASES[name][1]
    draws = _draws(name)
    assert np.issubdtype(draws.dtype, np.integer)
    checked = 0
    for k in range(0, 60):
        pmf = np.asarray(ref.pmf(np.full(draws.shape[1:], k)))
        use = pmf > 0.01
        if not np.any(use):
            continue
        freq = np.mean(draws == k, axis=0)
        z = (freq[use] - pmf[use]) / np.sqrt(pmf[use] * (1 - pmf[use]) / N_DRAWS)
        assert np.max(np.abs(z)) < Z_MAX, (k, z)
        checked += 1
    assert checked >= 2


def test_mvn_sample_covariance():
    d = SAMPLING_CASES["MultivariateNormal"][0]
    draws = _draws("MultivariateNormal")
    cov = np.asarray(d.covariance_matrix)
    centered = draws - np.asarray(d.mean)
    products = centered[..., :, None] * centered[..., None, :]
    z = (products.mean(0) - cov) / (products.std(0) / np.sqrt(N_DRAWS))
    assert np.max(np.abs(z)) < Z_MAX, z


@pytest.mark.parametrize("name", sorted(SAMPLING_CASES))
def test_sample_shapes_and_support(name):
    """Shapes by tracing only (jax.eval_shape compiles nothing); support on real draws."""
    d = SAMPLING_CASES[name][0]
    key = jax.random.key(1)
    assert jax.eval_shape(lambda k: d.sample(k, (3, 2)), key).shape == (3, 2) + d.shape
    assert jax.eval_shape(lambda k: d.sample(k), key).shape == d.shape
    keys = jax.random.split(key, 4)
    vmapped = jax.eval_shape(jax.vmap(lambda k: d.sample(k, (2,))), keys)
    assert vmapped.shape == (4, 2) + d.shape
    draws = _draws(name)
    assert draws.shape == (N_DRAWS,) + d.shape
    assert np.all(np.isfinite(draws))
    assert bool(jnp.all(d.support.check(draws)))
    assert bool(jnp.all(jnp.isfinite(d.log_prob(draws[:200]))))


def test_sampling_keeps_float32():
    x = dist.HalfNormal(jnp.asarray(2.0, jnp.float32)).sample(jax.random.key(0), (100,))
    assert x.dtype == jnp.float32 and bool(jnp.all(x > 0))


# ------------------------------------------------------------ standardized()
STANDARDIZED = {
    "Normal": dist.Normal(A([0.0, 1.0]), A([[1.0], [2.0], [0.5]])),
    "StudentT": dist.StudentT(A([3.0, 5.0]), A([[0.0], [1.0], [2.0]]), 2.0),
    "Cauchy": dist.Cauchy(A([0.0, 1.0]), A([[1.0], [2.0], [0.5]])),
    "Laplace": dist.Laplace(1.0, A([[1.0, 2.0], [0.5, 3.0], [1.0, 1.0]])),
    "Logistic": dist.Logistic(A([[0.0, 1.0]]), A([[1.0], [2.0], [0.5]])),
    "LogNormal": dist.LogNormal(A([0.0, 1.0]), A([[0.3], [0.5], [1.0]])),
}


@pytest.mark.parametrize("name", sorted(STANDARDIZED))
def test_standardized_round_trip(name):
    d = STANDARDIZED[name]
    s = d.standardized()
    assert isinstance(s, dist.Standardized)
    assert type(s.base) is (dist.Normal if name == "LogNormal" else type(d))
    assert s.base.batch_shape == d.batch_shape == (3, 2)
    assert s.link == ("exp" if name == "LogNormal" else "identity")
    assert jax.eval_shape(lambda k: s.base.sample(k, (4,)), jax.random.key(0)).shape == (
        4,) + d.batch_shape
    z = jnp.asarray(np.random.default_rng(9).normal(size=(4,) + d.batch_shape))
    u = s.loc + s.scale * z
    x = jnp.exp(u) if s.link == "exp" else u
    assert x.shape == (4,) + d.batch_shape
    # change of variables: the law of link(loc + scale z) is d, exactly
    log_jacobian = jnp.log(s.scale) + (u if s.link == "exp" else 0.0)
    np.testing.assert_allclose(d.log_prob(x), s.base.log_prob(z) - log_jacobian, rtol=1e-10)
    # the standard member has loc 0 and scale 1
    np.testing.assert_allclose(
        s.base.log_prob(z), type(s.base)(**{**s.base.params()}).log_prob(z), rtol=1e-14)
    if name != "LogNormal":
        np.testing.assert_allclose(
            s.base.log_prob(z),
            type(d)(**{**d.params(), "loc": 0.0, "scale": 1.0}).log_prob(z), rtol=1e-12)


def test_standardized_round_trip_sampling():
    """link(loc + scale * z) with z from the base matches the moments of d."""
    d = dist.LogNormal(A([0.0, 1.0]), A([0.3, 0.2]))
    s = d.standardized()
    z = s.base.sample(jax.random.key(7), (N_DRAWS,))
    z_mean, z_var = _moment_z(np.exp(s.loc + s.scale * z), np.asarray(d.mean), np.asarray(d.variance))
    assert np.max(np.abs(z_mean)) < Z_MAX and np.max(np.abs(z_var)) < Z_MAX


@pytest.mark.parametrize("d", [dist.HalfNormal(1.0), dist.Gamma(2.0, 1.0), dist.Beta(1.0, 2.0),
                               dist.Poisson(1.0), dist.Dirichlet(jnp.ones(2)),
                               dist.LKJCholesky(2, 1.0), dist.Uniform(0.0, 1.0)])
def test_standardized_none_for_other_families(d):
    assert d.standardized() is None


# ------------------------------------------------------- alternatives and errors
def test_probs_and_logits_agree():
    p = jnp.array([0.1, 0.5, 0.93])
    lg = jnp.log(p) - jnp.log1p(-p)
    k = jnp.array([0.0, 1.0, 1.0])
    pairs = [
        (dist.Bernoulli(probs=p), dist.Bernoulli(logits=lg), k),
        (dist.Binomial(12, probs=p), dist.Binomial(12, logits=lg), jnp.array([0.0, 7.0, 12.0])),
        (dist.Poisson(rate=p * 10), dist.Poisson(log_rate=jnp.log(p * 10)), jnp.array([0., 3., 9.])),
        (dist.Categorical(probs=p / p.sum()), dist.Categorical(logits=jnp.log(p) + 4.0),
         jnp.array([0.0, 1.0, 2.0])),
    ]
    for a, b, value in pairs:
        np.testing.assert_allclose(a.log_prob(value), b.log_prob(value), rtol=1e-12)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
        np.testing.assert_allclose(a.variance, b.variance, rtol=1e-12)
    assert dist.Bernoulli(logits=lg).params()["probs"] is None
    assert dist.Poisson(rate=1.0).params()["log_rate"] is None


@pytest.mark.parametrize(
    "make, family",
    [
        (lambda: dist.Bernoulli(), "Bernoulli"),
        (lambda: dist.Bernoulli(probs=0.5, logits=0.0), "Bernoulli"),
        (lambda: dist.Binomial(3), "Binomial"),
        (lambda: dist.Binomial(3, probs=0.5, logits=0.0), "Binomial"),
        (lambda: dist.Poisson(), "Poisson"),
        (lambda: dist.Poisson(rate=1.0, log_rate=0.0), "Poisson"),
        (lambda: dist.Categorical(), "Categorical"),
        (lambda: dist.Categorical(probs=jnp.ones(2) / 2, logits=jnp.zeros(2)), "Categorical"),
        (lambda: dist.MultivariateNormal(jnp.zeros(2)), "MultivariateNormal"),
        (lambda: dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2), jnp.eye(2)),
         "MultivariateNormal"),
        (lambda: dist.MultivariateNormal(jnp.zeros(3), jnp.eye(2)), "MultivariateNormal"),
        (lambda: dist.LKJCholesky(1, 1.0), "LKJCholesky"),
        (lambda: dist.LKJCholesky(2.5, 1.0), "LKJCholesky"),
    ],
)
def test_bad_arguments_raise_model_error(make, family):
    with pytest.raises(ModelError, match=family) as info:
        make()
    assert isinstance(info.value, HbmError)


def test_supports():
    assert dist.Binomial(5, probs=0.5).support == constraints.integer_interval(0, 5)
    assert dist.Bernoulli(probs=0.5).support == constraints.boolean
    assert dist.Poisson(1.0).support == constraints.nonnegative_integer
    assert dist.NegativeBinomial(1.0, 1.0).support == constraints.nonnegative_integer
    assert dist.Categorical(probs=jnp.ones(3) / 3).support == constraints.integer_interval(0, 2)
    assert dist.Uniform(-1.0, 2.0).support == constraints.interval(-1.0, 2.0)
    assert dist.Beta(1.0, 1.0).support == constraints.unit_interval
    assert dist.Dirichlet(jnp.ones(3)).support == constraints.simplex
    assert dist.LKJCholesky(3, 1.0).support == constraints.corr_cholesky
    assert dist.HalfCauchy(1.0).support == constraints.positive
    assert all(d.is_discrete for d in (dist.Poisson(1.0), dist.Bernoulli(logits=0.0)))
    assert not dist.Gamma(1.0, 1.0).is_discrete


def test_beta_positional_and_keyword():
    a = dist.Beta(2.0, 3.0)
    b = dist.Beta(concentration1=2.0, concentration0=3.0)
    np.testing.assert_allclose(a.log_prob(0.3), b.log_prob(0.3), rtol=1e-15)
    np.testing.assert_allclose(a.log_prob(0.3), st.beta(2.0, 3.0).logpdf(0.3), rtol=1e-10)


# ------------------------------------------------------------ multivariate
def test_mvn_log_prob_matches_scipy():
    rng = np.random.default_rng(5)
    k = 3
    loc = rng.normal(size=(2, k))
    raw = rng.normal(size=(4, 1, k, k))
    tril = np.tril(raw, -1) + np.eye(k) * rng.uniform(0.5, 2.0, size=(4, 1, 1, k))
    d = dist.MultivariateNormal(loc, scale_tril=tril)
    assert d.batch_shape == (4, 2) and d.event_shape == (k,)
    x = rng.normal(size=(5, 4, 2, k)) * 2
    ours = np.asarray(d.log_prob(x))
    assert ours.shape == (5, 4, 2)
    for idx in np.ndindex(ours.shape):
        s, b, c = idx
        cov = tril[b, 0] @ tril[b, 0].T
        want = st.multivariate_normal(loc[c], cov).logpdf(x[idx])
        np.testing.assert_allclose(ours[idx], want, rtol=1e-6)
    by_cov = dist.MultivariateNormal(loc, covariance_matrix=tril @ np.swapaxes(tril, -1, -2))
    np.testing.assert_allclose(by_cov.log_prob(x), ours, rtol=1e-10)
    np.testing.assert_allclose(d.variance, np.broadcast_to(
        np.diagonal(tril @ np.swapaxes(tril, -1, -2), axis1=-2, axis2=-1), (4, 2, k)), rtol=1e-12)
    big = d.expand((3, 4, 2))
    assert big.batch_shape == (3, 4, 2)
    np.testing.assert_allclose(big.log_prob(x[0]), np.broadcast_to(ours[0], (3, 4, 2)))
    # jit, vmap over the location, gradient
    f = jax.jit(lambda m, t: jnp.sum(dist.MultivariateNormal(m, t).log_prob(x)))
    g = jax.grad(f, argnums=(0, 1))(jnp.asarray(loc), jnp.asarray(tril))
    assert all(np.all(np.isfinite(v)) for v in g)
    lp = jax.vmap(lambda m: dist.MultivariateNormal(m, tril[:, 0]).log_prob(x[0, :, 0]))(
        jnp.asarray(loc))
    assert lp.shape == (2, 4)


def test_dirichlet_log_prob_matches_scipy():
    rng = np.random.default_rng(6)
    alpha = rng.uniform(0.3, 4.0, size=(3, 4))
    d = dist.Dirichlet(alpha)
    assert d.batch_shape == (3,) and d.event_shape == (4,)
    x = rng.dirichlet(np.ones(4), size=(2, 3))
    ours = np.asarray(d.log_prob(x))
    for idx in np.ndindex(ours.shape):
        np.testing.assert_allclose(ours[idx], st.dirichlet(alpha[idx[1]]).logpdf(x[idx]),
                                   rtol=1e-6)
    np.testing.assert_allclose(d.mean, alpha / alpha.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(d.variance, [st.dirichlet(a).var() for a in alpha], rtol=1e-10)
    g = jax.grad(lambda a: jnp.sum(dist.Dirichlet(a).log_prob(x)))(jnp.asarray(alpha))
    assert np.all(np.isfinite(g))
    assert dist.Dirichlet(alpha).expand((2, 3)).batch_shape == (2, 3)


def _corr_cholesky_2(r):
    r = np.asarray(r)
    L = np.zeros(r.shape + (2, 2))
    L[..., 0, 0] = 1.0
    L[..., 1, 0] = r
    L[..., 1, 1] = np.sqrt(1 - r**2)
    return L


def test_lkj_two_dimensions_is_the_known_law_of_r():
    """K = 2: L = [[1, 0], [r, sqrt(1-r^2)]] and the density of r is
    (1 - r^2)^(eta - 1) / (2^(2 eta - 1) B(eta, eta)), i.e. (r + 1)/2 ~ Beta(eta, eta).
    The only free coordinate of L is r itself, so the Jacobian is 1."""
    rng = np.random.default_rng(8)
    eta = np.array([0.5, 1.0, 2.7])
    r = rng.uniform(-0.99, 0.99, size=(5, 3))
    ours = dist.LKJCholesky(2, eta).log_prob(_corr_cholesky_2(r))
    want = st.beta(eta, eta).logpdf((r + 1) / 2) - math.log(2)
    np.testing.assert_allclose(ours, want, rtol=1e-10)


def _lkj_log_normalizer_paper(K, eta):
    """Lewandowski, Kurowicka & Joe (2009), eq. 16 (written independently here)."""
    total = 0.0
    for k in range(1, K):
        b = eta + (K - k - 1) / 2
        total += (K - k) * ((2 * eta - 2 + K - k) * math.log(2) + sp.betaln(b, b))
    return total


@pytest.mark.parametrize("K", [2, 3, 4, 6])
@pytest.mark.parametrize("eta", [0.5, 1.0, 2.5])
def test_lkj_normalizer_matches_paper(K, eta):
    ours = float(dist.LKJCholesky(K, eta).log_normalizer())
    assert ours == pytest.approx(_lkj_log_normalizer_paper(K, eta), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("eta", [1.5, 3.0])
def test_lkj_three_dimensions_integrates_to_one(eta):
    """Integrate exp(log_prob) over the free entries (L21, L31, L32) of a 3x3 correlation
    Cholesky factor by Gauss-Legendre quadrature: L21 = sin(a), (L31, L32) = sin(b) (cos c,
    sin c), with Jacobian cos(a) * sin(b) cos(b)."""
    nodes, weights = np.polynomial.legendre.leggauss(60)

    def rescale(lo, hi):
        return lo + (hi - lo) * (nodes + 1) / 2, weights * (hi - lo) / 2

    a, wa = rescale(-np.pi / 2, np.pi / 2)
    b, wb = rescale(0.0, np.pi / 2)
    c, wc = rescale(0.0, 2 * np.pi)
    A_, B_, C_ = np.meshgrid(a, b, c, indexing="ij")
    L = np.zeros(A_.shape + (3, 3))
    L[..., 0, 0] = 1.0
    L[..., 1, 0], L[..., 1, 1] = np.sin(A_), np.cos(A_)
    L[..., 2, 0], L[..., 2, 1] = np.sin(B_) * np.cos(C_), np.sin(B_) * np.sin(C_)
    L[..., 2, 2] = np.cos(B_)
    density = np.exp(np.asarray(dist.LKJCholesky(3, eta).log_prob(L)))
    jac = np.cos(A_) * np.sin(B_) * np.cos(B_)
    w = wa[:, None, None] * wb[None, :, None] * wc[None, None, :]
    assert np.sum(density * jac * w) == pytest.approx(1.0, rel=1e-8)


def test_lkj_log_prob_shapes_jit_grad_expand():
    d = dist.LKJCholesky(4, jnp.array([0.7, 2.0]))
    assert d.batch_shape == (2,) and d.event_shape == (4, 4)
    L = jax.jit(lambda k: d.sample(k, (3,)))(jax.random.key(0))
    assert L.shape == (3, 2, 4, 4)
    assert bool(jnp.all(constraints.corr_cholesky.check(L)))
    lp = d.log_prob(L)
    assert lp.shape == (3, 2) and np.all(np.isfinite(lp))
    f = jax.jit(lambda eta: jnp.sum(dist.LKJCholesky(4, eta).log_prob(L)))
    np.testing.assert_allclose(f(d.concentration), jnp.sum(lp), rtol=1e-12)
    eta = jnp.array([0.7, 2.0])
    h = 1e-6
    numeric = (f(eta + h) - f(eta - h)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(jax.grad(f)(eta)), numeric, rtol=1e-6)
    big = d.expand((5, 2))
    assert big.batch_shape == (5, 2) and big.params()["dimension"] == 4
    assert jax.eval_shape(big.sample, jax.random.key(1)).shape == (5, 2, 4, 4)
    keys = jax.random.split(jax.random.key(3), 2)
    vmapped = jax.eval_shape(jax.vmap(lambda k, e: dist.LKJCholesky(3, e).sample(k)), keys, eta)
    assert vmapped.shape == (2, 3, 3)


def test_lkj_sample_marginals():
    """Each correlation r_ij of an LKJ(eta) K x K matrix has (r + 1)/2 ~
    Beta(eta - 1 + K/2, eta - 1 + K/2): mean 0, variance 1 / (2 eta + K - 1)."""
    K, eta = 4, np.array([0.7, 3.0])
    d = dist.LKJCholesky(K, eta)
    L = np.asarray(jax.jit(lambda k: d.sample(k, (N_DRAWS // 2,)))(jax.random.key(11)))
    R = L @ np.swapaxes(L, -1, -2)
    rows, cols = np.tril_indices(K, -1)
    r = R[..., rows, cols]  # (draw, eta, pair)
    var = (1 / (2 * eta + K - 1))[:, None]
    z_mean, z_var = _moment_z(r, 0.0, var)
    assert np.max(np.abs(z_mean)) < Z_MAX and np.max(np.abs(z_var)) < Z_MAX, (z_mean, z_var)
    marginal = st.beta(eta - 1 + K / 2, eta - 1 + K / 2)
    n = r.shape[0]
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        x = (2 * marginal.ppf(q) - 1)[:, None]
        z = (np.mean(r <= x, axis=0) - q) / np.sqrt(q * (1 - q) / n)
        assert np.max(np.abs(z)) < Z_MAX, (q, z)
    np.testing.assert_allclose(np.diagonal(R, axis1=-2, axis2=-1), 1.0, rtol=1e-12)
    assert bool(jnp.all(d.support.check(L)))
