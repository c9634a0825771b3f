"""Shared by the benchmark scripts: fresh state folders, peak-memory sampling, tables.

Benchmarks are not tests: nothing here asserts a time. Each script prints a
Markdown table (and writes it, with the raw figures as JSON, under
``benchmarks/results/``) so the README's figures come from a run anyone can
repeat with the command printed above the table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MIB = 1024 * 1024


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // (1024 * 1024)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores, {mem} GiB RAM, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, CPU only; load average {load:.1f} at start"
    )


def fresh_state(name: str, root: Path | None = None, versioning: bool = True) -> tuple[Path, dict[str, str]]:
    """A new state folder and the environment of a pipeline using it, nothing shared with ``.local``.

    With versioning on, the data lives in a local clone of this repository (DVC
    records dataset versions on that clone's ``datasets`` branch, never here).
    """
    root = Path(root or os.environ.get("MLOPS_BENCH_DIR") or "/tmp/mlops-bench")
    state = root / f"{name}-{dt.datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}"
    state.mkdir(parents=True)
    env = {
        "MLOPS_HOME": str(state / "home"),
        "MLOPS_VERSIONING": "on" if versioning else "off",
        "GX_ANALYTICS_ENABLED": "False",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if versioning:
        project = state / "project"
        subprocess.run(["git", "clone", "--quiet", "--shared", str(REPO), str(project)], check=True)
        env.update(
            {
                "MLOPS_DVC_REPO": str(project),
                "MLOPS_DATA_DIR": str(project / "data"),
                "MLOPS_DVC_REMOTE_URL": str(state / "dvc-remote"),
            }
        )
    else:
        env["MLOPS_DATA_DIR"] = str(state / "data")
    return state, env


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any pipeline or MLflow setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "AIRFLOW"))}
    env.update(extra)
    return env


def remove_state(state: Path) -> None:
    shutil.rmtree(state, ignore_errors=True)


@dataclass
class PeakSampler:
    """Polls this process's descendants and keeps the peak RSS of those ``label`` names.

    ``label(cmdline) -> str | None``: the key a process's memory is recorded under
    (None: not watched). Only descendants count (the Airflow services, their task
    processes, the step worker and its children), never other people's processes.
    Sampling is every ``interval`` seconds, so a peak shorter than that can be
    missed; the steps that report their own ``VmHWM`` are exact.

    ``tree_pss`` is the peak, over the samples, of the whole tree's proportional set size
    (``Pss`` in ``/proc/<pid>/smaps_rollup``, summed over every descendant): what the tree
    costs the machine, each shared page counted once across its sharers. Summed RSS counts
    a page once per process that maps it (Airflow's forked workers share most of theirs),
    and overstated the local Airflow's tree about twofold.
    """

    label: Callable[[list[str]], str | None]
    interval: float = 0.2
    peaks: dict[str, int] = field(default_factory=dict)  # label -> bytes
    tree_pss: int = 0  # bytes
    tree_processes: int = 0  # processes in the tree at that peak
    summed_rss: int = 0  # bytes: the peak over the samples of the tree's RSS summed per process

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            pss, rss, count = 0, 0, 0
            for proc in me.children(recursive=True):
                try:
                    cmd = proc.cmdline()
                    mem = proc.memory_info()
                except psutil.Error:
                    continue
                if mem is None or not cmd:
                    continue
                pss += proc_pss(proc.pid)
                rss += mem.rss
                count += 1
                key = self.label(cmd)
                if key is not None and mem.rss > self.peaks.get(key, 0):
                    self.peaks[key] = mem.rss
            if pss > self.tree_pss:
                self.tree_pss, self.tree_processes = pss, count
            self.summed_rss = max(self.summed_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def proc_pss(pid: int) -> int:
    """A process's proportional set size in bytes (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def self_peak_rss() -> int:
    """This process's peak RSS in bytes (``VmHWM``)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.0f}"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, title: str, command: str, table: str, raw: dict, notes: Sequence[str] = ()) -> str:
    """Print a result block and write it to ``benchmarks/results/<name>.md`` (and ``.json``)."""
    text = (
        "\n".join(
            [
                f"### {title}",
                "",
                f"Command: `{command}`  ",
                f"Machine: {raw.get('machine', machine())}  ",
                f"Date: {raw.get('measured', f'{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC')}",
                "",
                table,
                "",
                *notes,
            ]
        ).rstrip()
        + "\n"
    )
    print("\n" + text, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(raw, indent=1, default=str))
    return text


def command_line() -> str:
    args = " ".join(sys.argv[1:])
    module = Path(sys.argv[0]).stem
    return f".venv/bin/python -m benchmarks.{module}" + (f" {args}" if args else "")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_child(module: str, *args: str) -> dict:
    """Run ``python -m <module> child <args>`` in a fresh process; its last stdout line is a JSON result.

    Each measurement gets its own interpreter, so one's imports and peak memory never colour another's.
    """
    done = subprocess.run([sys.executable, "-m", module, "child", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
