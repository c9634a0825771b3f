"""The step worker: the pipeline's libraries imported once, each step run in a fresh fork of it.

Every Airflow task is a new process, and the libraries the steps use take
about 30 s to import on a 2-core machine (TensorFlow 11 s, Great
Expectations 8.5 s, MLflow 4.5 s, scikit-learn 4 s, pandas 2 s): paid again
by every task, that start-up dominated a nightly run. With
``MLOPS_STEP_WORKER=warm`` in the tasks' environment, each ``run_*`` step of
:mod:`pipelines.runner` is handed to this worker instead: a long-running process
that imported those libraries once and forks one child per step. The child
takes the task's environment and working directory, runs the step function,
streams its log records and output into the task's log and sends back the
result or the exception; the task waits for it. Airflow still sees each
task's outcome, log, retries and timeout (a task that is killed or times out
takes its step's process with it), and every step still starts from a clean
process, as when each task imported everything itself.

Fork safety: the worker only *imports*. It never runs a TensorFlow op, lists
devices or initialises CUDA, opens no database connection and runs no thread
besides the main one when it forks; every runtime (TensorFlow's thread pools,
a GPU context, MLflow's database engine) is created in the child that uses
it. The children are in the worker's process group, so stopping the worker
stops them.

This module is the task's side (handing a step over, starting and finding a
worker); the serving side (the loop, the forks, a step's process) is
:mod:`pipelines.ops.worker_server`.

The worker is a service like the scheduler: start it beside the scheduler
(``python -m pipelines.ops.worker serve``; :func:`start_service` for
:class:`pipelines.ops.cluster.Services`). When none is running, the first
task that needs it starts one in the background and waits for it (it then
exits after ``MLOPS_STEP_WORKER_IDLE`` seconds without a step, 600 by
default). A worker whose code differs from the task's (an edit since it
started) is never used: an on-demand one is replaced, a managed one is
bypassed and the step runs in the task's own process, with a warning.
Unset or ``off``, every step runs in the task's own process.

The socket (``MLOPS_STEP_WORKER_SOCKET``, default
``$MLOPS_HOME/worker/worker.sock``) is created mode 0600 in a 0700 folder:
only the user running the pipeline can hand it work. Each step's time and
peak memory go to ``$MLOPS_HOME/worker/steps.jsonl`` and to its pipeline run's MLflow run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_MODE = "MLOPS_STEP_WORKER"
ENV_SOCKET = "MLOPS_STEP_WORKER_SOCKET"
ENV_IDLE = "MLOPS_STEP_WORKER_IDLE"
ENV_IN_STEP = "MLOPS_STEP_WORKER_PID"  # set in a step's process: it never hands a step on again
DEFAULT_IDLE_S = 600.0
STEPS_FILE = "steps.jsonl"

# What the steps import, in the order a nightly run needs them. Only imports: nothing here may
# start a thread pool, open a connection or touch a device (see the module docstring).
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "yaml",
    "pydantic",
    "pipelines.config",
    "pipelines.data.partitions",
    "pipelines.data.daily_files",
    "pipelines.data.rows",
    "pipelines.steps.collect",
    "pipelines.model.features",
    "great_expectations",
    "great_expectations.expectations",
    "pipelines.validation.suite",
    "pipelines.validation.results",
    "pipelines.validation.checkpoint",
    "pipelines.steps.validate",
    "pipelines.steps.preprocess",
    "pipelines.data.dvc_repo",
    "pipelines.steps.version",
    "pipelines.data.datasheet",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.models",
    # Imported when a step first opens its tracking store (SQLAlchemy, Alembic and the ORM
    # models of every table): imports only, the engine is created in the step.
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "git",  # MLflow records the source commit of a run
    "sklearn.ensemble",
    "sklearn.metrics",
    "sklearn.calibration",
    "matplotlib",
    "tensorflow",
    "keras",
    "pipelines.model.network",
    "pipelines.model.tfdata",
    "pipelines.steps.train",
    "pipelines.model.metrics",
    "pipelines.steps.evaluate",
    "pipelines.model.pyfunc",
    "pipelines.promotion",
    "pipelines.monitoring.reference",
    "pipelines.steps.register",
    "pipelines.monitoring.checks",
    "pipelines.monitoring.compute",  # every step logs its figures with it
    "pipelines.steps.monitor",
    "pipelines.steps.predict",
    "pipelines.runner",
)

_IN_STEP = False  # true in a step's child process: steps run there, never handed on again


class WorkerError(RuntimeError):
    """The step worker could not run a step, or the step's process died without an answer."""


