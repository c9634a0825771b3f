"""The embedded default: Airflow on SQLite (LocalExecutor), MLflow on SQLite, all under ``.local``.

    python -m pipelines.ops.local run [--date YYYY-MM-DD] [--conf JSON]   one training run, end to end
    python -m pipelines.ops.local airflow-ui                             ``airflow standalone`` on the same state
    python -m pipelines.ops.local mlflow-ui                              the MLflow UI on the same store

``run`` migrates the metadata database, starts the API server, scheduler, DAG
processor and the step worker, triggers the training DAG once, waits for it,
stops them and prints where to look. Nothing needs starting by hand.
``MLOPS_STEP_WORKER=off`` makes every task import its libraries itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.ops.environment import airflow_env
from pipelines.settings import Settings, resolve

DAG_ID = "flights_training"
LOCAL_USER = "admin"
LOCAL_PASSWORD = "admin"


def local_env(settings: Settings) -> dict[str, str]:
    """The embedded default's environment: Airflow under ``<MLOPS_HOME>/airflow``; values already set win.

    Args:
        settings: the pipeline's settings (:func:`pipelines.settings.resolve`).

    Returns:
        The environment of the Airflow processes to start, with a known login for local use only
        (``admin``/``admin``; production sets its own, see docker-compose.yml).
    """
    home = Path(os.environ.get("AIRFLOW_HOME") or settings.home / "airflow")
    # Tasks hand their steps to the warm step worker started beside the scheduler
    # (pipelines/ops/worker.py): the libraries are imported once, not once per task.
    built = airflow_env(home, login=(LOCAL_USER, LOCAL_PASSWORD), step_worker=True)
    return {**built, **os.environ}


def _migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit("airflow db migrate failed")


def run_pipeline(data_date: str, conf: dict, timeout: float = 1800) -> int:
    """Run the training DAG once through the scheduler; print the MLflow run, model version and predictions.

    The real thing, not a simulation: ``airflow scheduler`` (LocalExecutor: one
    process per task) and ``airflow dag-processor`` run against the SQLite
    database under the local state, and stop when the run ends. The run takes
    the DAG's next nightly slot, so the scheduler does not add a run of its own.
    """
    import datetime as dt

    from pipelines.ops import worker
    from pipelines.ops.cluster import AirflowCluster

    settings = resolve()
    env = local_env(settings)
    print(f"local state: {settings.home}  data: {settings.data_dir}", flush=True)
    _migrate(env)
    day = dt.date.fromisoformat(data_date)
    log_dir = Path(env["AIRFLOW_HOME"]) / "services"
    started = time.perf_counter()
    with AirflowCluster(env, log_dir=log_dir) as cluster:
        if worker.enabled(env):
            worker.start_service(cluster.services, env)
            worker.wait_ready(env, services=cluster.services)
        cluster.wait_for_dag(DAG_ID)
        run_id = f"local__{data_date}__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        cluster.trigger(DAG_ID, run_id, logical_date=cluster.next_dagrun(DAG_ID), conf={"data_date": data_date, **conf})
        cluster.unpause(DAG_ID)
        print(f"triggered {run_id}; scheduler and DAG processor logs in {log_dir}", flush=True)
        try:
            state = cluster.wait_for_run(DAG_ID, run_id, timeout=timeout)
        finally:
            # Leave the DAG as found: no nightly runs until someone unpauses it in the UI.
            cluster.airflow("dags", "pause", DAG_ID, check=False)
        states = cluster.task_states(DAG_ID, run_id)
        durations = cluster.task_durations(DAG_ID, run_id)
    seconds = time.perf_counter() - started
    print(f"\nDAG run {run_id}: {state} in {seconds:.0f}s (scheduler start to finish)")
    for task_id, task_state in states.items():
        took = f"{durations[task_id]:6.1f}s" if task_id in durations else ""
        print(f"  {task_id:<14} {task_state!s:<10} {took}")
    if state != "success":
        print(f"task logs: {Path(env['AIRFLOW_HOME']) / 'logs'}")
        return 1
    _print_summary(settings, run_id, day)
    return 0


def _print_summary(settings: Settings, run_id: str, day) -> None:
    import mlflow

    from pipelines.config import load_params
    from pipelines.steps.predict import PREDICTION_FILE, next_day

    params = load_params(settings.params_path)
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    name = params.register_.model_name
    versions = client.search_model_versions(f"name = '{name}' and tags.`lineage.run_id` = '{run_id}'")
    print("\nWhere to look:")
    for v in versions:
        aliases = ", ".join(client.get_model_version(name, v.version).aliases) or "none"
        print(f"  MLflow run        {v.run_id}  ({settings.tracking_uri})")
        print(f"  model version     models:/{name}/{v.version}  aliases: {aliases}")
        print(f"  holdout AUC       {v.tags.get('metrics.holdout_auc')}  (baseline {v.tags.get('metrics.baseline_holdout_auc')})")
        print(f"  promotion         {v.tags.get('promotion.decision')}")
    nxt = next_day(params.dataset, day)
    if nxt is not None:
        print(f"  predictions       {settings.predictions_dir / f'date={nxt.isoformat()}' / PREDICTION_FILE}")
    print(f"  validation report {settings.run_dir(DAG_ID, run_id) / 'validation' / 'data_docs' / 'index.html'}")
    print("\nUIs on this state: `make airflow-ui` (http://localhost:8080, admin/admin), `make mlflow-ui` (http://localhost:5000)")


def airflow_ui() -> int:
    env = local_env(resolve())
    _migrate(env)
    os.execvpe(sys.executable, [sys.executable, "-m", "airflow", "standalone"], env)
    return 0  # not reached


def mlflow_ui(port: int) -> int:
    settings = resolve()
    os.execvp(
        sys.executable,
        [
            sys.executable, "-m", "mlflow", "ui",
            "--backend-store-uri", settings.tracking_uri,
            "--registry-store-uri", settings.tracking_uri,
            "--port", str(port),
        ],
    )
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.ops.local", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the training DAG once, end to end")
    r.add_argument("--date", default="2013-12-30", help="data day (YYYY-MM-DD); default: the last full day of 2013 with a next day to score")
    r.add_argument("--conf", default="{}", help="trigger parameters as JSON, e.g. '{\"epochs\": 3}'")
    sub.add_parser("airflow-ui", help="airflow standalone on the local state")
    m = sub.add_parser("mlflow-ui", help="the MLflow UI on the local store")
    m.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    if args.command == "run":
        return run_pipeline(args.date, json.loads(args.conf))
    if args.command == "airflow-ui":
        return airflow_ui()
    return mlflow_ui(args.port)


if __name__ == "__main__":
    sys.exit(main())
