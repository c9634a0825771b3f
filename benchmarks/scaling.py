"""Scaling: the full nightly run at 1x, 4x and 16x the data; time and peak memory per step.

    .venv/bin/python -m benchmarks.scaling [--scales 1,4,16] [--date 2013-12-30]

The data grows as ``pipelines/data/grow.py`` describes (``dataset.source.scale``:
each day's flights plus jittered copies), with the gate's daily volume bounds
widened by the same factor; everything else is ``params.yaml``. Each factor
runs in a fresh state folder, through ``python -m pipelines run`` with the
step worker, so every step runs in its own process (a fork of the warm
worker) and reports its own time and peak RSS (``VmHWM``). The worker's
start-up (imports) is not part of any step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import (
    REPO,
    clean_env,
    command_line,
    fresh_state,
    machine,
    markdown_table,
    mib,
    remove_state,
    report,
    secs,
)
from benchmarks.e2e import STEPS


def scaled_params(path: Path, scale: int, base: Path = REPO / "params.yaml") -> Path:
    """``params.yaml`` with the data grown ``scale`` times and the daily volume bounds widened alike."""
    raw = yaml.safe_load(base.read_text())
    raw["dataset"]["source"]["scale"] = scale
    lo, hi = raw["validate"]["rows_per_day"]
    raw["validate"]["rows_per_day"] = [lo * scale, hi * scale]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_scale(scale: int, date: str, keep: bool) -> dict:
    from pipelines.ops.cluster import Services
    from pipelines.ops.worker import start_service, wait_ready

    state, base = fresh_state(f"scale-x{scale}")
    env = clean_env(base)
    env["MLOPS_PARAMS"] = str(scaled_params(state / "params.yaml", scale))
    env["MLOPS_STEP_WORKER"] = "warm"
    env["MLOPS_STEP_WORKER_SOCKET"] = str(state / "worker.sock")
    out: dict = {"scale": scale, "state": str(state)}
    with Services(state / "services") as services:
        start_service(services, env)
        out["worker_ready_s"] = wait_ready(env, timeout=900, services=services)
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pipelines", "run", "--date", date, "--run-id", f"scale-x{scale}"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        out["wall_s"] = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"x{scale} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    result = json.loads(done.stdout[done.stdout.index("{") :])
    out["rows"] = result["collect"]["rows"]
    out["train_rows"] = result["preprocess"]["rows"]["train"]
    out["epochs_run"] = result["train"].get("epochs_run")
    out["holdout_auc"] = result["evaluate"]["model"]["auc"]
    out["baseline_auc"] = result["evaluate"]["baseline"]["auc"]
    out["predicted_rows"] = result["batch_predict"].get("rows")
    steps = {}
    for line in (state / "home" / "worker" / "steps.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["step"] in STEPS:
            steps[rec["step"]] = rec
    out["steps"] = steps
    if not keep:
        remove_state(state)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", default="1,4,16")
    p.add_argument("--date", default="2013-12-30")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]
    raw: dict = {"machine": machine(), "date": args.date}
    results = {}
    for scale in scales:
        print(f"x{scale} ...", flush=True)
        results[scale] = run_scale(scale, args.date, args.keep)
        print(json.dumps(results[scale], indent=1)[:3000], flush=True)
        raw[f"x{scale}"] = results[scale]
    first, last = scales[0], scales[-1]
    headers = ["step"]
    for s in scales:
        headers += [f"x{s}: s", f"x{s}: peak MiB"]
    if len(scales) > 1:
        headers += [f"time x{last}/x{first} (data x{last // first})", f"memory x{last}/x{first}"]
    rows = []
    for name in STEPS:
        row = [name]
        for s in scales:
            rec = results[s]["steps"].get(name, {})
            row += [secs(rec.get("seconds")), mib(rec.get("peak_rss"))]
        if len(scales) > 1:
            a, b = results[first]["steps"].get(name, {}), results[last]["steps"].get(name, {})
            if a.get("seconds") and b.get("seconds"):
                row += [f"{b['seconds'] / a['seconds']:.1f}x", f"{b['peak_rss'] / a['peak_rss']:.2f}x"]
            else:
                row += ["-", "-"]
        rows.append(row)
    total = ["**run (wall)**"]
    for s in scales:
        total += [f"**{results[s]['wall_s']:.1f}**", ""]
    if len(scales) > 1:
        total += [f"{results[last]['wall_s'] / results[first]['wall_s']:.1f}x", ""]
    rows.append(total)
    notes = [
        f"- x{s}: {results[s]['rows']:,} rows collected, {results[s]['train_rows']:,} training rows, "
        f"{results[s]['epochs_run']} epochs, holdout AUC {results[s]['holdout_auc']:.4f} "
        f"(baseline {results[s]['baseline_auc']:.4f}), {results[s]['predicted_rows']:,} rows scored"
        for s in scales
    ]
    report(
        "scaling",
        "Scaling: the nightly run at several times the data",
        command_line(),
        markdown_table(headers, rows),
        raw,
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
