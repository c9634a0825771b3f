"""End to end: nightly runs of the training DAG over a full year, through Airflow and through the CLI.

    .venv/bin/python -m benchmarks.e2e [--modes cold,warm,cli] [--date 2013-12-30] [--repeat 3]

Modes, each in a fresh state folder (a clone of this repository for DVC, its
own Airflow and MLflow databases), each running two nights in turn:

1. the *first run*, the night before ``--date``, from nothing: it collects,
   validates and versions the 363 days of the window from scratch, trains
   the first model and scores the next day;
2. the *next night*, ``--date``: the steady state of a nightly schedule. It
   collects, validates and versions one new day, then preprocesses the
   whole year and trains on it, evaluates against the champion, registers
   and scores. Airflow's services are already running (as they are every
   night); the CLI starts a new process (as a cron job would).

* ``base``: the code before this work (``--base-rev``), through Airflow's
  scheduler with the LocalExecutor on SQLite, each task in its own new process
  that imports what its step needs: the "before".
* ``cold``: today's code the same way (the step worker off).
* ``warm``: the same, with the step worker (:mod:`pipelines.ops.worker`) started
  beside the scheduler: tasks hand their step to it and it runs each in a
  fork of a process that imported the libraries once.
* ``cli``: ``python -m pipelines run`` (every step in one process, no
  Airflow), with the same libraries imported before the first step, so its
  import time is measured apart from its steps.

Every mode finds its MLflow database created (as Airflow's is migrated)
before the clock starts. Per step: its wall time (Airflow: the task instance's start to end) and the
peak RSS of the process(es) that ran it (sampled every 0.2 s; the step
worker's children report their own ``VmHWM``), and the whole process tree's
peak proportional set size (PSS, from ``/proc/<pid>/smaps_rollup``: a page
shared by forked processes counts once, where summed RSS counts it in each).
The orchestration overhead is
the Airflow run's time over the CLI's steps time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    PeakSampler,
    clean_env,
    command_line,
    fresh_state,
    machine,
    markdown_table,
    mib,
    report,
    secs,
)

DAG_ID = "flights_training"
STEPS = ["collect", "validate", "preprocess", "version_data", "train", "evaluate", "register", "batch_predict"]
_TI = re.compile(r"airflow worker -- ([0-9a-fA-F-]{32,36})")
_STEP = re.compile(r"mlops step -- (\S+)")


def _label(cmd: list[str]) -> str | None:
    line = " ".join(cmd)
    if m := _TI.search(line):
        return "ti:" + m.group(1).replace("-", "").lower()
    if m := _STEP.search(line):
        return "step:" + m.group(1)
    if "pipelines.ops.worker" in line and "serve" in line:
        return "step-worker"
    for name in ("scheduler", "dag-processor", "api-server", "api_server"):
        if f"airflow {name}" in line or f"-m airflow {name}" in line:
            return name.replace("_", "-")
    if "pipelines run" in line or "benchmarks.e2e cli-child" in line:
        return "cli"
    return None


def _airflow_env(env: dict[str, str], code_dir: Path, port: int, worker_socket: Path | None) -> dict[str, str]:
    """``env`` with the configuration of an Airflow under its ``MLOPS_HOME``, running the code in ``code_dir``.

    With a ``worker_socket``, tasks hand their steps to the step worker listening there.
    """
    from pipelines.ops.environment import airflow_env
    from pipelines.settings import resolve

    extra = {}
    if worker_socket is not None:
        extra["MLOPS_STEP_WORKER_SOCKET"] = str(worker_socket)
    if code_dir != REPO:
        extra.update({"PYTHONPATH": str(code_dir), "MLOPS_PARAMS": str(code_dir / "params.yaml")})
    return airflow_env(
        resolve(env).home / "airflow",
        base=env,
        api_port=port,
        login=("admin", "admin"),
        step_worker=worker_socket is not None,
        dags_folder=code_dir / "dags",
        plugins_folder=code_dir / "plugins",
        extra=extra,
    )


def snapshot(rev: str) -> Path:
    """The code of git revision ``rev``, exported (``git archive``) to a folder of its own."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True)
    out = Path("/tmp/mlops-bench") / f"code-{sha.stdout.strip()}"
    if not (out / "pipelines").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def init_mlflow(env: dict[str, str]) -> float:
    """Create the run's MLflow database before the clock starts, as ``airflow db migrate`` is run before.

    A nightly run finds its tracking store in place; creating one (MLflow's
    migrations on SQLite) takes several seconds that only a first run pays.
    """
    code = (
        "import mlflow\nfrom pipelines.settings import resolve\n"
        "uri = resolve().tracking_uri\nmlflow.MlflowClient(uri, uri).search_experiments()\n"
    )
    t0 = time.perf_counter()
    from pipelines.settings import resolve

    resolve(env).home.joinpath("mlflow").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t0


