"""``train.retrain: on_demand`` in the real training DAG (``dag.test()``), two nights in a row.

1. the first night is started as flights_monitoring starts a retraining (``trigger_reason`` in
   its conf): it trains and registers a version that records why (it also forces its model
   champion, as a replay's first night does, so that the next night has one);
2. the next night, with a champion and nothing asking, skips preprocess, train, evaluate and
   register, versions the raw data and still scores the next day with that champion.

Real Great Expectations, TensorFlow, scikit-learn and MLflow on a 9-day window and one epoch.
Which request wins when several are made is tested in tests/data/test_should_train.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import deep_update, set_env

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "flights_training"
pytestmark = pytest.mark.e2e

PARAMS = {
    "preprocess": {"training_window_days": 9, "split": {"validation_days": 2, "holdout_days": 2, "min_train_days": 5}},
    "train": {"epochs": 1, "retrain": "on_demand"},
}
REASON = "retraining: data drift beyond thresholds on 2013-03-08: 3 of 17 features drifted (test)"
ASKED = {
    "trigger_reason": REASON,
    "trigger_report": "runs:/none/reports/data_drift.html",
    "force_promotion": True,
    "promotion_reason": "on-demand test: this model scores the next nights",
}
NIGHTS = {"asked": (dt.date(2013, 3, 8), ASKED), "quiet": (dt.date(2013, 3, 9), {})}
TRAINING = {"preprocess", "train", "evaluate", "register"}


@pytest.fixture(scope="module")
def nights(airflow_db, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("on_demand")
    params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    restore = set_env(
        {
            "MLOPS_PARAMS": str(root / "params.yaml"),
            "MLOPS_HOME": str(root / "mlops"),
            "MLOPS_DATA_DIR": str(root / "data"),
        }
    )
    try:
        from airflow.dag_processing.dagbag import DagBag

        runs = {}
        for name, (day, conf) in NIGHTS.items():
            # A fresh DAG each night: dag.test() leaves a run's conf in the DAG's params.
            dag = DagBag(dag_folder=str(REPO / "dags")).dags[DAG_ID]
            dag_run = dag.test(
                logical_date=dt.datetime.combine(day + dt.timedelta(days=2), dt.time(), tzinfo=dt.UTC),
                run_conf={"data_date": day.isoformat(), **conf},
            )
            runs[name] = {
                "day": day,
                "run_id": dag_run.run_id,
                "state": dag_run.state,
                "tasks": {ti.task_id: ti.state for ti in dag_run.get_task_instances()},
            }
        yield {"root": root, "runs": runs}
    finally:
        restore()


def _client(root: Path):
    import mlflow

    uri = f"sqlite:///{root / 'mlops' / 'mlflow' / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, uri)


def _scored_by(root: Path, day: dt.date) -> set[str]:
    scored = pd.read_parquet(root / "data" / "predictions" / f"date={(day + dt.timedelta(days=1)).isoformat()}")
    assert len(scored) > 500
    return set(scored["model_version"])


def _decision(root: Path, run_id: str) -> dict:
    from pipelines.settings import _safe

    path = root / "mlops" / "runs" / DAG_ID / _safe(run_id) / "training_decision.json"
    return json.loads(path.read_text())


def test_a_quiet_night_skips_training_and_still_scores_with_the_champion(nights) -> None:
    run = nights["runs"]["quiet"]
    assert run["state"] == "success", run["tasks"]
    assert {t for t, s in run["tasks"].items() if s == "skipped"} == TRAINING, run["tasks"]
    for task_id in ("collect", "validate", "should_train", "version_data", "batch_predict"):
        assert run["tasks"][task_id] == "success", run["tasks"]
    decision = _decision(nights["root"], run["run_id"])
    assert decision["train"] is False and decision["champion_version"] == "1"
    assert "on_demand" in decision["reason"]
    # The day is published and the next one scored by the champion; no new model version.
    assert (nights["root"] / "data" / "raw" / f"date={run['day'].isoformat()}").is_dir()
    assert _scored_by(nights["root"], run["day"]) == {"1"}
    versions = _client(nights["root"]).search_model_versions("name = 'flight_delay'")
    assert run["run_id"] not in {v.tags.get("lineage.run_id") for v in versions}


def test_a_night_monitoring_asks_for_trains_and_records_why(nights) -> None:
    run = nights["runs"]["asked"]
    assert run["state"] == "success", run["tasks"]
    assert set(run["tasks"].values()) == {"success"}, run["tasks"]
    decision = _decision(nights["root"], run["run_id"])
    assert decision["train"] is True and decision["champion_version"] is None
    assert decision["reason"].startswith("asked by monitoring") and REASON in decision["reason"]
    client = _client(nights["root"])
    (version,) = client.search_model_versions(f"name = 'flight_delay' and tags.`lineage.run_id` = '{run['run_id']}'")
    assert str(version.version) == "1"
    assert client.get_run(version.run_id).data.tags["trigger.reason"] == REASON
    assert _scored_by(nights["root"], run["day"]) == {"1"}
