"""Monitor: drift and performance of the champion, and whether to retrain it.

Three checks, each an Evidently 0.7 report written as HTML and JSON:

* **data drift**: every feature of the recent window (the published partitions
  of the ``monitor.window_days`` days ending on the monitored day) against the
  champion's *reference*: a seeded sample of its own training split, logged
  with the model version when it is registered, so the reference always
  matches the model;
* **prediction drift**: the champion's probabilities on the days it scored in
  the window (what ``batch_predict`` wrote) against its probabilities on the
  reference;
* **performance**: once labels are in (a day's arrival delays are published
  with the day), the champion's metrics on the labelled days it scored against
  its metrics on the holdout when it was evaluated.

:func:`decide` turns the three into a decision: retrain when the share of
drifted features or the worsening of a metric passes its threshold in
``params.yaml``, unless a retraining was already triggered within the cooldown
or a training run is active. Everything here is a plain function of frames,
paths and config; Evidently, MLflow and TensorFlow are imported where needed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import ConfigError, DatasetConfig, MonitorConfig, Params
from pipelines.data.partitions import read_days
from pipelines.errors import MonitorError
from pipelines.settings import Settings
from pipelines.tracking import Tracking

log = logging.getLogger(__name__)

PROBABILITY = "delay_probability"  # the column batch_predict writes and the reference carries
REFERENCE_ARTIFACT_DIR = "monitoring"  # in the MLflow run of the model version
REFERENCE_FILE = "reference.parquet"
REFERENCE_URI_TAG = "monitoring.reference_uri"  # model version tag: where its reference is
REPORT_ARTIFACT_DIR = "reports"  # in the MLflow run of the monitoring run
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "precision": True, "recall": True, "log_loss": False, "brier": False}


# --------------------------------------------------------------------------- the reference


def reference_sample(train: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``rows`` rows of the training split (all of it when smaller), in its order."""
    if len(train) > rows:
        train = train.sample(n=rows, random_state=seed).sort_index()
    return train.reset_index(drop=True)