def run_airflow(mode: str, date: str, port: int, code_dir: Path, keep: bool) -> dict:
    """Two nights through the scheduler: ``cold`` (a process per task) or ``warm`` (the step worker).

    The first run (the night before ``date``) starts from nothing: it collects,
    validates and versions the whole year. The next night (``date``) is the
    steady state: one new day, then the whole training over the year. Both
    train. ``base`` is ``cold`` with the code of another revision
    (``code_dir``): the "before".
    """
    from pipelines.ops.cluster import AirflowCluster

    state, base = fresh_state(f"airflow-{mode}")
    env = _airflow_env(clean_env(base), code_dir, port, state / "worker.sock" if mode == "warm" else None)
    mlflow_init_s = init_mlflow(env)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    migrated = time.perf_counter() - started
    out: dict = {
        "mode": mode,
        "code": str(code_dir),
        "state": str(state),
        "migrate_s": migrated,
        "mlflow_init_s": mlflow_init_s,
    }
    nights = [(dt.date.fromisoformat(date) - dt.timedelta(days=1)).isoformat(), date]
    runs = []
    with PeakSampler(_label) as sampler:
        t0 = time.perf_counter()
        with AirflowCluster(env, log_dir=state / "services", api_port=port) as cluster:
            if mode == "warm":
                from pipelines.ops.worker import start_service, wait_ready

                start_service(cluster.services, env)
            cluster.wait_for_dag(DAG_ID)
            if mode == "warm":
                wait_ready(env, timeout=600, services=cluster.services)
            out["services_ready_s"] = time.perf_counter() - t0
            for night in nights:
                runs.append(_dag_run(cluster, mode, night))
                if night == nights[0]:
                    out["total_s"] = time.perf_counter() - t0
    first, nxt = (_run_figures(state, run, sampler) for run in runs)
    out.update(first)
    out["next"] = {**nxt, "mode": mode, "services_ready_s": 0.0, "total_s": nxt["dag_run_s"], "services_rss": {}}
    out["services_rss"] = {k: v for k, v in sampler.peaks.items() if not k.startswith(("ti:", "step:"))}
    out["tree_pss"], out["tree_processes"] = sampler.tree_pss, sampler.tree_processes
    out["model"] = out["next"]["model"] = _model_metrics(env)
    if not keep:
        from benchmarks.common import remove_state

        remove_state(state)
    return out


def _dag_run(cluster: Any, mode: str, night: str) -> dict:
    """Trigger the DAG for ``night``, wait for it, and read its rows from the metadata database."""
    run_id = f"bench__{mode}__{night}__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    cluster.trigger(DAG_ID, run_id, logical_date=cluster.next_dagrun(DAG_ID), conf={"data_date": night})
    cluster.unpause(DAG_ID)
    try:
        state_ = cluster.wait_for_run(DAG_ID, run_id, timeout=3600, poll=1)
    finally:
        cluster.airflow("dags", "pause", DAG_ID, check=False)
    rows = cluster._query(
        "SELECT id, task_id, start_date, end_date, state FROM task_instance WHERE dag_id = :d AND run_id = :r",
        d=DAG_ID,
        r=run_id,
    )
    run_row = cluster._query(
        "SELECT start_date, end_date FROM dag_run WHERE dag_id = :d AND run_id = :r", d=DAG_ID, r=run_id
    )[0]
    return {"run_id": run_id, "night": night, "state_": state_, "rows": rows, "run_row": run_row}


