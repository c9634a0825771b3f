"""One pipeline run: resolves paths, params and MLflow identity, and runs each step.

The Airflow tasks, the CLI (``python -m pipelines``) and the DVC stages call
these ``run_*`` functions, so every entry point executes the same code with
the same layout. Each returns a small JSON-able dict (paths, ids, metrics):
what travels between Airflow tasks as XCom.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, Params, load_params
from pipelines.settings import Settings, resolve
from pipelines.tracking import Tracking

log = logging.getLogger(__name__)

# Trigger-form parameters of the training DAG -> dotted keys of params.yaml.
PARAM_OVERRIDES: dict[str, str] = {
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "training_window_days": "preprocess.training_window_days",
}
PROMOTION_REASON_MIN_CHARS = 10
# Trigger-form parameters of the tuning DAG -> dotted keys of params.yaml.
TUNE_PARAM_OVERRIDES: dict[str, str] = {
    "n_trials": "tune.n_trials",
    "timeout_seconds": "tune.timeout_seconds",
    "trial_epochs": "tune.epochs",
}


def check_trigger_conf(conf: Mapping[str, Any], declared: Iterable[str], dag_id: str) -> None:
    """Refuse a manual run's conf that names an undeclared parameter or forces promotion without a reason.

    Airflow passes conf keys the DAG does not declare through to the run, where nothing
    reads them (``{"epochz": 3}`` would train with the default epochs): the DAG's first
    task and the operators' CLI both check with this, against the DAG's declared params.

    Args:
        conf: the run's conf (trigger parameters).
        declared: the DAG's declared parameter names (``dag.params``).
        dag_id: the DAG, for the message.

    Raises:
        ConfigError: naming each unknown key and the allowed ones, or the missing reason.
    """
    allowed = sorted(declared)
    unknown = sorted(set(conf) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown trigger parameter(s) for {dag_id}: {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    force_reason(conf)


def force_reason(trigger_params: Mapping[str, Any]) -> str | None:
    """The stated reason of a run that forces promotion, None when it does not force it.

    Raises:
        ConfigError: ``force_promotion`` without a ``promotion_reason`` of 10 characters or more.
    """
    if not trigger_params.get("force_promotion"):
        return None
    reason = str(trigger_params.get("promotion_reason") or "").strip()
    if len(reason) < PROMOTION_REASON_MIN_CHARS:
        raise ConfigError(
            f"force_promotion needs 'promotion_reason': say in at least {PROMOTION_REASON_MIN_CHARS} characters why "
            "the gate is overridden (it is recorded on the model version and in the promotion log)"
        )
    return reason


@dataclass(frozen=True)
class RunContext:
    """Everything a step needs to know about the run it belongs to."""

    dag_id: str
    run_id: str
    run_day: dt.date  # the day of data this run collects, in the run's calendar
    overrides: dict[str, Any] = field(default_factory=dict)
    settings: Settings = field(default_factory=resolve)
    force_reason: str | None = None  # a manual run's stated reason to promote whatever the gate says
    user: str | None = None  # who triggered the run (Airflow's triggering user), recorded with a forced promotion

    @classmethod
    def from_trigger(
        cls,
        dag_id: str,
        run_id: str,
        run_day: dt.date,
        trigger_params: dict[str, Any] | None = None,
        user: str | None = None,
    ) -> RunContext:
        """Build from a DAG run: trigger-form values become params.yaml overrides; ``user`` triggered it."""
        trigger_params = trigger_params or {}
        overrides = {PARAM_OVERRIDES[k]: v for k, v in trigger_params.items() if k in PARAM_OVERRIDES and v is not None}
        return cls(
            dag_id=dag_id,
            run_id=run_id,
            run_day=run_day,
            overrides=overrides,
            force_reason=force_reason(trigger_params),
            user=user,
        )

    @cached_property
    def params(self) -> Params:
        params = load_params(self.settings.params_path)
        return params.with_overrides(self.overrides) if self.overrides else params

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir(self.dag_id, self.run_id)

    @property
    def tracking(self) -> Tracking:
        return Tracking(
            tracking_uri=self.settings.tracking_uri,
            experiment=self.params.mlflow.experiment,
            artifact_root=self.settings.artifact_root,
            run_key=f"{self.dag_id}/{self.run_id}",
            tags={"airflow.dag_id": self.dag_id, "airflow.run_id": self.run_id, "run_day": self.run_day.isoformat()},
        )


def in_step_worker(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run the step in the warm step worker when ``MLOPS_STEP_WORKER=warm`` (see :mod:`pipelines.ops.worker`).

    Otherwise, and always inside the worker's own step processes, the step runs here.
    Either way the caller gets the step's result or its exception, class and message
    intact (a :class:`~pipelines.errors.StepError` stays one, for :func:`~pipelines.errors.fail_fast`).
    """

    @functools.wraps(fn)
    def step(*args: Any, **kwargs: Any) -> dict[str, Any]:
        from pipelines.ops import worker

        if worker.enabled():
            return worker.call(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    return step


@in_step_worker
def run_collect(ctx: RunContext) -> dict[str, Any]:
    from pipelines.steps.collect import collect

    params = ctx.params  # parse (and fail on) the params before any work
    window = params.preprocess.training_window_days if params.collect.fill_training_window else 1
    return collect(
        params.dataset,
        ctx.run_day,
        ctx.run_dir / "staging",
        ctx.settings.raw_dir,
        window_days=window,
        quarantine_dir=ctx.settings.quarantine_dir / ctx.run_dir.name,
        max_rows=params.validation.rows_per_day[1],  # per day: each day is fetched on its own
    ).as_dict()


@in_step_worker
def run_validate(ctx: RunContext, collected: dict[str, Any]) -> dict[str, Any]:
    """The gate; a rejected batch is also recorded on the run's MLflow run before failing."""
    from pipelines.steps.validate import ValidationFailed, validate_batch
    from pipelines.tracking import log_validation
    from pipelines.validation.suite import load_validation_reference

    report_dir = ctx.run_dir / "validation"
    try:
        return validate_batch(
            ctx.params.dataset,
            ctx.params.validation,
            Path(collected["staging_dir"]),
            collected["days"],
            ctx.settings.raw_dir,
            report_dir,
            ctx.settings.quarantine_dir / ctx.run_dir.name,
            reference=load_validation_reference(ctx.settings.processed_dir),
        )
    except ValidationFailed as err:
        try:
            log_validation(ctx.tracking, err.report.as_dict(), report_dir)
        except Exception as log_err:  # the gate's verdict matters more than its bookkeeping
            log.warning("could not log the failed validation to MLflow: %s", log_err)
        raise


def run_should_train(ctx: RunContext, trigger_params: dict[str, Any]) -> dict[str, Any]:
    """Whether this run trains, by ``train.retrain`` (see :mod:`pipelines.steps.should_train`).

    With ``on_demand`` the registry is asked for the champion (in the step worker: it
    needs MLflow); ``nightly`` needs nothing but the params, so it is decided here
    without the round trip. The decision is logged and written to the run's folder
    (``training_decision.json``).
    """
    if ctx.params.train.retrain == "on_demand":
        return _should_train_with_registry(ctx, trigger_params)
    return _should_train(ctx, trigger_params, None)


@in_step_worker
def _should_train_with_registry(ctx: RunContext, trigger_params: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    from pipelines.promotion import CHAMPION, alias_version

    client = mlflow.MlflowClient(ctx.settings.tracking_uri, ctx.settings.tracking_uri)
    champion = alias_version(client, ctx.params.registration.model_name, CHAMPION)
    return _should_train(ctx, trigger_params, champion)


def _should_train(ctx: RunContext, trigger_params: dict[str, Any], champion: Any) -> dict[str, Any]:
    from pipelines.steps.should_train import record_decision, training_decision

    decision = training_decision(ctx.params.train.retrain, trigger_params, champion)
    record_decision(decision, ctx.run_dir)
    return decision.as_dict()


@in_step_worker
def run_preprocess(ctx: RunContext) -> dict[str, Any]:
    from pipelines.steps.collect import source_date
    from pipelines.steps.preprocess import preprocess

    params = ctx.params
    end = source_date(params.dataset, ctx.run_day)
    manifest = preprocess(params.dataset, params.preprocess, ctx.settings.raw_dir, end, ctx.run_dir / "processed")
    return {
        "processed_dir": str(ctx.run_dir / "processed"),
        "data_fingerprint": manifest["data_fingerprint"],
        "rows": {k: v["rows"] for k, v in manifest["splits"].items()},
    }


@in_step_worker
def run_version_data(
    ctx: RunContext, processed: dict[str, Any] | None, validated: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Record the raw partitions and this run's processed data as a DVC dataset version.

    See :func:`pipelines.steps.version.version_data`; ``processed`` is None in a run that
    did not preprocess (``train.retrain: on_demand``).
    """
    from pipelines.steps.collect import source_date
    from pipelines.steps.version import version_data

    settings = ctx.settings
    version = version_data(
        ctx.params,
        source_date(ctx.params.dataset, ctx.run_day),
        f"{ctx.dag_id} run {ctx.run_id}",
        repo=settings.dvc_repo,
        raw_dir=settings.raw_dir,
        published_dir=settings.processed_dir,
        processed_dir=Path(processed["processed_dir"]) if processed is not None else None,
        validation=validated,
        git_remote=os.environ.get("MLOPS_DATASETS_GIT_REMOTE") or None,
        enabled=settings.versioning,
    )
    base = {"data_fingerprint": processed["data_fingerprint"] if processed else None, "raw_only": processed is None}
    if version is None:
        return {**base, "versioned": False}
    return {**base, "versioned": True, **version.as_dict()}


@in_step_worker
def run_train(ctx: RunContext, processed: dict[str, Any], validated: dict[str, Any] | None = None) -> dict[str, Any]:
    from pipelines.steps.train import train

    params = ctx.params
    result = train(
        params.dataset,
        params.preprocess,
        params.train,
        Path(processed["processed_dir"]),
        ctx.run_dir / "model",
        ctx.tracking,
    )
    if validated is not None:
        from pipelines.tracking import log_validation

        log_validation(ctx.tracking, validated, ctx.run_dir / "validation")
    return result


@in_step_worker
def run_evaluate(ctx: RunContext, processed: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    from pipelines.steps.evaluate import evaluate

    params = ctx.params
    return evaluate(
        params.dataset,
        params.preprocess,
        params.train,
        params.evaluate,
        params.registration,
        Path(processed["processed_dir"]),
        Path(trained["model_path"]),
        ctx.run_dir / "evaluation",
        ctx.tracking,
    )


@in_step_worker
def run_register(
    ctx: RunContext,
    processed: dict[str, Any],
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    versioned: dict[str, Any] | None = None,
    validated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the challenger and run the promotion gate, with the warnings of the run's validation.

    First a challenger waiting in shadow from an earlier night is promoted or kept waiting
    (:func:`run_promote_challenger`); its outcome is in the result as ``pending_challenger``.
    """
    from pipelines.promotion import acting_user
    from pipelines.steps.register import dataset_lineage, register

    pending = run_promote_challenger(ctx)
    lineage = {"dag_id": ctx.dag_id, "run_id": ctx.run_id, "run_day": ctx.run_day.isoformat()}
    lineage.update(dataset_lineage(versioned, ctx.settings.dvc_repo))
    params = ctx.params
    registered = register(
        params.dataset,
        params.train,
        params.predict,
        params.registration,
        params.monitor,
        Path(processed["processed_dir"]),
        Path(trained["model_path"]),
        evaluation,
        ctx.tracking,
        lineage,
        ctx.run_dir / "register",
        log_dir=ctx.settings.home,
        force_reason=ctx.force_reason,
        data_warnings=validated.get("warnings", []) if validated is not None else None,
        effective_params=params.model_dump(mode="json", by_alias=True),
        run_day=ctx.run_day,
        raw_dir=ctx.settings.raw_dir,
        max_rows_per_day=params.validation.rows_per_day[1],
        forced_by=acting_user(ctx.user) if ctx.force_reason else None,
    )
    return {**registered, "pending_challenger": pending}


@in_step_worker
def run_promote_challenger(ctx: RunContext, force_reason: str | None = None, user: str | None = None) -> dict[str, Any]:
    """Promote the challenger waiting in shadow when the served log allows it, else keep it waiting (logged).

    See :func:`pipelines.shadow.promote_challenger`; ``force_reason`` promotes it whatever the log says.
    """
    import mlflow

    from pipelines.serving.served_log import served_dir
    from pipelines.shadow import promote_challenger

    client = mlflow.MlflowClient(ctx.settings.tracking_uri, ctx.settings.tracking_uri)
    return promote_challenger(
        client,
        ctx.params.registration,
        served_dir(ctx.settings.data_dir),
        ctx.settings.home,
        force_reason=force_reason,
        user=user or ctx.user,
        run=f"{ctx.dag_id}/{ctx.run_id}",
    )


@in_step_worker
def run_batch_predict(ctx: RunContext) -> dict[str, Any]:
    from pipelines.steps.predict import batch_predict
    from pipelines.validation.suite import load_validation_reference

    params = ctx.params
    return batch_predict(
        params.dataset,
        params.validation,
        params.evaluate,
        params.registration,
        params.predict,
        ctx.run_day,
        ctx.settings.predictions_dir,
        ctx.settings.tracking_uri,
        report_dir=ctx.run_dir / "predict_validation",
        quarantine_dir=ctx.settings.quarantine_dir / ctx.run_dir.name / "predict",
        reference=load_validation_reference(ctx.settings.processed_dir),
    )


def run_all(ctx: RunContext) -> dict[str, Any]:
    """Every step in one process, in DAG order (the CLI's ``run``)."""
    collected = run_collect(ctx)
    validated = run_validate(ctx, collected)
    processed = run_preprocess(ctx)
    versioned = run_version_data(ctx, processed, validated)
    trained = run_train(ctx, processed, validated)
    evaluation = run_evaluate(ctx, processed, trained)
    registered = run_register(ctx, processed, trained, evaluation, versioned, validated)
    predicted = run_batch_predict(ctx)
    return {
        "collect": collected,
        "validate": validated,
        "preprocess": processed,
        "version_data": versioned,
        "train": trained,
        "evaluate": evaluation,
        "register": registered,
        "batch_predict": predicted,
    }


def train_placement(params_path: Path) -> dict[str, Any]:
    """The Celery queue, pool and pool slots of a task that trains models (``train.queue``, ...).

    Read when a DAG is parsed: light (YAML and pydantic only).
    """
    train = load_params(params_path).train
    return {"queue": train.queue, "pool": train.pool, "pool_slots": train.pool_slots}


def run_check_tuning_data(ctx: RunContext, processed_dir: str | None = None) -> dict[str, Any]:
    """The preprocessed dataset a study would tune on, checked before any model is built (JSON only).

    Args:
        processed_dir: the preprocessed data; None: ``data/processed``, the latest dataset version.
    """
    from pipelines.steps.tune import describe_dataset

    ctx.params  # noqa: B018 - fail on bad params before any work
    return describe_dataset(Path(processed_dir) if processed_dir else ctx.settings.processed_dir)


@in_step_worker
def run_tune(ctx: RunContext, processed_dir: str | None = None) -> dict[str, Any]:
    """The hyper-parameter search (:func:`pipelines.steps.tune.tune`) on a preprocessed dataset.

    Args:
        processed_dir: the preprocessed data to tune on; None: ``data/processed``, the latest
            dataset version (``dvc checkout`` or ``python -m pipelines data pull`` for another).
    """
    import dataclasses

    from pipelines.steps.tune import tune

    params = ctx.params
    return tune(
        params.dataset,
        params.preprocess,
        params.train,
        params.tune,
        Path(processed_dir) if processed_dir else ctx.settings.processed_dir,
        ctx.run_dir / "tune",
        dataclasses.replace(ctx.tracking, experiment=params.tune.experiment),
    )


# --------------------------------------------------------------------------- monitoring
# The flights_monitoring DAG's steps: ctx.run_day is the monitored day, the last day of
# the window. Reports go to the run's folder and to the monitoring run in MLflow.


@in_step_worker
def run_check_published(ctx: RunContext) -> dict[str, Any]:
    """Whether the monitored day is published in ``data/raw`` yet (the DAG's sensor)."""
    from pipelines.data.partitions import partition_path
    from pipelines.steps.collect import source_date

    day = source_date(ctx.params.dataset, ctx.run_day)
    path = partition_path(ctx.settings.raw_dir, day)
    return {
        "day": ctx.run_day.isoformat(),
        "source_day": day.isoformat(),
        "published": path.is_file(),
        "path": str(path),
    }


@in_step_worker
def run_resolve_champion(ctx: RunContext) -> dict[str, Any]:
    """The champion this monitoring run watches (version, reference, holdout metrics), resolved once."""
    from pipelines.monitoring.reference import resolve_champion
    from pipelines.steps import monitor

    champion = resolve_champion(ctx.settings.tracking_uri, ctx.params.registration.model_name)
    monitor.start_monitoring_run(ctx.tracking, ctx.params.monitor.experiment, champion)
    return champion.as_dict()


@in_step_worker
def run_check_data_drift(ctx: RunContext, champion: dict[str, Any]) -> dict[str, Any]:
    """Every feature of the recent window against the champion's reference."""
    from pipelines.monitoring.reference import Champion
    from pipelines.steps import monitor

    return monitor.data_drift_step(
        ctx.params.dataset,
        ctx.params.monitor,
        ctx.run_day,
        Champion.from_dict(champion),
        ctx.settings,
        ctx.run_dir / "monitor",
        ctx.tracking,
    )


@in_step_worker
def run_check_prediction_drift(ctx: RunContext, champion: dict[str, Any]) -> dict[str, Any]:
    """The champion's probabilities on the window against its probabilities on the reference."""
    from pipelines.monitoring.reference import Champion
    from pipelines.steps import monitor

    return monitor.prediction_drift_step(
        ctx.params.dataset,
        ctx.params.monitor,
        ctx.params.predict,
        ctx.run_day,
        Champion.from_dict(champion),
        ctx.settings,
        ctx.run_dir / "monitor",
        ctx.tracking,
    )


@in_step_worker
def run_check_performance(ctx: RunContext, champion: dict[str, Any]) -> dict[str, Any]:
    """The champion's metrics on the labelled days it scored in the window, against its holdout metrics."""
    from pipelines.monitoring.reference import Champion
    from pipelines.steps import monitor

    return monitor.performance_step(
        ctx.params.dataset,
        ctx.params.monitor,
        ctx.params.predict,
        ctx.params.evaluate.threshold,
        ctx.run_day,
        Champion.from_dict(champion),
        ctx.settings,
        ctx.run_dir / "monitor",
        ctx.tracking,
    )


@in_step_worker
def run_check_served(ctx: RunContext, champion: dict[str, Any]) -> dict[str, Any]:
    """What the prediction service answered in the window: drift, the shadow against the live model, online metrics."""
    from pipelines.monitoring.reference import Champion
    from pipelines.steps import monitor

    return monitor.served_traffic_step(
        ctx.params.dataset,
        ctx.params.monitor,
        ctx.params.evaluate.threshold,
        ctx.run_day,
        Champion.from_dict(champion),
        ctx.settings,
        ctx.run_dir / "monitor",
        ctx.tracking,
    )


@in_step_worker
def run_check_staleness(ctx: RunContext, champion: dict[str, Any]) -> dict[str, Any]:
    """The champion's age on the monitored day; a ``model_stale`` alert past ``monitor.max_model_age_days``."""
    from pipelines import alerts
    from pipelines.monitoring.reference import Champion
    from pipelines.steps import monitor

    result = monitor.staleness_step(
        ctx.params.dataset, ctx.params.monitor, ctx.run_day, Champion.from_dict(champion), ctx.tracking
    )
    alert = monitor.stale_alert(result, dag_id=ctx.dag_id, run_id=ctx.run_id)
    sent = alerts.notify(alert, ctx.params.monitor.alerts, ctx.settings.home) if alert else {}
    return {**result.as_dict(), "summary": result.summary(), "alerts": sent}


@in_step_worker
def run_check_compute(ctx: RunContext) -> dict[str, Any]:
    """The newest pipeline run's step times and memory against earlier runs; a ``compute_regression`` alert."""
    from pipelines import alerts
    from pipelines.steps import monitor

    result = monitor.compute_step(
        ctx.params.monitor, ctx.params.mlflow.experiment, ctx.run_day, ctx.tracking, ctx.run_dir / "monitor"
    )
    alert = monitor.compute_alert(result, dag_id=ctx.dag_id, run_id=ctx.run_id)
    sent = alerts.notify(alert, ctx.params.monitor.alerts, ctx.settings.home) if alert else {}
    return {**result.as_dict(), "summary": result.summary(), "alerts": sent}


@in_step_worker
def run_retrain_decision(
    ctx: RunContext,
    checks: dict[str, dict[str, Any]],
    last_retraining: dict[str, Any] | None,
    active_training_runs: int,
) -> dict[str, Any]:
    """Retrain or not; with the training run's id and conf when it does.

    Args:
        checks: ``data_drift``, ``prediction_drift`` and ``performance`` results.
        last_retraining: what the last triggered retraining recorded (its ``day``), or None.
        active_training_runs: training runs queued or running now.
    """
    from pipelines.steps import monitor

    return monitor.retrain_decision_step(
        ctx.params.dataset,
        ctx.params.monitor,
        ctx.run_day,
        checks,
        last_retraining,
        active_training_runs,
        ctx.tracking,
        ctx.run_dir / "monitor",
        trigger_run_id=f"retrain__{ctx.run_day.isoformat()}__{ctx.run_id}",
    )


@in_step_worker
def run_record_retraining(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """After the training run was created: alert, and note it on the monitoring run."""
    from pipelines import alerts
    from pipelines.steps import monitor

    alert = alerts.retraining_alert(
        decision, dag_id=ctx.dag_id, run_id=ctx.run_id, training_run_id=decision["trigger_run_id"]
    )
    sent = alerts.notify(alert, ctx.params.monitor.alerts, ctx.settings.home)
    monitor.note_retraining(ctx.tracking, ctx.params.monitor.experiment, decision)
    return {
        "day": decision["day"],
        "training_dag_id": decision["training_dag_id"],
        "training_run_id": decision["trigger_run_id"],
        "reason": decision["reason"],
        "report": decision["report"],
        "alerts": sent,
    }


def run_record_trigger(ctx: RunContext, trigger_params: dict[str, Any]) -> dict[str, Any]:
    """In a training run started by monitoring: record why on its MLflow run (tags and note).

    ``trigger_params`` are the DAG run's params; without ``trigger_reason`` nothing is
    recorded, and nothing is handed to the step worker.
    """
    # Decided here, in the task's process: most training runs were not triggered by monitoring,
    # and a round trip to the step worker for nothing is wasted time in every one of them.
    if not trigger_params.get("trigger_reason"):
        return {"recorded": False}
    return _record_trigger(ctx, trigger_params)


@in_step_worker
def _record_trigger(ctx: RunContext, trigger_params: dict[str, Any]) -> dict[str, Any]:
    from pipelines.steps.monitor import record_trigger
    from pipelines.tracking import get_or_create_run

    reason, report = trigger_params["trigger_reason"], trigger_params.get("trigger_report")
    run_id = get_or_create_run(ctx.tracking)
    record_trigger(ctx.settings.tracking_uri, run_id, reason, report)
    log.info("triggered by monitoring: %s (report: %s)", reason, report)
    return {"recorded": True, "mlflow_run_id": run_id, "reason": reason, "report": report}


@in_step_worker
def run_alert_promotion(ctx: RunContext, registered: dict[str, Any]) -> dict[str, Any]:
    """Alert ``promotion_refused`` when the registered version did not become champion (nor waits in shadow)."""
    from pipelines import alerts

    if registered.get("pending_shadow"):  # passed the gate: not a refusal
        return {"alerted": False}
    alert = alerts.promotion_refused_alert(registered, dag_id=ctx.dag_id, run_id=ctx.run_id)
    if alert is None:
        return {"alerted": False}
    return {"alerted": True, "channels": alerts.notify(alert, ctx.params.monitor.alerts, ctx.settings.home)}
