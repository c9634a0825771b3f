"""Monitor: the monitoring DAG's steps, and whether to retrain the champion.

Each monitoring run resolves the champion once, runs three checks on the window
of ``monitor.window_days`` days ending on the monitored day (:mod:`pipelines.monitoring.checks`:
data drift of the published rows and prediction drift of the champion's scores against
its reference, :mod:`pipelines.monitoring.reference`; performance on the labelled days
it scored against its holdout metrics), logs each to the monitoring run in MLflow, and
decides. Beside the decision, and never a reason to retrain, it watches what the prediction
service answered (:mod:`pipelines.monitoring.served`), the champion's age
(:mod:`pipelines.monitoring.staleness`) and the pipeline steps' time and memory
(:mod:`pipelines.monitoring.compute`); those steps live in their modules and are named here.

:func:`retrain_decision` turns the three into a decision: retrain when the share of
drifted features or the worsening of a metric passes its threshold in
``params.yaml``, unless a retraining was already triggered within the cooldown
or a training run is active. Everything here is a plain function of frames,
paths and config; Evidently, MLflow and TensorFlow are imported where needed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import DatasetConfig, MonitorConfig, PredictConfig
from pipelines.data.partitions import read_days
from pipelines.errors import MonitorError as MonitorError  # named here, as each step names its error
from pipelines.monitoring.checks import (
    DataDrift,
    Performance,
    PredictionDrift,
    check_data_drift,
    check_from_dict,
    check_performance,
    check_prediction_drift,
)
from pipelines.monitoring.compute import compute_alert as compute_alert
from pipelines.monitoring.compute import compute_step as compute_step
from pipelines.monitoring.reference import PROBABILITY, Champion, load_champion_reference
from pipelines.monitoring.runlog import REPORT_ARTIFACT_DIR, log_check, monitoring_run
from pipelines.monitoring.served import served_traffic_step as served_traffic_step
from pipelines.monitoring.staleness import stale_alert as stale_alert
from pipelines.monitoring.staleness import staleness_step as staleness_step
from pipelines.settings import Settings
from pipelines.tracking import Tracking

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the window


def window(day: dt.date, days: int) -> list[dt.date]:
    """The ``days`` days ending on ``day``, oldest first."""
    return [day - dt.timedelta(days=days - 1 - i) for i in range(days)]


def read_scored(
    predictions_dir: Path, days: Sequence[dt.date], champion: Champion, probability_column: str
) -> tuple[pd.DataFrame, list[dt.date]]:
    """The champion's own predictions on ``days`` (rows scored by another version are left out).

    Args:
        predictions_dir: the daily prediction partitions.
        days: the days wanted.
        champion: the version whose scores count.
        probability_column: what the files call the probability (``predict.probability_column``);
            it is read as :data:`~pipelines.monitoring.reference.PROBABILITY`.

    Returns:
        The scored rows, and the days without a partition.
    """
    scored, missing = read_days(predictions_dir, days)
    if scored.empty:
        return scored, missing
    mine = (scored["model_name"] == champion.model_name) & (scored["model_version"].astype(str) == champion.version)
    scored = scored.loc[mine].reset_index(drop=True)
    if probability_column not in scored.columns:
        raise MonitorError(
            f"the predictions of {champion.model_name} v{champion.version} have no column '{probability_column}' "
            f"(predict.probability_column); they have {sorted(scored.columns)}"
        )
    return scored.rename(columns={probability_column: PROBABILITY}), missing


def label_scored(scored: pd.DataFrame, raw: pd.DataFrame, spec: DatasetConfig) -> pd.DataFrame:
    """Join predictions to the published rows of the same days, with the label rule applied.

    The join is on the key columns, or, for a data set without any, on the row id that batch
    prediction wrote (:mod:`pipelines.data.rows`), derived here again from the published rows.
    """
    from pipelines.data.rows import ROW_ID, row_ids, row_keys
    from pipelines.model.features import LABEL, apply_label_rule

    keys = row_keys(spec)
    if scored.empty or raw.empty:
        return pd.DataFrame(columns=[*keys, PROBABILITY, LABEL])
    if not spec.key_columns:
        if ROW_ID not in scored.columns:
            log.warning(
                "the scored rows have no %s column (scored before rows without a key got one): "
                "they cannot be matched to their labels",
                ROW_ID,
            )
            return pd.DataFrame(columns=[*keys, PROBABILITY, LABEL])
        raw = raw.assign(**{ROW_ID: row_ids(raw, spec)})
    # Keys are unique in a partition that passed validation; a duplicate must not fan the join out.
    labelled = apply_label_rule(raw[[*keys, spec.label.source_column]], spec.label).drop_duplicates(keys)
    return (
        scored[[*keys, PROBABILITY]]
        .drop_duplicates(keys)
        .merge(labelled[[*keys, LABEL]], on=keys, how="inner", validate="one_to_one")
    )


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Decision:
    day: str
    retrain: bool
    triggers: list[str]  # the checks that ask for retraining: data_drift, prediction_drift, performance
    reason: str  # why (or why not), one readable paragraph
    blocked_by: str | None = None  # "cooldown" | "training_active" when checks asked and the guard said no
    report: str | None = None  # the report behind the first trigger: MLflow artifact URI, else its path
    report_path: str | None = None  # the same report on this machine
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain_decision(
    day: dt.date,
    data_drift: DataDrift,
    prediction_drift: PredictionDrift,
    performance: Performance,
    cfg: MonitorConfig,
    last_retraining_day: dt.date | None,
    active_training_runs: int,
) -> Decision:
    """Retrain or not, and why.

    Args:
        day: the monitored day (the last day of the window), in the source's calendar.
        last_retraining_day: the monitored day of the last retraining that monitoring triggered.
        active_training_runs: training runs queued or running now.

    The cooldown counts days of data, not of wall clock, so a replay or a
    backfill decides as the live runs did: at most one triggered retraining
    within ``cooldown_days`` of data.
    """
    checks: list[tuple[str, Any, bool]] = [
        ("data_drift", data_drift, data_drift.detected),
        ("prediction_drift", prediction_drift, prediction_drift.detected and cfg.prediction_drift.retrain),
        ("performance", performance, performance.detected),
    ]
    triggers = [name for name, _, asks in checks if asks]
    findings = "; ".join(check.summary() for _, check, _ in checks)
    first = next((check for name, check, asks in checks if asks), None)
    report = (first.report_uri or first.report_html) if first else None
    common = dict(
        day=day.isoformat(), triggers=triggers, report=report, report_path=first.report_html if first else None
    )
    if not triggers:
        return Decision(retrain=False, reason=f"no retraining: {findings}", **common)
    asked = f"{' and '.join(t.replace('_', ' ') for t in triggers)} beyond thresholds on {day.isoformat()}: {findings}"
    if active_training_runs > 0:
        return Decision(
            retrain=False,
            blocked_by="training_active",
            reason=f"retraining not triggered, {active_training_runs} training run(s) already queued or running; {asked}",
            **common,
        )
    if last_retraining_day is not None and abs((day - last_retraining_day).days) < cfg.cooldown_days:
        return Decision(
            retrain=False,
            blocked_by="cooldown",
            reason=(
                f"retraining not triggered, cooldown: the last one was triggered for {last_retraining_day.isoformat()}, "
                f"within {cfg.cooldown_days} days; {asked}"
            ),
            details={"last_retraining_day": last_retraining_day.isoformat()},
            **common,
        )
    return Decision(retrain=True, reason=f"retraining: {asked}", **common)


# --------------------------------------------------------------------------- MLflow


def start_monitoring_run(tracking: Tracking, experiment: str, champion: Champion) -> str:
    """Create the monitoring run's MLflow run, tagged with the champion it watches."""
    import mlflow

    run_id = monitoring_run(tracking, experiment)
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    client.set_tag(run_id, "champion.model", champion.model_name)
    client.set_tag(run_id, "champion.version", champion.version)
    client.set_tag(run_id, "champion.run_id", champion.run_id)
    log.info("monitoring %s version %s (MLflow run %s)", champion.model_name, champion.version, run_id)
    return run_id


