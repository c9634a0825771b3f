"""The monitoring run's MLflow run: where every check logs its figures and reports.

A monitoring run owns one MLflow run in the ``monitor.experiment`` experiment, found
again by its run key (:func:`monitoring_run`), so its parallel checks and a retried
task all log into the same run. MLflow is imported where it is used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.tracking import Tracking

REPORT_ARTIFACT_DIR = "reports"  # in the MLflow run of the monitoring run


def monitoring_run(tracking: Tracking, experiment: str) -> str:
    """The id of the MLflow run of a monitoring run, in its own experiment (created on first use)."""
    from pipelines.tracking import get_or_create_run

    return get_or_create_run(replace(tracking, experiment=experiment))


def log_numbers(
    tracking: Tracking,
    experiment: str,
    prefix: str,
    numbers: Mapping[str, float | None],
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log ``<prefix>.<name>`` metrics (finite numbers only) and tags on the monitoring run; its run id."""
    import math

    import mlflow

    run_id = monitoring_run(tracking, experiment)
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    now = int(time.time() * 1000)
    finite = {
        f"{prefix}.{k}": float(v)
        for k, v in numbers.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in finite.items()],
        tags=[mlflow.entities.RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
    return run_id


def log_check(
    tracking: Tracking, experiment: str, name: str, result: Any, metrics: Mapping[str, float | None]
) -> str | None:
    """Log a check's reports under ``reports/`` of the monitoring run, and its numbers; the HTML report's URI."""
    import mlflow

    run_id = log_numbers(tracking, experiment, name, metrics, {f"{name}.detected": str(bool(result.detected)).lower()})
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    for path in (result.report_html, result.report_json):
        if path:
            client.log_artifact(run_id, path, REPORT_ARTIFACT_DIR)
    if result.report_html:
        return f"runs:/{run_id}/{REPORT_ARTIFACT_DIR}/{Path(result.report_html).name}"
    return None


def log_json(tracking: Tracking, experiment: str, path: Path, content: Mapping[str, Any]) -> str:
    """Write ``content`` to ``path`` and log it under ``reports/`` of the monitoring run; its MLflow URI."""
    import mlflow

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, default=str), encoding="utf-8")
    run_id = monitoring_run(tracking, experiment)
    mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri).log_artifact(
        run_id, str(path), REPORT_ARTIFACT_DIR
    )
    return f"runs:/{run_id}/{REPORT_ARTIFACT_DIR}/{path.name}"