def write_reference(
    dataset: DatasetConfig, cfg: MonitorConfig, batch_rows: int, train_parquet: Path, model_path: Path, out_dir: Path
) -> Path:
    """Write the monitoring reference of a model: a sample of its training split and its probabilities.

    The sample is read row group by row group (:func:`pipelines.steps.preprocess.read_sample`):
    the split is never held whole.

    The probabilities come from the saved Keras model through the same input
    path as serving (:func:`pipelines.model.features.to_model_inputs`), so they
    compare with what ``batch_predict`` writes.

    Returns:
        The Parquet file: key, time, feature and label columns, and ``delay_probability``.
    """
    from pipelines.model.features import to_model_inputs
    from pipelines.model.network import load_model, predict_proba
    from pipelines.steps.preprocess import read_sample

    sample = read_sample(train_parquet, cfg.reference_rows, cfg.seed)
    model = load_model(str(model_path))
    sample[PROBABILITY] = predict_proba(model, to_model_inputs(sample, dataset.features), batch_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REFERENCE_FILE
    sample.to_parquet(path, index=False)
    log.info("monitoring reference: %d rows of the training split -> %s", len(sample), path)
    return path


# --------------------------------------------------------------------------- the champion


@dataclass(frozen=True)
class Champion:
    """The model version under watch, resolved once per monitoring run so every check sees the same one."""

    model_name: str
    version: str
    run_id: str
    reference_uri: str | None
    holdout: dict[str, float]  # its evaluation metrics on the holdout: auc, brier, log_loss, ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Champion:
        return cls(**d)


def resolve_champion(tracking_uri: str, model_name: str, alias: str = "champion") -> Champion:
    """The version behind ``models:/<name>@<alias>``, its reference and its holdout metrics.

    Raises:
        MonitorError: no version has the alias.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        raise MonitorError(
            f"no version of model '{model_name}' has the alias '{alias}': nothing to monitor ({err})"
        ) from None
    run_id = mv.run_id or mv.tags.get("lineage.mlflow_run_id")
    metrics = client.get_run(run_id).data.metrics
    holdout = {k.removeprefix("holdout_"): float(v) for k, v in metrics.items() if k.startswith("holdout_")}
    return Champion(model_name, str(mv.version), run_id, mv.tags.get(REFERENCE_URI_TAG), holdout)


def load_reference(champion: Champion, tracking_uri: str, dst_dir: Path) -> pd.DataFrame:
    """Download and read the champion's reference.

    Raises:
        MonitorError: the version was registered without one.
    """
    import mlflow

    if not champion.reference_uri:
        raise MonitorError(
            f"{champion.model_name} version {champion.version} has no monitoring reference "
            f"(tag {REFERENCE_URI_TAG!r}): it was registered before monitoring existed; retrain to get one"
        )
    dst_dir.mkdir(parents=True, exist_ok=True)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=champion.reference_uri, dst_path=str(dst_dir), tracking_uri=tracking_uri
    )
    return pd.read_parquet(path)


# --------------------------------------------------------------------------- the window


def source_run_day(conf: Mapping[str, Any] | None, data_interval_start: Any, logical_date: Any) -> dt.date | None:
    """The day a training run collected, as the training DAG reads it: ``data_date``, else its data interval."""
    if conf and conf.get("data_date"):
        return dt.date.fromisoformat(str(conf["data_date"]))
    for moment in (data_interval_start, logical_date):
        if moment is not None:
            return moment.date() if isinstance(moment, dt.datetime) else dt.date.fromisoformat(str(moment)[:10])
    return None


def data_ready(published: bool, source_run_states: Sequence[str]) -> str:
    """Whether a monitoring run can start: ``ready``, ``wait`` or ``missing``.

    Monitoring waits for the day to be published *and* for the training runs
    that brought it to finish: they publish the day after validating it, score
    the next day and may promote a new champion; a retraining decided while
    one of them still runs would only pile up behind it. A day that is not
    published once they are over will not come (its validation failed).
    """
    finished = all(state in ("success", "failed") for state in source_run_states)
    if not finished:
        return "wait"
    return "ready" if published else "missing"


def window(day: dt.date, days: int) -> list[dt.date]:
    """The ``days`` days ending on ``day``, oldest first."""
    return [day - dt.timedelta(days=days - 1 - i) for i in range(days)]


def read_scored(
    predictions_dir: Path, days: Sequence[dt.date], champion: Champion
) -> tuple[pd.DataFrame, list[dt.date]]:
    """The champion's own predictions on ``days`` (rows scored by another version are left out)."""
    scored, missing = read_days(predictions_dir, days)
    if scored.empty:
        return scored, missing
    mine = (scored["model_name"] == champion.model_name) & (scored["model_version"].astype(str) == champion.version)
    return scored.loc[mine].reset_index(drop=True), missing


def label_scored(scored: pd.DataFrame, raw: pd.DataFrame, spec: DatasetConfig) -> pd.DataFrame:
    """Join predictions to the published rows of the same days on the key columns, with the label rule applied."""
    from pipelines.model.features import LABEL, apply_label_rule

    keys = list(spec.key_columns)
    if scored.empty or raw.empty:
        return pd.DataFrame(columns=[*keys, PROBABILITY, LABEL])
    # Keys are unique in a partition that passed validation; a duplicate must not fan the join out.
    labelled = apply_label_rule(raw[[*keys, spec.label.source_column]], spec.label).drop_duplicates(keys)
    return (
        scored[[*keys, PROBABILITY]]
        .drop_duplicates(keys)
        .merge(labelled[[*keys, LABEL]], on=keys, how="inner", validate="one_to_one")
    )


# --------------------------------------------------------------------------- reports


def _save_report(snapshot: Any, out_dir: Path, name: str) -> tuple[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    html, json_path = out_dir / f"{name}.html", out_dir / f"{name}.json"
    snapshot.save_html(str(html))
    json_path.write_text(snapshot.json(), encoding="utf-8")
    return str(html), str(json_path)


def _column_tests(snapshot_dict: Mapping[str, Any]) -> dict[str, bool]:
    """Column -> drift detected, from the per-column tests of an Evidently drift report."""
    out = {}
    for test in snapshot_dict.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift") and "column" in params:
            out[params["column"]] = test["status"] == "FAIL"
    return out


def _column_scores(snapshot_dict: Mapping[str, Any]) -> dict[str, float]:
    return {
        m["config"]["column"]: float(m["value"])
        for m in snapshot_dict.get("metrics", [])
        if m["config"].get("type", "").endswith("ValueDrift")
    }


def drift_columns(spec: DatasetConfig, cfg: MonitorConfig.Drift) -> tuple[list[str], list[str]]:
    """The numeric and categorical features whose drift counts.

    Raises:
        ConfigError: ``monitor.drift.exclude_columns`` names a column that is not a feature.
    """
    unknown = set(cfg.exclude_columns) - set(spec.features.all)
    if unknown:
        raise ConfigError(f"monitor.drift.exclude_columns: {sorted(unknown)} are not features of dataset.features")
    numeric = [c for c in spec.features.numeric if c not in cfg.exclude_columns]
    categorical = [c for c in spec.features.categorical if c not in cfg.exclude_columns]
    if not numeric + categorical:
        raise ConfigError("monitor.drift.exclude_columns leaves no feature to watch")
    return numeric, categorical


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What every check returns besides its figures: where its Evidently report is."""

    report_html: str | None = None
    report_json: str | None = None
    report_uri: str | None = None  # the MLflow artifact, once logged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        raise NotImplementedError


def _with_report(result: CheckResult, snapshot: Any, out_dir: Path, name: str) -> CheckResult:
    """Save the check's Evidently report (HTML and JSON) beside its result, and log both."""
    html, json_path = _save_report(snapshot, out_dir, name)
    result = replace(result, report_html=html, report_json=json_path)
    log.info("%s; report: %s (JSON %s)", result.summary(), html, json_path)
    return result


@dataclass(frozen=True)
class DataDrift(CheckResult):
    status: str  # "ok" | "no_data"
    detected: bool
    share: float
    drifted: list[str]
    columns: list[str]
    scores: dict[str, float]
    threshold: float
    current_rows: int
    reference_rows: int
    def summary(self) -> str:
        if self.status != "ok":
            return "data drift: no published rows in the window"
        cols = f": {', '.join(self.drifted)}" if self.drifted else ""
        return (
            f"data drift: {len(self.drifted)} of {len(self.columns)} features drifted "
            f"({self.share:.0%} {'>=' if self.detected else '<'} {self.threshold:.0%}){cols}"
        )


def check_data_drift(
    reference: pd.DataFrame, current: pd.DataFrame, spec: DatasetConfig, cfg: MonitorConfig.Drift, out_dir: Path
) -> DataDrift:
    """Evidently's ``DataDriftPreset`` over the watched features; drift when their drifted share reaches ``drift_share``.

    Args:
        reference: the champion's reference (its training sample).
        current: the published rows of the recent window.
        out_dir: where ``data_drift.html`` and ``data_drift.json`` go.
    """
    numeric, categorical = drift_columns(spec, cfg)
    columns = numeric + categorical
    if current.empty:
        return DataDrift("no_data", False, 0.0, [], columns, {}, cfg.drift_share, 0, len(reference))
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        for col in categorical:  # one dtype on both sides, missing values kept as such
            frame[col] = frame[col].astype("string").astype(object)
        return Dataset.from_pandas(frame, data_definition=definition)

    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                num_method=cfg.num_method,
                num_threshold=cfg.num_threshold,
                cat_method=cfg.cat_method,
                cat_threshold=cfg.cat_threshold,
                drift_share=cfg.drift_share,
            )
        ],
        include_tests=True,
    )
    snapshot = report.run(current_data=dataset(current), reference_data=dataset(reference))
    d = snapshot.dict()
    flags = _column_tests(d)
    drifted = [c for c in columns if flags.get(c)]
    share = len(drifted) / len(columns)
    result = DataDrift(
        "ok",
        share >= cfg.drift_share,
        share,
        drifted,
        columns,
        _column_scores(d),
        cfg.drift_share,
        len(current),
        len(reference),
    )
    return _with_report(result, snapshot, out_dir, "data_drift")


