"""hbm.formula grammar: each construct gives the right design, parameters and density.

The linear predictor of every formula is checked against a hand-built one: the model's
pointwise log likelihood at a parameter point equals ``scipy.stats.norm.logpdf`` of the
response around ``X b + sum r_g[code] * z`` computed here with numpy.
"""

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import hbm
from hbm import dist
from hbm.formulas.terms import parse_formula


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(1)
    n = 48
    return pd.DataFrame(dict(
        y=rng.normal(size=n), x=rng.normal(size=n), z=rng.uniform(1, 3, n),
        h=rng.choice(list("abc"), n), g1=np.repeat(list("PQ"), n // 2),
        g2=np.tile(list("uvwx"), n // 4), g=np.repeat(list("ABCDEFGH"), n // 8)))


def _codes(values):
    return pd.factorize(pd.Series(values), sort=True)[0]


def _check_mean(model, data, df, mean_fn, seed=0):
    """log likelihood at a prior draw == Normal(mean_fn(params), sigma) (no compilation:
    the prior DAG is walked eagerly)."""
    key = jax.random.PRNGKey(seed)
    params = {}
    for name, node in model.prior.items():
        key, sub = jax.random.split(key)
        d = node if isinstance(node, dist.Distribution) else node(params, data)
        params[name] = np.asarray(d.sample(sub))
    for name, fn in model.deterministic.items():
        params[name] = np.asarray(fn(params, data))
    ll = np.asarray(model.likelihood(params, data)["y"].log_prob(data["y"]))
    expected = stats.norm.logpdf(df["y"].to_numpy(), mean_fn(params), params["sigma"])
    np.testing.assert_allclose(ll, expected, rtol=1e-10, atol=1e-10)
    return params


def test_numeric_and_categorical_predictors_and_interactions(df):
    model, data = hbm.formula("y ~ x * h", df)
    names = ["Intercept", "x", "h[b]", "h[c]", "x:h[b]", "x:h[c]"]
    assert model.coords["b_coef"] == names
    hb, hc = (df["h"] == "b").to_numpy(float), (df["h"] == "c").to_numpy(float)
    x = df["x"].to_numpy()
    X = np.column_stack([np.ones(len(df)), x, hb, hc, x * hb, x * hc])
    np.testing.assert_array_equal(np.asarray(data["X"]), X)
    _check_mean(model, data, df, lambda p: X @ p["b"])


def test_transformations(df):
    model, data = hbm.formula("y ~ np.log(z) + scale(x)", df)
    assert model.coords["b_coef"] == ["Intercept", "np.log(z)", "scale(x)"]
    x = df["x"].to_numpy()
    # formulae's scale() divides by the sd with divisor n (R's scale() uses n - 1)
    X = np.column_stack([np.ones(len(df)), np.log(df["z"]), (x - x.mean()) / x.std(ddof=0)])
    np.testing.assert_allclose(np.asarray(data["X"]), X, rtol=1e-12)


def test_varying_intercept_is_a_centered_normal_node(df):
    model, data = hbm.formula("y ~ x + (1 | g)", df)
    assert model.param_names == ["b", "sd_g", "r_g", "sigma"]
    assert model.dims["r_g"] == ("g", "g_coef") and model.coords["g"] == list("ABCDEFGH")
    bound = model.bind(data, reparam="centered")
    assert bound.reparam["r_g"] == "centered"  # a location-scale node reparam can move
    assert "r_g" in model.bind(data, reparam="noncentered").reparam
    code = _codes(df["g"])
    np.testing.assert_array_equal(np.asarray(data["g"]), code)
    _check_mean(model, data, df, lambda p: p["b"][0] + p["b"][1] * df["x"].to_numpy()
                + p["r_g"][code, 0])


def test_no_population_terms(df):
    model, data = hbm.formula("y ~ 0 + (1 | g)", df)
    assert "b" not in model.prior and "X" not in data
    _check_mean(model, data, df, lambda p: p["r_g"][_codes(df["g"]), 0])


def test_correlated_block_is_mvn_with_lkj(df):
    model, data = hbm.formula("y ~ x + (x | g)", df)
    assert model.param_names == ["b", "sd_g", "L_g", "r_g", "sigma"]
    assert isinstance(model.prior["L_g"], dist.LKJCholesky)
    params = _check_mean(model, data, df, lambda p: p["b"][0] + p["b"][1] * df["x"].to_numpy()
                         + p["r_g"][_codes(df["g"]), 0]
                         + p["r_g"][_codes(df["g"]), 1] * df["x"].to_numpy())
    # r_g ~ MVN(0, diag(sd) L L^T diag(sd)), and cor_g = L L^T
    node = model.prior["r_g"](params, data)
    cov = np.diag(params["sd_g"]) @ params["L_g"] @ params["L_g"].T @ np.diag(params["sd_g"])
    expected = stats.multivariate_normal(np.zeros(2), cov).logpdf(params["r_g"])
    np.testing.assert_allclose(np.asarray(node.log_prob(params["r_g"])), expected, rtol=1e-10)
    np.testing.assert_allclose(params["cor_g"], params["L_g"] @ params["L_g"].T)


def test_double_bar_gives_uncorrelated_terms(df):
    parsed = parse_formula("y ~ x + (x || g)")
    assert [(b.factor, len(b.exprs), b.correlated) for b in parsed.blocks] == \
        [("g", 1, False), ("g", 1, False)]
    model, data = hbm.formula("y ~ x + (x || g)", df)
    same, _ = hbm.formula("y ~ x + (1 | g) + (0 + x | g)", df)
    assert model.param_names == same.param_names == ["b", "sd_g", "r_g", "sigma"]
    assert model.coords["g_coef"] == ["Intercept", "x"]
    assert isinstance(model.prior["r_g"](
        {"sd_g": np.ones(2)}, data), dist.Normal)  # one univariate node, no L
    x = df["x"].to_numpy()
    code = _codes(df["g"])
    _check_mean(model, data, df, lambda p: p["b"][0] + p["b"][1] * x + p["r_g"][code, 0]
                + p["r_g"][code, 1] * x)


def test_interaction_factor_and_nesting(df):
    model, data = hbm.formula("y ~ 1 + (1 | g1:g2)", df)
    labels = sorted({f"{a}:{b}" for a, b in zip(df["g1"], df["g2"])})
    assert model.coords["g1:g2"] == labels  # observed combinations only
    combo = _codes(df["g1"] + ":" + df["g2"])
    _check_mean(model, data, df, lambda p: p["b"][0] + p["r_g1_g2"][combo, 0])
    nested, data = hbm.formula("y ~ 1 + (1 | g1/g2)", df)
    assert nested.param_names == ["b", "sd_g1", "r_g1", "sd_g1_g2", "r_g1_g2", "sigma"]
    _check_mean(nested, data, df, lambda p: p["b"][0] + p["r_g1"][_codes(df["g1"]), 0]
                + p["r_g1_g2"][combo, 0])


def test_crossed_and_several_terms_on_one_factor(df):
    model, data = hbm.formula("y ~ 1 + (1 | g1) + (1 | g2)", df)
    _check_mean(model, data, df, lambda p: p["b"][0] + p["r_g1"][_codes(df["g1"]), 0]
                + p["r_g2"][_codes(df["g2"]), 0])
    model, data = hbm.formula("y ~ x + (1 + x | g) + (0 + z | g)", df)
    assert model.param_names == ["b", "sd_g_1", "L_g_1", "r_g_1", "sd_g_2", "r_g_2", "sigma"]
    code, x, z = _codes(df["g"]), df["x"].to_numpy(), df["z"].to_numpy()
    _check_mean(model, data, df, lambda p: p["b"][0] + p["b"][1] * x + p["r_g_1"][code, 0]
                + p["r_g_1"][code, 1] * x + p["r_g_2"][code, 0] * z)


def test_categorical_group_predictor_is_coded_against_the_intercept(df):
    model, data = hbm.formula("y ~ 1 + (h | g)", df)
    assert model.coords["g_coef"] == ["Intercept", "h[b]", "h[c]"]
    assert np.shape(data["Z_g"]) == (len(df), 3)


def test_group_level_predictor(df):
    level = {g: i / 3 for i, g in enumerate("ABCDEFGH")}
    frame = df.assign(u=df["g"].map(level))
    model, data = hbm.formula("y ~ x + u + (1 | g)", frame)
    assert model.coords["b_coef"] == ["Intercept", "x", "u"]
    _check_mean(model, data, frame, lambda p: p["b"][0] + p["b"][1] * frame["x"].to_numpy()
                + p["b"][2] * frame["u"].to_numpy() + p["r_g"][_codes(frame["g"]), 0])


def test_hbm_formula_is_the_function_after_importing_the_package():
    import hbm.formulas.terms  # noqa: F401  binds the package as hbm.formulas, not hbm.formula
    from hbm.formulas import formula

    assert hbm.formula is formula
    assert "formula" in hbm.__all__
