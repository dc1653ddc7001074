"""Tests for hbm.diagnostics: exact reports, E-BFMI, Pareto k-hat and the warnings."""

import warnings

import numpy as np
import pytest

from hbm import diagnostics
from hbm.diagnostics import (
    HbmWarning,
    diagnose,
    divergence_report,
    ebfmi,
    element_labels,
    ess_bulk_by_element,
    load_arviz,
    pareto_khat,
    rhat_by_element,
    treedepth_report,
)
from hbm.errors import DataError
from hbm.results import Fit

CHAINS, DRAWS = 4, 1000


def ar1(rng, rho, shape):
    """Stationary AR(1) series with unit marginal variance along axis 1."""
    noise = rng.normal(size=shape)
    out = np.empty(shape)
    out[:, 0] = noise[:, 0]
    scale = np.sqrt(1.0 - rho**2)
    for t in range(1, shape[1]):
        out[:, t] = rho * out[:, t - 1] + scale * noise[:, t]
    return out


def clean_stats(rng):
    return {
        "diverging": np.zeros((CHAINS, DRAWS), dtype=bool),
        "tree_depth": np.full((CHAINS, DRAWS), 3),
        "n_steps": np.full((CHAINS, DRAWS), 7),
        "step_size": np.full((CHAINS, DRAWS), 0.5),
        "energy": rng.normal(size=(CHAINS, DRAWS)),
        "lp": rng.normal(size=(CHAINS, DRAWS)),
        "acceptance_rate": np.full((CHAINS, DRAWS), 0.8),
    }


def clean_posterior(rng):
    return {
        "mu": rng.normal(size=(CHAINS, DRAWS)),
        "theta": rng.normal(size=(CHAINS, DRAWS, 3)),
    }


def nuts_fit(posterior, stats, **kwargs):
    kwargs.setdefault("dims", {"theta": ("school",)})
    kwargs.setdefault("coords", {"school": ["A", "B", "C"]})
    return Fit(posterior, stats, method="nuts", **kwargs)


def only(messages, prefix):
    found = [m for m in messages if m.startswith(prefix)]
    assert len(found) == 1, messages
    return found[0]


def listed(message):
    """The parameter labels a R-hat or ESS message lists ("... for a, b: advice")."""
    return message.split(" for ", 1)[1].split(": ", 1)[0].split(", ")


# --------------------------------------------------------------- exact reports
def test_divergence_report_counts_exactly():
    diverging = np.zeros((3, 10), dtype=bool)
    diverging[0, [1, 4]] = True
    diverging[2, 9] = True
    report = divergence_report({"diverging": diverging})
    assert report.count == 3
    assert report.total == 30
    assert report.fraction == pytest.approx(0.1, abs=0, rel=1e-15)
    np.testing.assert_array_equal(report.per_chain, [2, 0, 1])


def test_treedepth_report_counts_depth_at_or_above_max():
    depth = np.array([[10, 9, 10, 3], [9, 9, 9, 11]])
    report = treedepth_report({"tree_depth": depth}, max_tree_depth=10)
    assert (report.count, report.total, report.max_tree_depth) == (3, 8, 10)
    np.testing.assert_array_equal(report.per_chain, [2, 1])


def test_reports_reject_wrong_shapes():
    with pytest.raises(DataError):
        divergence_report({"diverging": np.zeros((2, 3, 4), dtype=bool)})


def test_ebfmi_matches_hand_formula():
    energy = np.array([[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]])
    # chain 0: diffs 1, 2 -> 5; deviations from 7/3 -> 42/9. chain 1: 9 / 6.
    np.testing.assert_allclose(ebfmi(energy), [15.0 / 14.0, 1.5], rtol=1e-15)
    np.testing.assert_allclose(ebfmi(energy[0]), [15.0 / 14.0], rtol=1e-15)


def test_ebfmi_constant_energy_is_nan():
    assert np.isnan(ebfmi(np.ones((1, 5)))[0])


