"""Prepared data for the component benchmarks: a year collected and preprocessed at a growth factor.

Built once per factor (collect every day of the window from the replay, grown
as ``pipelines/data/grow.py`` describes, then :func:`pipelines.steps.preprocess.preprocess`),
without validation or versioning, and kept under ``$MLOPS_BENCH_DIR``
(``/tmp/mlops-bench``) for the next benchmark.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from benchmarks.common import REPO

END = dt.date(2013, 12, 30)


def bench_root() -> Path:
    return Path(os.environ.get("MLOPS_BENCH_DIR") or "/tmp/mlops-bench")


def prepared(scale: int, end: dt.date = END) -> tuple[Path, Path]:
    """``(params file, processed folder)`` of the year ending on ``end``, grown ``scale`` times."""
    from benchmarks.scaling import scaled_params
    from pipelines.config import load_params
    from pipelines.data.partitions import partition_path, write_partition
    from pipelines.steps.collect import fetch_day, training_window
    from pipelines.steps.preprocess import MANIFEST_FILE, preprocess

    root = bench_root() / f"prepared-x{scale}-{end.isoformat()}"
    processed = root / "processed"
    params_file = root / "params.yaml"
    if (processed / MANIFEST_FILE).exists() and params_file.exists():
        return params_file, processed
    root.mkdir(parents=True, exist_ok=True)
    scaled_params(params_file, scale, REPO / "params.yaml")
    params = load_params(params_file)
    raw = root / "raw"
    days = training_window(end, params.preprocess.training_window_days, params.dataset)
    for day in days:
        path = partition_path(raw, day)
        if not path.exists():
            write_partition(fetch_day(params.dataset, day), path, params.dataset.key_columns)
    preprocess(params.dataset, params.preprocess, raw, end, processed)
    return params_file, processed
