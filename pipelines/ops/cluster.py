"""Airflow's own processes, started from Python: for the main command, tests and benchmarks.

:class:`Services` starts long-running commands in their own process groups,
with a log file each, and stops every one of them (and their children) on
exit, whatever happened. :class:`AirflowCluster` uses it to run the real
Airflow components (scheduler, DAG processor, API server, Celery worker...)
against one configuration given as environment variables, and drives them the
way an operator would: the ``airflow`` CLI for actions, the metadata database
(read only) for state.

Nothing here imports Airflow: the configuration of the processes it starts
may differ from the caller's own (a test on SQLite starting a cluster on
PostgreSQL, say). :func:`pipelines.ops.environment.airflow_env` builds that
configuration for a local Airflow; :class:`pipelines.ops.airflow_api.AirflowAPI`
speaks to its API server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import sqlalchemy as sa

from pipelines.ops.airflow_api import TERMINAL_STATES


class ServiceError(RuntimeError):
    """A service did not start, died, or a wait ran out of time."""


@dataclass
class Services:
    """Long-running processes, each in its own process group, each with a log file."""

    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def check_alive(self) -> None:
        """Raise, with the end of its log, if any service has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ServiceError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group, then SIGKILL what is left of them after ``timeout``.

        Every descendant is found first and killed last if still there: Airflow's task processes
        run in process groups of their own, and a child whose parent exits is no longer found
        under it.
        """
        tree = [p for proc in self.procs.values() for p in _descendants(proc.pid)]
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Children (task processes, API server workers) may outlive their parent.
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _kill_all(tree, grace=max(0.0, deadline - time.monotonic()))
        self.procs.clear()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_all(procs: list[psutil.Process], grace: float) -> None:
    """Wait up to ``grace`` seconds for ``procs`` to exit, then SIGKILL each one left (and what it started)."""
    _, alive = psutil.wait_procs(procs, timeout=grace)
    left = [d for p in alive for d in _descendants(p.pid)] + alive
    for p in left:
        try:
            p.kill()  # psutil checks the process is the one it found, not a new one with its pid
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)


def wait_http(url: str, timeout: float, services: Services | None = None, ok: Iterable[int] = (200,)) -> None:
    """Wait until ``url`` answers with one of the ``ok`` status codes."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if services is not None:
            services.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status in ok:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as err:
            if err.code in ok:
                return
            last = f"HTTP {err.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            last = str(err)
        time.sleep(1)
    raise ServiceError(f"{url} not ready after {timeout:.0f}s ({last})")


