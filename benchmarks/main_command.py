"""The main command's cost to the machine: ``make pipeline`` on a fresh state, its whole process tree sampled.

    .venv/bin/python -m benchmarks.main_command [--date 2013-12-30] [--port 18150]

Runs ``python -m pipelines.ops.local run`` (what ``make pipeline`` runs: the embedded Airflow, the
step worker and one training run end to end) in a new state folder and reports its wall time and
the tree's peak memory three ways: proportional set size (PSS, each shared page counted once: what
the machine pays), summed RSS (each shared page counted once per process that maps it) and the
largest single process. Airflow's forked processes share most of their pages, so summed RSS
overstates the tree.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import REPO, PeakSampler, clean_env, command_line, fresh_state, markdown_table, mib, report


def _label(cmd: list[str]) -> str:
    text = " ".join(cmd)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer", "worker", "task"):
        if name in text:
            return name
    return "other"


def measure(date: str, port: int) -> dict:
    state, env = fresh_state("main-command")
    env |= {"MLOPS_AIRFLOW_PORT": str(port)}
    sampler = PeakSampler(_label)
    started = time.perf_counter()
    with sampler:
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.ops.local", "run", "--date", date],
            cwd=REPO,
            env=clean_env(env),
            capture_output=True,
            text=True,
        )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the main command failed:\n{done.stderr[-4000:]}")
    return {
        "wall_s": wall,
        "tree_pss": sampler.tree_pss,
        "tree_processes": sampler.tree_processes,
        "summed_rss": sampler.summed_rss,
        "largest_rss": max(sampler.peaks.values(), default=0),
        "largest": max(sampler.peaks, key=sampler.peaks.get, default="?"),
        "state": str(state.name),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.main_command", description=__doc__.split("\n")[0])
    p.add_argument("--date", default="2013-12-30", help="the run's data day (the first run collects the year before)")
    p.add_argument("--port", type=int, default=18150, help="the embedded Airflow's API port")
    args = p.parse_args(argv)
    res = measure(args.date, args.port)
    table = markdown_table(
        [
            "command",
            "wall",
            "processes at the peak",
            "peak PSS, tree (MiB)",
            "peak summed RSS, tree (MiB)",
            "largest process (MiB)",
        ],
        [
            [
                "`make pipeline` (first run, fresh state)",
                f"{res['wall_s']:.0f} s",
                res["tree_processes"],
                f"**{mib(res['tree_pss'])}**",
                mib(res["summed_rss"]),
                f"{mib(res['largest_rss'])} ({res['largest']})",
            ]
        ],
    )
    report("main_command", "The main command's peak memory", command_line(), table, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
