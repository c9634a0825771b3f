"""The step worker (pipelines.ops.worker): steps run in forks of a warm process, results and errors come back."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import light_worker

from pipelines.ops import worker


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A worker with a light preload (the real one imports TensorFlow and friends: slow for a unit test)."""
    with light_worker(tmp_path_factory.mktemp("worker"), "worker") as worker_:
        yield worker_


@pytest.fixture
def use_worker(warm, monkeypatch):
    for key in (worker.ENV_MODE, worker.ENV_SOCKET):
        monkeypatch.setenv(key, warm["env"][key])
    return warm


def test_step_runs_in_a_fork_with_the_callers_env_and_cwd(use_worker, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MLOPS_TEST_MARK", "from-the-task")
    monkeypatch.chdir(tmp_path)
    pid = worker.call(os.getpid)
    assert pid not in (os.getpid(), use_worker["proc"].pid)
    assert worker.call(os.getenv, "MLOPS_TEST_MARK") == "from-the-task"
    assert worker.call(os.getcwd) == str(tmp_path)
    assert worker.call(os.getpid) != pid  # a new process per step


def test_steps_start_subprocesses_and_finish_one_after_another(use_worker) -> None:
    """A step's own children are its business (SIGCHLD as usual there); the worker notices each step's end."""
    assert worker.call(subprocess.check_call, ["true"]) == 0
    pids = [worker.call(os.getpid) for _ in range(5)]
    assert len(set(pids)) == 5
    for pid in pids:  # each step's process has ended and been reaped by the worker
        assert not Path(f"/proc/{pid}").exists() or "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_logs_come_back_to_the_task(use_worker, caplog) -> None:
    with caplog.at_level(logging.INFO):
        worker.call(logging.warning, "from the step: %s", 42)
    assert "from the step: 42" in caplog.text


def test_errors_come_back_with_their_type_and_traceback(use_worker) -> None:
    with pytest.raises(FileNotFoundError) as info:
        worker.call(os.listdir, "/no/such/folder")
    assert any("step worker" in note for note in info.value.__notes__)


def test_validation_failed_crosses_processes_with_its_report() -> None:
    import pickle

    from pipelines.steps.validate import ValidationFailed
    from pipelines.validation.results import Finding, ValidationReport

    err = ValidationFailed("failed: 1 rule", ValidationReport(rows=3, findings=[Finding("values", "x", "c", "d")]))
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == "failed: 1 rule" and back.report.rows == 3 and not back.report.success


def test_stale_worker_is_bypassed(use_worker, monkeypatch) -> None:
    monkeypatch.setattr(worker, "code_fingerprint", lambda: "other-code")
    assert worker.call(os.getpid) == os.getpid()  # ran here, not in the worker


def test_a_step_whose_task_goes_away_is_stopped(use_worker) -> None:
    code = "import time\nfrom pipelines.ops import worker\nworker.call(time.sleep, 120)\n"
    task = subprocess.Popen([sys.executable, "-c", code], env=use_worker["env"])
    deadline = time.monotonic() + 30
    step_pid = None
    while time.monotonic() < deadline and step_pid is None:
        out = subprocess.run(["pgrep", "-P", str(use_worker["proc"].pid)], capture_output=True, text=True).stdout
        step_pid = int(out.split()[0]) if out.split() else None
        time.sleep(0.2)
    assert step_pid is not None, "the step's process never started"
    task.kill()
    task.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{step_pid}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{step_pid}").exists(), "the step's process outlived its task"


def test_steps_run_here_unless_enabled(monkeypatch) -> None:
    monkeypatch.delenv(worker.ENV_MODE, raising=False)
    assert not worker.enabled()
    monkeypatch.setenv(worker.ENV_MODE, "sometimes")
    with pytest.raises(ValueError, match="MLOPS_STEP_WORKER"):
        worker.enabled()


def test_a_step_never_hands_work_on_again(use_worker) -> None:
    # Inside a step's process the worker is off, whatever the task's environment says
    # (a step calling another decorated step runs it there, not in a new fork).
    assert worker.enabled()
    assert worker.call(worker.enabled) is False
