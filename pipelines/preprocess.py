"""Preprocess: label, time-based split, statistics and sharded TFRecord files.

The training window's published partitions are labelled and split by time:
the last ``holdout_days`` days are the holdout, the ``validation_days``
before them the validation set, the rest the training set. Normalisation
statistics and vocabularies are learnt from the training split only and
baked into the model by :mod:`pipelines.model`, so the model takes raw rows.

Each split is written twice: as Parquet (for the scikit-learn baseline,
evaluation and drift references) and as GZIP-compressed TFRecord shards that
:mod:`pipelines.tfdata` streams. A TFRecord record holds a block of
``rows_per_record`` rows column by column, which keeps the per-row cost of
serialising and parsing low.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from pipelines.collect import partition_path, read_partitions, training_window
from pipelines.config import DatasetConfig, Params, PreprocessConfig
from pipelines.features import LABEL, apply_label_rule, files_fingerprint, frame_fingerprint, to_model_inputs
from pipelines.lazy import lazy

# Imported on first use: tasks import this module for its names only (pipelines/lazy.py).
np = lazy("numpy")
pd = lazy("pandas")

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "holdout")
STATS_FILE = "stats.json"
# Each numeric column's distribution in the training split, as quantiles at these
# levels (0, 1/256, ..., 1): the model's bucket boundaries come from them
# (pipelines.model.boundaries_from_quantiles), so training never reads the split
# whole again. Any bucket count dividing 256 lands on grid points exactly.
QUANTILE_LEVELS = 257
QUANTILE_SEED = 0
MANIFEST_FILE = "manifest.json"
REFERENCE_FILE = "reference.json"


class PreprocessError(RuntimeError):
    """The published data cannot make a training set (missing days, a split too short)."""


def load_window(spec: DatasetConfig, raw_dir: Path, end_day: dt.date, window_days: int) -> tuple[pd.DataFrame, list[Path]]:
    """Read the published partitions of the window ending on ``end_day`` (source calendar)."""
    days = training_window(end_day, window_days, spec)
    paths = [partition_path(raw_dir, d) for d in days]
    missing = [d.isoformat() for d, p in zip(days, paths, strict=True) if not p.exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise PreprocessError(
            f"{len(missing)} day(s) of the training window are not in {raw_dir}: {shown}; "
            "collect and validate them first"
        )
    return read_partitions(paths), paths


def split_by_time(frame: pd.DataFrame, spec: DatasetConfig, cfg: PreprocessConfig) -> dict[str, pd.DataFrame]:
    """Split on the time column: ``train`` < ``validation`` < ``holdout``, whole days each."""
    days = pd.to_datetime(frame[spec.time_column]).dt.normalize()
    last = days.max()
    holdout_start = last - pd.Timedelta(days=cfg.split.holdout_days - 1)
    val_start = holdout_start - pd.Timedelta(days=cfg.split.validation_days)
    train_days = days.loc[days < val_start].nunique()
    if train_days < cfg.split.min_train_days:
        raise PreprocessError(
            f"only {train_days} day(s) of data before the validation and holdout days "
            f"(preprocess.split.min_train_days={cfg.split.min_train_days}); "
            f"the window ends on {last.date()} and its data starts on {days.min().date()}"
        )
    return {
        "train": frame.loc[days < val_start].reset_index(drop=True),
        "validation": frame.loc[(days >= val_start) & (days < holdout_start)].reset_index(drop=True),
        "holdout": frame.loc[days >= holdout_start].reset_index(drop=True),
    }


def compute_stats(train: pd.DataFrame, spec: DatasetConfig, quantile_sample_rows: int = 1_000_000) -> dict[str, Any]:
    """Imputation and scaling statistics, quantiles and vocabularies, from the training split only.

    Quantiles come from a seeded sample of at most ``quantile_sample_rows``
    rows (all of them when the split is smaller): their error is far below a
    bucket's width, and their cost stays flat as the data grows.
    """
    inputs = to_model_inputs(train, spec.features)
    sample = None
    if len(train) > quantile_sample_rows:
        rng = np.random.default_rng(QUANTILE_SEED)
        sample = np.sort(rng.choice(len(train), size=quantile_sample_rows, replace=False))
    levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS)
    numeric, quantiles = {}, {}
    for col in spec.features.numeric:
        x = inputs[col].astype(np.float64)
        finite = x[np.isfinite(x)]
        mean = float(finite.mean()) if finite.size else 0.0
        std = float(finite.std()) if finite.size else 1.0
        numeric[col] = {"mean": mean, "std": std if std > 0 else 1.0, "null_fraction": float(1 - finite.size / max(len(x), 1))}
        xs = x if sample is None else x[sample]
        xs = xs[np.isfinite(xs)]
        quantiles[col] = [float(q) for q in np.quantile(xs, levels)] if xs.size else []
    vocab = {}
    for col in spec.features.categorical:
        values, counts = np.unique(inputs[col], return_counts=True)
        order = np.lexsort((values, -counts))  # most frequent first, ties by name
        vocab[col] = [str(v) for v in values[order]]
    return {
        "numeric": numeric,
        "quantiles": quantiles,
        "quantile_sample_rows": len(train) if sample is None else len(sample),
        "vocabulary": vocab,
        "label_rate": float(train[LABEL].mean()),
        "rows": len(train),
    }


def compute_reference(train: pd.DataFrame, spec: DatasetConfig) -> dict[str, Any]:
    """What the validation gate learns from the training data: daily volume, categories, ranges."""
    per_day = pd.to_datetime(train[spec.time_column]).dt.normalize().value_counts()
    numeric = {}
    for col in spec.features.numeric:
        x = pd.to_numeric(train[col], errors="coerce")
        numeric[col] = {"min": float(x.min()), "max": float(x.max())} if x.notna().any() else {}
    return {
        "rows_per_day": {
            "p01": float(per_day.quantile(0.01)),
            "p99": float(per_day.quantile(0.99)),
            "min": int(per_day.min()),
            "max": int(per_day.max()),
        },
        "categories": {
            col: sorted(train[col].dropna().astype(str).unique().tolist()) for col in spec.features.categorical
        },
        "numeric": numeric,
    }


def _write_tfrecords(frame: pd.DataFrame, spec: DatasetConfig, out_dir: Path, cfg: PreprocessConfig) -> list[str]:
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = to_model_inputs(frame, spec.features)
    labels = frame[LABEL].to_numpy(dtype=np.int64)
    n_blocks = max(1, -(-len(frame) // cfg.rows_per_record))
    n_shards = min(cfg.shards, n_blocks)
    paths = [out_dir / f"part-{i:05d}-of-{n_shards:05d}.tfrecord" for i in range(n_shards)]
    options = tf.io.TFRecordOptions(compression_type=cfg.compression)
    writers = [tf.io.TFRecordWriter(str(p), options) for p in paths]
    try:
        for b in range(n_blocks):
            lo, hi = b * cfg.rows_per_record, min((b + 1) * cfg.rows_per_record, len(frame))
            if lo >= hi:
                break
            feature = {LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=labels[lo:hi]))}
            for col in spec.features.numeric:
                feature[col] = tf.train.Feature(float_list=tf.train.FloatList(value=inputs[col][lo:hi]))
            for col in spec.features.categorical:
                feature[col] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[s.encode() for s in inputs[col][lo:hi]])
                )
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writers[b % n_shards].write(example.SerializeToString())
    finally:
        for w in writers:
            w.close()
    return [str(p) for p in paths]


def preprocess(params: Params, raw_dir: Path, end_day: dt.date, out_dir: Path) -> dict[str, Any]:
    """Build the training, validation and holdout sets of the window ending on ``end_day``.

    Args:
        params: the parsed params.
        raw_dir: published partitions (``date=YYYY-MM-DD/part-0.parquet``).
        end_day: the last day of the window, in the source's calendar.
        out_dir: where splits, shards, ``stats.json`` and ``manifest.json`` go.

    Returns:
        The manifest: row counts and days per split, the data fingerprints, the paths.
    """
    spec, cfg = params.dataset, params.preprocess
    frame, paths = load_window(spec, raw_dir, end_day, cfg.training_window_days)
    frame = apply_label_rule(frame, spec.label)
    splits = split_by_time(frame, spec, cfg)
    stats = compute_stats(splits["train"], spec, cfg.quantile_sample_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = [*dict.fromkeys([*spec.key_columns, spec.time_column, *spec.features.all, LABEL])]
    manifest: dict[str, Any] = {
        "window_end": end_day.isoformat(),
        "raw_fingerprint": files_fingerprint(paths, raw_dir),
        "raw_partitions": len(paths),
        "splits": {},
    }
    for name, part in splits.items():
        part_days = pd.to_datetime(part[spec.time_column])
        parquet = out_dir / "splits" / f"{name}.parquet"
        parquet.parent.mkdir(parents=True, exist_ok=True)
        part[keep].to_parquet(parquet, index=False)
        shards = _write_tfrecords(part, spec, out_dir / "tfrecords" / name, cfg)
        manifest["splits"][name] = {
            "rows": len(part),
            "label_rate": float(part[LABEL].mean()) if len(part) else 0.0,
            "first_day": part_days.min().date().isoformat() if len(part) else None,
            "last_day": part_days.max().date().isoformat() if len(part) else None,
            "parquet": str(parquet.relative_to(out_dir)),
            "tfrecords": [str(Path(x).relative_to(out_dir)) for x in shards],
            "fingerprint": frame_fingerprint(part, keep),
        }
    manifest["data_fingerprint"] = files_fingerprint(out_dir.glob("splits/*.parquet"), out_dir)
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=1), encoding="utf-8")
    reference = compute_reference(splits["train"], spec)
    (out_dir / REFERENCE_FILE).write_text(json.dumps(reference, indent=1), encoding="utf-8")
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    log.info(
        "preprocessed %s rows: %s",
        len(frame),
        {k: v["rows"] for k, v in manifest["splits"].items()},
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
