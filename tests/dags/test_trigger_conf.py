"""A manual run's conf: keys the DAG does not declare, and cross-field mistakes, fail its first task.

Airflow passes undeclared conf keys through to the run, where nothing reads them; the
DAGs refuse them in their first task (no retry, before any data is touched), with the
allowed keys taken from the DAG's declared params.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_check_trigger_conf_names_the_key_and_the_allowed_ones(dagbag) -> None:
    from pipelines.config import ConfigError
    from pipelines.runner import check_trigger_conf

    declared = dagbag.dags["flights_training"].params
    check_trigger_conf({"epochs": 3, "data_date": "2013-06-01"}, declared, "flights_training")
    check_trigger_conf({"force_promotion": True, "promotion_reason": "the holdout is stale"}, declared, "t")
    with pytest.raises(ConfigError) as unknown:
        check_trigger_conf({"epochz": 3, "epochs": 2}, declared, "flights_training")
    message = str(unknown.value)
    assert "'epochz'" in message and "flights_training" in message, message
    assert "allowed: batch_size, data_date, epochs, force_promotion" in message, message
    with pytest.raises(ConfigError, match="force_promotion needs 'promotion_reason'"):
        check_trigger_conf({"force_promotion": True, "promotion_reason": " too short "}, declared, "t")


def _run(dag, conf: dict, logical: dt.datetime):
    dag_run = dag.test(logical_date=logical, run_conf=conf)
    return dag_run, {ti.task_id: ti for ti in dag_run.get_task_instances()}


def _alerts_of(run_id: str, before: int) -> list[dict]:
    from pipelines.alerts import read_alerts
    from pipelines.settings import resolve

    return [a for a in read_alerts(resolve().home)[before:] if a["run_id"] == run_id]


def test_training_refuses_an_unknown_conf_key_in_collect(dagbag, airflow_db) -> None:
    """{"epochz": 3} does not train with the default epochs: collect fails at once, naming the key."""
    from pipelines.alerts import read_alerts
    from pipelines.settings import resolve

    before = len(read_alerts(resolve().home))
    dag_run, tis = _run(
        dagbag.dags["flights_training"],
        {"data_date": "2013-06-03", "epochz": 3},
        dt.datetime(2013, 6, 4, 3, tzinfo=dt.UTC),
    )
    assert dag_run.state == "failed"
    assert tis["collect"].state == "failed" and tis["collect"].try_number == 1, "not retried"
    assert tis["validate"].state in ("upstream_failed", None)
    assert not (resolve().run_dir("flights_training", dag_run.run_id) / "staging").exists(), "no data touched"
    [alert] = _alerts_of(dag_run.run_id, before)
    assert alert["details"]["task_id"] == "collect"
    assert alert["details"]["error"].startswith(
        "ConfigError: unknown trigger parameter(s) for flights_training: 'epochz'"
    )
    assert "epochs" in alert["details"]["error"]


def test_monitoring_refuses_an_unknown_conf_key_in_its_first_task(dagbag, airflow_db) -> None:
    from pipelines.alerts import read_alerts
    from pipelines.settings import resolve

    before = len(read_alerts(resolve().home))
    dag_run, tis = _run(
        dagbag.dags["flights_monitoring"],
        {"monitor_date": "2013-06-03", "window_days": 3},
        dt.datetime(2013, 6, 4, 5, tzinfo=dt.UTC),
    )
    assert dag_run.state == "failed"
    assert tis["wait_for_data"].state == "failed" and tis["wait_for_data"].try_number == 1
    [alert] = _alerts_of(dag_run.run_id, before)
    assert alert["details"]["task_id"] == "wait_for_data"
    assert "'window_days'" in alert["details"]["error"] and "allowed: monitor_date" in alert["details"]["error"]
