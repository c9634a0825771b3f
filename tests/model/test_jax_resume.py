"""Fault tolerance under ``train.backend: jax``: a killed training resumes from its last completed epoch.

As ``test_train_resume`` does for TensorFlow (its workspace and helpers): the training
step runs as ``python -m pipelines step train``; its process group (the step and its JAX
subprocess) is killed with SIGKILL once the second epoch has ended, and the same command
started again. The JAX subprocess keeps its ``BackupAndRestore`` checkpoint in the run's
model folder, so the second process starts at the third epoch, says so in the task log,
and logs into the same MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_train_resume import EPOCHS, _command, _env, _epochs_logged, workspace  # noqa: F401 (module fixture)


@pytest.fixture(scope="module")
def jax_workspace(workspace: dict[str, Path]) -> dict[str, Path]:  # noqa: F811
    root = workspace["root"] / "jax"
    root.mkdir()
    raw = yaml.safe_load(workspace["params"].read_text())
    raw["train"]["backend"] = "jax"
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return {**workspace, "root": root, "params": params, "model": root / "model"}


def test_killed_jax_training_resumes_from_its_last_completed_epoch(jax_workspace: dict[str, Path]) -> None:
    ws = jax_workspace
    log1 = ws["root"] / "first.log"
    with open(log1, "wb") as out:
        first = subprocess.Popen(
            _command(ws), env=_env(ws), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while 2 not in _epochs_logged(log1.read_text(errors="replace")):
            assert first.poll() is None, f"training ended before its second epoch:\n{log1.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no second epoch within 5 minutes"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)  # the step and its JAX subprocess, no clean-up
        first.wait(timeout=30)
    text1 = log1.read_text(errors="replace")
    before = _epochs_logged(text1)
    assert "[jax] JAX " in text1, "the first process did not train under JAX"
    assert max(before) < EPOCHS, "the first process finished before it was killed: nothing to resume"
    backup = ws["model"] / "backup"
    assert backup.is_dir() and any(backup.iterdir()), "no checkpoint left by the killed JAX subprocess"

    second = subprocess.run(_command(ws), env=_env(ws), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    after = _epochs_logged(second.stdout + second.stderr)
    assert after and after[0] in {max(before) + 1, max(before) + 2}, (before, after)
    assert after == list(range(after[0], EPOCHS + 1))
    assert f"resumed training from its checkpoint: {after[0] - 1} of {EPOCHS} epoch(s) already done" in (
        second.stdout + second.stderr
    )
    result = json.loads(second.stdout[second.stdout.index("{") :])
    assert result["epochs_run"] == len(after)
    assert result["hardware"]["strategy"] == "single device"
    assert 0.6 < result["best_val_auc"] < 0.95
    assert (ws["model"] / "model.keras").exists()
    assert not backup.exists() or not any(backup.iterdir()), "the checkpoint outlived a completed training"

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{ws['root'] / 'home' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "val_auc")})
    # Every epoch either process logged is on the one run. An epoch the first process checkpointed in
    # the instant before the kill (resumed from max(before) + 2, allowed above) had no time to log.
    assert steps == sorted({e - 1 for e in before} | {e - 1 for e in after})
