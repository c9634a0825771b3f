"""Where a warning stops being one (``validate.escalate``): the config's levels and each rule's measure."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, ValidateConfig, load_params
from pipelines.validation.results import ROW_COUNT, Outcome

CFG = ValidateConfig(severity={"unseen_categories": "warn", "row_count": "warn"}, escalate={"unseen_categories": 0.2})


def _rows_outcome(rows: int, lo: int = 100, hi: int = 200) -> Outcome:
    return Outcome(
        "values", ROW_COUNT, None, "row_count", {"min_value": lo, "max_value": hi}, False, {"observed_value": rows}
    )


def _share_outcome(percent: float) -> Outcome:
    return Outcome(
        "values",
        "expect_column_values_to_be_in_set",
        "carrier",
        "unseen_categories",
        {"mostly": 0.99},
        False,
        {"element_count": 1000, "unexpected_count": int(percent * 10), "unexpected_percent": percent},
    )


@pytest.mark.parametrize(("percent", "severity"), [(5.0, "warn"), (20.0, "warn"), (42.0, "stop")])
def test_a_share_of_rows_past_the_level_stops(percent: float, severity: str) -> None:
    finding = _share_outcome(percent).finding(CFG)
    assert finding.severity == severity
    assert finding.escalated == (severity == "stop")


@pytest.mark.parametrize(("rows", "severity"), [(60, "warn"), (40, "stop"), (290, "warn"), (310, "stop")])
def test_row_count_escalates_by_how_far_outside_its_bounds(rows: int, severity: str) -> None:
    assert _rows_outcome(rows).finding(CFG).severity == severity  # 0.5: below 50 or above 300


def test_a_level_at_or_below_what_the_rule_tolerates_is_refused() -> None:
    with pytest.raises(ValueError, match=r"validate.escalate.nulls \(0.1\) must be above .* \(0.2\)"):
        ValidateConfig(severity={"nulls": "warn"}, max_null_fraction=0.2)
    assert ValidateConfig(severity={"nulls": "warn"}, max_null_fraction=0.2, escalate={"nulls": 0.5})


def test_the_flights_params_escalate_unseen_categories_at_a_tenth() -> None:
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert params.validation.escalation("unseen_categories") == 0.10
    with pytest.raises(ConfigError, match="validate.escalate"):
        params.with_overrides({"validate.escalate.unseen_categories": 0.005})
