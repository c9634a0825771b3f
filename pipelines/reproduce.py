"""Reproduce a registered model: restore its code and data, retrain, compare the metrics.

The model version's lineage names its dataset version (a commit on the
``datasets`` branch holding the code, the DVC pointers and the run's
effective ``params.yaml``). That commit is cloned, its data pulled from the
DVC remote and checked against the recorded fingerprint
(:func:`pipelines.data.pull.pull_model_data`), and ``dvc repro`` runs the
``dvc.yaml`` stages there, with the restored code first on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import load_params
from pipelines.settings import resolve


def reproduce(model_version: str, *, tolerance: float = 0.01, workdir: Path | None = None) -> dict[str, Any]:
    """Retrain a model version from its restored code and data.

    Returns:
        The dataset revision, the registered and reproduced holdout AUC, their
        difference and whether it is within ``tolerance``.

    Raises:
        ConfigError: no registry, no such version, or no dataset version in its lineage.
        pipelines.errors.VersioningError: the data could not be restored, or differs from the recorded.
    """
    from pipelines.data.pull import pull_model_data

    settings = resolve()
    name = load_params(settings.params_path).registration.model_name
    root = workdir or Path(tempfile.mkdtemp(prefix="flights-reproduce-"))
    dest = root / f"{name}-v{model_version}"
    pulled = pull_model_data(settings, dest, version=str(model_version))
    rev, tags = pulled.dataset.git_rev, pulled.dataset.tags

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
        "data_fingerprint": pulled.fingerprint,
        "registered_holdout_auc": registered,
        "reproduced_holdout_auc": reproduced,
        "difference": reproduced - registered,
        "tolerance": tolerance,
        "within_tolerance": abs(reproduced - registered) <= tolerance,
    }
