"""A fresh, isolated Airflow configuration for tests that start real components (pipelines.ops.cluster).

Used by the operator CLI, plugin and browser tests: each gets its own SQLite database, Airflow home,
local state, login and ports, so they never share state with the session's ``dag.test()`` database
or with each other.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.ops.environment import airflow_env

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "admin", "admin-test-password"


def fresh_airflow_env(
    root: Path,
    *,
    api_port: int,
    dags_folder: Path = REPO / "dags",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The whole configuration of a cluster under ``root`` (created), as environment variables.

    The API server listens on ``api_port`` and the task log server on the next port; the user
    ``USER`` logs in with ``PASSWORD``. The scheduler creates no runs from the DAGs' schedules
    (``use_job_schedule`` off): only the runs a test triggers or backfills run.
    """
    return airflow_env(
        root / "airflow",
        base=os.environ,
        state_dir=root,
        api_port=api_port,
        login=(USER, PASSWORD),
        scheduled_runs=False,
        dags_folder=dags_folder,
        extra=extra,
    )
