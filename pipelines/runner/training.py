"""The training DAG's steps (collect to batch_predict), the whole run for the CLI, and what a run records and alerts."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipelines.runner.context import (
    RunContext,
    in_step_worker,
)

log = logging.getLogger(__name__)


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

    See :func:`pipelines.promotion.shadow.promote_challenger`; ``force_reason`` promotes it whatever the log says.
    """
    import mlflow

    from pipelines.promotion.shadow import promote_challenger
    from pipelines.serving.served_log import served_dir

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
