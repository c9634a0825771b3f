"""Batch prediction: score the next day's rows with the champion.

Only the feature and key columns of the next day's rows are read: nothing
observed after the event reaches the model. A data set without key columns gets
a row id per prediction (:mod:`pipelines.data.rows`), which monitoring joins labels
on. Scores are written as one
Parquet partition per day, replaced whole on a re-run, with the model's name,
version and alias, the input's fingerprint and the scoring time on every row.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import (
    DatasetConfig,
    EvaluateConfig,
    PredictConfig,
    RegisterConfig,
    SqlSink,
    ValidateConfig,
)
from pipelines.data.partitions import partition_dir
from pipelines.data.rows import ROW_ID, row_ids, row_keys
from pipelines.model.features import frame_fingerprint
from pipelines.model.finite import require_finite_scores, row_labels
from pipelines.steps.collect import available_days, fetch_day, source_date
from pipelines.tracking import use_tracking

log = logging.getLogger(__name__)

PREDICTION_FILE = "part-0.parquet"


def next_day(dataset: DatasetConfig, run_day: dt.date) -> dt.date | None:
    """The source day after the run's day, or None past the end of a bounded source."""
    day = source_date(dataset, run_day) + dt.timedelta(days=1)
    bounds = available_days(dataset)
    if bounds is not None and day > bounds[1]:
        return None
    return day


def batch_predict(
    dataset: DatasetConfig,
    validate_cfg: ValidateConfig,
    evaluate_cfg: EvaluateConfig,
    register_cfg: RegisterConfig,
    cfg: PredictConfig,
    run_day: dt.date,
    predictions_dir: Path,
    tracking_uri: str,
    report_dir: Path,
    quarantine_dir: Path,
    reference: dict[str, Any] | None = None,
    alias: str = "champion",
) -> dict[str, Any]:
    """Score the rows of the day after ``run_day`` with ``models:/<name>@<alias>``.

    The rows to score pass the same validation gate as training data, on the
    key and feature columns: a schema problem or a ``stop`` finding quarantines
    them and stops the step before the model is loaded.

    Args:
        dataset: the source, key, time and feature columns.
        validate_cfg: the gate the rows to score pass (and ``rows_per_day``, the most a day may hold).
        evaluate_cfg: its ``threshold`` turns probabilities into decisions (``predict.decision_column``).
        register_cfg: its ``model_name`` is the registered model scored with.
        cfg: the ``predict`` section: batch size and the optional SQL sink.
        run_day: the run's data day; the day after it is scored.
        predictions_dir: where the daily prediction partitions go.
        tracking_uri: the MLflow tracking and registry URI.
        report_dir: the input validation's report.
        quarantine_dir: where rejected inputs are kept.
        reference: the training data's reference statistics for the gate.
        alias: the registry alias scored with.

    Returns:
        The partition written, its row count, the model version and the input fingerprint.

    Raises:
        ValidationFailed: the inputs failed the gate.
        NonFiniteScores: the model scored a row NaN or infinite; nothing is written (the
            partition of an earlier run of the day is left as it was).
    """
    import mlflow

    from pipelines.steps.validate import ValidationFailed, log_report, validate_frame

    spec = dataset
    name = register_cfg.model_name
    day = next_day(dataset, run_day)
    if day is None:
        log.warning("no day after %s in the source: nothing to score", run_day)
        return {"rows": 0, "path": None, "day": None}

    columns = list(dict.fromkeys([*spec.key_columns, spec.time_column, *spec.features.all]))
    raw = fetch_day(spec, day, max_rows=validate_cfg.rows_per_day[1])
    # Only what is known before the event goes on: outcome columns are dropped unread.
    frame = raw[[c for c in raw.columns if c in columns]]
    report = validate_frame(
        frame, spec, validate_cfg, report_dir, first_day=day, last_day=day, columns=columns, reference=reference
    )
    log_report(report, "input validation")
    if not report.success:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(quarantine_dir / f"inputs-{day.isoformat()}.parquet", index=False)
        (quarantine_dir / f"inputs-{day.isoformat()}.txt").write_text(report.summary() + "\n", encoding="utf-8")
        raise ValidationFailed(
            f"rows to score for {day}: {report.summary()}\nthe inputs are quarantined in {quarantine_dir}", report
        )
    frame = frame[columns].sort_values(list(spec.key_columns), kind="mergesort").reset_index(drop=True)
    fingerprint = frame_fingerprint(frame)

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException:
        log.warning("%s has no %r alias yet (no model passed the promotion gate): nothing scored", name, alias)
        return {"rows": 0, "path": None, "day": day.isoformat(), "skipped": f"no {alias} model yet"}
    if frame.empty:
        # A day without rows (dataset.source.missing_day: empty) is scored as such: its partition says
        # the day was scored, with nothing in it, and the model is not loaded for nothing.
        log.info("no rows to score for %s: writing an empty prediction partition (model not loaded)", day)
        scores = []
    else:
        with use_tracking(tracking_uri):
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        scores = score_rows(model, frame[list(spec.features.all)], cfg.batch_rows)
    proba = pd.Series(scores, dtype="float32", index=frame.index)
    out = frame[list(dict.fromkeys([*spec.key_columns, spec.time_column]))].copy()
    if not spec.key_columns:  # no natural key: monitoring joins the labels on this id
        out.insert(0, ROW_ID, row_ids(frame, spec))
    keys = row_keys(spec)
    # A NaN compares False with the threshold: it would publish as a confident "no". Refused whole.
    require_finite_scores(proba.to_numpy(), row_labels(out[keys]), f"{name} v{version} on {day}", keys)
    out[cfg.probability_column] = proba
    out[cfg.decision_column] = proba >= evaluate_cfg.threshold
    out["model_name"] = name
    out["model_version"] = str(version)
    out["model_alias"] = alias
    out["input_fingerprint"] = fingerprint
    out["scored_at"] = pd.Timestamp.now(tz="UTC")

    if cfg.sink is not None and len(out):
        upsert(out, cfg.sink, keys)
    path = partition_dir(predictions_dir, day) / PREDICTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    out.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    log.info("scored %d %s of %s with %s v%s -> %s", len(out), spec.entities, day, name, version, path)
    return {
        "day": day.isoformat(),
        "rows": len(out),
        "path": str(path),
        "model_name": name,
        "model_version": str(version),
        "input_fingerprint": fingerprint,
        "input_warnings": [f.line() for f in report.warnings],
    }


