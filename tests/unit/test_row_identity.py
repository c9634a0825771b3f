"""A data set without a natural key (``dataset.key_columns: []``): rows still find their labels.

Batch prediction writes a row id derived from the row's time and features
(:mod:`pipelines.data.rows`); monitoring derives it again from the published rows and
joins on it. Real files (CSV, Parquet) and a real SQLite sink; nothing mocked.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.config import DatasetConfig, SqlSink
from pipelines.data.partitions import partition_path, write_partition
from pipelines.data.rows import ROW_ID, row_ids, row_keys

SPEC = DatasetConfig.model_validate(
    {
        "name": "events",
        "source": {"kind": "files", "path_template": "landing/{date:%Y-%m-%d}.csv", "format": "csv"},
        "time_column": "day",
        "key_columns": [],
        "features": {"numeric": ["size", "count"], "categorical": ["site"]},
        "label": {"source_column": "outcome", "threshold": 0.5, "missing": "negative"},
        "schema": {"day": "date", "size": "float", "count": "int", "site": "string", "outcome": "float"},
    }
)
DAY = dt.date(2024, 3, 5)


def _day(n: int = 7, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "day": pd.Timestamp(DAY),
            "size": rng.choice([1.5, 2.0, np.nan], n),
            "count": pd.array(rng.choice([1, 2], n), dtype="Int64"),
            "site": rng.choice(["a", "b", None], n),
            "outcome": rng.choice([0.0, 1.0], n),
        }
    )
    frame.loc[2, "count"] = pd.NA  # Int64 here and in Parquet, float64 from CSV
    # Two events identical to the model, with different outcomes: a sparse feed has them.
    twin = frame.iloc[[0]].assign(outcome=1.0 - frame["outcome"].iloc[0])
    return pd.concat([frame, twin], ignore_index=True)


def test_row_ids_survive_parquet_and_csv_and_tell_identical_rows_apart(tmp_path) -> None:
    frame = _day()
    ids = row_ids(frame, SPEC)
    assert ids.is_unique and ids.iloc[0].endswith("-0") and ids.iloc[-1].endswith("-1")
    back = pd.read_parquet(write_partition(frame, partition_path(tmp_path, DAY), SPEC.key_columns))
    pd.testing.assert_series_equal(row_ids(back, SPEC), ids)
    frame.to_csv(tmp_path / "day.csv", index=False)
    csv = pd.read_csv(tmp_path / "day.csv", parse_dates=["day"])
    assert csv["count"].dtype == "float64"
    pd.testing.assert_series_equal(row_ids(csv, SPEC), ids)


def test_monitoring_joins_scores_to_labels_without_a_key(tmp_path) -> None:
    from pipelines.model.features import LABEL
    from pipelines.monitoring.reference import PROBABILITY
    from pipelines.steps.monitor import label_scored

    raw = _day(40, seed=1)
    published = pd.read_parquet(write_partition(raw, partition_path(tmp_path, DAY), SPEC.key_columns))
    # What batch prediction writes: the row id, the time column, the probability (here, the label's
    # own value plus a little, so a wrong pairing shows), in another order than the published rows.
    scored = raw[["day"]].assign(**{ROW_ID: row_ids(raw, SPEC), PROBABILITY: raw["outcome"] * 0.8 + 0.1})
    scored = scored.sample(frac=1.0, random_state=3).reset_index(drop=True)

    labelled = label_scored(scored, published, SPEC)
    assert len(labelled) == len(raw)
    assert ((labelled[PROBABILITY] > 0.5) == (labelled[LABEL] == 1)).all(), "each score met its own row's label"
    assert row_keys(SPEC) == [ROW_ID]


def test_scores_without_a_row_id_are_left_unlabelled_not_a_traceback(caplog) -> None:
    from pipelines.monitoring.reference import PROBABILITY
    from pipelines.steps.monitor import label_scored

    raw = _day()
    labelled = label_scored(raw[["day"]].assign(**{PROBABILITY: 0.5}), raw, SPEC)
    assert labelled.empty
    assert "no row_id column" in caplog.text


def test_the_sql_sink_upserts_on_the_row_id(tmp_path) -> None:
    import sqlalchemy as sa

    from pipelines.steps.predict import upsert

    raw = _day()
    out = raw[["day"]].assign(**{ROW_ID: row_ids(raw, SPEC), "probability": 0.25})
    sink = SqlSink(url=f"sqlite:///{tmp_path / 'p.db'}", table="predictions")
    upsert(out, sink, row_keys(SPEC))
    upsert(out.assign(probability=0.75), sink, row_keys(SPEC))  # a re-run replaces, never duplicates
    with sa.create_engine(sink.url).connect() as conn:
        rows = conn.execute(sa.text("SELECT row_id, probability FROM predictions")).all()
    assert len(rows) == len(raw) and {p for _, p in rows} == {0.75}


@pytest.mark.parametrize("keys", [["site"], []])
def test_row_keys_are_the_key_columns_when_there_are_some(keys: list[str]) -> None:
    spec = SPEC.model_copy(update={"key_columns": tuple(keys)})
    assert row_keys(spec) == (keys or [ROW_ID])


def test_a_day_without_rows_has_no_row_ids() -> None:
    # Batch prediction of an empty day (missing_day: empty) on a table without a key.
    ids = row_ids(_day().iloc[:0], SPEC)
    assert ids.empty and ids.dtype == object
