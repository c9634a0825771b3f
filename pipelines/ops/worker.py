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
peak memory go to ``$MLOPS_HOME/worker/steps.jsonl``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
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
    "pipelines.steps.collect",
    "pipelines.model.features",
    "great_expectations",
    "great_expectations.expectations",
    "pipelines.steps.validate",
    "pipelines.steps.preprocess",
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
    "pipelines.steps.evaluate",
    "pipelines.model.pyfunc",
    "pipelines.promotion",
    "pipelines.steps.register",
    "pipelines.steps.monitor",
    "pipelines.steps.predict",
    "pipelines.runner",
)

_IN_STEP = False  # true in a step's child process: steps run there, never handed on again
_WAKE_FDS: tuple[int, int] | None = None  # the serving loop's SIGCHLD pipe (closed in a step's process)


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


def _send(sock: socket.socket, message: Any) -> None:
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


def _recv(sock: socket.socket) -> Any:
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
        _send(conn, request)
        outcome: tuple | None = None
        status = None
        while True:
            msg = _recv(conn)
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
            step, stats.get("pid"), stats.get("seconds", 0), stats.get("peak_rss", 0) / 2**20,
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
            [sys.executable, "-m", "pipelines.ops.worker", "serve", "--socket", str(path), "--idle-timeout", str(_idle(env))],
            env=dict(env), stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
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
                _send(sock, {"ping": True})
                _recv(sock)
            return time.monotonic() - t0
        if services is not None:
            services.check_alive()
        time.sleep(0.2)
    raise WorkerError(f"no step worker on {path} after {timeout:.0f}s")


# --------------------------------------------------------------------------- the worker


def serve(path: Path, idle_timeout: float = DEFAULT_IDLE_S, modules: tuple[str, ...] = PRELOAD) -> int:
    """Import ``modules``, then fork a child per step request until idle (``idle_timeout`` 0: never)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    t0 = time.perf_counter()
    times = preload(modules)
    slow = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(times.items(), key=lambda kv: -kv[1])[:5])
    log.info("imported the steps' libraries in %.1fs (%s)", time.perf_counter() - t0, slow)
    code = code_fingerprint()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(32)
    log.info("step worker %d listening on %s (code %s)", os.getpid(), path, code)
    children: dict[int, socket.socket] = {}
    killing: dict[int, float] = {}  # pid -> when SIGTERM was sent (its task went away)
    stop = False

    def _terminate(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    # A step's process ending wakes the loop at once (SIGCHLD through a pipe), so its task
    # hears "exit" without waiting for the next poll: that wait cost every step about 0.5 s.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    global _WAKE_FDS
    _WAKE_FDS = (wake_r, wake_w)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    last = time.monotonic()
    try:
        while not stop:
            watched = [server, wake_r, *children.values()]
            try:
                readable, _, _ = select.select(watched, [], [], 0.5)
            except InterruptedError:
                continue
            for sock in readable:
                if sock == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 4096):
                            pass
                elif sock is server:
                    conn, _ = server.accept()
                    pid = _handle(conn, server, children, code, idle_timeout)
                    if pid == -1:
                        stop = True  # stale on-demand worker: make way for a new one
                    elif pid:
                        children[pid] = conn
                        last = time.monotonic()
                else:
                    # A task never writes after its request: readable means it went away.
                    pid = next(p for p, c in children.items() if c is sock)
                    with contextlib.suppress(OSError):
                        if sock.recv(1, socket.MSG_PEEK):
                            continue
                    if pid not in killing:
                        log.warning("the task of step process %d went away: stopping it", pid)
                        _kill(pid, signal.SIGTERM)
                        killing[pid] = time.monotonic()
            for pid, since in list(killing.items()):
                if time.monotonic() - since > 10:
                    _kill(pid, signal.SIGKILL)
            for pid, status in _reap(children):
                conn = children.pop(pid)
                killing.pop(pid, None)
                with contextlib.suppress(OSError):
                    _send(conn, ("exit", status))
                conn.close()
                last = time.monotonic()
            if idle_timeout and not children and time.monotonic() - last > idle_timeout:
                log.info("idle for %.0fs: exiting", idle_timeout)
                break
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)
        _WAKE_FDS = None
        for pid in children:
            _kill(pid, signal.SIGTERM)
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return 0


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(children: Mapping[int, Any]) -> list[tuple[int, int]]:
    done = []
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                done.append((pid, status))
    return done


def _handle(conn: socket.socket, server: socket.socket, children: Mapping[int, Any], code: str, idle_timeout: float) -> int:
    """Read a request and fork its step; returns the child's pid, 0 when there is none, -1 to stop."""
    conn.settimeout(30)
    try:
        request = _recv(conn)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        log.warning("bad request: %s", err)
        conn.close()
        return 0
    conn.settimeout(None)
    if request is None or request.get("ping"):
        with contextlib.suppress(OSError):
            _send(conn, ("pong", code))
        conn.close()
        return 0
    if request.get("code") != code:
        with contextlib.suppress(OSError):
            _send(conn, ("stale", f"worker code {code}, task code {request.get('code')}"))
        conn.close()
        return -1 if idle_timeout else 0
    pid = os.fork()
    if pid == 0:  # the step's process
        try:
            signal.set_wakeup_fd(-1)  # the worker's wake-up is not the step's
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in _WAKE_FDS or ():
                os.close(fd)
            server.close()
            for other in children.values():
                other.close()
            _run_step(conn, request)
        finally:
            os._exit(0)
    log.info("step %s of %s: process %d", request.get("step"), request.get("run_id"), pid)
    return pid


