"""
### Flight delay monitoring: drift, performance, and retraining when they move

Runs after new data arrives (the `flights_collected` Asset, emitted by the training DAG's
`collect` task) or by hand for a given day:
**wait_for_data → resolve_champion → check_data_drift, check_prediction_drift, check_performance →
decide → should_retrain → trigger_training → record_retraining**, and beside them
**check_served**, **check_staleness** and **check_compute**.

The window is the `monitor.window_days` days ending on the monitored day; the reference is a
sample of the current champion's own training split, logged with its model version.

* **check_data_drift**: every feature of the window's published rows against the reference.
* **check_prediction_drift**: the champion's probabilities on the days it scored against its
  probabilities on the reference.
* **check_performance**: its metrics on the scored days whose labels are in, against its holdout
  metrics.

Reported and alerted, never a reason to retrain:

* **check_served**: what the prediction service answered in the window (`data/served/`): its
  rows' drift against the same reference, the shadow's decisions and scores against the live
  model's, and, once their labels are published, the champion's online metrics beside its holdout's.
* **check_staleness**: the champion's age (days since the last day of its data); a `model_stale`
  alert past `monitor.max_model_age_days`.
* **check_compute**: each step's time and peak memory in the newest pipeline run against its
  median over earlier runs (`monitor.compute`); a `compute_regression` alert past the limits.

Each drift and performance check writes an Evidently report (HTML and JSON) to
`$MLOPS_HOME/runs/flights_monitoring/<run id>/monitor/` and to the run's MLflow run
(experiment `monitor.experiment`, folder `reports/`), the others a JSON file there; the task log
gives their paths.

**decide** asks for retraining when the share of drifted features reaches `monitor.drift.drift_share`
or a metric is worse than on the holdout by more than `monitor.performance.max_worsening`, unless a
training run is queued or running, or a retraining was triggered within `monitor.cooldown_days`
days of data (kept in the asset state store of `flights_retraining_requested`).
**trigger_training** creates a `flights_training` run with conf `data_date`, `trigger_reason` and
`trigger_report`, the reason as its note. A failed run and a triggered retraining send an alert
(`monitor.alerts`: a log line and `$MLOPS_HOME/alerts/alerts.jsonl`, a webhook when configured).

#### Trigger parameters
* **monitor_date**: the last day of the window (YYYY-MM-DD). Empty: the day the training run
  that emitted the Asset event collected.

`wait_for_data` waits until that training run is over (it publishes the day, scores the next one
and may promote a new champion) and the day is published; if it is over and the day is not
(its validation failed), the monitoring run is skipped.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, PokeReturnValue, dag, get_current_context, task

from pipelines.alerts import on_failure_callback, record_task_failure
from pipelines.assets import FLIGHTS_COLLECTED, LAST_RETRAINING_KEY, RETRAINING_REQUESTED
from pipelines.errors import StepError, fail_fast

DAG_ID = "flights_monitoring"


class _TriggerTrainingRun(TriggerDagRunOperator):
    """TriggerDagRunOperator whose DAG-run note is templated too: it carries the reason."""

    template_fields = (*TriggerDagRunOperator.template_fields, "note")


def _monitor_day() -> tuple[dt.date, list[tuple[str, str]]]:
    """The monitored day, and the training runs (dag id, run id) whose Asset events triggered this run.

    The day is the ``monitor_date`` parameter, else the latest day those runs collected.
    """
    from pipelines.monitoring.readiness import source_run_day
    from pipelines.runner import check_trigger_conf

    ctx = get_current_context()
    # Airflow lets undeclared conf keys through: refuse them before anything is read.
    check_trigger_conf(ctx["dag_run"].conf or {}, ctx["dag"].params, DAG_ID)
    days, sources = [], []
    for events in ctx["triggering_asset_events"].values():
        for event in events:
            run = event.source_dag_run
            if run is None:
                continue
            sources.append((run.dag_id, run.run_id))
            day = source_run_day(run.conf, run.data_interval_start, run.logical_date)
            if day is not None:
                days.append(day)
    if ctx["params"].get("monitor_date"):
        return dt.date.fromisoformat(ctx["params"]["monitor_date"]), sources
    if not days:
        raise StepError("no day to monitor: set the 'monitor_date' parameter (YYYY-MM-DD)")
    return max(days), sources


def _run_context(day: str):
    from pipelines.runner import RunContext

    return RunContext(dag_id=DAG_ID, run_id=get_current_context()["run_id"], run_day=dt.date.fromisoformat(day))


def _poke_seconds() -> int:
    """``monitor.wait_poke_seconds`` from params.yaml (light: YAML and pydantic only)."""
    from pipelines.config import load_params
    from pipelines.settings import resolve

    return load_params(resolve().params_path).monitor.wait_poke_seconds


@dag(
    dag_id=DAG_ID,
    schedule=[FLIGHTS_COLLECTED],
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    # One at a time: the cooldown is read in one run and written at its end.
    max_active_runs=1,
    tags=["mlops", "monitoring"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    on_failure_callback=on_failure_callback,
    default_args={
        # Keeps the task's error for the run's alert (a DAG's callback is not given it).
        "on_failure_callback": record_task_failure,
        "retries": 1,
        "retry_delay": dt.timedelta(seconds=60),
        "execution_timeout": dt.timedelta(minutes=15),
    },
    params={
        "monitor_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Monitored day",
            description="Last day of the window (YYYY-MM-DD). Empty: the day the triggering training run collected.",
        ),
    },
)
def flights_monitoring():
    # The Asset event comes when `collect` has staged the day: wait until its training run has
    # published it (validate), scored the next day and registered its model.
    @task.sensor(
        poke_interval=_poke_seconds(), timeout=4 * 3600, mode="reschedule", execution_timeout=dt.timedelta(minutes=5)
    )
    @fail_fast
    def wait_for_data() -> PokeReturnValue:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines.monitoring.readiness import data_ready
        from pipelines.runner import run_check_published

        day, sources = _monitor_day()
        ti = get_current_context()["ti"]
        states = [ti.get_dagrun_state(dag_id=dag_id, run_id=run_id) for dag_id, run_id in sources]
        published = run_check_published(_run_context(day.isoformat()))
        ready = data_ready(published["published"], states)
        if ready == "missing":
            raise AirflowSkipException(
                f"{day} was not published by {sources} (its validation failed): nothing new to monitor"
            )
        return PokeReturnValue(
            is_done=ready == "ready", xcom_value={**published, "source_runs": [list(s) for s in sources]}
        )

    @task
    @fail_fast
    def resolve_champion(data: dict) -> dict:
        from pipelines.runner import run_resolve_champion

        return run_resolve_champion(_run_context(data["day"]))

    @task
    @fail_fast
    def check_data_drift(data: dict, champion: dict) -> dict:
        from pipelines.runner import run_check_data_drift

        return run_check_data_drift(_run_context(data["day"]), champion)

    @task
    @fail_fast
    def check_prediction_drift(data: dict, champion: dict) -> dict:
        from pipelines.runner import run_check_prediction_drift

        return run_check_prediction_drift(_run_context(data["day"]), champion)

    @task
    @fail_fast
    def check_performance(data: dict, champion: dict) -> dict:
        from pipelines.runner import run_check_performance

        return run_check_performance(_run_context(data["day"]), champion)

    # Watched beside the decision, never a reason to retrain: served traffic, the champion's age, compute.
    @task
    @fail_fast
    def check_served(data: dict, champion: dict) -> dict:
        from pipelines.runner import run_check_served

        return run_check_served(_run_context(data["day"]), champion)

    @task
    @fail_fast
    def check_staleness(data: dict, champion: dict) -> dict:
        from pipelines.runner import run_check_staleness

        return run_check_staleness(_run_context(data["day"]), champion)

    @task
    @fail_fast
    def check_compute(data: dict) -> dict:
        from pipelines.runner import run_check_compute

        return run_check_compute(_run_context(data["day"]))

    @task(inlets=[RETRAINING_REQUESTED])
    @fail_fast
    def decide(data: dict, data_drift: dict, prediction_drift: dict, performance: dict) -> dict:
        from pipelines.runner import run_retrain_decision

        ctx, run = get_current_context(), _run_context(data["day"])
        last = ctx["asset_state_store"][RETRAINING_REQUESTED].get(LAST_RETRAINING_KEY)
        active = ctx["ti"].get_dr_count(dag_id=run.params.monitor.training_dag_id, states=["queued", "running"])
        checks = {"data_drift": data_drift, "prediction_drift": prediction_drift, "performance": performance}
        return run_retrain_decision(run, checks, last, active)

    @task.short_circuit
    def should_retrain(decision: dict) -> bool:
        return bool(decision["retrain"])

    decision_xcom = "ti.xcom_pull(task_ids='decide')"
    trigger_training = _TriggerTrainingRun(
        task_id="trigger_training",
        trigger_dag_id="{{ " + decision_xcom + "['training_dag_id'] }}",
        trigger_run_id="{{ " + decision_xcom + "['trigger_run_id'] }}",
        conf="{{ " + decision_xcom + "['conf'] }}",
        note="{{ " + decision_xcom + "['note'] }}",
        wait_for_completion=False,
        retries=0,  # a second attempt would only find the run the first one created
    )

    @task(outlets=[RETRAINING_REQUESTED])
    @fail_fast
    def record_retraining(decision: dict) -> dict:
        from pipelines.runner import run_record_retraining

        ctx = get_current_context()
        record = {
            "day": decision["day"],
            "training_run_id": decision["trigger_run_id"],
            "monitoring_run_id": ctx["run_id"],
            "reason": decision["reason"][:2000],
            "report": decision["report"],
        }
        # First the cooldown's record, then the alert: a failed alert must not reopen the cooldown.
        ctx["asset_state_store"][RETRAINING_REQUESTED].set(LAST_RETRAINING_KEY, record)
        ctx["outlet_events"][RETRAINING_REQUESTED].extra = record
        return run_record_retraining(_run_context(decision["conf"]["data_date"]), decision)

    data = wait_for_data()
    champion = resolve_champion(data)
    decision = decide(
        data,
        check_data_drift(data, champion),
        check_prediction_drift(data, champion),
        check_performance(data, champion),
    )
    should_retrain(decision) >> trigger_training >> record_retraining(decision)
    check_served(data, champion)
    check_staleness(data, champion)
    check_compute(data)


flights_monitoring()
