"""hbm.formula refuses bad input with an HbmError naming the culprit, before compiling."""

import numpy as np
import pandas as pd
import pytest

import hbm
from hbm import dist
from hbm.errors import ConfigurationError, DataError


@pytest.fixture
def df():
    rng = np.random.default_rng(0)
    n = 12
    return pd.DataFrame(dict(y=rng.normal(size=n), x=rng.normal(size=n),
                             count=rng.poisson(3.0, n), k=rng.integers(0, 5, n),
                             g=np.repeat(list("abc"), 4), one=["z"] * n))


def test_missing_column(df):
    with pytest.raises(DataError, match="'w'"):
        hbm.formula("y ~ x + w + (1 | g)", df)
    with pytest.raises(DataError, match="'grp'"):
        hbm.formula("y ~ x + (1 | grp)", df)


def test_grouping_factor_with_one_level(df):
    with pytest.raises(DataError, match="'one' has a single level"):
        hbm.formula("y ~ x + (1 | one)", df)


@pytest.mark.parametrize("family, response, match", [
    ("poisson", "y", "whole-number counts >= 0; 'y'"),
    ("negbinomial", "y", "whole-number counts >= 0; 'y'"),
    ("bernoulli", "count", "0/1 response; 'count'"),
    ("gamma", "y", "positive response; 'y'"),
    ("beta", "count", "between 0 and 1; 'count'"),
])
def test_family_response_mismatch(df, family, response, match):
    with pytest.raises(DataError, match=match):
        hbm.formula(f"{response} ~ x", df, family=family)


def test_negative_counts(df):
    df.loc[3, "count"] = -1
    with pytest.raises(DataError, match=r"count.*\[-1.0\]"):
        hbm.formula("count ~ x", df, family="poisson")


def test_binomial_trials(df):
    with pytest.raises(ConfigurationError, match="needs trials"):
        hbm.formula("k ~ x", df, family="binomial")
    with pytest.raises(DataError, match="smaller than the successes 'k'"):
        hbm.formula("k ~ x", df, family="binomial", trials=2)
    df["fail"] = -df["k"]
    with pytest.raises(DataError, match="smaller than the successes 'k'"):
        hbm.formula("cbind(k, fail) ~ x", df, family="binomial")
    df["fail"] = 5 - df["k"]
    with pytest.raises(ConfigurationError, match="for the binomial family, not 'poisson'"):
        hbm.formula("cbind(k, fail) ~ x", df, family="poisson")


def test_nan_error_and_drop(df):
    df.loc[[2, 5], "x"] = np.nan
    with pytest.raises(DataError, match=r"\['x'\] hold missing values in 2 row"):
        hbm.formula("y ~ x", df)
    with pytest.warns(UserWarning, match="dropped 2 row"):
        model, data = hbm.formula("y ~ x", df, na_action="drop")
    assert np.shape(data["y"]) == (10,)
    # a NaN in a column the formula does not read is no problem
    df2 = df.assign(x=0.5, unused=np.nan)
    hbm.formula("y ~ x", df2)


def test_unknown_family_link_and_bad_options(df):
    with pytest.raises(ConfigurationError, match="unknown family 'gausian'"):
        hbm.formula("y ~ x", df, family="gausian")
    with pytest.raises(ConfigurationError, match="unknown link 'logit' for family 'poisson'"):
        hbm.formula("count ~ x", df, family="poisson", link="logit")
    with pytest.raises(ConfigurationError, match="na_action"):
        hbm.formula("y ~ x", df, na_action="omit")
    with pytest.raises(ConfigurationError, match="cannot parse"):
        hbm.formula("y ~ x +", df)
    with pytest.raises(ConfigurationError, match="needs a response"):
        hbm.formula("x + (1 | g)", df)


def test_bad_prior_overrides(df):
    with pytest.raises(ConfigurationError, match=r"priors names \['sd_h'\]"):
        hbm.formula("y ~ x + (1 | g)", df, priors={"sd_h": dist.HalfNormal(1.0)})
    with pytest.raises(ConfigurationError, match="positive support"):
        hbm.formula("y ~ x + (1 | g)", df, priors={"sigma": dist.Normal(0.0, 1.0)})
    with pytest.raises(ConfigurationError, match="must be an hbm distribution"):
        hbm.formula("y ~ x", df, priors={"b": 3.0})
    with pytest.raises(ConfigurationError, match=r"priors\['L'\] gives shape \(3, 3\)"):
        hbm.formula("y ~ x + (x | g)", df, priors={"L": dist.LKJCholesky(3, 2.0)})
    with pytest.raises(ConfigurationError, match="scalar Normal"):
        hbm.formula("y ~ x", df, priors={"b[x]": dist.StudentT(3.0, 0.0, 1.0)})