def test_ebfmi_agrees_with_arviz_bfmi():
    # ArviZ: mean(diff^2) / var(ddof=1) = sum(diff^2) / sum(dev^2), the same estimator.
    arviz = load_arviz()
    energy = np.random.default_rng(1).normal(size=(3, 200))
    np.testing.assert_allclose(ebfmi(energy), np.asarray(arviz.bfmi(energy)), rtol=1e-12)


def test_ebfmi_of_iid_energy_is_two():
    # For iid energies E[sum diff^2] / E[sum dev^2] = 2(N-1) / (N-1) = 2.
    rng = np.random.default_rng(2)
    values = ebfmi(rng.normal(size=(200, 1000)))
    z = (values.mean() - 2.0) / (values.std(ddof=1) / np.sqrt(values.size))
    assert abs(z) < 3.5


@pytest.mark.parametrize("k", [0.3, 0.8])
def test_pareto_khat_recovers_tail_shape(k):
    # w = U^(-k) has P(w > t) = t^(-1/k): a Pareto tail with shape k.
    rng = np.random.default_rng(3)
    draws = 4000
    log_ratios = -k * np.log(rng.uniform(size=draws))
    khat = pareto_khat(log_ratios)
    tail = int(np.ceil(min(0.2 * draws, 3 * np.sqrt(draws))))
    standard_error = (1.0 + k) / np.sqrt(tail)  # asymptotic s.e. of the GPD shape
    assert abs(khat - k) / standard_error < 3.5


def test_pareto_khat_matches_arviz_psislw():
    arviz = load_arviz()
    log_ratios = np.random.default_rng(4).standard_t(3, size=2000)
    if diagnostics.arviz_major_version(arviz) >= 1:
        # arviz-stats fits the right tail of the negated input (a log likelihood)
        from arviz_stats.base import array_stats

        _, expected = array_stats.psislw(-log_ratios.copy(), r_eff=1.0, axis=-1)
    else:
        _, expected = arviz.psislw(log_ratios.copy(), reff=1.0)
    assert pareto_khat(log_ratios) == pytest.approx(float(expected), rel=1e-12)


def test_pareto_khat_special_cases():
    assert pareto_khat(np.zeros(100)) == -np.inf
    assert pareto_khat(np.array([0.0, np.nan, 1.0])) == np.inf
    assert pareto_khat(np.array([0.0, np.inf, 1.0])) == np.inf
    assert pareto_khat(np.array([])) == np.inf


def test_element_labels():
    assert element_labels("mu", ()) == ["mu"]
    assert element_labels("theta", (3,)) == ["theta[0]", "theta[1]", "theta[2]"]
    assert element_labels("theta", (2,), ("school",), {"school": ["A", "B"]}) == [
        "theta[A]",
        "theta[B]",
    ]
    assert element_labels("S", (2, 2), ("row",), {"row": ["a", "b"]}) == [
        "S[a, 0]",
        "S[a, 1]",
        "S[b, 0]",
        "S[b, 1]",
    ]


def test_rhat_and_ess_by_element_match_arviz_per_element():
    arviz = load_arviz()
    rng = np.random.default_rng(5)
    posterior = {"theta": rng.normal(size=(4, 100, 2, 3)), "mu": rng.normal(size=(4, 100))}
    rhat = rhat_by_element(posterior)
    ess = ess_bulk_by_element(posterior)
    assert rhat["theta"].shape == (2, 3) and rhat["mu"].shape == ()
    for i, j in np.ndindex(2, 3):
        element = posterior["theta"][:, :, i, j]
        assert rhat["theta"][i, j] == pytest.approx(float(arviz.rhat(element)), rel=1e-12)
        assert ess["theta"][i, j] == pytest.approx(
            float(arviz.ess(element, method="bulk")), rel=1e-12
        )


# ------------------------------------------------- blockwise R-hat and bulk ESS
BLOCK_DRAWS = 200


