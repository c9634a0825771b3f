"""The row-count rule holds for each day of a batch, not for the batch's total.

Three days of a sparse daily CSV feed (the synthetic events' params), one of them
without a file (``missing_day: empty``), collected and gated for real: a day with
too few rows is a finding naming that day however many rows its neighbours hold,
and ``validate.rows_per_day`` alone decides whether an empty day is acceptable.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from synthetic_events import DATE_FORMAT, events_params

from pipelines.config import Params, parse_params
from pipelines.steps.collect import collect
from pipelines.steps.validate import ValidationFailed, validate_batch
from pipelines.validation.results import ROW_COUNT, merge_into, rows_per_day_outcome

FIRST = dt.date(2024, 6, 1)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(3)]


def _write_day(root: Path, day: dt.date, rows: int) -> None:
    """``rows`` events of ``day`` in the synthetic feed's CSV layout; no file at all for 0 rows."""
    if not rows:
        return
    frame = pd.DataFrame(
        {
            "event_day": [day.strftime(DATE_FORMAT)] * rows,
            "region": ["north", "south"] * (rows // 2) + ["east"] * (rows % 2),
            "segment": ["10"] * rows,
            "amount": [float(10 + i) for i in range(rows)],
            "visits": list(range(rows)),
            "temperature": [12.5] * rows,
            "note": [""] * rows,
            "outcome": [i % 2 for i in range(rows)],
        }
    )
    (root / "events").mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "events" / f"{day:%Y-%m-%d}.csv", index=False)


def _params(root: Path, bounds: tuple[int, int], chunk_rows: int = 500_000) -> Params:
    raw = events_params(root)
    raw["validate"]["rows_per_day"] = list(bounds)
    raw["validate"]["chunk_rows"] = chunk_rows
    return parse_params(raw)


def _gate(root: Path, rows: list[int], bounds: tuple[int, int], chunk_rows: int = 500_000) -> dict | ValidationFailed:
    """Write the days, collect them (the empty one included) and gate them: the result, or the failure."""
    for day, n in zip(DAYS, rows, strict=True):
        _write_day(root, day, n)
    params = _params(root, bounds, chunk_rows)
    staged = collect(params.dataset, DAYS[-1], root / "staging", root / "raw", window_days=len(DAYS))
    assert staged.days == [d.isoformat() for d in DAYS] and staged.rows == sum(rows)
    try:
        return validate_batch(
            params.dataset,
            params.validation,
            root / "staging",
            staged.days,
            root / "raw",
            root / "report",
            root / "quarantine",
        )
    except ValidationFailed as err:
        return err


def test_a_day_below_its_bounds_is_named_though_the_batch_total_is_within_them(tmp_path: Path) -> None:
    # 20 rows in three days is within 3 x [5, 50]: a total-only rule would pass the empty day.
    err = _gate(tmp_path, [0, 10, 10], (5, 50))
    assert isinstance(err, ValidationFailed), err
    [finding] = err.report.failures
    assert (finding.check, finding.rule, finding.severity) == ("row_count", ROW_COUNT, "stop")
    assert "day 2024-06-01: 0 rows" in finding.detail and "1 of 3 day(s)" in finding.detail
    assert "2024-06-02" not in finding.detail
    saved = json.loads((tmp_path / "report" / "validation.json").read_text(encoding="utf-8"))
    [rule] = [e for e in saved["values"]["validation_results"][0]["expectations"] if e["expectation_type"] == ROW_COUNT]
    assert rule["result"]["observed_value"] == {"2024-06-01": 0, "2024-06-02": 10, "2024-06-03": 10}
    assert not rule["success"] and not saved["values"]["success"]
    assert not (tmp_path / "raw").exists()


def test_every_day_within_its_bounds_passes(tmp_path: Path) -> None:
    result = _gate(tmp_path, [10, 10, 10], (5, 50))
    assert isinstance(result, dict) and result["success"], result
    assert result["published"] == 3


def test_an_empty_day_from_a_missing_file_is_accepted_when_the_bounds_allow_zero(tmp_path: Path) -> None:
    result = _gate(tmp_path, [0, 10, 10], (0, 50))
    assert isinstance(result, dict) and result["success"], result
    assert result["published"] == 3


def test_a_day_above_its_bounds_is_named(tmp_path: Path) -> None:
    err = _gate(tmp_path, [10, 60, 10], (5, 50))
    assert isinstance(err, ValidationFailed), err
    assert "day 2024-06-02: 60 rows" in str(err)


def test_days_counted_in_groups_give_the_finding_of_one_pass(tmp_path: Path) -> None:
    # 1,000 rows a group at most: the empty day and the next share one group, the last its own.
    one = _gate(tmp_path / "one", [0, 600, 600], (5, 5000))
    grouped = _gate(tmp_path / "groups", [0, 600, 600], (5, 5000), chunk_rows=1000)
    assert isinstance(one, ValidationFailed) and isinstance(grouped, ValidationFailed), (one, grouped)
    assert len(json.loads((tmp_path / "groups" / "report" / "groups.json").read_text(encoding="utf-8"))) == 2
    assert grouped.report.summary() == one.report.summary()
    assert "day 2024-06-01: 0 rows" in str(grouped)


@pytest.mark.parametrize(
    ("parts", "success"),
    [([{"2024-06-01": 7}, {"2024-06-02": 9}], True), ([{"2024-06-01": 7}, {"2024-06-02": 0, "2024-06-03": 8}], False)],
)
def test_groups_add_their_days_under_the_same_bounds(parts: list[dict[str, int]], success: bool) -> None:
    merged: dict = {}
    for part in parts:
        merge_into(merged, [rows_per_day_outcome(part, 5, 50)])
    [outcome] = merged.values()
    assert outcome.success is success
    assert outcome.kwargs == {"min_value": 5, "max_value": 50}, "a day's bounds, never summed over the groups"
    assert outcome.result["observed_value"] == {k: v for part in parts for k, v in part.items()}