def record_trigger(tracking_uri: str, run_id: str, reason: str, report: str | None) -> None:
    """On a training run's MLflow run: why monitoring started it (tags ``trigger.*`` and the run's note)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    client.set_tag(run_id, "trigger.reason", reason[:5000])
    client.set_tag(run_id, "trigger.report", report or "")
    note = f"**Triggered by monitoring.**\n\n{reason}\n\nReport: {report or 'none'}"
    client.set_tag(run_id, "mlflow.note.content", note)


def note_retraining(tracking: Tracking, experiment: str, decision: Mapping[str, Any]) -> None:
    """Tag the monitoring run with the training run it created."""
    import mlflow

    run_id = monitoring_run(tracking, experiment)
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    client.set_tag(run_id, "retraining.dag_id", decision["training_dag_id"])
    client.set_tag(run_id, "retraining.run_id", decision["trigger_run_id"])


# --------------------------------------------------------------------------- the steps
# What the monitoring DAG's tasks run (through pipelines.runner): paths and MLflow resolved,
# the checks of pipelines.monitoring.checks called, the results logged, a small dict returned.


def _window_of(dataset: DatasetConfig, cfg: MonitorConfig, run_day: dt.date) -> list[dt.date]:
    from pipelines.steps.collect import source_date

    return window(source_date(dataset, run_day), cfg.window_days)


def data_drift_step(
    dataset: DatasetConfig,
    cfg: MonitorConfig,
    run_day: dt.date,
    champion: Champion,
    settings: Settings,
    out_dir: Path,
    tracking: Tracking,
) -> dict[str, Any]:
    """Data drift of the window ending on ``run_day``: published rows against the champion's reference.

    Args:
        dataset: the features watched, and the source's calendar.
        cfg: the ``monitor`` section: window, drift thresholds, experiment.
        run_day: the monitored day, in the run's calendar.
        champion: the version this monitoring run watches.
        settings: where the published data is, and the tracking URI.
        out_dir: where the report goes.
        tracking: the monitoring run's MLflow identity.

    Returns:
        The check's result with its report's URI, and the window's days without data.
    """
    reference = load_champion_reference(champion, settings.tracking_uri, out_dir / "reference")
    current, missing = read_days(settings.raw_dir, _window_of(dataset, cfg, run_day))
    result = check_data_drift(reference, current, dataset, cfg.drift, out_dir)
    uri = log_check(
        tracking,
        cfg.experiment,
        "data_drift",
        result,
        {"share": result.share, "drifted": len(result.drifted), "rows": result.current_rows},
    )
    return {**replace(result, report_uri=uri).as_dict(), "missing_days": [d.isoformat() for d in missing]}


def prediction_drift_step(
    dataset: DatasetConfig,
    cfg: MonitorConfig,
    predict_cfg: PredictConfig,
    run_day: dt.date,
    champion: Champion,
    settings: Settings,
    out_dir: Path,
    tracking: Tracking,
) -> dict[str, Any]:
    """Prediction drift of the window ending on ``run_day``: the champion's scores against its reference scores.

    Args:
        predict_cfg: what the prediction files call the probability.
    """
    reference = load_champion_reference(champion, settings.tracking_uri, out_dir / "reference")
    scored, missing = read_scored(
        settings.predictions_dir, _window_of(dataset, cfg, run_day), champion, predict_cfg.probability_column
    )
    current = scored[PROBABILITY] if not scored.empty else pd.Series(dtype="float64")
    result = check_prediction_drift(reference[PROBABILITY], current, cfg.prediction_drift, out_dir)
    uri = log_check(
        tracking, cfg.experiment, "prediction_drift", result, {"score": result.score, "rows": result.current_rows}
    )
    return {**replace(result, report_uri=uri).as_dict(), "missing_days": [d.isoformat() for d in missing]}


def labelled_scored(
    spec: DatasetConfig, days: Sequence[dt.date], champion: Champion, settings: Settings, probability_column: str
) -> tuple[pd.DataFrame, list[str]]:
    """The champion's predictions on ``days`` whose labels are published, with the label; and those days."""
    scored, _ = read_scored(settings.predictions_dir, days, champion, probability_column)
    if scored.empty:
        return label_scored(scored, scored, spec), []
    scored_days = sorted({pd.Timestamp(t).date() for t in scored[spec.time_column].unique()})
    raw, missing = read_days(settings.raw_dir, scored_days)
    labelled_days = [d.isoformat() for d in scored_days if d not in missing]
    return label_scored(scored, raw, spec), labelled_days


