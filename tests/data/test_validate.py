"""Data tests: the Great Expectations gate of ``pipelines.steps.validate`` on a real day of flights.

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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import Params, load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.steps.collect import collect
from pipelines.steps.validate import ValidationFailed, _day_groups, publish, validate_batch, validate_frame

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
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
    return validate_batch(params.dataset, params.validation, dirs.staging, DAYS, dirs.raw, dirs.report, dirs.quarantine)


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
    report = validate_frame(frame, day.params.dataset, day.params.validation, tmp_path, first_day=DAY, last_day=DAY)
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
    report = validate_frame(staged, params.dataset, params.validation, tmp_path / "report", schema_only=True)
    assert report.success, report.summary()


# --------------------------------------------------------------------------- a long batch, in groups of days

WINDOW = [dt.date(2013, 7, 2), dt.date(2013, 7, 3), DAY]  # 945, 983 and 737 flights
ONE_PASS = 10_000_000  # validate.chunk_rows that holds the whole window in one group


@dataclass(frozen=True)
class Window:
    params: Params
    frames: dict[dt.date, pd.DataFrame]  # the good partition of each day of WINDOW


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> Window:
    params = load_params(PARAMS_FILE)
    staging = tmp_path_factory.mktemp("collected-window")
    collect(params.dataset, dt.date(2026, 7, 4), staging, tmp_path_factory.mktemp("unused-raw"), len(WINDOW))
    return Window(params, {d: pd.read_parquet(partition_path(staging, d)) for d in WINDOW})


def _gate_days(
    params: Params, frames: dict[dt.date, pd.DataFrame], root: Path, chunk_rows: int
) -> tuple[RunDirs, dict | ValidationFailed]:
    """Stage the days under ``root`` and gate them: the result, or the failure."""
    dirs = RunDirs(root / "staging", root / "raw", root / "report", root / "quarantine")
    for d, frame in frames.items():
        write_partition(frame, partition_path(dirs.staging, d), params.dataset.key_columns)
    params = params.with_overrides({"validate.chunk_rows": chunk_rows})
    days = [d.isoformat() for d in frames]
    try:
        return dirs, validate_batch(
            params.dataset, params.validation, dirs.staging, days, dirs.raw, dirs.report, dirs.quarantine
        )
    except ValidationFailed as err:
        return dirs, err


def test_days_are_grouped_within_chunk_rows(window: Window, tmp_path: Path) -> None:
    paths = [write_partition(f, partition_path(tmp_path, d), ()) for d, f in window.frames.items()]
    sizes = [[len(g.days) for g in _day_groups(WINDOW, paths, rows)] for rows in (ONE_PASS, 1928, 1927, 1719)]
    assert sizes == [[3], [2, 1], [1, 2], [1, 1, 1]]
    # A day larger than chunk_rows is a group of its own, never split.
    assert [g.rows for g in _day_groups(WINDOW, paths, 100)] == [945, 983, 737]


def test_batch_in_groups_passes_and_is_published_like_one_group(window: Window, tmp_path: Path) -> None:
    one_dirs, one = _gate_days(window.params, window.frames, tmp_path / "one", ONE_PASS)
    dirs, result = _gate_days(window.params, window.frames, tmp_path / "groups", 1000)
    assert isinstance(one, dict) and isinstance(result, dict), (one, result)
    assert result["success"] is True and result["failures"] == [] and result["warnings"] == one["warnings"]
    assert (result["rows"], result["evaluated"], result["published"]) == (2665, one["evaluated"], 3)
    for d in WINDOW:
        assert partition_path(dirs.raw, d).read_bytes() == partition_path(dirs.staging, d).read_bytes()
        beside = json.loads((partition_path(dirs.raw, d).parent / "validation.json").read_text(encoding="utf-8"))
        assert beside["report"] == result["result_json"]
    assert not dirs.quarantine.exists()
    # One group keeps the layout of a nightly run; groups add a folder each under one report.
    assert not list(one_dirs.report.glob("part-*"))
    assert one["result_json"] == str(one_dirs.report / "validation.json")
    assert result["result_json"] == str(dirs.report / "validation.json")
    assert result["data_docs"] == str(dirs.report / "data_docs" / "index.html")
    groups = json.loads((dirs.report / "groups.json").read_text(encoding="utf-8"))
    assert [(g["part"], g["first_day"], g["rows"]) for g in groups] == [
        ("part-000", "2013-07-02", 945),
        ("part-001", "2013-07-03", 983),
        ("part-002", "2013-07-04", 737),
    ]
    for g in groups:
        assert Path(g["result_json"]).is_file() and Path(g["data_docs"]).is_file()
        assert f'href="../{g["part"]}/data_docs/index.html"' in Path(result["data_docs"]).read_text(encoding="utf-8")
    assert _failed_rule(Path(result["result_json"])) == set()


def _defects_in_later_groups(frames: dict[dt.date, pd.DataFrame]) -> dict[dt.date, pd.DataFrame]:
    first, second, last = (frames[d].copy() for d in WINDOW)
    second.loc[second.index[:3], "month"] = 13
    for f in (second, last):
        f.loc[f.index[:2], "distance"] = -f.loc[f.index[:2], "distance"]
    last.loc[last.index[5], "flight_date"] = pd.Timestamp("2013-07-05")
    # 15 unseen origins and 60 missing carriers: over the shares allowed (1%, 5%) in the last day
    # alone (2.0%, 8.1%), within them in the batch (0.6%, 2.3%), which passes both as in one pass.
    last.loc[last.index[10:25], "origin"] = "SWF"
    last.loc[last.index[30:90], "carrier"] = None
    return dict(zip(WINDOW, (first, second, last), strict=True))


def test_bad_values_in_later_groups_fail_as_in_one_pass(window: Window, tmp_path: Path) -> None:
    frames = _defects_in_later_groups(window.frames)
    _, one = _gate_days(window.params, frames, tmp_path / "one", ONE_PASS)
    dirs, grouped = _gate_days(window.params, frames, tmp_path / "groups", 1928)  # 2 and 1 days
    assert isinstance(one, ValidationFailed) and isinstance(grouped, ValidationFailed), (one, grouped)
    assert grouped.report.summary() == one.report.summary()
    message = str(grouped)
    for fragment in (
        "failed: 3 of",
        "column 'month': expect_column_values_to_be_between (ranges, stop): expected min_value=1.0, max_value=12.0; "
        "3 of 2665 rows (0.11%) break it; e.g. [13, 13, 13]",
        "column 'distance': expect_column_values_to_be_between (ranges, stop)",
        "4 of 2665 rows (0.15%) break it",
        "min_value=2013-07-02 00:00:00, max_value=2013-07-04 23:59:59.999999; 1 of 2665 rows",
    ):
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "column 'origin'" not in message and "column 'carrier'" not in message
    # The last group alone breaks the category and null shares: its own result says so.
    assert ("expect_column_values_to_be_in_set", "origin") in _failed_rule(dirs.report / "part-001" / "validation.json")
    assert _failed_rule(dirs.report / "validation.json") == {
        ("expect_column_values_to_be_between", "month"),
        ("expect_column_values_to_be_between", "distance"),
        ("expect_column_values_to_be_between", "flight_date"),
    }
    assert not dirs.raw.exists()
    assert (dirs.quarantine / "attempt-0" / "report" / "part-001" / "data_docs" / "index.html").is_file()


@pytest.mark.parametrize("case", ["missing-column", "strings-in-numeric"])
def test_schema_error_in_a_later_group_stops_the_batch(case: str, window: Window, tmp_path: Path) -> None:
    defect, _, expected = BAD_BATCHES[case]
    frames = dict(window.frames)
    frames[WINDOW[1]] = defect(frames[WINDOW[1]])
    dirs, err = _gate_days(window.params, frames, tmp_path, ONE_PASS)  # a day unlike the others is a group apart
    assert isinstance(err, ValidationFailed), err
    message = str(err)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "[values]" not in message
    assert err.report.rows == 2665
    assert [g["part"] for g in json.loads((dirs.report / "groups.json").read_text(encoding="utf-8"))] == [
        "part-000",
        "part-001",
    ]
    assert not (dirs.report / "part-002").exists()  # the last day was never read
    assert not dirs.raw.exists()


def test_group_with_a_weather_column_all_missing_reads_with_the_batch_types(window: Window, tmp_path: Path) -> None:
    frames = dict(window.frames)
    last = frames[DAY].copy()
    last["wind_gust"] = pd.Series([None] * len(last), dtype=object)  # stored with Arrow's null type
    frames[DAY] = last
    dirs, result = _gate_days(window.params, frames, tmp_path, 1928)
    assert pq.read_schema(partition_path(dirs.staging, DAY)).field("wind_gust").type == pa.null()
    assert isinstance(result, dict) and result["success"], result
    # Read alone, the day would be an object column of Nones, whose type check passes only vacuously;
    # with the batch's schema it is the float column of the other days, and its dtype is what is checked.
    described = json.loads((dirs.report / "part-001" / "validation.json").read_text(encoding="utf-8"))
    [type_check] = [
        e
        for run in described["schema"]["validation_results"]
        for e in run["expectations"]
        if e["expectation_type"] == "expect_column_values_to_be_in_type_list" and e["kwargs"]["column"] == "wind_gust"
    ]
    assert type_check["success"] and type_check["result"]["observed_value"] == "float64"


def test_duplicate_keys_across_groups_are_found_without_the_time_column(window: Window, tmp_path: Path) -> None:
    # A key without the time column: a group's suite cannot see its key repeated in another group.
    params = window.params.with_overrides(
        {"dataset.key_columns": ["carrier", "flight", "origin", "sched_dep_time", "day"]}
    )
    frames = dict(window.frames)
    copies = frames[WINDOW[0]].head(5).assign(flight_date=pd.Timestamp(DAY))  # "day" still says the 2nd
    frames[DAY] = pd.concat([frames[DAY], copies], ignore_index=True)
    _, one = _gate_days(params, frames, tmp_path / "one", ONE_PASS)
    dirs, grouped = _gate_days(params, frames, tmp_path / "groups", 1928)  # 2 and 1 days
    assert isinstance(one, ValidationFailed) and isinstance(grouped, ValidationFailed), (one, grouped)
    assert [(f.rule, f.check, f.severity) for f in grouped.report.failures] == [
        ("expect_compound_columns_to_be_unique", "duplicates", "stop")
    ]
    assert "10 of 2670 rows (0.37%) break it" in str(grouped)
    assert grouped.report.summary() == one.report.summary()
    for part in ("part-000", "part-001"):
        assert _failed_rule(dirs.report / part / "validation.json") == set()  # each group alone is unique
