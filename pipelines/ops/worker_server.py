"""The step worker's serving side: import the libraries once, then fork a process per step.

:func:`serve` is what ``python -m pipelines.ops.worker serve`` runs; the task's side (handing a
step over, starting a worker) and the design (fork safety, the socket, stale code) are in
:mod:`pipelines.ops.worker`. Each step's process takes the task's environment and working
directory, runs the step, streams its log records and output back, answers with the result or
the exception, and records its time and peak memory in ``steps.jsonl`` and, for a pipeline step, on
its run's MLflow run (:func:`pipelines.monitoring.compute.log_step_stats`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import pickle
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.ops.worker import (
    DEFAULT_IDLE_S,
    PRELOAD,
    code_fingerprint,
    enter_step_process,
    preload,
    recv_message,
    send_message,
    steps_file,
)

log = logging.getLogger(__name__)

_WAKE_FDS: tuple[int, int] | None = None  # the serving loop's SIGCHLD pipe (closed in a step's process)


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
                    send_message(conn, ("exit", status))
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


def _handle(
    conn: socket.socket, server: socket.socket, children: Mapping[int, Any], code: str, idle_timeout: float
) -> int:
    """Read a request and fork its step; returns the child's pid, 0 when there is none, -1 to stop."""
    conn.settimeout(30)
    try:
        request = recv_message(conn)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        log.warning("bad request: %s", err)
        conn.close()
        return 0
    conn.settimeout(None)
    if request is None or request.get("ping"):
        with contextlib.suppress(OSError):
            send_message(conn, ("pong", code))
        conn.close()
        return 0
    if request.get("code") != code:
        with contextlib.suppress(OSError):
            send_message(conn, ("stale", f"worker code {code}, task code {request.get('code')}"))
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
            send_message(self.conn, ("log", record.levelno, record.name, text))
        except Exception:
            self.handleError(record)


class _StreamToTask(io.TextIOBase):
    def __init__(self, conn: socket.socket, name: str):
        self.conn, self.name_ = conn, name

    def write(self, text: str) -> int:
        if text:
            with contextlib.suppress(OSError):
                send_message(self.conn, ("out", self.name_, text))
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
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(f"mlops step -- {request.get('step')} {request.get('run_id')}")
    os.environ.clear()
    os.environ.update(request["env"])
    enter_step_process()
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
        _log_to_run(request, stats)
        message = (*message, stats)
    with contextlib.suppress(Exception):
        logging.shutdown()
    try:
        send_message(conn, message)
    except (OSError, pickle.PicklingError) as err:
        with contextlib.suppress(OSError):
            send_message(conn, ("error", None, type(err).__name__, f"could not send the step's result: {err}", ""))


def _log_to_run(request: dict, stats: dict) -> None:
    """The step's figures on its pipeline run's MLflow run, where monitoring compares them across runs."""
    args = request.get("args") or ()
    try:
        from pipelines.monitoring.compute import log_step_stats

        log_step_stats(args[0] if args else None, request.get("step"), stats)
    except Exception as err:  # bookkeeping must never fail a step that succeeded
        log.warning("the figures of step %s could not be logged to MLflow: %s", request.get("step"), err)


def _record(request: dict, stats: dict, outcome: str) -> None:
    """One line per step in ``steps.jsonl``: what the benchmarks read."""
    path = steps_file(request["env"])
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"step": request.get("step"), "run_id": request.get("run_id"), "outcome": outcome, **stats}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