def _run_figures(state: Path, run: dict, sampler: PeakSampler) -> dict:
    """Per task: time, the peak RSS of its process (and of its step's process), the step's own time."""
    from pipelines.ops.cluster import _as_datetime

    tasks = {}
    for ti_id, task_id, start, end, ti_state in run["rows"]:
        start, end = _as_datetime(start), _as_datetime(end)
        tasks[task_id] = {
            "state": ti_state,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "seconds": (end - start).total_seconds(),
            "task_rss": sampler.peaks.get("ti:" + str(ti_id).replace("-", "").lower()),
        }
    for task_id, rec in _worker_steps(state, run["run_id"]).items():
        if task_id in tasks:
            tasks[task_id]["step_rss"] = rec.get("peak_rss", 0)
            tasks[task_id]["step_seconds"] = rec.get("seconds")
    run_start, run_end = (_as_datetime(v) for v in run["run_row"])
    out = {"night": run["night"], "run_id": run["run_id"], "state_": run["state_"], "tasks": tasks}
    out["dag_run_s"] = (run_end - run_start).total_seconds()
    return out


def _worker_steps(state: Path, run_id: str) -> dict[str, dict]:
    """What the step worker recorded about each step of ``run_id`` (time, peak RSS)."""
    path = state / "home" / "worker" / "steps.jsonl"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("run_id") == run_id:
                out[rec["step"]] = rec
    return out


def _model_metrics(env: dict[str, str]) -> dict:
    """The registered model's holdout AUC against the baseline's (from the run's MLflow store)."""
    code = (
        "import json, mlflow\n"
        "from pipelines.settings import resolve\n"
        "uri = resolve().tracking_uri\n"
        "c = mlflow.MlflowClient(uri, uri)\n"
        "vs = c.search_model_versions(\"name = 'flight_delay'\")\n"
        "v = max(vs, key=lambda v: int(v.version)) if vs else None\n"
        "print(json.dumps({} if v is None else {'auc': v.tags.get('metrics.holdout_auc'), "
        "'baseline_auc': v.tags.get('metrics.baseline_holdout_auc'), 'promotion': v.tags.get('promotion.decision')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": done.stderr[-500:]}


def run_cli(date: str, keep: bool) -> dict:
    """``python -m pipelines run`` for the same two nights, a new process each (imports timed apart)."""
    state, base = fresh_state("cli")
    env = clean_env(base)
    init_mlflow(env)
    nights = [(dt.date.fromisoformat(date) - dt.timedelta(days=1)).isoformat(), date]
    results = []
    for night in nights:
        result_file = state / f"cli-{night}.json"
        with PeakSampler(_label) as sampler:
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.e2e", "cli-child", "--date", night, "--out", str(result_file)],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"the CLI run of {night} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        res = json.loads(result_file.read_text())
        res.update({"mode": "cli", "night": night, "wall_s": wall, "sampled_rss": sampler.peaks.get("cli")})
        res.update({"tree_pss": sampler.tree_pss, "tree_processes": sampler.tree_processes})
        results.append(res)
    out, out["next"] = results
    out["state"] = str(state)
    out["model"] = out["next"]["model"] = _model_metrics(env)
    if not keep:
        from benchmarks.common import remove_state

        remove_state(state)
    return out


