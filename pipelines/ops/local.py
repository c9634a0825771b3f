"""The embedded default: Airflow on SQLite (LocalExecutor), MLflow on SQLite, all under ``.local``.

    python -m pipelines.ops.local run [--date YYYY-MM-DD] [--conf JSON]   one training run, end to end
    python -m pipelines.ops.local airflow-ui                             Airflow's UI and scheduler on the same state
    python -m pipelines.ops.local mlflow-ui                              the MLflow UI on the same store

``run`` migrates the metadata database, starts the API server, scheduler, DAG
processor and the step worker, triggers the training DAG once, waits for it,
stops them and prints where to look. Nothing needs starting by hand.
``MLOPS_STEP_WORKER=off`` makes every task import its libraries itself.

``airflow-ui`` starts the same services plus the triggerer and keeps them up,
with the monitoring DAG unpaused (it runs on each collect's Asset event, as in
production); the training DAG keeps its paused state, so opening the UI never
starts a nightly training by itself. Both commands run every Airflow component
as ``<this Python> -m airflow``, so they need no activated virtual environment;
a component that exits stops the command with its log's end (exit status 1),
and Ctrl-C (or SIGTERM) stops every process they started within seconds.

Ports and the listening address come from the settings (``MLOPS_AIRFLOW_PORT``,
default 8080; ``MLOPS_MLFLOW_PORT``, 5000; ``MLOPS_BIND_HOST``, 127.0.0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.ops.environment import airflow_env
from pipelines.settings import Settings, resolve

DAG_ID = "flights_training"
MONITORING_DAG_ID = "flights_monitoring"
LOCAL_USER = "admin"
LOCAL_PASSWORD = "admin"
RUN_COMPONENTS = ("api-server", "scheduler", "dag-processor")
UI_COMPONENTS = (*RUN_COMPONENTS, "triggerer")
STOP_TIMEOUT_S = 5.0  # SIGTERM to SIGKILL when stopping: Ctrl-C should not keep anyone waiting


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
    built = airflow_env(
        home,
        login=(LOCAL_USER, LOCAL_PASSWORD),
        step_worker=True,
        api_port=settings.airflow_port,
        api_host=settings.bind_host,
    )
    return {**built, **os.environ}


def local_cluster(env: dict[str, str], settings: Settings, components: tuple[str, ...] = RUN_COMPONENTS):
    """The local Airflow's components on ``env``, on the settings' port, stopped within seconds.

    Args:
        env: :func:`local_env`'s environment.
        settings: the pipeline's settings (the port).
        components: the ``airflow`` sub-commands to run.

    Returns:
        An :class:`pipelines.ops.cluster.AirflowCluster`, not started.
    """
    from pipelines.ops.cluster import AirflowCluster

    log_dir = Path(env["AIRFLOW_HOME"]) / "services"
    return AirflowCluster(
        env, log_dir=log_dir, components=components, api_port=settings.airflow_port, stop_timeout=STOP_TIMEOUT_S
    )


def _local_api(env: dict[str, str], settings: Settings):
    """The REST client, logged in as the local admin (password from the auth manager's file)."""
    from pipelines.ops.airflow_api import AirflowAPI

    password = LOCAL_PASSWORD
    passwords = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    if passwords and Path(passwords).exists():
        password = json.loads(Path(passwords).read_text()).get(LOCAL_USER, password)
    return AirflowAPI.login(f"http://127.0.0.1:{settings.airflow_port}", LOCAL_USER, password)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does: through the ``with`` blocks that stop the services.

    Ctrl-C is made to raise even where SIGINT was ignored when the command started (a shell
    script's background job inherits it ignored, and Python then installs no handler).
    """

    def _raise(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _migrate(env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True)
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

    from pipelines.ops.cluster import ServiceError

    settings = resolve()
    env = local_env(settings)
    print(f"local state: {settings.home}  data: {settings.data_dir}", flush=True)
    day = dt.date.fromisoformat(data_date)
    started = time.perf_counter()
    try:
        with _sigterm_as_interrupt():
            _migrate(env)
            with local_cluster(env, settings) as cluster:
                _start_worker(cluster, env)
                cluster.wait_for_dag(DAG_ID)
                run_id = f"local__{data_date}__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
                logical_date = cluster.next_dagrun(DAG_ID)
                cluster.trigger(DAG_ID, run_id, logical_date=logical_date, conf={"data_date": data_date, **conf})
                api = _local_api(env, settings)
                api.unpause(DAG_ID)
                print(f"triggered {run_id}; scheduler and DAG processor logs in {cluster.services.log_dir}", flush=True)
                try:
                    state = cluster.wait_for_run(DAG_ID, run_id, timeout=timeout)
                finally:
                    # Leave the DAG as found: no nightly runs until someone unpauses it in the UI.
                    with contextlib.suppress(Exception):
                        api.pause(DAG_ID)
                states = cluster.task_states(DAG_ID, run_id)
                durations = cluster.task_durations(DAG_ID, run_id)
    except KeyboardInterrupt:
        print("\ninterrupted: every service this command started is stopped", file=sys.stderr)
        return 130
    except ServiceError as err:
        print(f"\n{err}", file=sys.stderr)
        return 1
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
    name = params.registration.model_name
    versions = client.search_model_versions(f"name = '{name}' and tags.`lineage.run_id` = '{run_id}'")
    print("\nWhere to look:")
    for v in versions:
        aliases = ", ".join(client.get_model_version(name, v.version).aliases) or "none"
        print(f"  MLflow run        {v.run_id}  ({settings.tracking_uri})")
        print(f"  model version     models:/{name}/{v.version}  aliases: {aliases}")
        print(
            f"  holdout AUC       {v.tags.get('metrics.holdout_auc')}  (baseline {v.tags.get('metrics.baseline_holdout_auc')})"
        )
        print(f"  promotion         {v.tags.get('promotion.decision')}")
    nxt = next_day(params.dataset, day)
    if nxt is not None:
        print(f"  predictions       {settings.predictions_dir / f'date={nxt.isoformat()}' / PREDICTION_FILE}")
    print(f"  validation report {settings.run_dir(DAG_ID, run_id) / 'validation' / 'data_docs' / 'index.html'}")
    print(
        f"\nUIs on this state: `make airflow-ui` (http://localhost:{settings.airflow_port}, admin/admin),"
        f" `make mlflow-ui` (http://localhost:{settings.mlflow_port})"
    )


def _start_worker(cluster, env: dict[str, str]) -> None:
    from pipelines.ops import worker

    if worker.enabled(env):
        worker.start_service(cluster.services, env)
        worker.wait_ready(env, services=cluster.services)


def airflow_ui() -> int:
    """Airflow's UI, scheduler, DAG processor, triggerer and the step worker on the local state, until Ctrl-C.

    Returns:
        0 when stopped by Ctrl-C or SIGTERM; 1 when a component could not start or exited (its name
        and the end of its log on stderr; the others are stopped).
    """
    from pipelines.ops.cluster import ServiceError

    settings = resolve()
    env = local_env(settings)
    try:
        with _sigterm_as_interrupt():
            _migrate(env)
            with local_cluster(env, settings, UI_COMPONENTS) as cluster:
                print(
                    f"Airflow UI: http://{settings.bind_host}:{settings.airflow_port} (login {LOCAL_USER}; password in "
                    f"{env.get('AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE')}); logs in "
                    f"{cluster.services.log_dir}; Ctrl-C stops it",
                    flush=True,
                )
                _start_worker(cluster, env)
                # Monitoring runs on each collect's Asset event (as in production): unpaused here.
                # Training keeps its state: unpausing it would start a nightly run on every start.
                cluster.wait_for_dag(MONITORING_DAG_ID)
                _local_api(env, settings).unpause(MONITORING_DAG_ID)
                print(f"{MONITORING_DAG_ID} unpaused; {DAG_ID} runs when triggered or unpaused", flush=True)
                while True:
                    cluster.services.check_alive()
                    time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 0
    except ServiceError as err:
        print(f"\nairflow-ui: {err}", file=sys.stderr)
        return 1


def mlflow_ui(port: int | None = None) -> int:
    """``mlflow ui`` on the local store, on the settings' port and address (this process becomes it)."""
    settings = resolve()
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            settings.tracking_uri,
            "--registry-store-uri",
            settings.tracking_uri,
            "--host",
            settings.bind_host,
            "--port",
            str(port or settings.mlflow_port),
        ],
    )
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.ops.local", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the training DAG once, end to end")
    r.add_argument(
        "--date",
        default="2013-12-30",
        help="data day (YYYY-MM-DD); default: the last full day of 2013 with a next day to score",
    )
    r.add_argument("--conf", default="{}", help="trigger parameters as JSON, e.g. '{\"epochs\": 3}'")
    sub.add_parser("airflow-ui", help="Airflow's UI and scheduler on the local state, until Ctrl-C")
    m = sub.add_parser("mlflow-ui", help="the MLflow UI on the local store")
    m.add_argument("--port", type=int, default=None, help="default: MLOPS_MLFLOW_PORT or 5000")
    args = p.parse_args(argv)
    if args.command == "run":
        return run_pipeline(args.date, json.loads(args.conf))
    if args.command == "airflow-ui":
        return airflow_ui()
    return mlflow_ui(args.port)


if __name__ == "__main__":
    sys.exit(main())