# --------------------------------------------------------------------------- configuration


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether steps are handed to the worker (``MLOPS_STEP_WORKER=warm``), never inside a step's process."""
    env = os.environ if env is None else env
    mode = (env.get(ENV_MODE) or "off").strip().lower()
    if mode not in ("off", "warm"):
        raise ValueError(f"{ENV_MODE} must be 'off' or 'warm', got {mode!r}")
    return mode == "warm" and not _IN_STEP and ENV_IN_STEP not in env


def in_step_process() -> bool:
    """Whether this is a step's own process in the worker (which measures and logs the step itself)."""
    return _IN_STEP or ENV_IN_STEP in os.environ


def enter_step_process() -> None:
    """Mark this process as a step's own (the worker's fork): steps here run in place, never handed on."""
    global _IN_STEP
    _IN_STEP = True
    os.environ[ENV_IN_STEP] = str(os.getpid())


def socket_path(env: Mapping[str, str] | None = None) -> Path:
    """The worker's socket: ``MLOPS_STEP_WORKER_SOCKET``, or ``$MLOPS_HOME/worker/worker.sock``.

    A path too long for a Unix socket (about 100 bytes) is replaced by one in
    the temporary folder, named after its hash.
    """
    env = os.environ if env is None else env
    if env.get(ENV_SOCKET):
        path = Path(env[ENV_SOCKET])
    else:
        from pipelines.settings import resolve

        path = resolve(dict(env)).home / "worker" / "worker.sock"
    if len(os.fsencode(path)) > 100:
        import tempfile

        digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"mlops-worker-{os.getuid()}-{digest}.sock"
    return path


def steps_file(env: Mapping[str, str]) -> Path:
    from pipelines.settings import resolve

    return resolve(dict(env)).home / "worker" / STEPS_FILE


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The interpreter and the ``pipelines`` package's files (path, size, mtime): a stale worker differs."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(sys.executable.encode())
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import the steps' libraries; returns seconds per module (what every task used to pay)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Read once, when TensorFlow or scikit-learn loads the OpenMP runtime: see pipelines.steps.evaluate.fit_baseline.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    times = {}
    for name in modules:
        t = time.perf_counter()
        importlib.import_module(name)
        times[name] = time.perf_counter() - t
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")  # evaluate's plots: no display in a worker
    return times


# --------------------------------------------------------------------------- framing


def send_message(sock: socket.socket, message: Any) -> None:
    """One message (pickled, length first) to the other side: the task or the worker."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack("!Q", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket) -> Any:
    """One message, or None when the other end closed."""
    head = _recv_exact(sock, 8)
    if head is None:
        return None
    body = _recv_exact(sock, struct.unpack("!Q", head)[0])
    return None if body is None else pickle.loads(body)


# --------------------------------------------------------------------------- the client (a task)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a fresh fork of the worker; its logs land in this process's log.

    Returns ``fn``'s result or raises its exception (with the step process's
    traceback as a note). Falls back to running ``fn`` here when the worker
    runs other code than this process.
    """
    if _IN_STEP or ENV_IN_STEP in os.environ:
        return fn(*args, **kwargs)  # already in a step's process
    target = f"{fn.__module__}:{fn.__qualname__}"
    env = dict(os.environ)
    conn = _connect(env)
    if conn is None:
        return fn(*args, **kwargs)
    step = target.rsplit(":", 1)[-1].lstrip("_").removeprefix("run_")
    request = {
        "target": target,
        "args": args,
        "kwargs": kwargs,
        "env": env,
        "cwd": os.getcwd(),
        "log_level": logging.getLogger().getEffectiveLevel(),
        "code": code_fingerprint(),
        "step": step,
        "run_id": getattr(args[0], "run_id", None) if args else None,
    }
    with contextlib.closing(conn):
        send_message(conn, request)
        outcome: tuple | None = None
        status = None
        while True:
            msg = recv_message(conn)
            if msg is None:
                break
            kind = msg[0]
            if kind == "log":
                _, level, name, text = msg
                logging.getLogger(name).log(level, "%s", text)
            elif kind == "out":
                stream = sys.stderr if msg[1] == "stderr" else sys.stdout
                stream.write(msg[2])
                stream.flush()
            elif kind == "stale":
                log.warning("the step worker runs other code (%s); running %s in this process", msg[1], step)
                return fn(*args, **kwargs)
            elif kind in ("result", "error"):
                outcome = msg
            elif kind == "exit":
                status = msg[1]
                break
    if outcome is None:
        raise WorkerError(f"the process of step {step} ended without an answer ({_describe_status(status)})")
    if outcome[0] == "result":
        stats = outcome[2]
        log.info(
            "step %s ran in the step worker (pid %s): %.1fs, peak RSS %.0f MiB",
            step,
            stats.get("pid"),
            stats.get("seconds", 0),
            stats.get("peak_rss", 0) / 2**20,
        )
        return outcome[1]
    _, payload, type_name, message, remote_tb = outcome
    exc: BaseException | None = None
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:  # a class that does not unpickle: keep its type's name and message
            exc = None
    if exc is None:
        exc = WorkerError(f"{type_name}: {message}")
    exc.add_note(f"raised in the step worker's process for {step}:\n{remote_tb}")
    raise exc


