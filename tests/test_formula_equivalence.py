"""hbm.formula reproduces the hand-written library models exactly.

For each pair, the formula model is built with the library model's priors (given as
``priors=`` overrides where the defaults differ), random points of the library model's
unconstrained space (uniform in (-2, 2)) are constrained, mapped to the formula model's layout (``beta`` -> ``b``,
``sigma_<g>`` -> ``sd_<g>``, ``<g>_effect`` -> ``r_<g>``, ...), and both models' log
densities are evaluated on the unconstrained scale, both *centered* (the library's
correlated models are MultivariateNormal nodes with the same parameters as the formula
model, so no change of variables is needed). With the same
priors and likelihood the two log densities agree exactly (float64), Jacobians included.
"""

import jax
import numpy as np
import pytest

import hbm
from hbm import dist
from hbm.models import cbpp, exam, penicillin, radon, sleepstudy


def _sd(values):
    return float(np.std(np.asarray(values, dtype=float), ddof=1))


def _compare(lib_model, lib_data, f_model, f_data, to_formula, draws=4, seed=0):
    lib = lib_model.bind(lib_data, reparam="centered")
    form = f_model.bind(f_data, reparam="centered")

    @jax.jit
    @jax.vmap
    def both(x):  # x: a random point of the library model's unconstrained space
        lib_params = lib.constrain(x, deterministic=False)
        f_params = to_formula(lib_params)
        ll_lib = list(lib.log_likelihood(lib_params).values())[0]
        ll_f = list(form.log_likelihood(f_params).values())[0]
        return (lib.logdensity(x), form.logdensity(form.unconstrain(f_params)), ll_lib, ll_f)

    xs = jax.random.uniform(jax.random.PRNGKey(seed), (draws, lib.size), minval=-2, maxval=2)
    lp_lib, lp_f, ll_lib, ll_f = (np.asarray(v) for v in both(xs))
    assert np.all(np.isfinite(lp_lib))
    np.testing.assert_allclose(lp_f, lp_lib, rtol=1e-10, atol=1e-8)
    # and the pointwise log likelihood agrees observation by observation
    np.testing.assert_allclose(ll_f, ll_lib, rtol=1e-10, atol=1e-10)


def test_sleepstudy_correlated_intercepts_and_slopes():
    df = hbm.datasets.load("sleepstudy")
    lib_model, lib_data = sleepstudy(df)
    sd_y = _sd(df["Reaction"])
    model, data = hbm.formula("Reaction ~ Days + (Days | Subject)", df, priors={
        "sd_Subject": dist.HalfNormal(np.array([sd_y, sd_y / _sd(df["Days"])])),
        "L": dist.LKJCholesky(2, 2.0), "sigma": dist.HalfNormal(sd_y)})
    assert model.coords["b_coef"] == ["Intercept", "Days"]
    assert model.coords["Subject_coef"] == ["Intercept", "Days"]
    assert model.dims["r_Subject"] == ("Subject", "Subject_coef")
    _compare(lib_model, lib_data, model, data, lambda p: {
        "b": p["beta"], "sd_Subject": p["sigma_subject"], "L_Subject": p["L_subject"],
        "r_Subject": p["subject_effect"], "sigma": p["sigma"]})


def test_cbpp_binomial_with_cbind_response():
    df = hbm.datasets.load("cbpp")
    df["failures"] = df["size"] - df["incidence"]
    lib_model, lib_data = cbpp(df)
    rate = (df["incidence"].sum() + 0.5) / (df["size"].sum() + 1.0)
    model, data = hbm.formula(
        "cbind(incidence, failures) ~ C(period) + (1 | herd)", df, family="binomial",
        priors={"Intercept": dist.Normal(float(np.log(rate / (1 - rate))), 2.5),
                "sd": dist.HalfNormal(1.0)})
    assert len(model.coords["b_coef"]) == 4
    _compare(lib_model, lib_data, model, data, lambda p: {
        "b": p["beta"], "sd_herd": p["sigma_herd"][None],
        "r_herd": p["herd_effect"][:, None]})


def test_penicillin_crossed_intercepts():
    df = hbm.datasets.load("penicillin")
    lib_model, lib_data = penicillin(df)
    sd_y = _sd(df["diameter"])
    model, data = hbm.formula("diameter ~ 1 + (1 | plate) + (1 | sample)", df, priors={
        "sd": dist.HalfNormal(sd_y), "sigma": dist.HalfNormal(sd_y)})
    _compare(lib_model, lib_data, model, data, lambda p: {
        "b": p["mu"][None], "sd_plate": p["sigma_plate"][None],
        "sd_sample": p["sigma_sample"][None], "r_plate": p["plate_effect"][:, None],
        "r_sample": p["sample_effect"][:, None], "sigma": p["sigma"]})


def _radon_priors(df, slope=False):
    sd_y = _sd(df["log.radon"])
    sd = np.array([sd_y, sd_y / _sd(df["basement"])]) if slope else sd_y
    out = {"sd": dist.HalfNormal(sd), "sigma": dist.HalfNormal(sd_y)}
    if slope:
        out["L_county"] = dist.LKJCholesky(2, 2.0)
    return out


