"""A team's own daily files, read as the ``files`` source promises (``dataset.source`` in ``params.yaml``).

* Typed by ``dataset.schema``, never by their content: each day's file alone cannot say
  that an empty column is text or that a column of "1"s is not an int. Int columns are
  pandas' nullable ``Int64`` in every day, with or without a gap, so days read together
  agree. A value that fits no type leaves its column as delivered, for the validation
  gate's schema check to refuse, with a warning naming the values.
* CSV read strictly: a row with missing or extra fields, or a last line without its
  newline (a file cut short), is refused naming the file and the line.
* Refused before loading when a day's files hold more rows than a day may.
* Checked against the producer's completeness signal when one is configured: a
  ``<file>.rows`` or ``<file>.sha256`` sidecar, or a marker file for the day.
* A day without files is an error, or an empty day (``missing_day: empty``).
* A message about a bad row or value never quotes it when the data set declares
  sensitive columns (``dataset.sensitive``).
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipelines.config import DatasetConfig, FilesSource
from pipelines.data.privacy import WITHHELD
from pipelines.errors import CollectError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# Sidecars a producer writes beside a file to say it is whole (dataset.source.completeness).
_SIDECARS = {"rows_sidecar": ".rows", "sha256_sidecar": ".sha256"}
# pandas dtypes of a day read from files: int columns are nullable in every day, with or without
# a gap, so that days read together (pyarrow keeps the first day's dtype) always agree.
_FILE_DTYPES = {"int": "Int64", "float": "float64", "string": object, "date": "datetime64[ns]"}
_SAMPLE = 5  # bad values quoted in an error


def source_files(src: FilesSource, day: dt.date) -> list[str]:
    """The day's files, sorted (without the completeness sidecars)."""
    suffix = _SIDECARS.get(src.completeness)
    paths = glob.glob(src.path_template.format(date=day))
    return sorted(p for p in paths if suffix is None or not p.endswith(suffix))


def _count_rows(path: str, fmt: str) -> int:
    """Rows in a file without loading it: Parquet metadata, or a streamed line count for CSV."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        lines = 0
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                lines += block.count(b"\n")
        return max(lines - 1, 0)  # the header
    except Exception as err:
        raise CollectError(f"{path}: cannot be read as {fmt}: {err}") from None


def _ends_at_a_record(path: str) -> None:
    """Refuse a CSV file whose last line has no newline: it was cut short (a partial upload, a full disk)."""
    with open(path, "rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            raise CollectError(f"{path}: the file is empty")
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
    line = _count_rows(path, "csv") + 2
    raise CollectError(
        f"{path}: cannot be read as csv: line {line}: the file does not end with a newline, "
        "its last record is cut short (a partial upload?); refused"
    )


def _bad_row_line(path: str, options: object) -> int | None:
    """The line of the first row with a wrong number of fields (a single-threaded pass: rows are numbered)."""
    import pyarrow.csv as pacsv

    found: list[int] = []

    def first(row: object) -> str:
        found.append(row.number)
        return "error"

    try:
        pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=first),
            convert_options=options,
        )
    except Exception:  # noqa: S110 - the first pass has the error; only its line is wanted here
        pass
    return found[0] if found else None


def _read_csv(path: str, spec: DatasetConfig) -> tuple[pd.DataFrame, int]:
    """A CSV file read strictly: every row has every field, and the file ends at a record.

    Schema columns are read as text and typed by :func:`_typed`, never by their content.

    Returns:
        The rows (schema columns as text), and the line of the first row (for messages).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    _ends_at_a_record(path)
    bad: list[tuple[int, int, str]] = []

    def refuse(row: object) -> str:
        bad.append((row.expected_columns, row.actual_columns, row.text))
        return "error"

    options = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in spec.schema_}, strings_can_be_null=True, quoted_strings_can_be_null=True
    )
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=refuse),
            convert_options=options,
        )
    except pa.ArrowInvalid as err:
        if bad:
            expected, actual, text = bad[0]
            line = _bad_row_line(path, options)
            where = f"line {line}" if line else "a row"
            raise CollectError(
                f"{path}: cannot be read as csv: {where} has {actual} fields, not {expected} "
                f"(a row cut short or with extra fields): {_quoted(text, spec)}; refused"
            ) from None
        if "invalid UTF8" in str(err):
            raise CollectError(f"{path}: not valid UTF-8 text ({err})") from None
        if "Empty CSV file" in str(err):
            raise CollectError(f"{path}: the file is empty") from None
        raise CollectError(f"{path}: cannot be read as csv: {err}") from None
    return _numbers_cast(table, spec).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), 2


