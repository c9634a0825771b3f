"""What was served: every row's features, scores and versions, kept as dated Parquet partitions.

The response path only puts a :class:`Served` record on a bounded queue. One
background thread (:class:`Recorder`) takes the records off it, scores them
with the shadow version when there is one (off the response path: the shadow
never delays or changes an answer), and appends them to
``<data>/served/date=YYYY-MM-DD/part-*.parquet`` in files of at most
``serve.log_batch_rows`` rows, at least every ``serve.log_flush_seconds``,
and on shutdown. A day reads back with ``pd.read_parquet(<data>/served/date=...)``.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.serving.metrics import ServiceMetrics
from pipelines.serving.schema import Rows
from pipelines.serving.versions import ServedModel

log = logging.getLogger(__name__)

SERVED_DIR = "served"
_DTYPES = {"int": "int64", "float": "float64", "string": "string"}
GROUP_REQUESTS = 256  # requests taken off the queue at once (one shadow call for them all)
# The thread wakes at most this often: each wake-up takes the GIL from the requests, and one
# wake-up per request (hundreds a second) cost them more than recording a batch of them at once.
GROUP_SECONDS = 0.05
MERGE_REQUESTS = 64  # buffered requests' columns merged as they come, so a flush has few pieces to join


def served_dir(data_dir: Path) -> Path:
    """The folder of the served log: ``<data>/served``."""
    return data_dir / SERVED_DIR


@dataclass(frozen=True)
class Served:
    """One answered request, as the response path hands it over."""

    request_id: str
    served_at: dt.datetime  # UTC
    rows: Rows | list[dict[str, Any]]  # columns from the request path; dicts of raw values also do
    probabilities: np.ndarray
    model: ServedModel


_NS_PER_DAY = 86_400 * 10**9
_EPOCH = dt.date(1970, 1, 1)


class ServedLog:
    """Buffers rows and writes them to the partition of the day they were served."""

    def __init__(self, root: Path, schema: dict[str, str]) -> None:
        """
        Args:
            root: ``<data>/served``.
            schema: feature -> its kind in ``dataset.schema`` (int, float, string): every file gets the same types.
        """
        self.root = root
        self.columns = tuple(schema)
        self.kinds = dict(schema)
        self.dtypes = {col: _DTYPES[kind] for col, kind in schema.items()}
        self._pending: list[tuple[Served, ServedModel | None, np.ndarray | None]] = []
        self._rows: list[Rows] = []  # the pending requests' rows, merged MERGE_REQUESTS at a time
        self._unmerged = 0
        self.buffered = 0

    def rows_of(self, record: Served) -> Rows:
        """A record's rows as columns."""
        return record.rows if isinstance(record.rows, Rows) else Rows.from_records(record.rows, self.kinds)

    def append(self, record: Served, shadow: ServedModel | None, shadow_probabilities: np.ndarray | None) -> None:
        """Keep one request's rows (cheap: the frame is built when the buffer is written)."""
        self._pending.append((record, shadow, shadow_probabilities))
        self._rows.append(self.rows_of(record))
        self._unmerged += 1
        if self._unmerged == MERGE_REQUESTS:
            self._rows[-MERGE_REQUESTS:] = [Rows.concat(self._rows[-MERGE_REQUESTS:])]
            self._unmerged = 0
        self.buffered += len(record.rows)

    def _frame(self) -> pd.DataFrame:
        """The buffered rows as one frame, built a column at a time with no work per row in Python.

        The served log's thread shares the GIL with the requests: a flush of 5,000 single-row
        requests took about 90 ms of it when built per request, and the requests answered
        meanwhile waited for their turns.
        """
        pending = self._pending
        counts = np.fromiter((len(record.rows) for record, _, _ in pending), dtype=np.int64, count=len(pending))
        starts = np.cumsum(counts) - counts

        def repeat(values: list[Any], dtype: Any = object) -> np.ndarray:
            return np.repeat(np.array(values, dtype=dtype), counts)

        rows = Rows.concat(self._rows)
        served_at = pd.to_datetime([record.served_at for record, _, _ in pending], utc=True)
        columns: dict[str, Any] = {
            "request_id": pd.array(repeat([record.request_id for record, _, _ in pending]), dtype="string"),
            "row": (np.arange(counts.sum()) - np.repeat(starts, counts)).astype(np.int32),
            "served_at": served_at.repeat(counts),
        }
        columns |= {col: rows.columns[col] for col in self.columns}
        probability = np.concatenate([record.probabilities for record, _, _ in pending]).astype(np.float64)
        threshold = repeat([record.model.threshold for record, _, _ in pending], np.float64)
        shadow_probability = np.full(len(probability), np.nan)
        for start, (_, _, scores) in zip(starts, pending, strict=True):
            if scores is not None:
                shadow_probability[start : start + len(scores)] = scores
        columns |= {
            "probability": probability,
            "delayed": probability >= threshold,
            "model_version": pd.array(repeat([record.model.version for record, _, _ in pending]), dtype="string"),
            "threshold": threshold,
            "shadow_probability": shadow_probability,
            "shadow_version": pd.array(
                repeat([shadow.version if shadow is not None else None for _, shadow, _ in pending]), dtype="string"
            ),
        }
        return pd.DataFrame(columns).astype(self.dtypes)

    def flush(self) -> list[Path]:
        """Write what is buffered, one file per day it spans; returns the files written."""
        if not self._pending:
            return []
        frame = self._frame()
        day_numbers = frame["served_at"].array.asi8 // _NS_PER_DAY  # UTC days since 1970-01-01
        first, last = day_numbers.min(), day_numbers.max()
        frames = {
            f"{_EPOCH + dt.timedelta(days=int(day)):%Y-%m-%d}": frame
            if first == last
            else frame[day_numbers == day].reset_index(drop=True)
            for day in np.unique(day_numbers)
        }
        self._pending, self._rows, self._unmerged, self.buffered = [], [], 0, 0
        shadowed = frame[frame["shadow_probability"].notna()]
        if len(shadowed):
            agree = (shadowed["shadow_probability"] >= shadowed["threshold"]) == shadowed["delayed"]
            log.info(
                "shadow: %d rows, mean probability live %.4f, shadow %.4f, decisions agree on %.1f%%",
                len(shadowed),
                shadowed["probability"].mean(),
                shadowed["shadow_probability"].mean(),
                100 * agree.mean(),
            )
        written = []
        for day, part in frames.items():
            folder = self.root / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            # Unique names: several flushes (and service restarts) a day never overwrite each other.
            path = folder / f"part-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = path.with_suffix(".tmp")
            part.to_parquet(tmp, index=False)
            tmp.rename(path)  # a reader never sees half a file
            written.append(path)
        return written


