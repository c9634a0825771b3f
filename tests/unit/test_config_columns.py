"""Column names in rules, slices and derived features are checked against the data set when params load.

A misspelt column in a rule would otherwise check nothing and say nothing; each case names its key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_params

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"validate.ranges.distnce": [1, 6000]}, "validate.ranges.distnce: no column 'distnce' in dataset.schema"),
        ({"validate.categories.orign": ["EWR"]}, "validate.categories.orign: no column 'orign'"),
        ({"validate.null_fraction_overrides.tmp": 1.0}, "validate.null_fraction_overrides.tmp: no column 'tmp'"),
        ({"evaluate.slice_columns": ["carrier", "airline"]}, "evaluate.slice_columns: 'airline' is not a feature"),
        # in the schema but not carried into the processed splits: a slice on it would score nothing
        ({"evaluate.slice_columns": ["tailnum"]}, "evaluate.slice_columns: 'tailnum' is not a feature"),
        ({"evaluate.hour_buckets.column": "hr"}, "evaluate.hour_buckets.column: 'hr' is not a feature"),
        ({"monitor.drift.exclude_columns": ["mnth"]}, "monitor.drift.exclude_columns: 'mnth' is not a feature"),
        ({"train.integer_categories.hr": [0, 23]}, "train.integer_categories.hr: not a numeric feature"),
        ({"train.crosses": [["origin", "carier"]]}, "train.crosses ['origin', 'carier']: ['carier']"),
    ],
)
def test_a_rule_naming_an_unknown_column_is_refused_naming_its_key(override: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        PARAMS.with_overrides(override)
    assert message in str(err.value)
    assert "got {" not in str(err.value)  # the message names the key, not a dump of the whole params


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        PARAMS.with_overrides({"validate.ranges.distnce": [1, 6000], "evaluate.slice_columns": ["airline"]})
    assert "distnce" in str(err.value) and "airline" in str(err.value)


def test_hour_slices_are_off_unless_configured_and_refused_without_the_column() -> None:
    assert PARAMS.evaluate.hour_buckets is not None  # the flights' params.yaml asks for them
    off = PARAMS.with_overrides({"evaluate.hour_buckets": None})
    assert off.evaluate.hour_buckets is None
    raw = PARAMS.model_dump(by_alias=True)
    del raw["evaluate"]["hour_buckets"]
    # A table without an hour column: the default leaves hour slices out instead of naming a missing column.
    from pipelines.config import parse_params

    assert parse_params(raw).evaluate.hour_buckets is None