def _quoted(text: str, spec: DatasetConfig) -> str:
    """A bad row's text for a message, unless the data set has sensitive columns it could show."""
    return WITHHELD if spec.sensitive else repr(text[:80])


def _numbers_cast(table: pa.Table, spec: DatasetConfig) -> pa.Table:
    """Numeric schema columns cast in Arrow where every value fits (many times faster than in pandas).

    A column with a value that does not fit stays text, for :func:`_typed` to find and name it.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    targets = {"int": pa.int64(), "float": pa.float64()}
    for i, name in enumerate(table.column_names):
        target = targets.get(spec.schema_.get(name, ""))
        if target is not None:
            try:
                table = table.set_column(i, name, pc.cast(table.column(i), target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    return table


def _read_parquet(path: str) -> tuple[pd.DataFrame, int]:
    try:
        return pd.read_parquet(path), 0
    except Exception as err:  # pyarrow raises many kinds
        raise CollectError(f"{path}: cannot be read as parquet: {err}") from None


def _as_kind(col: pd.Series, kind: str, date_format: str | None) -> tuple[pd.Series, pd.Series | None]:
    """``col`` as the schema's ``kind``, where that loses nothing.

    Returns:
        The column converted, and a mask of the values that cannot be (None when all can).
        A column of another type (booleans for an int, say) is returned as it is, for
        validation's type check to name.
    """
    api = pd.api.types
    text = api.is_object_dtype(col) or api.is_string_dtype(col)
    if kind in ("string", "date") and not text and col.isna().all():
        # A column with no value at all, typed by its producer's tooling (float NaN): nothing to lose.
        missing = [None if kind == "string" else pd.NaT] * len(col)
        return pd.Series(missing, index=col.index, dtype=_FILE_DTYPES[kind]), None
    if kind == "string":
        if text:
            return col.astype(object).where(col.notna(), None), None
        if api.is_integer_dtype(col):  # codes written as numbers: their text is the same
            return col.astype("Int64").astype("string").astype(object).where(col.notna(), None), None
        return col, None
    if kind == "date":
        if api.is_datetime64_any_dtype(col):
            return col, None
        if not text:
            return col, None
        parsed = pd.to_datetime(col, format=date_format or "ISO8601", errors="coerce")
        bad = col.notna() & parsed.isna()
        return (col, bad) if bad.any() else (parsed.astype("datetime64[ns]"), None)
    if text:
        number = pd.to_numeric(col, errors="coerce")
        bad = col.notna() & number.isna()
    elif api.is_numeric_dtype(col) and not api.is_bool_dtype(col):
        number, bad = col, pd.Series(False, index=col.index)
    else:
        return col, None
    if kind == "int":
        bad |= number.notna() & (number.astype("float64") % 1 != 0)
    if bad.any():
        return col, bad
    return number.astype(_FILE_DTYPES[kind]), None


def _typed(frame: pd.DataFrame, spec: DatasetConfig, path: str, first_line: int) -> pd.DataFrame:
    """The file's rows with the schema's types, where every value of a column fits its type.

    A column with a value that does not fit is left as delivered, with a warning that names
    the values: the validation gate's schema check then refuses the batch naming the column,
    and the batch is quarantined with its report like any other it refuses.

    Args:
        first_line: the line of the first row in a CSV file (0: Parquet, rows are counted from 0).
    """
    src = spec.source
    date_format = src.date_format if isinstance(src, FilesSource) else None
    for name, kind in spec.schema_.items():
        if name not in frame.columns:
            continue  # validation names a missing column
        frame[name], bad = _as_kind(frame[name], kind, date_format)
        if bad is None:
            continue
        values = frame.loc[bad.to_numpy(), name]
        sample = (
            WITHHELD if name in spec.sensitive else ", ".join(repr(v) for v in values.drop_duplicates().head(_SAMPLE))
        )
        where = f"line {values.index[0] + first_line}" if first_line else f"row {values.index[0]}"
        fmt = f" with date_format {date_format!r}" if kind == "date" and date_format else ""
        log.warning(
            "%s: column %r (%s in dataset.schema): %d value(s) cannot be read as %s%s, e.g. %s (first at %s); "
            "the column is left as delivered, for the validation gate to refuse",
            path,
            name,
            kind,
            len(values),
            kind,
            fmt,
            sample,
            where,
        )
    return frame


def _check_complete(src: FilesSource, path: str, rows: int) -> None:
    """The producer's word that the file is whole, where ``completeness`` asks for one."""
    if src.completeness not in _SIDECARS:
        return
    sidecar = Path(path + _SIDECARS[src.completeness])
    if not sidecar.is_file():
        raise CollectError(
            f"{sidecar}: missing (dataset.source.completeness is {src.completeness}): "
            f"{path} is not known to be complete; refused"
        )
    words = sidecar.read_text(encoding="utf-8").split()
    if src.completeness == "rows_sidecar":
        if len(words) != 1 or not words[0].isdigit():
            raise CollectError(f"{sidecar}: holds {' '.join(words)[:40]!r}, not a number of rows")
        if int(words[0]) != rows:
            raise CollectError(
                f"{path}: {rows} rows, its sidecar says {words[0]}: the file is incomplete (or the sidecar wrong); refused"
            )
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    expected = words[0].lower() if words else ""
    if digest.hexdigest() != expected:
        raise CollectError(
            f"{path}: sha256 {digest.hexdigest()[:16]}... does not match its sidecar's {expected[:16] or 'nothing'}...: "
            "the file is incomplete or changed; refused"
        )