def _radon_map(p):
    out = {"b": p["beta"], "sigma": p["sigma"]}
    if p["county_effect"].ndim == 1:
        out.update(sd_county=p["sigma_county"][None], r_county=p["county_effect"][:, None])
    else:
        out.update(sd_county=p["sigma_county"], r_county=p["county_effect"],
                   L_county=p["L_county"])
    return out


@pytest.mark.parametrize("which", ["intercept", "intercept_slope", "uranium"])
def test_radon(which):
    df = hbm.datasets.load("radon_mn")
    if which == "intercept":
        lib = radon.radon_varying_intercept(df)
        f = "log.radon ~ basement + (1 | county)"
    elif which == "intercept_slope":
        lib = radon.radon_varying_intercept_slope(df)
        f = "log.radon ~ basement + (basement | county)"
    else:  # a county-level covariate in the population part
        lib = radon.radon_uranium(df)
        f = "log.radon ~ basement + uranium + (1 | county)"
    model, data = hbm.formula(f, df, priors=_radon_priors(df, which == "intercept_slope"))
    _compare(*lib, model, data, _radon_map)


def test_exam_school_level_predictor():
    df = hbm.datasets.load("exam")
    lib_model, lib_data = exam(df)
    sd_y = _sd(df["normexam"])
    model, data = hbm.formula("normexam ~ standLRT + schavg + (1 | school)", df, priors={
        "sd": dist.HalfNormal(sd_y), "sigma": dist.HalfNormal(sd_y)})
    _compare(lib_model, lib_data, model, data, lambda p: {
        "b": p["beta"], "sd_school": p["sigma_school"][None],
        "r_school": p["school_effect"][:, None], "sigma": p["sigma"]})


def test_default_priors_follow_the_stated_rstanarm_rules():
    df = hbm.datasets.load("sleepstudy")
    model, data = hbm.formula("Reaction ~ Days + (Days | Subject)", df)
    sd_y, mean_y, sd_x = _sd(df["Reaction"]), float(df["Reaction"].mean()), _sd(df["Days"])
    b = model.prior["b"]
    np.testing.assert_allclose(np.asarray(b.loc), [mean_y, 0.0])
    np.testing.assert_allclose(np.asarray(b.scale), [2.5 * sd_y, 2.5 * sd_y / sd_x])
    np.testing.assert_allclose(np.asarray(model.prior["sigma"].rate), 1 / sd_y)
    np.testing.assert_allclose(np.asarray(model.prior["sd_Subject"].rate),
                               [1 / sd_y, sd_x / sd_y])
    assert float(model.prior["L_Subject"].concentration) == 1.0
    table = model.formula_spec.priors
    assert list(table.index) == ["b[Intercept]", "b[Days]", "sd_Subject[Intercept]",
                                 "sd_Subject[Days]", "L_Subject", "sigma"]
    assert set(table["source"]) == {"default"}
    # link-scale families: intercept Normal(0, 2.5), coefficients 2.5 / sd(x)
    df["hit"] = (df["Reaction"] > df["Reaction"].median()).astype(int)
    model, _ = hbm.formula("hit ~ Days + (1 | Subject)", df, family="bernoulli")
    np.testing.assert_allclose(np.asarray(model.prior["b"].loc), [0.0, 0.0])
    np.testing.assert_allclose(np.asarray(model.prior["b"].scale), [2.5, 2.5 / sd_x])
    np.testing.assert_allclose(np.asarray(model.prior["sd_Subject"].rate), [1.0])


@pytest.mark.parametrize("text", ["y ~ x + w + (x | g) + (1 + w || k)",
                                  "y ~ x * h + (0 + x | g) + (1 | k)"])
def test_linear_predictor_forms_agree(monkeypatch, text):
    """The column-by-column linear predictor (intercepts without products, a group term on
    a population column folded into its coefficient) equals the plain ``X b + sum(r Z)``
    form, used for designs wider than ``UNROLLED_COLUMNS``, exactly (float64)."""
    from hbm.formulas import build

    rng = np.random.default_rng(3)
    n = 60
    df = {"y": rng.normal(size=n), "x": rng.normal(size=n), "w": rng.normal(size=n),
          "h": rng.choice(list("abcd"), size=n), "g": rng.choice(list("pqrst"), size=n),
          "k": rng.choice(list("uv"), size=n)}
    import pandas as pd
    df = pd.DataFrame(df)
    folded, data = hbm.formula(text, df)
    monkeypatch.setattr(build, "UNROLLED_COLUMNS", 0)
    plain, plain_data = hbm.formula(text, df)
    a, b = folded.bind(data), plain.bind(plain_data)
    assert a.size == b.size
    xs = jax.random.uniform(jax.random.PRNGKey(1), (5, a.size), minval=-2, maxval=2)
    np.testing.assert_allclose(np.asarray(jax.vmap(b.logdensity)(xs)),
                               np.asarray(jax.vmap(a.logdensity)(xs)), rtol=1e-12)
