"""Data tests: the Great Expectations gate of ``pipelines.validate`` on a real day of flights.

One day (2013-07-04) is collected once per module; each bad batch is that day
with one defect. Every validation is a real Great Expectations run (~1 s).
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipelines.collect import collect, partition_path, write_partition
from pipelines.config import Params, load_params
from pipelines.validate import ValidationFailed, publish, validate_batch, validate_frame

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
DAY = dt.date(2013, 7, 4)
DAYS = [DAY.isoformat()]


@dataclass(frozen=True)
class Day:
    params: Params
    staging: Path  # the staged, good partition of DAY
    frame: pd.DataFrame


@dataclass(frozen=True)
class RunDirs:
    staging: Path
    raw: Path
    report: Path
    quarantine: Path


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    params = load_params(PARAMS_FILE)
    staging = tmp_path_factory.mktemp("collected")
    collect(params.dataset, dt.date(2026, 7, 4), staging, tmp_path_factory.mktemp("unused-raw"))
    return Day(params, staging, pd.read_parquet(partition_path(staging, DAY)))


@pytest.fixture
def dirs(tmp_path: Path) -> RunDirs:
    """The folders of one run: its staging and report folders, the shared raw and quarantine."""
    return RunDirs(tmp_path / "staging", tmp_path / "raw", tmp_path / "report", tmp_path / "quarantine" / "run-1")


def _stage(frame: pd.DataFrame, dirs: RunDirs, params: Params) -> Path:
    return write_partition(frame, partition_path(dirs.staging, DAY), params.dataset.key_columns)


def _gate(params: Params, dirs: RunDirs) -> dict:
    return validate_batch(params, dirs.staging, DAYS, dirs.raw, dirs.report, dirs.quarantine)


# --------------------------------------------------------------------------- a good day


def test_good_day_passes_and_is_published(day: Day, dirs: RunDirs) -> None:
    result = _gate(day.params, RunDirs(day.staging, dirs.raw, dirs.report, dirs.quarantine))
    assert result["success"] is True
    assert result["failures"] == []
    assert result["rows"] == len(day.frame)
    assert result["published"] == 1
    assert result["evaluated"] > 30  # both phases ran
    published = partition_path(dirs.raw, DAY)
    assert published.read_bytes() == partition_path(day.staging, DAY).read_bytes()
    assert Path(result["result_json"]).is_file()
    assert Path(result["data_docs"]).is_file()
    assert not dirs.quarantine.exists()


def test_unseen_categories_within_the_share_pass(day: Day, tmp_path: Path) -> None:
    frame = day.frame.copy()
    frame.loc[frame.index[:3], "origin"] = "SWF"  # 3 of ~740 rows, under the 1% allowed
    report = validate_frame(frame, day.params.dataset, day.params.validate_, tmp_path, first_day=DAY, last_day=DAY)
    assert report.success, report.summary()


# --------------------------------------------------------------------------- bad batches


def _unseen_origins(f: pd.DataFrame) -> pd.DataFrame:
    f = f.copy()
    f.loc[f.index[: len(f) // 20], "origin"] = "SWF"  # 5% of the rows
    return f


def _month_13(f: pd.DataFrame) -> pd.DataFrame:
    f = f.copy()
    f.loc[f.index[:5], "month"] = 13
    return f


def _negative_distance(f: pd.DataFrame) -> pd.DataFrame:
    f = f.copy()
    f.loc[f.index[:3], "distance"] = -f.loc[f.index[:3], "distance"]
    return f


def _outside_interval(f: pd.DataFrame) -> pd.DataFrame:
    f = f.copy()
    f.loc[f.index[0], "flight_date"] = pd.Timestamp("2013-07-03")
    f.loc[f.index[1], "flight_date"] = pd.Timestamp("2013-07-05")
    return f


BAD_BATCHES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, list[str]]] = {
    # name: (defect, phase, what the message must name)
    "missing-column": (
        lambda f: f.drop(columns=["distance"]),
        "schema",
        ["expect_table_columns_to_match_set", "missing columns ['distance']"],
    ),
    "renamed-column": (
        lambda f: f.rename(columns={"distance": "distance_miles"}),
        "schema",
        ["expect_table_columns_to_match_set", "missing columns ['distance']", "unexpected columns ['distance_miles']"],
    ),
    "extra-column": (
        lambda f: f.assign(gate="B12"),
        "schema",
        ["expect_table_columns_to_match_set", "unexpected columns ['gate']"],
    ),
    "strings-in-numeric": (
        lambda f: f.assign(distance="far"),
        "schema",
        ["column 'distance'", "expect_column_values_to_be_in_type_list", "'far'"],
    ),
    "negative-distance": (
        _negative_distance,
        "values",
        ["column 'distance'", "expect_column_values_to_be_between", "min_value=1.0", "3 of"],
    ),
    "month-13": (
        _month_13,
        "values",
        ["column 'month'", "expect_column_values_to_be_between", "max_value=12.0", "5 of"],
    ),
    "unseen-origins": (
        _unseen_origins,
        "values",
        ["column 'origin'", "expect_column_values_to_be_in_set", "allowed=['EWR', 'JFK', 'LGA']", "'SWF'"],
    ),
    "duplicated-rows": (
        lambda f: pd.concat([f, f.head(10)], ignore_index=True),
        "values",
        [
            "expect_compound_columns_to_be_unique",
            "column_list=['flight_date', 'carrier', 'flight', 'origin', 'sched_dep_time']",
            "20 of",
        ],
    ),
    "dates-outside-interval": (
        _outside_interval,
        "values",
        ["column 'flight_date'", "expect_column_values_to_be_between", "2013-07-04 00:00:00", "2 of"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batch_fails_naming_column_and_rule(case: str, day: Day, dirs: RunDirs) -> None:
    defect, phase, expected = BAD_BATCHES[case]
    _stage(defect(day.frame), dirs, day.params)
    with pytest.raises(ValidationFailed) as err:
        _gate(day.params, dirs)
    message = str(err.value)
    assert message.startswith("failed: ")
    assert f"[{phase}]" in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    if phase == "schema":
        assert "[values]" not in message  # a broken schema stops before the value checks
    assert not err.value.report.success
    assert not partition_path(dirs.raw, DAY).exists()
    assert (dirs.quarantine / "attempt-0" / "batch" / f"date={DAY}" / "part-0.parquet").is_file()


# --------------------------------------------------------------------------- quarantine


def _failed_rule(validation_json: Path) -> set[tuple[str, str]]:
    """(expectation type, column) of every failed expectation in a saved result."""
    described = json.loads(validation_json.read_text(encoding="utf-8"))
    return {
        (e["expectation_type"], e["kwargs"].get("column"))
        for phase in described.values()
        for run in phase["validation_results"]
        for e in run["expectations"]
        if not e["success"]
    }


def test_failed_batch_is_quarantined_with_its_report_and_raw_is_unchanged(day: Day, dirs: RunDirs) -> None:
    publish(day.staging, [DAY], dirs.raw)  # an earlier run published this day
    published = partition_path(dirs.raw, DAY)
    before = published.read_bytes()

    first_bad = _stage(_month_13(day.frame), dirs, day.params).read_bytes()
    with pytest.raises(ValidationFailed) as err:
        _gate(day.params, dirs)
    first = dirs.quarantine / "attempt-0"
    assert str(first) in str(err.value)
    assert (first / "batch" / f"date={DAY}" / "part-0.parquet").read_bytes() == first_bad
    assert (first / "report" / "validation.json").is_file()
    assert (first / "report" / "data_docs" / "index.html").is_file()
    assert _failed_rule(first / "report" / "validation.json") == {("expect_column_values_to_be_between", "month")}
    assert published.read_bytes() == before
    assert sorted(p.name for p in dirs.raw.iterdir()) == [f"date={DAY}"]

    # The same run fails again (a retry with other bad data): a new attempt, the first one kept.
    first_files = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    second_bad = _stage(_negative_distance(day.frame), dirs, day.params).read_bytes()
    with pytest.raises(ValidationFailed) as err:
        _gate(day.params, dirs)
    second = dirs.quarantine / "attempt-1"
    assert str(second) in str(err.value)
    assert (second / "batch" / f"date={DAY}" / "part-0.parquet").read_bytes() == second_bad
    assert _failed_rule(second / "report" / "validation.json") == {("expect_column_values_to_be_between", "distance")}
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == first_files
    assert sorted(p.name for p in dirs.quarantine.iterdir()) == ["attempt-0", "attempt-1"]
    assert published.read_bytes() == before


# --------------------------------------------------------------------------- other sources


def test_day_collected_from_csv_passes_the_schema(day: Day, tmp_path: Path) -> None:
    landing = tmp_path / "landing" / DAY.isoformat()
    landing.mkdir(parents=True)
    day.frame.to_csv(landing / "flights.csv", index=False)
    params = day.params.with_overrides(
        {
            "dataset.source": {
                "kind": "files",
                "path_template": str(tmp_path / "landing" / "{date:%Y-%m-%d}" / "*.csv"),
                "format": "csv",
            }
        }
    )
    collect(params.dataset, DAY, tmp_path / "staging", tmp_path / "raw")
    staged = pd.read_parquet(partition_path(tmp_path / "staging", DAY))
    report = validate_frame(staged, params.dataset, params.validate_, tmp_path / "report", schema_only=True)
    assert report.success, report.summary()