@dataclass
class AirflowCluster:
    """Airflow components on one configuration, driven like an operator would.

    ``env`` must hold the whole configuration (``AIRFLOW_HOME``,
    ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, the executor, ...).

    ``components`` are ``airflow`` sub-commands, each run as one process: a
    string (``"scheduler"``, ``"celery worker --queues default"``; its log is
    named after it with spaces as dashes), or a ``(name, argv)`` pair to choose
    the log's name (``("worker-gpu", ["celery", "worker", "--queues", "gpu"])``).
    A bare ``"api-server"`` listens on ``api_port``.
    """

    env: dict[str, str]
    log_dir: Path
    components: tuple[str | tuple[str, Sequence[str]], ...] = ("api-server", "scheduler", "dag-processor")
    api_port: int = 8080
    python: str = sys.executable
    stop_timeout: float = 20.0  # SIGTERM to SIGKILL; an interactive command wants a few seconds

    def __post_init__(self) -> None:
        # Task processes report to the API server's execution API, whatever the executor.
        self.env = {
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            **self.env,
        }
        self.services = Services(self.log_dir)
        self._engine = sa.create_engine(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], poolclass=sa.pool.NullPool)

    # -- lifecycle ---------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command with the cluster's configuration.

        On SQLite, a command that meets the lock of a running component is tried again
        (up to five times): the database allows one writer at a time.
        """
        for attempt in range(5):
            done = subprocess.run(
                [self.python, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout
            )
            if done.returncode == 0 or "database is locked" not in done.stderr:
                break
            time.sleep(2 * (attempt + 1))
        if check and done.returncode != 0:
            raise ServiceError(f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done

    def migrate(self) -> None:
        self.airflow("db", "migrate")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 180) -> AirflowCluster:
        """Start the components; return once the API server (if one of them) answers."""
        try:
            commands = self.commands()
            for name, args in commands.items():
                self.services.start(name, [self.python, "-m", "airflow", *args], self.env)
            if any(args[:1] == ["api-server"] for args in commands.values()):
                wait_http(f"{self.api_url}/api/v2/monitor/health", timeout, self.services)
        except BaseException:
            self.stop()
            raise
        return self

    def commands(self) -> dict[str, list[str]]:
        """Process name -> the ``airflow`` arguments it runs, for every component."""
        out: dict[str, list[str]] = {}
        for component in self.components:
            if isinstance(component, str):
                name, args = component.replace(" ", "-"), component.split()
                if component == "api-server":
                    args += ["--port", str(self.api_port)]
            else:
                name, args = component[0], list(component[1])
            if name in out:
                raise ValueError(f"two components named {name!r}: give them names, as (name, argv) pairs")
            out[name] = args
        return out

    def stop(self) -> None:
        self.services.stop(self.stop_timeout)
        self._engine.dispose()

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state, read from the metadata database ----------------------------
    def _query(self, sql: str, **bind) -> list[sa.Row]:
        with self._engine.connect() as conn:
            return list(conn.execute(sa.text(sql), bind))

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Wait until the DAG processor has parsed and serialised ``dag_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.services.check_alive()
            try:
                if self._query("SELECT 1 FROM serialized_dag WHERE dag_id = :d", d=dag_id):
                    return
            except sa.exc.OperationalError:
                pass  # tables not there yet
            time.sleep(1)
        raise ServiceError(f"DAG {dag_id} not parsed after {timeout:.0f}s:\n{self.services.tail('dag-processor')}")

    def next_dagrun(self, dag_id: str) -> str | None:
        """The logical date the scheduler would give the DAG's next scheduled run (ISO format)."""
        rows = self._query("SELECT next_dagrun FROM dag WHERE dag_id = :d", d=dag_id)
        if not rows or rows[0][0] is None:
            return None
        value = rows[0][0]
        return value.isoformat() if hasattr(value, "isoformat") else str(value)

    def dag_runs(self, dag_id: str) -> list[dict]:
        """Every run of ``dag_id``, oldest first: ``run_id``, ``state``, ``run_type``, ``logical_date``, ``conf``."""
        rows = self._query(
            "SELECT run_id, state, run_type, logical_date, conf FROM dag_run WHERE dag_id = :d ORDER BY id", d=dag_id
        )
        return [dict(r._mapping) for r in rows]

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self._query("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id)
        return rows[0][0] if rows else None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        rows = self._query(
            "SELECT task_id, state FROM task_instance WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id
        )
        return {task_id: state for task_id, state in rows}

    def task_durations(self, dag_id: str, run_id: str) -> dict[str, float]:
        rows = self._query(
            "SELECT task_id, start_date, end_date FROM task_instance WHERE dag_id = :d AND run_id = :r",
            d=dag_id,
            r=run_id,
        )
        out = {}
        for task_id, start, end in rows:
            if start is not None and end is not None:
                start, end = (_as_datetime(v) for v in (start, end))
                out[task_id] = (end - start).total_seconds()
        return out

    def run_times(self, dag_id: str, run_id: str) -> tuple[object, object]:
        """The run's start and end (datetimes, None while not started or not over)."""
        rows = self._query(
            "SELECT start_date, end_date FROM dag_run WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id
        )
        if not rows:
            return None, None
        return tuple(None if v is None else _as_datetime(v) for v in rows[0])  # type: ignore[return-value]

    def active_runs(self, dag_id: str) -> list[str]:
        """Runs of ``dag_id`` queued or running now."""
        rows = self._query("SELECT run_id FROM dag_run WHERE dag_id = :d AND state IN ('queued', 'running')", d=dag_id)
        return [r[0] for r in rows]

    def pending_asset_triggers(self, dag_id: str) -> int:
        """Asset events queued for ``dag_id`` that the scheduler has not turned into a run yet."""
        return len(self._query("SELECT asset_id FROM asset_dag_run_queue WHERE target_dag_id = :d", d=dag_id))

    def asset_triggered_by(self, dag_id: str) -> list[dict]:
        """Which run's Asset event started each Asset-triggered run of ``dag_id``.

        One row per consumed event: ``run_id``, ``state``, ``source_dag_id``, ``source_run_id``, ``source_task_id``.
        """
        rows = self._query(
            "SELECT dr.run_id, dr.state, e.source_dag_id, e.source_run_id, e.source_task_id "
            "FROM dagrun_asset_event x JOIN dag_run dr ON dr.id = x.dag_run_id "
            "JOIN asset_event e ON e.id = x.event_id WHERE dr.dag_id = :d ORDER BY dr.id",
            d=dag_id,
        )
        return [dict(r._mapping) for r in rows]

    def hold_schedule(self, dag_id: str) -> None:
        """No scheduled run of ``dag_id`` until the DAG processor parses it again.

        For replays and tests on a replay DAG whose nightly slot is due now: runs
        made by hand, by backfills and by Asset events are unaffected. The one
        write this class makes to the metadata database (there is no CLI for it).
        """
        with self._engine.begin() as conn:
            conn.execute(sa.text("UPDATE dag SET next_dagrun_create_after = NULL WHERE dag_id = :d"), {"d": dag_id})

    # -- actions, through the CLI ------------------------------------------
    def unpause(self, dag_id: str) -> None:
        self.airflow("dags", "unpause", dag_id)

    def trigger(self, dag_id: str, run_id: str, logical_date: str | None = None, conf: dict | None = None) -> str:
        args = ["dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf or {})]
        if logical_date:
            args += ["--logical-date", logical_date]
        self.airflow(*args)
        return run_id

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900, poll: float = 2) -> str:
        """Wait until the run ends; return its state (``success`` or ``failed``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.services.check_alive()
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_STATES:
                return state
            time.sleep(poll)
        raise ServiceError(
            f"run {run_id} of {dag_id} not finished after {timeout:.0f}s; tasks: {self.task_states(dag_id, run_id)}\n"
            f"scheduler log:\n{self.services.tail('scheduler')}"
        )


def _as_datetime(value):
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
