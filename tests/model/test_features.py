"""Unit tests of ``pipelines.model.features``: the label rule, the model inputs, fingerprints."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.config import FeatureSpec, LabelRule
from pipelines.model.features import LABEL, MISSING_CATEGORY, apply_label_rule, frame_fingerprint, to_model_inputs


def _rule(operator: str = "gt", missing: str = "positive", threshold: float = 15) -> LabelRule:
    return LabelRule(source_column="arr_delay", operator=operator, threshold=threshold, missing=missing)


def _delays(*values: float) -> pd.DataFrame:
    return pd.DataFrame({"flight": range(len(values)), "arr_delay": list(values)})


# --------------------------------------------------------------------------- label rule


def test_threshold_itself_is_on_time() -> None:
    """Late means *more than* 15 minutes: 15 is on time, 15.1 is late."""
    out = apply_label_rule(_delays(-5, 0, 15, 15.1, 16, 300), _rule())
    assert out[LABEL].tolist() == [0, 0, 0, 1, 1, 1]
    assert out[LABEL].dtype == np.int64


@pytest.mark.parametrize(
    ("missing", "expected"),
    [("positive", [0, 1, 1]), ("negative", [0, 0, 1])],
)
def test_missing_delay_counts_per_rule(missing: str, expected: list[int]) -> None:
    """A cancelled or diverted flight has no arrival delay (NaN)."""
    out = apply_label_rule(_delays(3, math.nan, 40), _rule(missing=missing))
    assert out[LABEL].tolist() == expected
    assert len(out) == 3


def test_missing_delay_dropped() -> None:
    frame = _delays(3, math.nan, 40, math.nan)
    out = apply_label_rule(frame, _rule(missing="drop"))
    assert out["flight"].tolist() == [0, 2]
    assert out[LABEL].tolist() == [0, 1]
    assert out.index.tolist() == [0, 1]
    assert len(frame) == 4  # the input is not modified


@pytest.mark.parametrize(
    ("operator", "expected"),
    [("gt", [0, 0, 1]), ("ge", [0, 1, 1]), ("lt", [1, 0, 0]), ("le", [1, 1, 0])],
)
def test_operators(operator: str, expected: list[int]) -> None:
    out = apply_label_rule(_delays(14, 15, 16), _rule(operator=operator))
    assert out[LABEL].tolist() == expected


@pytest.mark.parametrize("operator", ["gt", "ge", "lt", "le"])
def test_missing_rule_wins_over_the_operator(operator: str) -> None:
    """NaN is not compared with the threshold: ``missing`` alone decides."""
    assert apply_label_rule(_delays(math.nan), _rule(operator, "positive"))[LABEL].tolist() == [1]
    assert apply_label_rule(_delays(math.nan), _rule(operator, "negative"))[LABEL].tolist() == [0]


def test_non_numeric_delay_counts_as_missing() -> None:
    frame = pd.DataFrame({"arr_delay": ["20", "n/a", None, "3"]})
    out = apply_label_rule(frame, _rule())
    assert out[LABEL].tolist() == [1, 1, 1, 0]


def test_label_keeps_other_columns_and_index() -> None:
    frame = _delays(1, 99).set_axis([10, 20])
    out = apply_label_rule(frame, _rule())
    assert list(out.columns) == ["flight", "arr_delay", LABEL]
    assert out.index.tolist() == [10, 20]
    assert LABEL not in frame.columns


# --------------------------------------------------------------------------- model inputs


FEATURES = FeatureSpec(numeric=("distance", "temp", "hour"), categorical=("carrier", "dest"))


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "distance": [1400.0, 200.0, 950.0],
            "temp": [39.02, np.nan, 55.5],
            "hour": pd.Series([5, 17, 23], dtype="int64"),
            "carrier": ["UA", None, "B6"],
            "dest": pd.Series(["IAH", "BOS", pd.NA], dtype="string"),
            "arr_delay": [11.0, np.nan, 40.0],
        }
    )


def test_numeric_inputs_are_float32_with_nan_kept() -> None:
    inputs = to_model_inputs(_rows(), FEATURES)
    for col in FEATURES.numeric:
        assert inputs[col].dtype == np.float32
        assert inputs[col].shape == (3,)
    assert np.isnan(inputs["temp"][1])
    np.testing.assert_array_equal(inputs["hour"], np.array([5, 17, 23], dtype=np.float32))
    np.testing.assert_allclose(inputs["temp"][[0, 2]], [39.02, 55.5], rtol=1e-6)


def test_categorical_inputs_are_str_with_empty_for_missing() -> None:
    inputs = to_model_inputs(_rows(), FEATURES)
    for col in FEATURES.categorical:
        assert inputs[col].dtype.kind == "U"
    assert inputs["carrier"].tolist() == ["UA", MISSING_CATEGORY, "B6"]
    assert inputs["dest"].tolist() == ["IAH", "BOS", ""]


def test_model_inputs_hold_the_features_only() -> None:
    inputs = to_model_inputs(_rows(), FEATURES)
    assert set(inputs) == set(FEATURES.all)


def test_unparseable_numeric_becomes_nan() -> None:
    frame = _rows().assign(distance=["1400", "far", None])
    inputs = to_model_inputs(frame, FEATURES)
    assert inputs["distance"][0] == 1400.0
    assert np.isnan(inputs["distance"][1:]).all()


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable() -> None:
    a, b = _rows(), _rows()
    fp = frame_fingerprint(a)
    assert len(fp) == 16
    int(fp, 16)  # hex digits
    assert fp == frame_fingerprint(a) == frame_fingerprint(b) == frame_fingerprint(a.copy())


def test_fingerprint_ignores_the_index() -> None:
    frame = _rows()
    assert frame_fingerprint(frame.set_axis([7, 8, 9])) == frame_fingerprint(frame)


def test_fingerprint_is_order_sensitive() -> None:
    frame = _rows()
    reversed_rows = frame.iloc[::-1].reset_index(drop=True)
    assert frame_fingerprint(reversed_rows) != frame_fingerprint(frame)


def test_fingerprint_sees_a_changed_value() -> None:
    frame = _rows()
    changed = frame.copy()
    changed.loc[2, "distance"] = 951.0
    assert frame_fingerprint(changed) != frame_fingerprint(frame)


def test_fingerprint_of_selected_columns() -> None:
    frame = _rows()
    changed = frame.assign(arr_delay=[0.0, 0.0, 0.0])
    cols = ["distance", "carrier"]
    assert frame_fingerprint(changed, cols) == frame_fingerprint(frame, cols)
    assert frame_fingerprint(changed) != frame_fingerprint(frame)
