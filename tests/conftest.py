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

REPO = Path(__file__).resolve().parents[1]
_STATE = Path(os.environ.get("MLOPS_TEST_STATE") or tempfile.mkdtemp(prefix="mlops-tests-"))

os.environ.update(
    {
        "MLOPS_HOME": str(_STATE / "mlops"),
        "MLOPS_DATA_DIR": str(_STATE / "data"),
        "AIRFLOW_HOME": str(_STATE / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_STATE / 'airflow' / 'airflow.db'}",
        "GX_ANALYTICS_ENABLED": "False",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # The data folder above is outside this repository; tests that version data
        # set up their own git + DVC repository (tests/e2e/test_dvc_pipeline.py).
        "MLOPS_VERSIONING": "off",
    }
)
os.environ.pop("MLFLOW_TRACKING_URI", None)
(_STATE / "airflow").mkdir(parents=True, exist_ok=True)


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
