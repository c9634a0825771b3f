"""Preprocess: label, time-based split, statistics and sharded TFRecord files.

The training window's published partitions are labelled and split by time:
the last ``holdout_days`` days are the holdout, the ``validation_days``
before them the validation set, the rest the training set. Normalisation
statistics and vocabularies are learnt from the training split only and
baked into the model by :mod:`pipelines.model.network`, so the model takes raw rows.

Each split is written twice: as Parquet (for the scikit-learn baseline,
evaluation and drift references) and as GZIP-compressed TFRecord shards that
:mod:`pipelines.model.tfdata` streams. A TFRecord record holds a block of
``rows_per_record`` rows column by column, which keeps the per-row cost of
serialising and parsing low.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import DatasetConfig, PreprocessConfig
from pipelines.data.partitions import partition_path, partition_rows, partitions_schema, read_partitions
from pipelines.errors import PreprocessError
from pipelines.model.features import LABEL, apply_label_rule, files_fingerprint, to_model_inputs
from pipelines.steps.collect import training_window
from pipelines.validation.suite import REFERENCE_FILE

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "holdout")
STATS_FILE = "stats.json"
# Each numeric column's distribution in the training split, as quantiles at these
# levels (0, 1/256, ..., 1): the model's bucket boundaries come from them
# (pipelines.model.network.boundaries_from_quantiles), so training never reads the split
# whole again. Any bucket count dividing 256 lands on grid points exactly.
QUANTILE_LEVELS = 257
QUANTILE_SEED = 0
MANIFEST_FILE = "manifest.json"


def window_partitions(
    spec: DatasetConfig, raw_dir: Path, end_day: dt.date, window_days: int
) -> tuple[list[dt.date], list[Path]]:
    """The days and published partition files of the window ending on ``end_day`` (source calendar).

    Raises:
        PreprocessError: a day of the window is not published.
    """
    days = training_window(end_day, window_days, spec)
    paths = [partition_path(raw_dir, d) for d in days]
    missing = [d.isoformat() for d, p in zip(days, paths, strict=True) if not p.exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise PreprocessError(
            f"{len(missing)} day(s) of the training window are not in {raw_dir}: {shown}; "
            "collect and validate them first"
        )
    return days, paths


@dataclass(frozen=True)
class SplitDays:
    """Where each split starts: ``train`` < ``validation_start`` <= ``validation`` < ``holdout_start`` <= ``holdout``."""

    validation_start: pd.Timestamp
    holdout_start: pd.Timestamp

    def masks(self, frame: pd.DataFrame, time_column: str) -> dict[str, Any]:
        days = pd.to_datetime(frame[time_column]).dt.normalize()
        return {
            "train": (days < self.validation_start).to_numpy(),
            "validation": ((days >= self.validation_start) & (days < self.holdout_start)).to_numpy(),
            "holdout": (days >= self.holdout_start).to_numpy(),
        }


def split_days(days_with_rows: list[dt.date], cfg: PreprocessConfig) -> SplitDays:
    """The split boundaries from the days that hold data: whole days, counted back from the last.

    Raises:
        PreprocessError: no data, or fewer than ``min_train_days`` days before validation and holdout.
    """
    if not days_with_rows:
        raise PreprocessError("the training window holds no rows")
    last = pd.Timestamp(max(days_with_rows))
    holdout_start = last - pd.Timedelta(days=cfg.split.holdout_days - 1)
    val_start = holdout_start - pd.Timedelta(days=cfg.split.validation_days)
    train_days = sum(1 for d in days_with_rows if pd.Timestamp(d) < val_start)
    if train_days < cfg.split.min_train_days:
        raise PreprocessError(
            f"only {train_days} day(s) of data before the validation and holdout days "
            f"(preprocess.split.min_train_days={cfg.split.min_train_days}); "
            f"the window ends on {last.date()} and its data starts on {min(days_with_rows)}"
        )
    return SplitDays(val_start, holdout_start)


class TrainingStats:
    """Statistics of the training split, fed part by part (whole days each) in the split's order.

    Means and scales, null fractions, vocabularies, the label rate and the
    validation gate's reference come from every row; the numeric quantiles
    from a seeded uniform sample of at most ``quantile_sample_rows`` of the
    ``expected_rows`` rows (every row when there are fewer), so memory stays
    flat as the data grows.
    """

    def __init__(self, spec: DatasetConfig, expected_rows: int, quantile_sample_rows: int = 1_000_000):
        self.spec = spec
        self.rows = 0
        self.positives = 0
        self._sample_at = None
        if expected_rows > quantile_sample_rows:
            rng = np.random.default_rng(QUANTILE_SEED)
            self._sample_at = np.sort(rng.choice(expected_rows, size=quantile_sample_rows, replace=False))
        numeric = spec.features.numeric
        # Per numeric column: count, mean and sum of squared deviations of the finite values
        # (merged part by part with Chan et al.'s formula), the sampled values, min and max.
        self._moments = {col: (0, 0.0, 0.0) for col in numeric}
        self._sampled: dict[str, list] = {col: [] for col in numeric}
        self._range: dict[str, tuple[float, float] | None] = {col: None for col in numeric}
        self._counts: dict[str, dict[str, int]] = {col: {} for col in spec.features.categorical}
        self._seen: dict[str, set[str]] = {col: set() for col in spec.features.categorical}
        self._per_day: dict[Any, int] = {}

    def add(self, part: pd.DataFrame) -> None:
        spec, n = self.spec, len(part)
        if not n:
            return
        inputs = to_model_inputs(part, spec.features)
        take = None
        if self._sample_at is not None:
            lo, hi = np.searchsorted(self._sample_at, [self.rows, self.rows + n])
            take = self._sample_at[lo:hi] - self.rows
        for col in spec.features.numeric:
            x = inputs[col].astype(np.float64)
            finite = x[np.isfinite(x)]
            if finite.size:
                c0, m0, s0 = self._moments[col]
                c1, m1 = finite.size, float(finite.mean())
                s1 = float(((finite - m1) ** 2).sum())
                c = c0 + c1
                delta = m1 - m0
                self._moments[col] = (c, m0 + delta * c1 / c, s0 + s1 + delta * delta * c0 * c1 / c)
            xs = x if take is None else x[take]
            self._sampled[col].append(xs[np.isfinite(xs)])
            raw = pd.to_numeric(part[col], errors="coerce")
            if raw.notna().any():
                lo_, hi_ = float(raw.min()), float(raw.max())
                seen = self._range[col]
                self._range[col] = (lo_, hi_) if seen is None else (min(seen[0], lo_), max(seen[1], hi_))
        for col in spec.features.categorical:
            values, counts = np.unique(inputs[col], return_counts=True)
            acc = self._counts[col]
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                acc[v] = acc.get(v, 0) + c
            self._seen[col].update(part[col].dropna().astype(str).unique().tolist())
        for day, c in pd.to_datetime(part[spec.time_column]).dt.normalize().value_counts().items():
            self._per_day[day] = self._per_day.get(day, 0) + int(c)
        if LABEL in part:
            self.positives += int(part[LABEL].sum())
        self.rows += n

    def add_empty_day(self, day: dt.date) -> None:
        """Count a published day without rows: a sparse source's usual volume includes zero."""
        self._per_day.setdefault(pd.Timestamp(day), 0)

    def stats(self) -> dict[str, Any]:
        """``stats.json``: imputation and scaling statistics, quantiles and vocabularies."""
        levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS)
        numeric, quantiles = {}, {}
        for col, (count, mean, m2) in self._moments.items():
            std = float(np.sqrt(m2 / count)) if count else 1.0
            numeric[col] = {
                "mean": mean if count else 0.0,
                "std": std if std > 0 else 1.0,
                "null_fraction": float(1 - count / max(self.rows, 1)),
            }
            xs = np.concatenate(self._sampled[col]) if self._sampled[col] else np.empty(0)
            quantiles[col] = [float(q) for q in np.quantile(xs, levels)] if xs.size else []
        vocab = {}
        for col, counts in self._counts.items():
            vocab[col] = sorted(counts, key=lambda v: (-counts[v], v))  # most frequent first, ties by name
        sampled = self.rows if self._sample_at is None else int(np.searchsorted(self._sample_at, self.rows))
        return {
            "numeric": numeric,
            "quantiles": quantiles,
            "quantile_sample_rows": sampled,
            "vocabulary": vocab,
            "label_rate": self.positives / self.rows if self.rows else 0.0,
            "rows": self.rows,
        }

    def reference(self) -> dict[str, Any]:
        """``reference.json``: what the validation gate learns (daily volume, categories, ranges)."""
        per_day = pd.Series(list(self._per_day.values()), dtype=np.float64)
        return {
            "rows_per_day": {
                "p01": float(per_day.quantile(0.01)),
                "p99": float(per_day.quantile(0.99)),
                "min": int(per_day.min()),
                "max": int(per_day.max()),
            },
            "categories": {col: sorted(seen) for col, seen in self._seen.items()},
            "numeric": {col: ({"min": r[0], "max": r[1]} if r else {}) for col, r in self._range.items()},
        }


