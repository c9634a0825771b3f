"""A fresh, isolated Airflow configuration for tests that start real components (pipelines.ops.cluster).

Used by the operator CLI, plugin and browser tests: each gets its own SQLite database, Airflow home,
local state, login and ports, so they never share state with the session's ``dag.test()`` database
or with each other.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "admin", "admin-test-password"


def fresh_airflow_env(
    root: Path,
    *,
    api_port: int,
    log_server_port: int,
    dags_folder: Path = REPO / "dags",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The whole configuration of a cluster under ``root`` (created), as environment variables.

    The scheduler creates no runs from the DAGs' schedules (``use_job_schedule`` off): only the
    runs a test triggers or backfills run.
    """
    home = root / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_server_port),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "MLOPS_HOME": str(root / "mlops"),
            "MLOPS_DATA_DIR": str(root / "data"),
            "MLOPS_VERSIONING": "off",
            "GX_ANALYTICS_ENABLED": "False",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    return env
