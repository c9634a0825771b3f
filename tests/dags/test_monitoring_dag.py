"""The monitoring DAG's wiring: imports, task graph, schedule on the collect step's Asset, trigger form."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_monitoring_dag_imports(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "flights_monitoring" in dagbag.dags


def test_monitoring_dag_shape(dagbag) -> None:
    dag = dagbag.dags["flights_monitoring"]
    upstream = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    assert upstream == {
        "wait_for_data": [],
        "resolve_champion": ["wait_for_data"],
        "check_data_drift": ["resolve_champion", "wait_for_data"],
        "check_prediction_drift": ["resolve_champion", "wait_for_data"],
        "check_performance": ["resolve_champion", "wait_for_data"],
        "decide": ["check_data_drift", "check_performance", "check_prediction_drift", "wait_for_data"],
        "should_retrain": ["decide"],
        "trigger_training": ["should_retrain"],
        "record_retraining": ["decide", "trigger_training"],
        # Beside the decision, never a reason to retrain: a failure there cannot hold a retraining back.
        "check_served": ["resolve_champion", "wait_for_data"],
        "check_staleness": ["resolve_champion", "wait_for_data"],
        "check_compute": ["wait_for_data"],
    }
    assert dag.max_active_runs == 1, "the cooldown is read and written by one run at a time"
    assert dag.catchup is False
    assert dag.on_failure_callback, "a failed run alerts"
    for t in dag.tasks:
        assert t.execution_timeout is not None, t.task_id
    assert dag.get_task("trigger_training").retries == 0, "a retry would only find the run the first try created"
    assert dag.doc_md and "trigger_reason" in dag.doc_md


def test_both_dags_fail_one_way(dagbag) -> None:
    """One failure callback for both DAGs, and every task that runs pipeline code fails fast on a StepError."""
    from pipelines.alerts import on_failure_callback

    for dag_id in ("flights_training", "flights_monitoring"):
        dag = dagbag.dags[dag_id]
        assert dag.on_failure_callback is on_failure_callback, dag_id
        for t in dag.tasks:
            if t.task_id in ("should_retrain", "trigger_training"):  # no pipeline code: nothing to translate
                continue
            assert t.python_callable.__code__.co_qualname == "fail_fast.<locals>.run_task", (dag_id, t.task_id)


def test_runs_after_the_collect_step_emits_new_data(dagbag) -> None:
    from pipelines.assets import FLIGHTS_COLLECTED, RETRAINING_REQUESTED

    monitoring, training = dagbag.dags["flights_monitoring"], dagbag.dags["flights_training"]
    assert tuple(monitoring.timetable.asset_condition.objects) == (FLIGHTS_COLLECTED,)
    assert FLIGHTS_COLLECTED in training.get_task("collect").outlets
    assert RETRAINING_REQUESTED in monitoring.get_task("record_retraining").outlets
    assert RETRAINING_REQUESTED in monitoring.get_task("decide").inlets


def test_trigger_carries_reason_report_and_day(dagbag) -> None:
    trigger = dagbag.dags["flights_monitoring"].get_task("trigger_training")
    assert "decide" in trigger.conf and "['conf']" in trigger.conf
    assert "note" in trigger.template_fields
    assert trigger.wait_for_completion is False


def test_monitor_date_is_validated(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["flights_monitoring"].params)
    params["monitor_date"] = "2013-07-07"
    assert params.validate()["monitor_date"] == "2013-07-07"
    with pytest.raises(ParamValidationError, match="monitor_date"):
        params["monitor_date"] = "2013-13-01"
        params.validate()