def score_rows(model: Any, frame: pd.DataFrame, batch_rows: int) -> np.ndarray:
    """A loaded registered model's probabilities for raw rows, ``batch_rows`` at a time.

    The one scoring path of batch scoring and the promotion canary.
    """
    from pipelines.model.pyfunc import PROBABILITY

    inputs = as_signature(frame, model.metadata.get_input_schema())
    scores = [
        model.predict(inputs.iloc[lo : lo + batch_rows])[PROBABILITY].to_numpy()
        for lo in range(0, len(inputs), batch_rows)
    ]
    return np.concatenate(scores) if scores else np.empty(0, dtype=np.float32)


def as_signature(frame: pd.DataFrame, schema: Any) -> pd.DataFrame:
    """The rows with the numeric dtypes the model's signature names, where pandas holds them otherwise.

    A files source reads int columns as nullable ``Int64`` (:mod:`pipelines.data.daily_files`), while
    the training split read back from Parquet holds an int column with gaps as float64, which the
    signature records as double; MLflow refuses to convert either way on its own.

    Args:
        frame: the feature columns.
        schema: the model's input schema (``model.metadata.get_input_schema()``), or None.

    Returns:
        The frame, its integer columns cast to float64 where the signature says double or float,
        and its nullable integer columns without gaps to int64 where it says long or integer.
    """
    from mlflow.types import DataType

    if schema is None:
        return frame
    out = frame.copy()
    for col in schema.inputs:
        name, kind = getattr(col, "name", None), getattr(col, "type", None)
        if name not in out or not pd.api.types.is_integer_dtype(out[name]):
            continue
        if kind in (DataType.double, DataType.float):
            out[name] = out[name].astype("float64")
        elif kind in (DataType.long, DataType.integer) and not out[name].isna().any():
            out[name] = out[name].astype("int64")
    return out


def upsert(frame: pd.DataFrame, sink: SqlSink, keys: list[str]) -> int:
    """Insert or update rows by ``keys`` in ``sink.table`` (created on first use), in one transaction.

    Works with PostgreSQL and SQLite (``INSERT ... ON CONFLICT DO UPDATE``).

    Returns:
        The number of rows written.
    """
    import sqlalchemy as sa

    from pipelines.steps.collect import sql_url

    engine = sa.create_engine(sql_url(sink.url, sink.conn_id))
    try:
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise ValueError(f"the SQL sink supports PostgreSQL and SQLite, not {engine.dialect.name}")
        types = {
            "object": sa.Text,
            "bool": sa.Boolean,
            "float32": sa.Float,
            "float64": sa.Float,
            "int64": sa.BigInteger,
        }
        columns = []
        for col, dtype in frame.dtypes.items():
            kind = sa.DateTime(timezone=True) if "datetime" in str(dtype) else types.get(str(dtype), sa.Text)()
            columns.append(sa.Column(col, kind, primary_key=col in keys))
        table = sa.Table(sink.table, sa.MetaData(), *columns)
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        with engine.begin() as conn:
            table.create(conn, checkfirst=True)
            for lo in range(0, len(records), 5000):
                stmt = insert(table).values(records[lo : lo + 5000])
                update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
                conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update))
    except sa.exc.SQLAlchemyError as err:
        raise RuntimeError(
            f"SQL sink {engine.url.render_as_string(hide_password=True)} table {sink.table}: {err}"
        ) from None
    finally:
        engine.dispose()
    log.info("upserted %d rows into %s", len(records), sink.table)
    return len(records)
