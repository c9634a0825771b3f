"""The row-count rule, counted per day: every day of a batch against the bounds of a day.

Great Expectations counts a table's rows, not a day's; the gate counts each staged day
here (from its partition footer, or from the time column) and adds one outcome, naming
the days outside the bounds (:func:`pipelines.validation.results.rows_per_day_outcome`),
to the suite's results.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from pipelines.config import DatasetConfig, ValidateConfig
from pipelines.validation.results import Outcome, rows_per_day_outcome
from pipelines.validation.suite import row_count_bounds

ALL_DAYS = "all days"  # the row count's key when the frame's days are unknown


def rows_per_day(
    frame: pd.DataFrame, spec: DatasetConfig, n_days: int, first_day: dt.date | None, last_day: dt.date | None
) -> dict[dt.date | str, int]:
    """Each day's rows, counted from the time column over the days ``first_day`` to ``last_day``.

    A day of the interval without rows counts 0; rows outside it are the interval rule's to report.
    One day: every row is its. Without an interval: the whole frame, as ``n_days`` days.
    """
    if first_day is None or last_day is None:
        return {ALL_DAYS: len(frame)}
    if first_day == last_day:
        return {first_day: len(frame)}
    days = [first_day + dt.timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    stamps = pd.to_datetime(frame[spec.time_column], errors="coerce").dt.normalize()
    counts = stamps.value_counts()
    return {d: int(counts.get(pd.Timestamp(d), 0)) for d in days}


def row_count(
    day_rows: dict[dt.date | str, int], cfg: ValidateConfig, reference: dict[str, Any] | None, n_days: int
) -> Outcome:
    """The row-count rule: every day within a day's bounds (a frame of unknown days: ``n_days`` times them)."""
    lo, hi = row_count_bounds(cfg, reference)
    if list(day_rows) == [ALL_DAYS]:
        lo, hi = lo * n_days, hi * n_days
    return rows_per_day_outcome({str(d): n for d, n in day_rows.items()}, lo, hi)


def describe_into(desc: dict[str, Any], outcome: Outcome) -> None:
    """Add an outcome counted here to a checkpoint's ``describe_dict``, so ``validation.json`` holds it."""
    run = (desc.get("validation_results") or [{}])[0]
    desc["validation_results"] = [run, *desc.get("validation_results", [])[1:]]
    run.setdefault("expectations", []).append(outcome.as_dict())
    stats = run.setdefault("statistics", {})
    stats["evaluated_expectations"] = stats.get("evaluated_expectations", 0) + 1
    key = "successful_expectations" if outcome.success else "unsuccessful_expectations"
    stats[key] = stats.get(key, 0) + 1
    stats["success_percent"] = 100.0 * stats.get("successful_expectations", 0) / stats["evaluated_expectations"]
    if not outcome.success and run.get("success", True):
        run["success"] = desc["success"] = False
        totals = desc.setdefault("statistics", {})
        totals["successful_validations"] = max(totals.get("successful_validations", 1) - 1, 0)
        totals["unsuccessful_validations"] = totals.get("unsuccessful_validations", 0) + 1
        totals["success_percent"] = (
            100.0 * totals["successful_validations"] / max(totals.get("evaluated_validations", 1), 1)
        )