@dataclass(frozen=True)
class PredictionDrift(CheckResult):
    status: str  # "ok" | "insufficient_data"
    detected: bool
    score: float | None
    method: str
    threshold: float
    current_rows: int
    reference_rows: int
    current_mean: float | None
    reference_mean: float | None
    def summary(self) -> str:
        if self.status != "ok":
            return f"prediction drift: {self.current_rows} scored rows in the window, too few to compare"
        return (
            f"prediction drift {'detected' if self.detected else 'not detected'}: {self.method} {self.score:.3f}, "
            f"threshold {self.threshold} (mean probability {self.current_mean:.3f} vs {self.reference_mean:.3f} "
            "on the reference)"
        )


def check_prediction_drift(
    reference_proba: pd.Series, current_proba: pd.Series, cfg: MonitorConfig.PredictionDrift, out_dir: Path
) -> PredictionDrift:
    """Evidently's ``ValueDrift`` of the champion's probabilities, recent window against its reference."""
    n_cur, n_ref = len(current_proba), len(reference_proba)
    if n_cur < cfg.min_rows:
        return PredictionDrift("insufficient_data", False, None, cfg.method, cfg.threshold, n_cur, n_ref, None, None)
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(numerical_columns=[PROBABILITY])

    def dataset(values: pd.Series):
        return Dataset.from_pandas(
            pd.DataFrame({PROBABILITY: values.to_numpy(dtype="float64")}), data_definition=definition
        )

    report = Report([ValueDrift(column=PROBABILITY, method=cfg.method, threshold=cfg.threshold)], include_tests=True)
    snapshot = report.run(current_data=dataset(current_proba), reference_data=dataset(reference_proba))
    d = snapshot.dict()
    score = _column_scores(d)[PROBABILITY]
    detected = _column_tests(d)[PROBABILITY]
    result = PredictionDrift(
        "ok",
        detected,
        score,
        cfg.method,
        cfg.threshold,
        n_cur,
        n_ref,
        float(current_proba.mean()),
        float(reference_proba.mean()),
    )
    return _with_report(result, snapshot, out_dir, "prediction_drift")


