"""Boundary modes: only coordinates whose transform reaches a finite edge of the support
can sit on a boundary; large values of real-valued parameters are not boundaries."""

import warnings

import numpy as np
import pytest

import hbm
from hbm import constraints, dist
from hbm.diagnostics import HbmWarning
from hbm.samplers.optimize import boundary_report
from hbm.transforms import biject_to


@pytest.mark.parametrize(
    ("constraint", "shape", "below", "above"),
    [
        (constraints.real, (3,), [0, 0, 0], [0, 0, 0]),
        (constraints.positive, (2,), [1, 1], [0, 0]),
        (constraints.greater_than(3.0), (1,), [1], [0]),
        (constraints.interval(-1.0, 4.0), (2,), [1, 1], [1, 1]),
        (constraints.unit_interval, (1,), [1], [1]),
        (constraints.ordered_vector, (3,), [0, 1, 1], [0, 0, 0]),
        (constraints.simplex, (2,), [1, 1], [1, 1]),
        (constraints.corr_cholesky, (3,), [1, 1, 1], [1, 1, 1]),
        # tril order of a 2 x 2 factor: (0,0) diagonal, (1,0) free, (1,1) diagonal
        (constraints.lower_cholesky, (3,), [1, 0, 1], [0, 0, 0]),
    ],
)
def test_finite_limits_of_each_transform(constraint, shape, below, above):
    lo, hi = biject_to(constraint).finite_limits(shape)
    np.testing.assert_array_equal(lo, np.array(below, bool))
    np.testing.assert_array_equal(hi, np.array(above, bool))


def test_finite_limits_agree_with_the_forward_map():
    # Moving a coordinate further out changes the constrained value by (almost) nothing
    # exactly where the transform declares a finite edge.
    for constraint, size in [(constraints.positive, 1), (constraints.interval(0.0, 2.0), 1),
                             (constraints.real, 1), (constraints.ordered_vector, 3)]:
        t = biject_to(constraint)
        lo, hi = t.finite_limits((size,))
        for i in range(size):
            for direction, declared in ((-1, lo[i]), (+1, hi[i])):
                x1, x2 = np.zeros(size), np.zeros(size)
                x1[i], x2[i] = 30.0 * direction, 60.0 * direction
                change = float(np.max(np.abs(np.asarray(t.forward(x2) - t.forward(x1)))))
                assert (change < 1e-10) == bool(declared), (constraint, i, direction)


def test_drift_of_an_identity_coordinate_is_not_a_boundary():
    x = np.array([252.0, -30.0, 40.0])
    below = np.array([False, True, False])
    above = np.array([False, False, True])
    assert boundary_report(x, finite_limits=(below, above)).indices == (1, 2)
    # the same position with only real coordinates: nothing on a boundary
    none = np.zeros(3, bool)
    assert boundary_report(x, finite_limits=(none, none)) == ((), "")
    # a log scale heading to +inf is unbounded, not at a finite edge
    assert boundary_report(np.array([40.0]),
                           finite_limits=(np.ones(1, bool), np.zeros(1, bool))).indices == ()


def test_bad_finite_limits_are_refused():
    with pytest.raises(hbm.ConfigurationError):
        boundary_report(np.zeros(3), finite_limits=(np.zeros(2, bool), np.zeros(3, bool)))


def test_large_location_mode_raises_no_boundary_warning():
    # a location far from zero (the sleepstudy intercept is about 252) with a scale
    # well inside its support: an interior mode
    rng = np.random.default_rng(0)
    data = {"y": 252.0 + 30.0 * rng.standard_normal(50)}
    model = hbm.Model(
        prior={"mu": dist.Normal(250.0, 100.0), "sigma": dist.HalfNormal(100.0)},
        likelihood=lambda p, d: {"y": dist.Normal(p["mu"], p["sigma"])},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", HbmWarning)
        mode = hbm.find_map(model, data, seed=0)
    assert mode.info["boundary"] == []
    assert abs(mode.params["mu"] - np.mean(data["y"])) < 1.0


def test_sleepstudy_mode_is_not_reported_on_the_boundary():
    model, data = hbm.models.sleepstudy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mode = hbm.find_map(model, data, seed=0, jacobian=True)
    assert mode.params["beta"][0] > 200.0  # the intercept is far from 0 ...
    assert not any(name.startswith("beta") for name in mode.info["boundary"])  # ... but free


def test_collapsed_group_scale_is_still_reported_with_its_value():
    # eight schools' classical MAP collapses tau to 0: a genuine boundary mode
    model, data = hbm.models.eight_schools()
    with pytest.warns(HbmWarning, match=r"tau = [0-9.e+-]+"):
        mode = hbm.find_map(model, data, seed=0)
    assert mode.info["boundary"] == ["tau"]
    assert mode.params["tau"] < 1e-3