def compute_reference(train: pd.DataFrame, spec: DatasetConfig) -> dict[str, Any]:
    """What the validation gate learns from a training split held whole: daily volume, categories, ranges."""
    acc = TrainingStats(spec, len(train), max(len(train), 1))
    acc.add(train)
    return acc.reference()


class _TFRecordSink:
    """GZIP TFRecord shards of one split, written block by block as parts arrive.

    A record holds ``rows_per_record`` rows column by column; the rows of a
    part that do not fill a record wait for the next part, so the files are
    the same however the split is cut into parts. Records go to the shards in
    turn.
    """

    def __init__(self, spec: DatasetConfig, out_dir: Path, cfg: PreprocessConfig, expected_rows: int):
        import tensorflow as tf

        self.spec, self.rows_per_record, self._tf = spec, cfg.rows_per_record, tf
        out_dir.mkdir(parents=True, exist_ok=True)
        n_shards = min(cfg.shards, max(1, -(-expected_rows // cfg.rows_per_record)))
        self.paths = [out_dir / f"part-{i:05d}-of-{n_shards:05d}.tfrecord" for i in range(n_shards)]
        options = tf.io.TFRecordOptions(compression_type=cfg.compression)
        self._writers = [tf.io.TFRecordWriter(str(p), options) for p in self.paths]
        self._pending: dict[str, Any] | None = None
        self._blocks = 0

    def add(self, part: pd.DataFrame) -> None:
        if not len(part):
            return
        columns = to_model_inputs(part, self.spec.features)
        columns[LABEL] = part[LABEL].to_numpy(dtype=np.int64)
        if self._pending is not None:
            columns = {k: np.concatenate([self._pending[k], v]) for k, v in columns.items()}
        n = len(columns[LABEL])
        full = n - n % self.rows_per_record
        for lo in range(0, full, self.rows_per_record):
            self._write({k: v[lo : lo + self.rows_per_record] for k, v in columns.items()})
        self._pending = {k: v[full:] for k, v in columns.items()} if full < n else None

    def _write(self, block: dict[str, Any]) -> None:
        tf = self._tf
        feature = {LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=block[LABEL]))}
        for col in self.spec.features.numeric:
            feature[col] = tf.train.Feature(float_list=tf.train.FloatList(value=block[col]))
        for col in self.spec.features.categorical:
            feature[col] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode() for s in block[col]]))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        self._writers[self._blocks % len(self._writers)].write(example.SerializeToString())
        self._blocks += 1

    def close(self) -> list[str]:
        try:
            if self._pending is not None:
                self._write(self._pending)
                self._pending = None
        finally:
            for w in self._writers:
                w.close()
        return [str(p) for p in self.paths]