def mixed_posterior():
    """A scalar, a vector, a matrix (8 elements), a float32, a bool and a Fortran array."""
    rng = np.random.default_rng(0)
    shape = (CHAINS, BLOCK_DRAWS)
    posterior = {
        "mu": rng.normal(size=shape),
        "theta": ar1(rng, 0.9, (CHAINS, BLOCK_DRAWS * 5)).reshape(CHAINS, BLOCK_DRAWS, 5),
        "Sigma": rng.normal(size=(*shape, 2, 4)),
        "f32": rng.normal(size=(*shape, 7)).astype(np.float32),
        "flag": rng.normal(size=(*shape, 3)) > 0,
        "fortran": np.asfortranarray(rng.normal(size=(*shape, 3, 2))),
    }
    posterior["Sigma"][0, :, 1, 2] += 2.0
    return posterior


def whole_array_arviz(posterior):
    """The previous approach: one float64 Dataset of every parameter through ArviZ."""
    import xarray as xr

    arviz = load_arviz()
    data = {}
    for name, values in posterior.items():
        array = np.asarray(values, dtype=float)
        extra = tuple(f"{name}_dim_{i}" for i in range(array.ndim - 2))
        data[name] = (("chain", "draw", *extra), array)
    dataset = xr.Dataset(data)
    with diagnostics.quiet_arviz(arviz):
        rhat = arviz.rhat(dataset)
        ess = arviz.ess(dataset, method="bulk")
    return (
        {name: np.asarray(rhat[name].values) for name in posterior},
        {name: np.asarray(ess[name].values) for name in posterior},
    )


def set_block_columns(monkeypatch, columns):
    """Budget blocks of ``columns`` float64 columns of (CHAINS, BLOCK_DRAWS) draws."""
    budget = columns * CHAINS * BLOCK_DRAWS * 8
    monkeypatch.setattr(diagnostics, "DIAGNOSTICS_BLOCK_BYTES", budget)
    return budget


def assert_same_results(actual, expected, posterior):
    for got, want in zip(actual, expected):
        assert set(got) == set(posterior)
        for name in posterior:
            assert got[name].shape == np.shape(posterior[name])[2:]
            np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("columns", [1, 3, 10**6])
def test_blockwise_convergence_equals_whole_array_arviz(monkeypatch, columns):
    posterior = mixed_posterior()
    expected = whole_array_arviz(posterior)
    set_block_columns(monkeypatch, columns)
    assert_same_results(diagnostics.convergence_by_element(posterior), expected, posterior)
    rhat, ess = expected
    separate = (rhat_by_element(posterior), ess_bulk_by_element(posterior))
    assert_same_results(separate, expected, posterior)
    assert rhat["Sigma"][1, 2] > 1.01 and ess["theta"].max() < 400  # non-trivial values