@dataclass(frozen=True)
class Performance(CheckResult):
    status: str  # "ok" | "insufficient_data"
    detected: bool
    rows: int
    days: list[str]
    current: dict[str, float]
    holdout: dict[str, float]
    worsening: dict[str, float]  # metric -> how much worse than on the holdout (negative: better)
    limits: dict[str, float]
    exceeded: list[str]
    def summary(self) -> str:
        if self.status != "ok":
            return f"performance: {self.rows} labelled scored flights in the window, too few to judge"
        parts = [
            f"{m} {self.current[m]:.3f} vs {self.holdout[m]:.3f} on the holdout "
            f"({'worse' if self.worsening[m] > 0 else 'better'} by {abs(self.worsening[m]):.3f}"
            f"{' > ' if m in self.exceeded else ' <= '}{self.limits[m]})"
            for m in self.limits
        ]
        span = f"{self.days[0]}..{self.days[-1]}" if self.days else "no day"
        return f"performance on {self.rows} labelled flights of {span}: " + "; ".join(parts)


def worsening(metric: str, holdout: float, current: float) -> float:
    """How much worse ``current`` is than ``holdout`` (positive: worse), whichever way the metric points."""
    return holdout - current if HIGHER_IS_BETTER[metric] else current - holdout


def check_performance(
    labelled: pd.DataFrame,
    holdout: Mapping[str, float],
    reference: pd.DataFrame,
    cfg: MonitorConfig.Performance,
    threshold: float,
    out_dir: Path,
    days: Sequence[str] = (),
) -> Performance:
    """The champion's metrics on labelled scored rows against its holdout metrics.

    The metrics are :func:`pipelines.steps.evaluate.binary_metrics`, the ones its
    holdout metrics were computed with. The Evidently report shows the same
    rows against the reference (its training sample) for a reader.

    Args:
        labelled: ``delay_probability`` and ``label`` of the scored rows whose labels are in.
        holdout: the champion's holdout metrics (``auc``, ``brier``, ...).
        threshold: the probability threshold of the class metrics (``evaluate.threshold``).
        days: the days the rows come from (ISO dates), for the record.
    """
    from pipelines.model.features import LABEL
    from pipelines.steps.evaluate import binary_metrics

    limits = dict(cfg.max_worsening)
    missing = [m for m in limits if m not in holdout]
    if missing:
        raise MonitorError(f"the champion has no holdout metric {missing}: cannot compare performance")
    days = sorted(days)
    ref_values = {m: float(holdout[m]) for m in limits}
    if len(labelled) < cfg.min_rows:
        return Performance("insufficient_data", False, len(labelled), days, {}, ref_values, {}, limits, [])
    current = binary_metrics(labelled[LABEL].to_numpy(), labelled[PROBABILITY].to_numpy(), threshold)
    worse = {m: worsening(m, ref_values[m], current[m]) for m in limits}
    exceeded = [m for m in limits if np.isfinite(worse[m]) and worse[m] > limits[m]]

    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    definition = DataDefinition(
        classification=[BinaryClassification(target=LABEL, prediction_probas=PROBABILITY, pos_label=1)]
    )

    def dataset(frame: pd.DataFrame):
        frame = pd.DataFrame({LABEL: frame[LABEL].astype("int64"), PROBABILITY: frame[PROBABILITY].astype("float64")})
        return Dataset.from_pandas(frame, data_definition=definition)

    snapshot = Report([ClassificationPreset(probas_threshold=threshold)]).run(
        current_data=dataset(labelled), reference_data=dataset(reference)
    )
    result = Performance(
        "ok",
        bool(exceeded),
        len(labelled),
        days,
        {m: float(current[m]) for m in limits},
        ref_values,
        worse,
        limits,
        exceeded,
    )
    return _with_report(result, snapshot, out_dir, "performance")


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


