"""Bundled data sets: names, shapes, columns, provenance, errors."""

import pandas as pd
import pytest

from hbm import datasets
from hbm.errors import DataError, HbmError

# name -> (rows, some columns), rows as in PROVENANCE.md
EXPECTED = {
    "radon_mn": (919, ["log.radon", "basement", "uranium", "county", "county.name"]),
    "eight_schools": (8, ["school", "est", "se"]),
    "sleepstudy": (180, ["Reaction", "Days", "Subject"]),
    "cbpp": (56, ["herd", "incidence", "size", "period"]),
    "penicillin": (144, ["diameter", "plate", "sample"]),
    "epil": (236, ["y", "trt", "base", "age", "V4", "subject", "period", "lbase", "lage"]),
    "exam": (4059, ["school", "normexam", "schavg", "standLRT"]),
    "holzinger_swineford": (301, ["visual", "cubes", "flags", "paragrap", "sentence",
                                  "wordm", "addition", "counting", "straight"]),
    "insteval": (73421, ["s", "d", "service", "dept", "y"]),
}


def test_available_lists_every_bundled_csv():
    assert datasets.available() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"insteval"}))
def test_load_shape_and_columns(name):
    rows, columns = EXPECTED[name]
    df = datasets.load(name)
    assert isinstance(df, pd.DataFrame)
    assert len(df) == rows
    assert set(columns) <= set(df.columns)


def test_load_large_insteval():
    df = datasets.load("insteval")
    assert df.shape == (73421, 7)
    assert df["s"].nunique() == 2972 and df["d"].nunique() == 1128
    assert df["dept"].nunique() == 14


def test_load_returns_a_fresh_frame():
    first = datasets.load("cbpp")
    first.loc[0, "size"] = -1
    assert datasets.load("cbpp").loc[0, "size"] == 14


def test_eight_schools_csv_rounds_to_textbook_values():
    df = datasets.load("eight_schools")
    assert df["est"].round().tolist() == [28, 8, -3, 7, -1, 1, 18, 12]
    assert df["se"].round().tolist() == [15, 10, 16, 11, 9, 11, 10, 18]


def test_unknown_name_raises_data_error_listing_names():
    with pytest.raises(DataError) as info:
        datasets.load("radon")
    assert isinstance(info.value, HbmError)
    for name in EXPECTED:
        assert name in str(info.value)


def test_non_string_name_raises_data_error():
    with pytest.raises(DataError):
        datasets.load(3)


def test_provenance_is_bundled_and_covers_every_file():
    text = datasets.provenance()
    for name in EXPECTED:
        assert f"{name}.csv" in text