class _SplitSink:
    """One split's outputs, fed part by part: the Parquet file, the TFRecord shards, the summary."""

    def __init__(
        self, spec: DatasetConfig, cfg: PreprocessConfig, out_dir: Path, name: str, schema: Any, expected_rows: int
    ):
        import pyarrow.parquet as pq

        self.spec, self.out_dir, self.schema = spec, out_dir, schema
        self.parquet = out_dir / "splits" / f"{name}.parquet"
        self.parquet.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.parquet, schema)
        self._tfrecords = _TFRecordSink(spec, out_dir / "tfrecords" / name, cfg, expected_rows)
        self._hash = hashlib.sha256()
        self.rows, self.positives = 0, 0
        self.first_day, self.last_day = None, None

    def add(self, part: pd.DataFrame) -> None:
        import pyarrow as pa

        if not len(part):
            return
        part = part[self.schema.names]
        self._writer.write_table(pa.Table.from_pandas(part, schema=self.schema, preserve_index=False))
        self._tfrecords.add(part)
        self._hash.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
        days = pd.to_datetime(part[self.spec.time_column])
        first, last = days.min().date(), days.max().date()
        self.first_day = first if self.first_day is None else min(self.first_day, first)
        self.last_day = last if self.last_day is None else max(self.last_day, last)
        self.rows += len(part)
        self.positives += int(part[LABEL].sum())

    def close(self) -> dict[str, Any]:
        self._writer.close()
        shards = self._tfrecords.close()
        return {
            "rows": self.rows,
            "label_rate": self.positives / self.rows if self.rows else 0.0,
            "first_day": self.first_day.isoformat() if self.first_day else None,
            "last_day": self.last_day.isoformat() if self.last_day else None,
            "parquet": str(self.parquet.relative_to(self.out_dir)),
            "tfrecords": [str(Path(x).relative_to(self.out_dir)) for x in shards],
            # The hash of every row in order: frame_fingerprint of the whole split.
            "fingerprint": self._hash.hexdigest()[:16],
        }