def decide(
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


def check_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """A check result back from its dict (an XCom), ignoring keys it does not have."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- MLflow


def monitoring_run(tracking: Tracking, experiment: str) -> str:
    """The id of the MLflow run of a monitoring run, in its own experiment (created on first use)."""
    from pipelines.tracking import get_or_create_run

    return get_or_create_run(replace(tracking, experiment=experiment))


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


def log_check(
    tracking: Tracking, experiment: str, name: str, result: Any, metrics: Mapping[str, float | None]
) -> str | None:
    """Log a check's reports under ``reports/`` of the monitoring run, and its numbers; the HTML report's URI."""
    import time

    import mlflow

    run_id = monitoring_run(tracking, experiment)
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    uri = None
    for path in (result.report_html, result.report_json):
        if path:
            client.log_artifact(run_id, path, REPORT_ARTIFACT_DIR)
    if result.report_html:
        uri = f"runs:/{run_id}/{REPORT_ARTIFACT_DIR}/{Path(result.report_html).name}"
    now = int(time.time() * 1000)
    finite = {f"{name}.{k}": float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in finite.items()])
    client.set_tag(run_id, f"{name}.detected", str(bool(result.detected)).lower())
    return uri


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
# the checks above called, the results logged, a small dict returned.


def _window_of(params: Params, run_day: dt.date) -> list[dt.date]:
    from pipelines.steps.collect import source_date

    return window(source_date(params.dataset, run_day), params.monitor.window_days)


def data_drift_step(
    params: Params, run_day: dt.date, champion: Champion, settings: Settings, out_dir: Path, tracking: Tracking
) -> dict[str, Any]:
    """Data drift of the window ending on ``run_day``: published rows against the champion's reference."""
    cfg = params.monitor
    reference = load_reference(champion, settings.tracking_uri, out_dir / "reference")
    current, missing = read_days(settings.raw_dir, _window_of(params, run_day))
    result = check_data_drift(reference, current, params.dataset, cfg.drift, out_dir)
    uri = log_check(
        tracking,
        cfg.experiment,
        "data_drift",
        result,
        {"share": result.share, "drifted": len(result.drifted), "rows": result.current_rows},
    )
    return {**replace(result, report_uri=uri).as_dict(), "missing_days": [d.isoformat() for d in missing]}


def prediction_drift_step(
    params: Params, run_day: dt.date, champion: Champion, settings: Settings, out_dir: Path, tracking: Tracking
) -> dict[str, Any]:
    """Prediction drift of the window ending on ``run_day``: the champion's scores against its reference scores."""
    cfg = params.monitor
    reference = load_reference(champion, settings.tracking_uri, out_dir / "reference")
    scored, missing = read_scored(settings.predictions_dir, _window_of(params, run_day), champion)
    current = scored[PROBABILITY] if not scored.empty else pd.Series(dtype="float64")
    result = check_prediction_drift(reference[PROBABILITY], current, cfg.prediction_drift, out_dir)
    uri = log_check(
        tracking, cfg.experiment, "prediction_drift", result, {"score": result.score, "rows": result.current_rows}
    )
    return {**replace(result, report_uri=uri).as_dict(), "missing_days": [d.isoformat() for d in missing]}


def labelled_scored(
    params: Params, days: Sequence[dt.date], champion: Champion, settings: Settings
) -> tuple[pd.DataFrame, list[str]]:
    """The champion's predictions on ``days`` whose labels are published, with the label; and those days."""
    spec = params.dataset
    scored, _ = read_scored(settings.predictions_dir, days, champion)
    if scored.empty:
        return label_scored(scored, scored, spec), []
    scored_days = sorted({pd.Timestamp(t).date() for t in scored[spec.time_column].unique()})
    raw, missing = read_days(settings.raw_dir, scored_days)
    labelled_days = [d.isoformat() for d in scored_days if d not in missing]
    return label_scored(scored, raw, spec), labelled_days


def performance_step(
    params: Params, run_day: dt.date, champion: Champion, settings: Settings, out_dir: Path, tracking: Tracking
) -> dict[str, Any]:
    """Performance on the labelled days the champion scored in the window ending on ``run_day``."""
    cfg = params.monitor
    reference = load_reference(champion, settings.tracking_uri, out_dir / "reference")
    labelled, days = labelled_scored(params, _window_of(params, run_day), champion, settings)
    result = check_performance(
        labelled, champion.holdout, reference, cfg.performance, params.evaluate.threshold, out_dir, days=days
    )
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


def decide_step(
    params: Params,
    run_day: dt.date,
    checks: Mapping[str, Mapping[str, Any]],
    last_retraining: Mapping[str, Any] | None,
    active_training_runs: int,
    tracking: Tracking,
    out_dir: Path,
    trigger_run_id: str,
) -> dict[str, Any]:
    """:func:`decide` on the checks' results; the decision with the training run's id and conf, logged.

    The conf is what the training DAG receives: ``data_date`` (the monitored day, so the new
    model trains up to it), ``trigger_reason`` and ``trigger_report``.
    """
    import json

    import mlflow

    from pipelines.steps.collect import source_date

    cfg = params.monitor
    last_day = dt.date.fromisoformat(last_retraining["day"]) if last_retraining and last_retraining.get("day") else None
    data_drift = check_from_dict(DataDrift, checks["data_drift"])
    prediction_drift = check_from_dict(PredictionDrift, checks["prediction_drift"])
    performance = check_from_dict(Performance, checks["performance"])
    decision = decide(
        source_date(params.dataset, run_day),
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
