"""The monitoring DAG's steps: ctx.run_day is the monitored day, the last day of the window.

Reports go to the run's folder and to the monitoring run in MLflow.
"""

from __future__ import annotations

from typing import Any

from pipelines.runner.context import (
    RunContext,
    in_step_worker,
)


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