class _ToTask(logging.Handler):
    """Log records of the step's process, formatted, to the task (which logs them as its own)."""

    def __init__(self, conn: socket.socket):
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))
            _send(self.conn, ("log", record.levelno, record.name, text))
        except Exception:
            self.handleError(record)


class _StreamToTask(io.TextIOBase):
    def __init__(self, conn: socket.socket, name: str):
        self.conn, self.name_ = conn, name

    def write(self, text: str) -> int:
        if text:
            with contextlib.suppress(OSError):
                _send(self.conn, ("out", self.name_, text))
        return len(text)

    def writable(self) -> bool:
        return True


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _run_step(conn: socket.socket, request: dict) -> None:
    global _IN_STEP
    _IN_STEP = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(f"mlops step -- {request.get('step')} {request.get('run_id')}")
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[ENV_IN_STEP] = str(os.getpid())
    os.chdir(request["cwd"])
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_ToTask(conn))
    root.setLevel(request.get("log_level", logging.INFO))
    sys.stdout, sys.stderr = _StreamToTask(conn, "stdout"), _StreamToTask(conn, "stderr")
    started = time.perf_counter()
    try:
        module, _, qualname = request["target"].partition(":")
        fn: Any = importlib.import_module(module)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        result = fn(*request["args"], **request["kwargs"])
        message: tuple = ("result", result)
    except BaseException as exc:  # everything goes back to the task, which raises it
        try:
            payload = pickle.dumps(exc)
            pickle.loads(payload)
        except Exception:
            payload = None
        message = ("error", payload, type(exc).__name__, str(exc), traceback.format_exc())
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process since the fork, its subprocesses not counted
    stats = {
        "pid": os.getpid(),
        "seconds": time.perf_counter() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss": _peak_rss(),
    }
    with contextlib.suppress(Exception):
        _record(request, stats, message[0])
    if message[0] == "result":
        message = (*message, stats)
    with contextlib.suppress(Exception):
        logging.shutdown()
    try:
        _send(conn, message)
    except (OSError, pickle.PicklingError) as err:
        with contextlib.suppress(OSError):
            _send(conn, ("error", None, type(err).__name__, f"could not send the step's result: {err}", ""))


def _record(request: dict, stats: dict, outcome: str) -> None:
    """One line per step in ``steps.jsonl``: what the benchmarks read."""
    path = steps_file(request["env"])
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"step": request.get("step"), "run_id": request.get("run_id"), "outcome": outcome, **stats}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.ops.worker", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="import the libraries and run steps handed over on the socket")
    s.add_argument("--socket", type=Path, default=None, help=f"default: ${ENV_SOCKET} or $MLOPS_HOME/worker/worker.sock")
    s.add_argument("--idle-timeout", type=float, default=None, help="seconds without a step before exiting; 0: never")
    s.add_argument("--preload", default=None, help="comma-separated modules to import (default: every step's)")
    args = p.parse_args(argv)
    path = args.socket or socket_path()
    idle = _idle(os.environ) if args.idle_timeout is None else args.idle_timeout
    modules = tuple(m for m in args.preload.split(",") if m) if args.preload else PRELOAD
    return serve(path, idle, modules)


if __name__ == "__main__":
    # Run the module the steps import (pipelines.ops.worker), not a second copy of it named __main__.
    from pipelines.ops.worker import main as _main

    sys.exit(_main())
