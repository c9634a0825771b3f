"""Environment resolved at the edges: where state lives and how to reach services.

Every step takes explicit paths; the DAG and the CLI call :func:`resolve`
once and pass what it returns down. Defaults give the embedded local setup:
everything under ``<repo>/.local`` (git-ignored) and ``<repo>/data``.

Environment variables:
    MLOPS_HOME           local state (run scratch, MLflow store, Airflow home); default ``<repo>/.local``
    MLOPS_DATA_DIR       collected and processed data; default ``<repo>/data``
    MLOPS_PARAMS         the params file; default ``<repo>/params.yaml``
    MLFLOW_TRACKING_URI  default ``sqlite:///$MLOPS_HOME/mlflow/mlflow.db``
    MLOPS_VERSIONING     ``on`` (default) records every run's data as a DVC dataset version; ``off`` skips it
    MLOPS_DVC_REPO       the git + DVC repository holding the data folder; default ``<repo>``
    MLOPS_DVC_REMOTE_URL       the DVC remote; default ``~/.cache/flights-mlops/dvc-remote`` (outside the work tree)
    MLOPS_DVC_REMOTE_ENDPOINT  the S3 endpoint of an ``s3://`` remote (MinIO, ...)
    MLOPS_AIRFLOW_PORT   the local Airflow API server and UI (main command, ``make airflow-ui``); default ``8080``
    MLOPS_MLFLOW_PORT    ``make mlflow-ui``; default ``5000``
    MLOPS_SERVE_PORT     the prediction service (``make serve``); default ``8000``
    MLOPS_BIND_HOST      the address the local servers listen on; default ``127.0.0.1`` (this machine only)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    home: Path
    data_dir: Path
    params_path: Path
    tracking_uri: str
    artifact_root: Path
    versioning: bool = True
    dvc_repo: Path = REPO_ROOT
    airflow_port: int = 8080
    mlflow_port: int = 5000
    serve_port: int = 8000
    bind_host: str = "127.0.0.1"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def processed_dir(self) -> Path:
        """The processed data of the latest run, as versioned by DVC."""
        return self.data_dir / "processed"

    @property
    def predictions_dir(self) -> Path:
        return self.data_dir / "predictions"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    def run_dir(self, dag_id: str, run_id: str) -> Path:
        """Scratch folder of one DAG run: retries reuse it, other runs never do."""
        return self.home / "runs" / _safe(dag_id) / _safe(run_id)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "_"


def resolve(env: dict[str, str] | None = None) -> Settings:
    """Read the environment (``os.environ`` by default) into :class:`Settings`."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("MLOPS_HOME") or REPO_ROOT / ".local").resolve()
    data_dir = Path(env.get("MLOPS_DATA_DIR") or REPO_ROOT / "data").resolve()
    params_path = Path(env.get("MLOPS_PARAMS") or REPO_ROOT / "params.yaml").resolve()
    tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    versioning = (env.get("MLOPS_VERSIONING") or "on").strip().lower()
    if versioning not in ("on", "off"):
        raise ValueError(f"MLOPS_VERSIONING must be 'on' or 'off', got {versioning!r}")
    return Settings(
        home=home,
        data_dir=data_dir,
        params_path=params_path,
        tracking_uri=tracking_uri,
        artifact_root=home / "mlflow" / "artifacts",
        versioning=versioning == "on",
        dvc_repo=Path(env.get("MLOPS_DVC_REPO") or REPO_ROOT).resolve(),
        airflow_port=_port(env, "MLOPS_AIRFLOW_PORT", 8080),
        mlflow_port=_port(env, "MLOPS_MLFLOW_PORT", 5000),
        serve_port=_port(env, "MLOPS_SERVE_PORT", 8000),
        bind_host=env.get("MLOPS_BIND_HOST") or "127.0.0.1",
    )


def _port(env: dict[str, str], name: str, default: int) -> int:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{name} must be a TCP port (1-65535), got {value!r}")
    return int(value)
