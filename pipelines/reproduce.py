"""Reproduce a registered model: restore its code and data, retrain, compare the metrics.

The model version's lineage names its dataset version (a commit on the
``datasets`` branch holding the code, the DVC pointers and the run's
effective ``params.yaml``). That commit is cloned, its data pulled from the
DVC remote and checked against the recorded fingerprint, and ``dvc repro``
runs the ``dvc.yaml`` stages there, with the restored code first on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, load_params
from pipelines.model.features import files_fingerprint
from pipelines.settings import resolve


def reproduce(model_version: str, *, tolerance: float = 0.01, workdir: Path | None = None) -> dict[str, Any]:
    """Retrain a model version from its restored code and data.

    Returns:
        The dataset revision, the registered and reproduced holdout AUC, their
        difference and whether it is within ``tolerance``.

    Raises:
        ConfigError: the version has no dataset version in its lineage.
        pipelines.errors.VersioningError: the data could not be restored.
    """
    import mlflow

    from pipelines.data.dvc_repo import default_remote_endpoint, default_remote_url
    from pipelines.steps.version import restore_dataset_version

    settings = resolve()
    name = load_params(settings.params_path).register_.model_name
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    tags = client.get_model_version(name, str(model_version)).tags
    rev, repo = tags.get("lineage.dataset_git_rev", ""), tags.get("lineage.dvc_repo")
    if not repo or not rev or rev.startswith("not versioned"):
        raise ConfigError(f"{name} version {model_version} has no dataset version in its lineage ({rev or 'none'})")

    root = workdir or Path(tempfile.mkdtemp(prefix="flights-reproduce-"))
    dest = root / f"{name}-v{model_version}"
    restore_dataset_version(repo, rev, dest, remote_url=default_remote_url(), endpoint_url=default_remote_endpoint())

    pulled = files_fingerprint((dest / "data" / "processed").glob("splits/*.parquet"), dest / "data" / "processed")
    if pulled != tags.get("lineage.data_fingerprint"):
        raise ConfigError(
            f"the pulled processed data has fingerprint {pulled}, the model version records "
            f"{tags.get('lineage.data_fingerprint')}"
        )

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(dest), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--quiet"], cwd=dest, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"dvc repro failed in {dest}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    evaluation = json.loads((dest / "build" / "evaluation" / "evaluation.json").read_text())
    registered = float(tags["metrics.holdout_auc"])
    reproduced = float(evaluation["model"]["auc"])
    return {
        "model_name": name,
        "model_version": str(model_version),
        "dataset_git_rev": rev,
        "workdir": str(dest),
        "data_fingerprint": pulled,
        "registered_holdout_auc": registered,
        "reproduced_holdout_auc": reproduced,
        "difference": reproduced - registered,
        "tolerance": tolerance,
        "within_tolerance": abs(reproduced - registered) <= tolerance,
    }
