"""The README's journeys, run as written: a README that stops being true fails this test.

Every ``bash`` block after a ``<!-- journey: NAME -->`` marker is run, in the README's order, in a
fresh clone of this repository (its ``.venv`` linked in; a user's plain shell: no activated
environment, nothing of the test session's Airflow or state), with ``bash -e`` from the clone's
root; each must exit 0. Options in the marker, in parentheses:

* ``long-running``: each line is a server (``make airflow-ui``, ``make mlflow-ui``): started,
  probed on its port until it answers, then stopped with Ctrl-C (SIGINT to its process group),
  after which none of its processes may be left.
* ``needs: make airflow-ui``: that server runs (and is ready) while the block runs.

What the environment changes, and nothing else: free ports (``MLOPS_*_PORT``), a DVC remote in the
temporary folder, ``DATE`` and ``CONF`` for ``make pipeline`` (the README's own example of a short
run, its model promoted by force as the full year's is on its merits), and no nightly runs from the schedule (an unpaused training DAG would
otherwise add tonight's run beside the journey's).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from test_local_commands import free_port_block

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
pytestmark = pytest.mark.e2e

MARKER = re.compile(
    r"<!-- journey: (?P<name>[\w-]+)(?: \((?P<options>[^)]*)\))? -->\s*\n```(?:bash|sh)\n(?P<body>.*?)```", re.S
)
# Long-running commands: the port variable they listen on and the path that answers when ready.
SERVERS = {
    "make airflow-ui": ("MLOPS_AIRFLOW_PORT", "/api/v2/monitor/health"),
    "make mlflow-ui": ("MLOPS_MLFLOW_PORT", "/health"),
    "make serve": ("MLOPS_SERVE_PORT", "/ready"),
}
# The README's own example, with the promotion forced: a short run's model need not beat the baseline
# (the full year's does), and the rollback journey needs it to be the champion before the operator's.
QUICK = {
    "DATE": "2013-06-30",
    "CONF": '{"epochs": 3, "training_window_days": 90, "force_promotion": true, "promotion_reason": "README journeys: a short run"}',
}


@dataclass(frozen=True)
class Journey:
    name: str
    options: str
    body: str

    def commands(self) -> list[str]:
        """The block's commands, comments and blank lines left out (a trailing backslash joins lines)."""
        joined = self.body.replace("\\\n", " ")
        return [
            line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
        ]


def readme_journeys(text: str) -> list[Journey]:
    return [Journey(m["name"], m["options"] or "", m["body"]) for m in MARKER.finditer(text)]


JOURNEYS = readme_journeys((REPO / "README.md").read_text())


def test_the_readme_marks_the_main_journeys() -> None:
    names = [j.name for j in JOURNEYS]
    for name in ("quick-start", "uis", "operator", "monitoring-and-rollback", "data-scientist"):
        assert name in names, names


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh clone with this checkout's .venv, and a user's plain-shell environment."""
    if not (VENV / ".installed").exists():
        pytest.skip("needs the environment made by make install (.venv/.installed)")
    root = tmp_path_factory.mktemp("readme")
    clone = root / "flights-mlops"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(VENV)
    # make must find the environment up to date, as in the checkout it came from.
    installed = (VENV / ".installed").stat().st_mtime
    for name in ("requirements.lock", "pyproject.toml"):
        os.utime(clone / name, (installed - 60, installed - 60))
    path = ":".join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if p and Path(p) != VENV / "bin")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))
    }
    port = free_port_block(3)
    env.update(
        {
            "PATH": path,
            "MLOPS_AIRFLOW_PORT": str(port),
            "MLOPS_MLFLOW_PORT": str(free_port_block(1)),
            "MLOPS_SERVE_PORT": str(free_port_block(1)),
            "MLOPS_DVC_REMOTE_URL": str(root / "dvc-remote"),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            **QUICK,
        }
    )
    return clone, env


@pytest.mark.parametrize("journey", JOURNEYS, ids=[j.name for j in JOURNEYS])
def test_the_readme_journey_runs_as_written(journey: Journey, project: tuple[Path, dict[str, str]]) -> None:
    clone, env = project
    log = clone.parent / f"{journey.name}.log"
    if "long-running" in journey.options:
        for command in journey.commands():
            with Server(command, clone, env, clone.parent / f"{journey.name}-{command.split()[-1]}.log"):
                pass
        return
    needs = re.search(r"needs: ([^,)]+)", journey.options)
    if needs:
        with Server(needs[1].strip(), clone, env, clone.parent / f"{journey.name}-server.log", ready_line="unpaused"):
            _run_block(journey, clone, env, log)
    else:
        _run_block(journey, clone, env, log)


def _run_block(journey: Journey, clone: Path, env: dict[str, str], log: Path) -> None:
    with open(log, "wb") as out:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", journey.body],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    assert done.returncode == 0, f"journey {journey.name} exited with {done.returncode}:\n{log.read_text()[-5000:]}"


class Server:
    """A README command that serves until Ctrl-C: started, probed until ready, stopped, checked gone."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path, ready_line: str | None = None) -> None:
        port_var, path = next(v for k, v in SERVERS.items() if command.startswith(k))
        self.command, self.cwd, self.env, self.log, self.ready_line = command, cwd, env, log, ready_line
        self.url = f"http://127.0.0.1:{env[port_var]}{path}"

    def __enter__(self) -> Server:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", self.command],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout=900)
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.command} exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
                )
            if self._answers() and (self.ready_line is None or self.ready_line in self.log.read_text(errors="replace")):
                return
            time.sleep(2)
        raise AssertionError(
            f"{self.command}: {self.url} not ready after {timeout:.0f}s:\n{self.log.read_text()[-4000:]}"
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _stop(self) -> list[str]:
        tree = psutil.Process(self.proc.pid).children(recursive=True) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(tree, timeout=5)
        left = [" ".join(p.cmdline())[:120] for p in alive if p.is_running()]
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            left.append(f"{self.command} itself")
        return left

    def __exit__(self, *exc) -> None:
        left = self._stop()
        assert not left, f"{self.command}: still running after Ctrl-C: {left}"