def _describe_status(status: int | None) -> str:
    if status is None:
        return "the worker closed the connection"
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _try_connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None


def _connect(env: dict[str, str], timeout: float = 900) -> socket.socket | None:
    """A connection to a worker running this code, started in the background if none is running."""
    path = socket_path(env)
    sock = _try_connect(path)
    if sock is not None:
        return sock
    # None answers: start one (under a lock, so concurrent tasks start only one) and wait for it.
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _try_connect(path)
        if sock is not None:
            return sock
        log.info("no step worker answers on %s: starting one (it exits after %ss idle)", path, _idle(env))
        proc = spawn(env, path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock = _try_connect(path)
            if sock is not None:
                return sock
            if proc.poll() is not None:
                raise WorkerError(f"the step worker exited with {proc.returncode}; its log: {path.with_suffix('.log')}")
            time.sleep(0.2)
    raise WorkerError(f"the step worker did not answer on {path} within {timeout:.0f}s")


def _idle(env: Mapping[str, str]) -> float:
    return float(env.get(ENV_IDLE) or DEFAULT_IDLE_S)


def spawn(env: Mapping[str, str], path: Path) -> subprocess.Popen:
    """Start an on-demand worker in its own session (it outlives the task that started it)."""
    logfile = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 - the child's
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.ops.worker",
                "serve",
                "--socket",
                str(path),
                "--idle-timeout",
                str(_idle(env)),
            ],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        logfile.close()


def start_service(services: Any, env: Mapping[str, str], name: str = "step-worker") -> Any:
    """Start a managed worker (no idle timeout) as one of ``services`` (:class:`pipelines.ops.cluster.Services`)."""
    path = socket_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "pipelines.ops.worker", "serve", "--socket", str(path), "--idle-timeout", "0"]
    return services.start(name, argv, env)


def wait_ready(env: Mapping[str, str], timeout: float = 600, services: Any = None) -> float:
    """Wait until a worker answers on the socket; returns the seconds waited."""
    path = socket_path(env)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        sock = _try_connect(path)
        if sock is not None:
            with contextlib.closing(sock):
                send_message(sock, {"ping": True})
                recv_message(sock)
            return time.monotonic() - t0
        if services is not None:
            services.check_alive()
        time.sleep(0.2)
    raise WorkerError(f"no step worker on {path} after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.ops.worker", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="import the libraries and run steps handed over on the socket")
    s.add_argument(
        "--socket", type=Path, default=None, help=f"default: ${ENV_SOCKET} or $MLOPS_HOME/worker/worker.sock"
    )
    s.add_argument("--idle-timeout", type=float, default=None, help="seconds without a step before exiting; 0: never")
    s.add_argument("--preload", default=None, help="comma-separated modules to import (default: every step's)")
    args = p.parse_args(argv)
    path = args.socket or socket_path()
    idle = _idle(os.environ) if args.idle_timeout is None else args.idle_timeout
    modules = tuple(m for m in args.preload.split(",") if m) if args.preload else PRELOAD
    from pipelines.ops.worker_server import serve

    return serve(path, idle, modules)


if __name__ == "__main__":
    # Run the module the steps import (pipelines.ops.worker), not a second copy of it named __main__.
    from pipelines.ops.worker import main as _main

    sys.exit(_main())
