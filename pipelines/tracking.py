"""MLflow plumbing shared by the steps: one MLflow run per pipeline run, lineage tags.

A pipeline run (an Airflow DAG run, or a CLI run) owns one MLflow run, found
again by its ``pipeline.run_key`` tag, so a retried task logs into the same
MLflow run instead of starting a new one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.settings import REPO_ROOT

RUN_KEY_TAG = "pipeline.run_key"


@dataclass(frozen=True)
class Tracking:
    """Where and under which identity a pipeline run logs to MLflow."""

    tracking_uri: str
    experiment: str
    artifact_root: Path | None  # for local stores; None lets a tracking server decide
    run_key: str  # e.g. "<dag_id>/<run_id>"
    tags: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "artifact_root": str(self.artifact_root) if self.artifact_root else None,
            "run_key": self.run_key,
            "tags": dict(self.tags),
        }


def _client(tracking: Tracking):
    import mlflow

    return mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)


@contextlib.contextmanager
def use_tracking(uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URI set to ``uri`` for a block, then put back.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` (and the registry's
    variable) to the environment; left there, it would override the settings of every later
    run in the same process. Only fluent APIs need it (``start_run``, ``pyfunc.load_model``).
    """
    import mlflow

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_env["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved_env["MLFLOW_REGISTRY_URI"])
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_experiment(tracking: Tracking) -> str:
    """The experiment id, creating the experiment (with a local artifact root) if needed."""
    client = _client(tracking)
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking.artifact_root is not None and not tracking.tracking_uri.startswith(("http://", "https://")):
        tracking.artifact_root.mkdir(parents=True, exist_ok=True)
        location = tracking.artifact_root.resolve().as_uri()
    try:
        return client.create_experiment(tracking.experiment, artifact_location=location)
    except Exception:  # created concurrently by another run
        exp = client.get_experiment_by_name(tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def get_or_create_run(tracking: Tracking) -> str:
    """The MLflow run id of this pipeline run, created on first use."""
    client = _client(tracking)
    exp_id = ensure_experiment(tracking)
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{tracking.run_key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {RUN_KEY_TAG: tracking.run_key, "mlflow.runName": tracking.run_key.replace("/", ":"), **tracking.tags}
    run = client.create_run(exp_id, tags=tags)
    return run.info.run_id


def code_revision() -> str:
    """The git commit of the code, with ``+dirty`` when the work tree has changes."""
    env_rev = os.environ.get("MLOPS_CODE_REVISION")
    if env_rev:
        return env_rev
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def log_validation(tracking: Tracking, report: dict[str, Any], report_dir: Path) -> str:
    """Put a validation result on the pipeline run's MLflow run: status, counts, findings, data docs.

    Returns:
        The MLflow run id.
    """
    import mlflow

    run_id = get_or_create_run(tracking)
    client = mlflow.MlflowClient(tracking.tracking_uri)
    client.set_tag(run_id, "validation.status", "passed" if report.get("success") else "failed")
    client.set_tag(run_id, "validation.warnings", str(len(report.get("warnings", []))))
    client.log_metric(run_id, "validation_rows", float(report.get("rows", 0)))
    client.log_metric(run_id, "validation_failures", float(len(report.get("failures", []))))
    client.log_metric(run_id, "validation_warnings", float(len(report.get("warnings", []))))
    client.log_dict(run_id, report, "validation/summary.json")
    if report_dir.is_dir():
        client.log_artifacts(run_id, str(report_dir), "validation")
    return run_id