def _empty_day(spec: DatasetConfig) -> pd.DataFrame:
    """No rows, the schema's columns with the types a day read from files has."""
    return pd.DataFrame({c: pd.Series(dtype=_FILE_DTYPES[k]) for c, k in spec.schema_.items()})


def read_day(spec: DatasetConfig, day: dt.date, max_rows: int | None = None) -> pd.DataFrame:
    """The rows of ``day``'s files, typed by ``dataset.schema``.

    Args:
        spec: the data set; its source is a :class:`~pipelines.config.FilesSource`.
        day: the source day.
        max_rows: the most rows one day may hold: the day's files are refused, before
            loading, when their row counts (Parquet footers, CSV lines) add up to more.

    Returns:
        The day's rows; an empty frame of the schema's columns for a day without files
        when ``missing_day`` is ``empty``.

    Raises:
        CollectError: naming the file, when the day is not ready, a file is missing,
            partial, too large, unreadable or disowned by its sidecar.
    """
    src = spec.source
    if src.completeness == "marker" and not Path(src.marker_path(day)).is_file():
        raise CollectError(
            f"{day} is not ready: no {src.marker_path(day)} (dataset.source.completeness is marker); "
            "the producer has not finished the day"
        )
    paths = source_files(src, day)
    if not paths:
        if src.missing_day == "empty":
            log.info("no file for %s: an empty day (dataset.source.missing_day is empty)", day)
            return _empty_day(spec)
        raise CollectError(f"no file matches {src.path_template.format(date=day)!r} for {day}")
    if max_rows is not None:
        counts = [_count_rows(p, src.format) for p in paths]
        if sum(counts) > max_rows:
            files = ", ".join(f"{p}: {n} rows" for p, n in zip(paths, counts, strict=True))
            total = f" ({sum(counts)} in all)" if len(paths) > 1 else ""
            raise CollectError(
                f"{files}{total} for {day}, above the most a day may hold "
                f"(validate.rows_per_day max {max_rows}); not loaded"
            )
    frames = []
    for path in paths:
        frame, first_line = _read_csv(path, spec) if src.format == "csv" else _read_parquet(path)
        _check_complete(src, path, len(frame))
        frames.append(_typed(frame, spec, path, first_line))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