def performance_step(
    dataset: DatasetConfig,
    cfg: MonitorConfig,
    predict_cfg: PredictConfig,
    threshold: float,
    run_day: dt.date,
    champion: Champion,
    settings: Settings,
    out_dir: Path,
    tracking: Tracking,
) -> dict[str, Any]:
    """Performance on the labelled days the champion scored in the window ending on ``run_day``.

    Args:
        predict_cfg: what the prediction files call the probability.
        threshold: the probability threshold of the class metrics (``evaluate.threshold``).
    """
    reference = load_champion_reference(champion, settings.tracking_uri, out_dir / "reference")
    labelled, days = labelled_scored(
        dataset, _window_of(dataset, cfg, run_day), champion, settings, predict_cfg.probability_column
    )
    result = check_performance(labelled, champion.holdout, reference, cfg.performance, threshold, out_dir, days=days)
    numbers: dict[str, float | None] = {"rows": result.rows, **result.current}
    numbers.update({f"worsening.{k}": v for k, v in result.worsening.items()})
    uri = log_check(tracking, cfg.experiment, "performance", result, numbers)
    return replace(result, report_uri=uri).as_dict()


CHECKS = ("data_drift", "prediction_drift", "performance")


def training_run_note(decision: Decision, summaries: Sequence[str], limit: int = 1000) -> str:
    """The note of the training run monitoring creates: what asked for it and the report, within Airflow's limit."""
    head = f"Retraining asked by monitoring for {decision.day}: "
    tail = f" Report: {decision.report}" if decision.report else ""
    body = "; ".join(summaries) or decision.reason
    room = limit - len(head) - len(tail)
    if len(body) > room:
        body = body[: max(room - 3, 0)] + "..."
    return head + body + tail