def test_blockwise_convergence_on_memory_mapped_draws(monkeypatch, tmp_path):
    posterior = mixed_posterior()
    expected = whole_array_arviz(posterior)
    mapped = {}
    for name, values in posterior.items():
        np.save(tmp_path / f"{name}.npy", values)
        mapped[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    assert isinstance(mapped["Sigma"], np.memmap) and not mapped["Sigma"].flags.writeable
    released = []
    release = diagnostics._release_pages
    monkeypatch.setattr(
        diagnostics, "_release_pages", lambda m: (released.append(m), release(m))
    )
    set_block_columns(monkeypatch, 3)
    assert_same_results(diagnostics.convergence_by_element(mapped), expected, mapped)
    # Fit stores np.asarray(memmap), a plain ndarray whose base is the memmap.
    plain = {name: np.asarray(values) for name, values in mapped.items()}
    assert not isinstance(plain["Sigma"], np.memmap)
    assert_same_results(diagnostics.convergence_by_element(plain), expected, plain)
    # Pages were released at least once per block (1 + 2 + 3 + 3 + 1 + 2 blocks a pass).
    assert len(released) >= 2 * 12 and all(m is not None for m in released)
    assert released[0] is mapped["mu"]._mmap and released[-1] is mapped["fortran"]._mmap


def test_release_pages_skips_copy_on_write_maps_and_ignores_closed_ones(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(1, 2, 3))
    private = np.load(tmp_path / "x.npy", mmap_mode="c")
    assert diagnostics._mapped_file(private) is None
    assert diagnostics._mapped_file(np.arange(3.0)) is None
    shared = np.load(tmp_path / "x.npy", mmap_mode="r")
    mm = diagnostics._mapped_file(shared[:, :, 1:])
    assert mm is shared._mmap
    diagnostics._release_pages(mm)
    np.testing.assert_array_equal(shared, np.arange(6.0).reshape(1, 2, 3))
    diagnostics._release_pages(None)


@pytest.mark.parametrize("columns", [1, 3])
def test_blockwise_convergence_memory_is_bounded(monkeypatch, columns):
    # Element j of each parameter has first draw j: the fake statistic returns each
    # block's first draw, so the outputs show which column landed where.
    posterior = {
        "mu": np.zeros((CHAINS, BLOCK_DRAWS)),
        "theta": np.zeros((CHAINS, BLOCK_DRAWS, 5), dtype=np.float32),
        "Sigma": np.zeros((CHAINS, BLOCK_DRAWS, 2, 4)),
        "big": np.zeros((CHAINS, BLOCK_DRAWS, 3, 2, 2)).transpose(0, 1, 4, 3, 2),
    }
    for values in posterior.values():
        values[0, 0] = np.arange(values[0, 0].size).reshape(values.shape[2:])
    budget = set_block_columns(monkeypatch, columns)
    blocks = []

    def fake_block_convergence(arviz, block):
        blocks.append((block.shape, block.dtype, block.nbytes))
        return block[0, 0].copy(), -block[0, 0]

    monkeypatch.setattr(diagnostics, "_block_convergence", fake_block_convergence)
    rhat, ess = diagnostics.convergence_by_element(posterior)
    for shape, dtype, nbytes in blocks:
        assert shape[:2] == (CHAINS, BLOCK_DRAWS) and 1 <= shape[2] <= columns
        assert dtype == np.float64 and nbytes <= budget
    assert sum(shape[2] for shape, _, _ in blocks) == sum(
        max(1, v[0, 0].size) for v in posterior.values()
    )
    for name, values in posterior.items():
        np.testing.assert_array_equal(rhat[name], values[0, 0])
        np.testing.assert_array_equal(ess[name], -values[0, 0])


def test_diagnose_reads_the_draws_once(monkeypatch):
    rng = np.random.default_rng(0)
    posterior = clean_posterior(rng)
    posterior["theta"][0, :, 1] += 2.0
    calls = []
    block_convergence = diagnostics._compiled_block_convergence  # what diagnose uses

    def counting(block):
        calls.append(block.shape)
        return block_convergence(block)

    monkeypatch.setattr(diagnostics, "_compiled_block_convergence", counting)
    messages = diagnose(nuts_fit(posterior, clean_stats(rng)))
    assert listed(only(messages, "R-hat above 1.01")) == ["theta[B]"]
    assert calls == [(CHAINS, DRAWS, 4)]  # mu and theta's 3 elements share one block


def test_non_numeric_parameters_are_skipped():
    rng = np.random.default_rng(0)
    posterior = {"mu": rng.normal(size=(2, 50)), "label": np.full((2, 50), "a")}
    rhat, ess = diagnostics.convergence_by_element(posterior)
    assert set(rhat) == set(ess) == {"mu"}
    assert diagnostics.convergence_by_element({"label": np.full((2, 50), "a")}) == ({}, {})


# ----------------------------------------------------------------- diagnose
def test_clean_nuts_fit_has_no_warnings():
    rng = np.random.default_rng(10)
    fit = nuts_fit(clean_posterior(rng), clean_stats(rng))
    assert diagnose(fit) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", HbmWarning)
        assert fit.warn() == []


def test_divergences_warning_gives_count_percent_and_advice():
    rng = np.random.default_rng(11)
    stats = clean_stats(rng)
    stats["diverging"][1, :5] = True
    stats["diverging"][3, 100:102] = True
    messages = diagnose(nuts_fit(clean_posterior(rng), stats, info={"target_accept": 0.8}))
    message = only(messages, "7 of 4000 transitions")
    assert "(0.2%)" in message
    assert "target_accept" in message and "0.8" in message
    assert "reparameterize" in message
    assert len(messages) == 1


def test_many_divergences_in_float32_suggest_float64():
    rng = np.random.default_rng(11)
    stats = clean_stats(rng)
    stats["diverging"][:, :60] = True  # 240 of 4000: 6%
    posterior = clean_posterior(rng)
    single = {k: v.astype(np.float32) for k, v in posterior.items()}
    message = only(diagnose(nuts_fit(single, stats)), "240 of 4000 transitions")
    assert "float32" in message and "jax_enable_x64" in message
    # the same fit in float64, or a float32 fit with few divergences, is not told
    assert "float32" not in only(diagnose(nuts_fit(posterior, stats)), "240 of 4000")
    stats["diverging"][:, 40:] = False  # 160 of 4000: 4%
    assert "float32" not in only(diagnose(nuts_fit(single, stats)), "160 of 4000")


def test_treedepth_warning_uses_max_tree_depth_from_info():
    rng = np.random.default_rng(12)
    stats = clean_stats(rng)
    stats["tree_depth"][:] = 7
    stats["tree_depth"][0, :5] = 8
    posterior = clean_posterior(rng)
    # Default limit 10: depth 8 is not saturated.
    assert diagnose(nuts_fit(posterior, stats)) == []
    messages = diagnose(nuts_fit(posterior, stats, info={"max_tree_depth": 8}))
    message = only(messages, "5 of 4000 transitions")
    assert "maximum tree depth 8" in message and "max_tree_depth" in message
    assert len(messages) == 1


def test_rhat_warning_names_only_the_shifted_parameter():
    rng = np.random.default_rng(13)
    posterior = clean_posterior(rng)
    posterior["theta"][0, :, 1] += 2.0
    fit = nuts_fit(posterior, clean_stats(rng))
    message = only(diagnose(fit), "R-hat above 1.01")
    assert listed(message) == ["theta[B]"]
    rhat = rhat_by_element(posterior)
    assert rhat["theta"][1] > 1.01 and rhat["mu"] < 1.01


def test_rhat_warning_without_coords_uses_integer_labels():
    rng = np.random.default_rng(14)
    posterior = clean_posterior(rng)
    posterior["theta"][2, :, 0] -= 3.0
    fit = Fit(posterior, clean_stats(rng), method="nuts")
    message = only(diagnose(fit), "R-hat above 1.01")
    assert listed(message) == ["theta[0]"]


def test_low_ess_warning_names_the_autocorrelated_parameter():
    rng = np.random.default_rng(15)
    posterior = clean_posterior(rng)
    posterior["tau"] = ar1(rng, 0.99, (CHAINS, DRAWS))
    fit = nuts_fit(posterior, clean_stats(rng))
    message = only(diagnose(fit), "Bulk ESS below 400")
    assert listed(message) == ["tau"]
    assert ess_bulk_by_element(posterior)["tau"] < 400


def test_low_ebfmi_warning_names_the_chain():
    rng = np.random.default_rng(16)
    stats = clean_stats(rng)
    stats["energy"][2] = ar1(rng, 0.95, (1, DRAWS))[0]
    values = ebfmi(stats["energy"])
    assert values[2] < 0.3 and np.all(np.delete(values, 2) > 0.3)
    messages = diagnose(nuts_fit(clean_posterior(rng), stats))
    message = only(messages, "E-BFMI below 0.3")
    assert f"chain(s) 2 ({values[2]:.2f})" in message
    assert "Reparameterize" in message
    assert len(messages) == 1


@pytest.mark.parametrize("method", ["advi", "laplace", "map"])
def test_non_nuts_fits_get_no_warnings(method):
    rng = np.random.default_rng(17)
    posterior = clean_posterior(rng)
    posterior["theta"][0, :, 1] += 2.0
    posterior["tau"] = ar1(rng, 0.99, (CHAINS, DRAWS))
    stats = clean_stats(rng)
    stats["diverging"][:] = True
    stats["tree_depth"][:] = 10
    stats["energy"] = ar1(rng, 0.95, (CHAINS, DRAWS))
    fit = Fit(posterior, stats, method=method)
    assert diagnose(fit) == []
    # The same arrays from NUTS trigger all five warnings.
    assert len(diagnose(Fit(posterior, stats, method="nuts"))) == 5


def test_warn_emits_each_message_as_hbm_warning():
    rng = np.random.default_rng(18)
    stats = clean_stats(rng)
    stats["diverging"][0, 0] = True
    stats["tree_depth"][1, 1] = 10
    fit = nuts_fit(clean_posterior(rng), stats)
    with pytest.warns(HbmWarning) as record:
        messages = fit.warn()
    assert len(messages) == 2
    assert [str(w.message) for w in record if w.category is HbmWarning] == messages
    assert issubclass(HbmWarning, UserWarning)


def test_long_parameter_lists_are_truncated():
    rng = np.random.default_rng(19)
    posterior = {"z": rng.normal(size=(CHAINS, DRAWS, 15))}
    posterior["z"][0] += 3.0
    message = only(diagnose(Fit(posterior, clean_stats(rng), method="nuts")), "R-hat")
    names = listed(message)
    assert names[:9] == [f"z[{i}]" for i in range(9)]
    assert names[9] == "z[9] and 5 more"


@pytest.mark.parametrize("columns", [3, 10**6])
def test_compiled_convergence_equals_arviz(monkeypatch, tmp_path, columns):
    """The end-of-run checks' compiled R-hat / bulk ESS (hbm.study_diagnostics, float64 here)
    equal ArviZ's on every kind of parameter, blockwise and from memory-mapped files."""
    posterior = mixed_posterior()
    expected = whole_array_arviz(posterior)
    set_block_columns(monkeypatch, columns)
    mapped = {}
    for name, values in posterior.items():
        np.save(tmp_path / f"{name}.npy", values)
        mapped[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    for draws in (posterior, mapped):
        got = diagnostics.convergence_by_element(draws, compiled=True)
        for result, want in zip(got, expected):
            assert set(result) == set(posterior)
            for name in posterior:
                assert result[name].shape == np.shape(posterior[name])[2:]
                np.testing.assert_allclose(result[name], want[name], rtol=1e-10)
    rhat, ess = expected
    assert rhat["Sigma"][1, 2] > 1.01 and ess["theta"].max() < 400  # non-trivial values


def test_diagnose_does_not_import_arviz():
    """A sampling run's end-of-run checks leave ArviZ unimported (its import costs ~3 s)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from hbm.diagnostics import diagnose\n"
        "from hbm.results import Fit\n"
        "rng = np.random.default_rng(0)\n"
        "posterior = {'mu': rng.normal(size=(4, 200)), 'theta': rng.normal(size=(4, 200, 3))}\n"
        "posterior['theta'][0, :, 1] += 2.0\n"
        "stats = {'diverging': np.zeros((4, 200), bool)}\n"
        "messages = diagnose(Fit(posterior, stats, method='nuts'))\n"
        "assert any('R-hat above' in m and 'theta[1]' in m for m in messages), messages\n"
        "print(sorted(m for m in ('arviz', 'xarray', 'scipy.stats') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_host_ranks_equal_the_compiled_ranks_with_ties():
    """The NumPy ranks of the end-of-run checks equal hbm.study_diagnostics' (ties
    averaged), column by column."""
    import jax.numpy as jnp

    from hbm.study_diagnostics import fractional_ranks

    rng = np.random.default_rng(4)
    values = np.concatenate([rng.integers(0, 4, size=(60, 3)), rng.normal(size=(60, 2))],
                            axis=1)
    expected = np.asarray(fractional_ranks(jnp.asarray(values)))
    np.testing.assert_array_equal(diagnostics.host_fractional_ranks(values.T).T, expected)
    assert len(np.unique(expected[:, 0])) == 4  # ties were there
