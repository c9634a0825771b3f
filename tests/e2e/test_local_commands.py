"""The local commands (``make pipeline``, ``make airflow-ui``) as a user runs them: from a plain shell, on their ports, stopped by Ctrl-C.

Each command runs as ``make`` runs it (the virtual environment's Python by its path) with a PATH
that does not hold the virtual environment's ``bin``, on a fresh state folder and free ports.
Ctrl-C is sent the way a terminal sends it: SIGINT to the command's whole process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipelines.ops.airflow_api import AirflowAPI
from pipelines.ops.environment import machine_sizing

REPO = Path(__file__).resolve().parents[2]
STOP_BOUND_S = 10.0  # Ctrl-C to no process left
pytestmark = pytest.mark.e2e


def free_port_block(size: int = 3) -> int:
    """A port p with p .. p+size-1 free on loopback (API server, task log server, triggerer log server)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + size < 65536 and all(_is_free(port + i) for i in range(size)):
            return port
    raise RuntimeError("no free block of ports")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def plain_shell_env(root: Path, port: int) -> dict[str, str]:
    """A user's shell: no activated environment, nothing of the test session's Airflow or state."""
    venv_bin = str(Path(sys.executable).parent)
    path = ":".join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if p and p != venv_bin)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_", "VIRTUAL_ENV", "PYTHONHOME"))
    }
    env.update(
        {
            "PATH": path,
            "MLOPS_HOME": str(root / "state"),
            "MLOPS_DATA_DIR": str(root / "data"),
            "MLOPS_VERSIONING": "off",
            "MLOPS_AIRFLOW_PORT": str(port),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
    )
    return env


def start_command(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m pipelines.ops.local <args>`` in a process group of its own, as a shell's foreground job."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.ops.local", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {text!r}:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"no {text!r} after {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def process_tree(pid: int) -> list[psutil.Process]:
    """Every descendant of ``pid`` (not ``pid``: its Popen reaps it, psutil would take its exit status)."""
    return psutil.Process(pid).children(recursive=True)


def ctrl_c_and_wait(proc: subprocess.Popen, tree: list[psutil.Process]) -> float:
    """SIGINT to the command's process group; seconds until every process of ``tree`` is gone."""
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(tree, timeout=max(0.1, STOP_BOUND_S - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    leftover = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive if p.is_running()]
    if proc.poll() is None:
        leftover.append(f"{proc.pid} the command itself")
    for p in alive:
        p.kill()
    proc.wait(timeout=10)
    assert not leftover, f"still running {STOP_BOUND_S:.0f}s after Ctrl-C:\n" + "\n".join(leftover)
    return elapsed


def stop_everything(proc: subprocess.Popen) -> None:
    """After a failed assertion: the command and whatever it started, stopped anyway."""
    if proc.poll() is not None:
        return
    tree = process_tree(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, alive = psutil.wait_procs(tree, timeout=30)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def listening_addresses(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def test_airflow_ui_from_a_plain_shell_runs_monitoring_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port_block()
    env = plain_shell_env(tmp_path, port)
    log = tmp_path / "airflow-ui.log"
    proc = start_command(["airflow-ui"], env, log)
    try:
        wait_for_line(proc, log, "flights_monitoring unpaused", timeout=600)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=10) as resp:
            assert resp.status == 200
        assert listening_addresses(port) == {"127.0.0.1"}  # not the network's: the login is admin/admin
        api = AirflowAPI.login(f"http://127.0.0.1:{port}", "admin", "admin")
        assert api.dag("flights_monitoring")["is_paused"] is False  # collect's Asset events start it
        assert api.dag("flights_training")["is_paused"] is True  # no nightly training by opening the UI
        tree = process_tree(proc.pid)
        titles = [" ".join(p.cmdline()) for p in tree]
        for component in (
            "airflow api_server",
            "airflow scheduler",
            "airflow dag-processor",
            "airflow triggerer",
            "pipelines.ops.worker",
        ):
            assert any(component in t for t in titles), titles
        # LocalExecutor starts [core] parallelism workers at once: sized to this machine, not 32.
        executor_workers = [t for t in titles if "LocalExecutor" in t]
        assert len(executor_workers) == int(machine_sizing()["AIRFLOW__CORE__PARALLELISM"]), titles
        ctrl_c_and_wait(proc, tree)
        assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        stop_everything(proc)


def test_a_component_that_cannot_start_stops_the_command_naming_it(tmp_path: Path) -> None:
    port = free_port_block()
    env = plain_shell_env(tmp_path, port)
    log = tmp_path / "airflow-ui.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))  # another server already on the API server's port
        taken.listen()
        proc = start_command(["airflow-ui"], env, log)
        try:
            proc.wait(timeout=600)
        finally:
            stop_everything(proc)
    out = log.read_text(errors="replace")
    assert proc.returncode == 1, out[-3000:]
    assert "api-server exited" in out, out[-3000:]
    # The other components were stopped with it: none left in the command's process group.
    leftover = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == proc.pid]
    assert not leftover, leftover


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_ctrl_c_stops_the_main_command_and_every_process_it_started(tmp_path: Path) -> None:
    port = free_port_block()
    env = plain_shell_env(tmp_path, port)
    log = tmp_path / "pipeline.log"
    proc = start_command(
        ["run", "--date", "2013-03-10", "--conf", '{"epochs": 1, "training_window_days": 9}'], env, log
    )
    try:
        wait_for_line(proc, log, "triggered local__", timeout=600)
        # The main command's API server on the port from the settings, on loopback only.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=10) as resp:
            assert resp.status == 200
        assert listening_addresses(port) == {"127.0.0.1"}
        tree = process_tree(proc.pid)
        ctrl_c_and_wait(proc, tree)
        assert proc.returncode == 130, log.read_text()[-3000:]
    finally:
        stop_everything(proc)
