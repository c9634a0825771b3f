"""The configuration of a local Airflow (SQLite, LocalExecutor) and of the pipeline it runs, as environment variables.

One builder for every place that starts Airflow on this machine: the main command
(:mod:`pipelines.ops.local`), the season replay, the tests and the benchmarks. They differ only in
the options of :func:`airflow_env`. Standard library only, and nothing imported from Airflow: the
test session calls it before anything imports Airflow, which reads its configuration once.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pipelines.settings import REPO_ROOT

# Variables of the caller's environment that would point the pipeline at someone else's state.
_NOT_INHERITED = ("MLFLOW_TRACKING_URI",)


def machine_sizing(cpus: int | None = None) -> dict[str, str]:
    """Airflow's process counts for a machine with ``cpus`` cores (default: this one's).

    Airflow's defaults suit a server: LocalExecutor starts ``[core] parallelism`` (32) worker
    processes at once, idle or not, and the DAG processor parses with two. Here a task mostly
    waits on the step worker, which does the work, so two task slots per core keep the cores
    busy; four at least, so that a waiting sensor never holds the last slot.

    Args:
        cpus: the cores to size for; None: ``os.cpu_count()``.

    Returns:
        ``AIRFLOW__...`` variables: executor parallelism, API server workers, DAG parsing processes.
    """
    cpus = max(1, cpus or os.cpu_count() or 1)
    return {
        "AIRFLOW__CORE__PARALLELISM": str(max(4, 2 * cpus)),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": str(max(1, min(2, cpus // 2))),
    }


def airflow_env(
    airflow_home: Path,
    *,
    base: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
    api_port: int | None = None,
    api_host: str = "127.0.0.1",
    login: tuple[str, str] | None = None,
    scheduled_runs: bool = True,
    step_worker: bool = False,
    dags_folder: Path = REPO_ROOT / "dags",
    plugins_folder: Path = REPO_ROOT / "plugins",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Airflow's and the pipeline's settings for processes started on this machine.

    Creates ``airflow_home`` with a JWT secret file (kept: every component and every later start
    signs and checks tokens with it) and, with a ``login``, the auth manager's passwords file
    (written only when absent, so a password changed there stays).

    Args:
        airflow_home: ``AIRFLOW_HOME``; the SQLite metadata database is ``airflow.db`` in it.
        base: the environment to start from (e.g. ``os.environ``); none by default.
        state_dir: a state folder of its own for the pipeline, outside the repository:
            ``MLOPS_HOME`` is ``state_dir/mlops``, ``MLOPS_DATA_DIR`` ``state_dir/data``, data
            versioning is off (DVC needs the repository) and ``MLFLOW_TRACKING_URI`` is not taken
            from ``base``. None: the pipeline's settings are left to ``base`` and the defaults.
        api_port: the API server's port; the task log server takes the next one and the triggerer's
            the one after. None: Airflow's.
        api_host: the address the API server listens on: this machine only by default (Airflow's
            own default, 0.0.0.0, would offer the local admin login to the network).
        login: ``(user, password)`` of the one (admin) user. None: no login, every visitor is admin.
        scheduled_runs: whether the scheduler creates runs from the DAGs' schedules; off, only
            the runs triggered or backfilled run.
        step_worker: tasks hand their steps to the warm step worker (:mod:`pipelines.ops.worker`).
        dags_folder, plugins_folder: default this repository's.
        extra: variables set last, over everything else.

    The process counts come from :func:`machine_sizing`; any of them set in ``base`` or ``extra`` wins.

    Returns:
        The whole environment of the processes to start.
    """
    airflow_home = Path(airflow_home).absolute()  # SQLite URLs need an absolute path
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = {**machine_sizing(), **(base or {})}
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__HOST": api_host,
            "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(airflow_home),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(scheduled_runs),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(login is None),
            "MLOPS_STEP_WORKER": "warm" if step_worker else "off",
            "GX_ANALYTICS_ENABLED": "False",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    if login is not None:
        user, password = login
        passwords = airflow_home / "passwords.json"
        if not passwords.exists():
            passwords.write_text(json.dumps({user: password}))
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{user}:admin"
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
    if api_port is not None:
        env["AIRFLOW__API__PORT"] = str(api_port)
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{api_port}/execution/"
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(api_port + 1)
        env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(api_port + 2)
    if state_dir is not None:
        for name in _NOT_INHERITED:
            env.pop(name, None)
        env["MLOPS_HOME"] = str(Path(state_dir) / "mlops")
        env["MLOPS_DATA_DIR"] = str(Path(state_dir) / "data")
        env["MLOPS_VERSIONING"] = "off"
    env.update(extra or {})
    return env


def _jwt_secret(airflow_home: Path) -> str:
    path = airflow_home / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()