def cli_child(date: str, out: Path) -> int:
    """Inside the CLI run's process: import the libraries, then run every step, timing each."""
    import logging
    import resource

    t0 = time.perf_counter()
    from pipelines.ops.worker import preload

    preload()
    imports = time.perf_counter() - t0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipelines import runner as steps
    from pipelines.runner import RunContext

    ctx = RunContext(dag_id="cli", run_id=f"cli__{date}", run_day=dt.date.fromisoformat(date))  # a folder per night
    times: dict[str, float] = {}
    rss: dict[str, int] = {}

    def step(name, fn, *args):
        t = time.perf_counter()
        result = fn(ctx, *args)
        times[name] = time.perf_counter() - t
        rss[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return result

    t1 = time.perf_counter()
    collected = step("collect", steps.run_collect)
    validated = step("validate", steps.run_validate, collected)
    processed = step("preprocess", steps.run_preprocess)
    versioned = step("version_data", steps.run_version_data, processed, validated)
    trained = step("train", steps.run_train, processed, validated)
    evaluation = step("evaluate", steps.run_evaluate, processed, trained)
    registered = step("register", steps.run_register, processed, trained, evaluation, versioned)
    step("batch_predict", steps.run_batch_predict)
    steps_s = time.perf_counter() - t1
    out.write_text(
        json.dumps(
            {"imports_s": imports, "steps_s": steps_s, "steps": times, "peak_rss_after": rss, "registered": registered},
            default=str,
        )
    )
    return 0


def _peak(task: dict) -> str:
    """Peak RSS of the task's own process, and of the step's process when the step worker ran it."""
    if task.get("step_rss"):
        return f"{mib(task.get('task_rss'))} + {mib(task['step_rss'])}"
    return mib(task.get("task_rss"))


def _table(results: dict[str, dict]) -> str:
    headers = ["step"]
    for mode in results:
        headers += [f"{mode}: s", f"{mode}: peak RSS MiB" + (" (task + step)" if mode == "warm" else "")]
    rows = []
    for name in STEPS:
        row = [name]
        for mode, res in results.items():
            if mode == "cli":
                row += [secs(res["steps"].get(name)), "(one process)"]
            else:
                t = res["tasks"].get(name, {})
                row += [secs(t.get("seconds")), _peak(t)]
        rows.append(row)
    total = ["**nightly run**"]
    for mode, res in results.items():
        if mode == "cli":
            total += [f"**{res['steps_s']:.1f}** (steps)", mib(res.get("sampled_rss"))]
        else:
            total += [f"**{res['dag_run_s']:.1f}** (DAG run)", ""]
    rows.append(total)
    start = ["start-up, once"]
    for mode, res in results.items():
        if mode == "cli":
            start += [f"{res['imports_s']:.1f} (imports)", ""]
        else:
            if not res["services_ready_s"]:
                start += ["(running)", ""]  # the next night finds the services up
            else:
                start += [
                    f"{res['services_ready_s']:.1f} (services)",
                    mib(max(res["services_rss"].values(), default=0)),
                ]
    rows.append(start)
    # The whole process tree's peak, as the machine pays it (PSS: shared pages counted once).
    tree = ["**peak memory, whole tree (PSS)**"]
    for res in results.values():
        tree += [f"{res.get('tree_processes') or '?'} processes", f"**{mib(res.get('tree_pss'))}**"]
    rows.append(tree)
    return markdown_table(headers, rows)


def _notes(results: dict[str, dict], raw: dict) -> list[str]:
    notes = []
    for mode, res in results.items():
        m = res.get("model", {})
        if mode != "cli":
            worst = max((max(t.get("task_rss") or 0, t.get("step_rss") or 0) for t in res["tasks"].values()), default=0)
            notes.append(
                f"- {mode}: DAG run {res['dag_run_s']:.1f} s (state {res.get('state_')}); services start "
                f"{res['services_ready_s']:.1f} s; end to end with start-up {res['total_s']:.1f} s; largest task or "
                f"step process {mib(worst)} MiB; holdout AUC {m.get('auc')} vs baseline {m.get('baseline_auc')}"
            )
            steps = [t["step_seconds"] for t in res["tasks"].values() if t.get("step_seconds") is not None]
            if steps:  # tasks without a step (should_train under nightly) count as Airflow's
                inside = sum(steps)
                raw[f"airflow_share_{mode}"] = {"steps_s": inside, "dag_run_s": res["dag_run_s"]}
                notes.append(
                    f"- {mode}: the steps themselves took {inside:.1f} s in the worker; Airflow (scheduling, task "
                    f"processes, XCom) added {res['dag_run_s'] - inside:.1f} s = **{res['dag_run_s'] / inside - 1:.0%}**"
                )
        else:
            notes.append(
                f"- cli: {res['wall_s']:.1f} s wall = {res['imports_s']:.1f} s imports + {res['steps_s']:.1f} s steps; "
                f"peak RSS {mib(res.get('sampled_rss'))} MiB; holdout AUC {m.get('auc')} vs baseline {m.get('baseline_auc')}"
            )
    if "base" in results and "warm" in results:
        b, w = results["base"], results["warm"]
        notes.append(
            f"- before/after: DAG run {b['dag_run_s']:.1f} s -> {w['dag_run_s']:.1f} s "
            f"(**{b['dag_run_s'] / w['dag_run_s']:.1f}x faster**)"
        )
    if "cli" in results:
        for mode in results:
            if mode != "cli":
                ratio = results[mode]["dag_run_s"] / results["cli"]["steps_s"]
                cold = results[mode]["total_s"] / results["cli"]["wall_s"]
                raw[f"overhead_{mode}"] = {"run": ratio, "with_start_up": cold}
                notes.append(
                    f"- orchestration overhead, {mode}: Airflow DAG run / CLI steps = **{ratio:.2f}x**; "
                    f"with start-up (services + run) / (CLI imports + steps) = {cold:.2f}x"
                )
    return notes


def median_of(runs: list[dict]) -> dict:
    """Runs of one mode folded into one: the median of each time, the largest of each memory figure."""
    import statistics

    first = runs[0]
    if len(runs) == 1:
        return first
    out: dict = {}
    for key, value in first.items():
        values = [r.get(key) for r in runs]
        if isinstance(value, dict):
            out[key] = median_of([v if isinstance(v, dict) else {} for v in values])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [v for v in values if isinstance(v, int | float)]
            out[key] = max(numbers) if "rss" in key or "pss" in key else statistics.median(numbers)
        else:
            out[key] = value
    return out


def _spread(raw: dict) -> list[str]:
    """Each repeat's totals, where a mode ran more than once."""
    notes = []
    for mode in ("base", "cold", "warm", "cli"):
        runs = (raw.get(mode) or {}).get("repeats")
        if not runs:
            continue
        key = "steps_s" if mode == "cli" else "dag_run_s"
        first = ", ".join(f"{r[key]:.1f}" for r in runs)
        following = ", ".join(f"{r['next'][key]:.1f}" for r in runs if "next" in r)
        notes.append(
            f"- {mode}, each of {len(runs)} repeats ({key}): first run {first} s; next night {following} s (tables: medians)"
        )
    return notes


def render(raw: dict, name: str, command: str) -> str:
    """Print and write the tables of a run's raw figures: the first run, then the next night."""
    results = {m: raw[m] for m in ("base", "cold", "warm", "cli") if m in raw}
    parts = [
        "**First run** (the night before the date, from nothing: collects, validates and versions the whole year, "
        "then trains):",
        "",
        _table(results),
        "",
        *_notes(results, raw),
    ]
    following = {m: r["next"] for m, r in results.items() if "next" in r}
    if following:
        parts += [
            "",
            "**Next night** (the steady state: one new day collected, validated and versioned, then the whole "
            "year preprocessed and trained on, evaluated, registered, and the next day scored):",
            "",
            _table(following),
            "",
            *_notes(following, raw.setdefault("next", {})),
        ]
    spread = _spread(raw)
    if spread:
        parts += ["", *spread]
    return report(name, "End to end: a nightly run over a full year (336,776 flights)", command, "\n".join(parts), raw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "cli-child"])
    p.add_argument("--modes", default="warm,cli", help="base, cold, warm, cli (see the module docstring)")
    p.add_argument(
        "--base-rev", default="db4c45e^", help="the code of 'base': before the step worker and the step fixes"
    )
    p.add_argument("--date", default="2013-12-30")
    p.add_argument("--port", type=int, default=18120, help="Airflow API port (18120-18139 are this suite's)")
    p.add_argument("--code", type=Path, default=REPO, help="run the DAG and steps from this copy of the code")
    p.add_argument("--keep", action="store_true", help="keep the state folders")
    p.add_argument("--out", type=Path)
    p.add_argument("--name", default="e2e")
    p.add_argument("--from-json", type=Path, help="print the table again from a run's raw figures")
    p.add_argument(
        "--repeat", type=int, default=1, help="run every mode this many times (interleaved); tables show medians"
    )
    args = p.parse_args(argv)
    if args.mode == "cli-child":
        return cli_child(args.date, args.out)
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        render(raw, args.name, raw.get("command", command_line()))
        return 0
    started = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
    raw: dict = {"machine": machine(), "date": args.date, "code": str(args.code), "command": command_line()}
    repeats: dict[str, list[dict]] = {}
    for r in range(args.repeat):  # the modes interleaved, so that a slow spell of the machine hits them alike
        for mode in args.modes.split(","):
            print(f"[{dt.datetime.now():%H:%M:%S}] {mode} ({r + 1} of {args.repeat}) ...", flush=True)
            if mode == "cli":
                res = run_cli(args.date, args.keep)
            elif mode == "base":
                res = run_airflow(mode, args.date, args.port, snapshot(args.base_rev), args.keep)
            else:
                res = run_airflow(mode, args.date, args.port, args.code.resolve(), args.keep)
            repeats.setdefault(mode, []).append(res)
            print(json.dumps(res, indent=1, default=str)[:3000], flush=True)
    for mode, runs in repeats.items():
        raw[mode] = median_of(runs)
        if len(runs) > 1:
            raw[mode]["repeats"] = runs
    raw["measured"] = f"{started}-{dt.datetime.now(dt.UTC):%H:%M} UTC"
    render(raw, args.name, command_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