class Recorder:
    """The background thread behind the served log and shadow scoring."""

    def __init__(
        self,
        log_: ServedLog,
        shadow: Any,
        metrics: ServiceMetrics,
        batch_rows: int,
        flush_seconds: float,
        max_queued: int,
    ) -> None:
        """
        Args:
            log_: where rows go.
            shadow: a callable returning the shadow version now, or None.
            batch_rows, flush_seconds: write when this many rows are buffered, or this long after the last write.
            max_queued: requests waiting; beyond this a request is dropped from the log (and counted).
        """
        self.log, self.shadow, self.metrics = log_, shadow, metrics
        self.batch_rows, self.flush_seconds = batch_rows, flush_seconds
        self._queue: queue.Queue[Served | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)

    def start(self) -> None:
        # Imported now, not at the first write: importing the Parquet engine holds the GIL for a
        # good part of a second, which requests answered meanwhile would wait out.
        import pyarrow.parquet  # noqa: F401

        self._thread.start()

    def submit(self, record: Served) -> None:
        """Hand a served request over; never blocks the response."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.metrics.dropped.inc()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain the queue, write everything, stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        last_flush = time.monotonic()
        stopping = False
        while not stopping:
            group: list[Served] = []
            try:
                group.append(self._queue.get(timeout=max(0.0, self.flush_seconds - (time.monotonic() - last_flush))))
                if group[0] is not None:
                    time.sleep(GROUP_SECONDS)  # let the requests of the next moments join this group
                while len(group) < GROUP_REQUESTS:  # whatever else is waiting: one shadow call for all of it
                    group.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            stopping = None in group
            self._record([r for r in group if r is not None])
            if stopping or self.log.buffered >= self.batch_rows or time.monotonic() - last_flush >= self.flush_seconds:
                self._write()
                last_flush = time.monotonic()

    def _record(self, group: list[Served]) -> None:
        if not group:
            return
        shadow: ServedModel | None = self.shadow()
        scores: list[np.ndarray | None] = [None] * len(group)
        if shadow is not None:
            try:
                flat = shadow.score_rows(Rows.concat([self.log.rows_of(record) for record in group]))
                bounds = np.cumsum([0] + [len(record.rows) for record in group])
                scores = [flat[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
                self.metrics.shadow_rows.labels(shadow.version).inc(len(flat))
                for record, theirs in zip(group, scores, strict=True):
                    log.debug(
                        "request %s: live v%s %s, shadow v%s %s",
                        record.request_id,
                        record.model.version,
                        record.probabilities.round(4).tolist(),
                        shadow.version,
                        theirs.round(4).tolist(),
                    )
            except Exception:  # the shadow must never cost the log its rows
                log.exception("shadow v%s failed on %d requests", shadow.version, len(group))
                scores, shadow = [None] * len(group), None
        for record, theirs in zip(group, scores, strict=True):
            self.log.append(record, shadow, theirs)

    def _write(self) -> None:
        try:
            n = self.log.buffered
            paths = self.log.flush()
            if paths:
                self.metrics.logged_rows.inc(n)
                log.info("served log: %d rows written to %s", n, ", ".join(str(p) for p in paths))
        except Exception:  # a full disk must not stop the service answering
            log.exception("served log: could not write %d rows", self.log.buffered)