def _parts(paths: list[Path], rows: list[int], chunk_rows: int) -> list[list[Path]]:
    """Consecutive whole days of at most ``chunk_rows`` rows each (a larger day is a part alone)."""
    parts: list[list[Path]] = [[]]
    total = 0
    for path, n in zip(paths, rows, strict=True):
        if parts[-1] and total + n > chunk_rows:
            parts.append([])
            total = 0
        parts[-1].append(path)
        total += n
    return parts


def _output_schema(window_schema: Any, columns: list[str]) -> Any:
    import pyarrow as pa

    fields = [window_schema.field(c) if c != LABEL else pa.field(LABEL, pa.int64()) for c in columns]
    return pa.schema(fields)


def preprocess(
    dataset: DatasetConfig, cfg: PreprocessConfig, raw_dir: Path, end_day: dt.date, out_dir: Path
) -> dict[str, Any]:
    """Build the training, validation and holdout sets of the window ending on ``end_day``.

    The window is read in parts of whole days (``preprocess.chunk_rows`` rows
    at most), each labelled, split and appended to the outputs before the next
    is read: memory stays flat however long the window or large the days.
    The outputs are the same whatever the part size.

    Args:
        dataset: the data set: feature spec, label rule, key and time columns.
        cfg: the ``preprocess`` section: window, splits, shards, part size.
        raw_dir: published partitions (``date=YYYY-MM-DD/part-0.parquet``).
        end_day: the last day of the window, in the source's calendar.
        out_dir: where splits, shards, ``stats.json`` and ``manifest.json`` go.

    Returns:
        The manifest: row counts and days per split, the data fingerprints, the paths.
    """
    spec = dataset
    days, paths = window_partitions(spec, raw_dir, end_day, cfg.training_window_days)
    rows = partition_rows(paths)
    # A partition holds its day's rows (the validation gate's interval rule): the split
    # boundaries and each split's size are known from the footers before any row is read.
    bounds = split_days([d for d, n in zip(days, rows, strict=True) if n], cfg)
    expected = {name: 0 for name in SPLITS}
    for d, n in zip(days, rows, strict=True):
        ts = pd.Timestamp(d)
        expected[
            "train" if ts < bounds.validation_start else "validation" if ts < bounds.holdout_start else "holdout"
        ] += n
    window_schema = partitions_schema(paths)
    keep = [*dict.fromkeys([*spec.key_columns, spec.time_column, *spec.features.all, LABEL])]
    schema = _output_schema(window_schema, keep)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = TrainingStats(spec, expected["train"], cfg.quantile_sample_rows)
    for d, n in zip(days, rows, strict=True):
        if not n and pd.Timestamp(d) < bounds.validation_start:
            stats.add_empty_day(d)
    sinks = {name: _SplitSink(spec, cfg, out_dir, name, schema, expected[name]) for name in SPLITS}
    try:
        for part_paths in _parts(paths, rows, cfg.chunk_rows):
            frame = apply_label_rule(read_partitions(part_paths, schema=window_schema), spec.label)
            for name, mask in bounds.masks(frame, spec.time_column).items():
                split = frame.loc[mask].reset_index(drop=True)
                sinks[name].add(split)
                if name == "train":
                    stats.add(split)
            del frame, split
    finally:
        summaries = {name: sink.close() for name, sink in sinks.items()}
    manifest: dict[str, Any] = {
        "window_end": end_day.isoformat(),
        "raw_fingerprint": files_fingerprint(paths, raw_dir),
        "raw_partitions": len(paths),
        "splits": summaries,
    }
    manifest["data_fingerprint"] = files_fingerprint(out_dir.glob("splits/*.parquet"), out_dir)
    (out_dir / STATS_FILE).write_text(json.dumps(stats.stats(), indent=1), encoding="utf-8")
    (out_dir / REFERENCE_FILE).write_text(json.dumps(stats.reference(), indent=1), encoding="utf-8")
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    log.info(
        "preprocessed %s rows: %s",
        sum(s["rows"] for s in summaries.values()),
        {k: v["rows"] for k, v in summaries.items()},
    )
    return load_manifest(out_dir)


def load_manifest(processed_dir: Path) -> dict[str, Any]:
    """``manifest.json`` with its file paths made absolute.

    On disk the paths are relative to the processed folder, so a copy of it
    (``data/processed``, a ``dvc pull`` on another machine) stays valid.
    """
    manifest = json.loads((processed_dir / MANIFEST_FILE).read_text())
    for info in manifest["splits"].values():
        info["parquet"] = str(processed_dir / info["parquet"])
        info["tfrecords"] = [str(processed_dir / p) for p in info["tfrecords"]]
    return manifest