def retrain_decision_step(
    dataset: DatasetConfig,
    cfg: MonitorConfig,
    run_day: dt.date,
    checks: Mapping[str, Mapping[str, Any]],
    last_retraining: Mapping[str, Any] | None,
    active_training_runs: int,
    tracking: Tracking,
    out_dir: Path,
    trigger_run_id: str,
) -> dict[str, Any]:
    """:func:`retrain_decision` on the checks' results; the decision with the training run's id and conf, logged.

    The conf is what the training DAG receives: ``data_date`` (the monitored day, so the new
    model trains up to it), ``trigger_reason`` and ``trigger_report``.
    """
    import json

    import mlflow

    from pipelines.steps.collect import source_date

    last_day = dt.date.fromisoformat(last_retraining["day"]) if last_retraining and last_retraining.get("day") else None
    data_drift = check_from_dict(DataDrift, checks["data_drift"])
    prediction_drift = check_from_dict(PredictionDrift, checks["prediction_drift"])
    performance = check_from_dict(Performance, checks["performance"])
    decision = retrain_decision(
        source_date(dataset, run_day),
        data_drift,
        prediction_drift,
        performance,
        cfg,
        last_day,
        active_training_runs,
    )
    asked = [data_drift, prediction_drift, performance]
    out = {
        **decision.as_dict(),
        # The training run's note in Airflow (at most 1000 characters there): what asked, and where to look.
        "note": training_run_note(
            decision, [c.summary() for name, c in zip(CHECKS, asked, strict=True) if name in decision.triggers]
        ),
        "training_dag_id": cfg.training_dag_id,
        "trigger_run_id": trigger_run_id,
        "conf": {
            "data_date": run_day.isoformat(),
            "trigger_reason": decision.reason,
            "trigger_report": decision.report or "",
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "decision.json"
    # The checks' figures too (drift share, drifted columns, worsening), so the file tells the whole story.
    path.write_text(json.dumps({**out, "checks": {k: dict(v) for k, v in checks.items()}}, indent=1), encoding="utf-8")
    run_id = monitoring_run(tracking, cfg.experiment)
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    client.log_artifact(run_id, str(path), REPORT_ARTIFACT_DIR)
    client.set_tag(run_id, "decision.retrain", str(decision.retrain).lower())
    client.set_tag(run_id, "decision.triggers", ",".join(decision.triggers) or "none")
    client.set_tag(run_id, "decision.blocked_by", decision.blocked_by or "none")
    client.set_tag(run_id, "mlflow.note.content", decision.reason[:5000])
    (log.warning if decision.triggers else log.info)("%s (decision: %s)", decision.reason, path)
    return out
