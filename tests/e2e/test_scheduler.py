"""The DAGs run by Airflow's own scheduler: a backfill, night by night, and the Asset-event start.

The real components, as `make pipeline` starts them (``pipelines.ops.cluster``):
API server, scheduler (LocalExecutor: a process per task) and DAG processor, on
a fresh SQLite database and a fresh state folder. One backfill replays two
nights of March 2013 (``airflow backfill create``, as an operator would). The test
checks that the runs ran in order, one at a time, each on its own night's data,
each registering its model and scoring the next day; and that every night's
``collect`` Asset event started a ``flights_monitoring`` run on its own.

Training is cut to the bone (a 9-day window, one epoch) since the cost of a run
here is in starting the processes, which is what is under test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import deep_update

from pipelines.ops.cluster import AirflowCluster
from pipelines.ops.environment import airflow_env
from pipelines.ops.worker import start_service, steps_file, wait_ready

REPO = Path(__file__).resolve().parents[2]
TRAINING, MONITORING = "flights_training", "flights_monitoring"
NIGHTS = [dt.date(2013, 3, 8), dt.date(2013, 3, 9)]
API_PORT = 18140
pytestmark = pytest.mark.e2e

PARAMS = {
    "preprocess": {"training_window_days": 9, "split": {"validation_days": 2, "holdout_days": 2, "min_train_days": 5}},
    "train": {"epochs": 1},
    # Report drift and decay, but do not start retraining runs: not what this test is about.
    "monitor": {"wait_poke_seconds": 30, "drift": {"drift_share": 1.0}, "performance": {"max_worsening": {"auc": 1.0}}},
}
# Every night's model serves the next day, whatever the gate says of a 9-day model.
CONF = {"force_promotion": True, "promotion_reason": "scheduler test: each night's model scores the next day"}


@pytest.fixture(scope="module")
def backfill(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("scheduler")
    params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = airflow_env(
        root / "airflow",
        base=os.environ,
        state_dir=root,
        api_port=API_PORT,
        # Tasks hand their steps to a warm step worker (pipelines/ops/worker.py), as in production
        # where start-up costs matter: this test also checks that path through the scheduler.
        step_worker=True,
        extra={
            # Parsed once: a new parse would give the held schedule back (see below).
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
            "MLOPS_PARAMS": str(root / "params.yaml"),
            "MLOPS_STEP_WORKER_SOCKET": str(root / "worker.sock"),
        },
    )
    cluster = AirflowCluster(env, log_dir=root / "services", api_port=API_PORT)
    cluster.migrate()
    with cluster:
        start_service(cluster.services, env)
        wait_ready(env, services=cluster.services)
        cluster.wait_for_dag(TRAINING)
        cluster.wait_for_dag(MONITORING)
        cluster.unpause(MONITORING)
        cluster.airflow(
            "backfill",
            "create",
            "--dag-id",
            TRAINING,
            # Runs whose logical date (the night's 03:00 UTC) falls in [from, to].
            "--from-date",
            NIGHTS[0].isoformat(),
            "--to-date",
            (NIGHTS[-1] + dt.timedelta(days=1)).isoformat(),
            "--dag-run-conf",
            json.dumps(CONF),
            "--max-active-runs",
            "1",  # one night at a time, like the nightly schedule
        )
        # The scheduler runs backfills of unpaused DAGs only, and would add tonight's
        # run (2026 mapped onto 2013) as soon as it is: no scheduled run during the test.
        cluster.hold_schedule(TRAINING)
        backfill_runs = [r for r in cluster.dag_runs(TRAINING) if r["run_type"] == "backfill"]
        assert [str(r["logical_date"])[:10] for r in backfill_runs] == [n.isoformat() for n in NIGHTS], backfill_runs
        cluster.unpause(TRAINING)
        # Generous: a run costs about two minutes on an idle 2-core machine, most of it process start-up.
        states = {r["run_id"]: cluster.wait_for_run(TRAINING, r["run_id"], timeout=1200) for r in backfill_runs}
        monitoring = _wait_for_monitoring_runs(cluster, len(NIGHTS))
        yield {
            "root": root,
            "cluster": cluster,
            "states": states,
            "runs": cluster.dag_runs(TRAINING),
            "tasks": {run_id: cluster.task_states(TRAINING, run_id) for run_id in states},
            "times": cluster._query(
                "SELECT run_id, start_date, end_date FROM dag_run WHERE dag_id = :d AND run_type = 'backfill' ORDER BY logical_date",
                d=TRAINING,
            ),
            "monitoring": monitoring,
            "steps": [json.loads(line) for line in steps_file(env).read_text().splitlines()],
        }


def _wait_for_monitoring_runs(cluster: AirflowCluster, count: int) -> list[dict]:
    import time

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = cluster.dag_runs(MONITORING)
        if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(3)
    raise AssertionError(
        f"monitoring runs not done: {cluster.dag_runs(MONITORING)}\n{cluster.services.tail('scheduler')}"
    )


def test_every_night_of_the_backfill_succeeds(backfill) -> None:
    assert set(backfill["states"].values()) == {"success"}, backfill["tasks"]
    for tasks in backfill["tasks"].values():
        assert set(tasks.values()) == {"success"}, tasks


def test_backfill_runs_one_night_at_a_time_in_order(backfill) -> None:
    rows = backfill["times"]
    assert len(rows) == len(NIGHTS)
    for (_, _, first_end), (_, second_start, _) in zip(rows, rows[1:], strict=False):
        assert pd.Timestamp(second_start) >= pd.Timestamp(first_end)


def test_no_run_but_the_backfill(backfill) -> None:
    assert {r["run_type"] for r in backfill["runs"]} == {"backfill"}


def test_each_night_published_its_day_trained_and_scored_the_next(backfill) -> None:
    import mlflow

    root = backfill["root"]
    for night in NIGHTS:
        assert (root / "data" / "raw" / f"date={night.isoformat()}").is_dir()
        scored = pd.read_parquet(root / "data" / "predictions" / f"date={(night + dt.timedelta(days=1)).isoformat()}")
        assert len(scored) > 500 and scored["delay_probability"].between(0, 1).all()
    uri = f"sqlite:///{root / 'mlops' / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    by_run = {v.tags["lineage.run_id"]: v for v in client.search_model_versions("name = 'flight_delay'")}
    assert set(by_run) == set(backfill["states"])
    # Each night's model was trained on the window ending on that night, and the last is champion.
    ends = sorted(v.tags["lineage.window_end"] for v in by_run.values())
    assert ends == [n.isoformat() for n in NIGHTS]
    last = max(by_run.values(), key=lambda v: int(v.version))
    assert last.tags["lineage.window_end"] == NIGHTS[-1].isoformat()
    assert "champion" in client.get_model_version("flight_delay", last.version).aliases


def test_each_collected_night_started_a_monitoring_run_through_its_asset_event(backfill) -> None:
    cluster = backfill["cluster"]
    runs = backfill["monitoring"]
    assert runs and {r["run_type"] for r in runs} == {"asset_triggered"}
    assert {r["state"] for r in runs} == {"success"}, [cluster.task_states(MONITORING, r["run_id"]) for r in runs]
    # Which training runs' events each monitoring run consumed: every night's, each once.
    consumed = cluster._query(
        "SELECT dr.run_id, e.source_run_id, e.source_task_id FROM dagrun_asset_event x "
        "JOIN dag_run dr ON dr.id = x.dag_run_id JOIN asset_event e ON e.id = x.event_id "
        "WHERE dr.dag_id = :d",
        d=MONITORING,
    )
    assert sorted(row[1] for row in consumed) == sorted(backfill["states"])
    assert {row[2] for row in consumed} == {"collect"}


def test_every_training_step_ran_in_the_step_worker(backfill) -> None:
    done = {(s["run_id"], s["step"]) for s in backfill["steps"] if s["outcome"] == "result"}
    for run_id in backfill["states"]:
        steps = {step for rid, step in done if rid == run_id}
        assert {"collect", "validate", "preprocess", "train", "evaluate", "register", "batch_predict"} <= steps, steps
