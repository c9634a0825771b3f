"""Test session setup: an isolated local state folder, Airflow on SQLite, MLflow on SQLite.

The environment is set at import, before anything imports Airflow, which reads
its configuration once. Nothing here touches the developer's own ``.local``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Standard library only, so importing it here imports nothing that reads Airflow's configuration.
from pipelines.ops.environment import airflow_env

_STATE = Path(os.environ.get("MLOPS_TEST_STATE") or tempfile.mkdtemp(prefix="mlops-tests-"))

# The data folder is outside this repository (versioning off); tests that version data set up
# their own git + DVC repository (tests/e2e/test_dvc_pipeline.py).
os.environ.update(airflow_env(_STATE / "airflow", state_dir=_STATE))
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def state_dir() -> Path:
    """The session's local state folder (MLOPS_HOME, data, Airflow home live below it)."""
    return _STATE


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) for ``dag.test()``."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return _STATE / "airflow" / "airflow.db"
