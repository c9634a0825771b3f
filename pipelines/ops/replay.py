"""Replay a season through Airflow's own scheduler, night by night, with the monitoring loop closed.

    python -m pipelines.ops.replay --from 2013-05-25 --to 2013-08-31 --home /tmp/replay [--set KEY=VALUE ...]

In a state folder of its own (``--home``: Airflow's SQLite database and logs, MLflow's store, the data,
the params file), it starts the real components as ``python -m pipelines.ops.local run`` does (API server,
scheduler with the LocalExecutor, DAG processor, and the step worker) and plays the clock: for each
night in order it triggers ``flights_training`` for that day (conf ``data_date``), waits for it, then
waits until everything that run set off is over: the ``flights_monitoring`` run its ``collect`` Asset
event starts, any ``flights_training`` run monitoring triggers, and the monitoring run *that* run's
event starts. Only then does the next night begin, so each night sees the champion the nights before
left, as in production.

The params file is ``params.yaml`` with ``train.retrain: on_demand`` and a short
``monitor.wait_poke_seconds``, plus any ``--set`` (dotted keys, YAML values): a night trains only
when monitoring asks or when there is no champion. The first night that finds no champion forces its
model champion (``force_promotion``, with a reason), so every later night has one to score with.

After each night the table is written to ``<home>/replay.md`` and ``<home>/replay.json``: the training
run's state and duration and whether it trained (and why not), the monitoring decision (drift share and
drifted features, performance worsening, retrain or not and why, refused for cooldown), the retraining
run it started, the model versions registered and whether promoted, and the version that scored the next
day. A replay stopped half way resumes where it stopped when run again with the same ``--home``.
Data versioning is off (``MLOPS_VERSIONING=off``): the state folder is outside the repository.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipelines.ops.environment import airflow_env
from pipelines.settings import REPO_ROOT, Settings, resolve

TRAINING, MONITORING = "flights_training", "flights_monitoring"
DEFAULT_OVERRIDES: dict[str, Any] = {"train.retrain": "on_demand", "monitor.wait_poke_seconds": 10}
FIRST_CHAMPION = {
    "force_promotion": True,
    "promotion_reason": "season replay: no champion yet; the first night's model serves so that every night has one to score with",
}
TABLE_MD, TABLE_JSON = "replay.md", "replay.json"


# --------------------------------------------------------------------------- set-up


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (dotted params.yaml keys, YAML values) as overrides."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE (a dotted params.yaml key), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def replay_params(base: Path, overrides: Mapping[str, Any]) -> str:
    """``base`` with the overrides applied, validated, as a params file (a bad key fails here, named)."""
    from pipelines.config import load_params

    params = load_params(base).with_overrides(overrides)
    header = "# Season replay (python -m pipelines.ops.replay): params.yaml with " + json.dumps(dict(overrides)) + "\n"
    return header + yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), sort_keys=False)


def replay_env(home: Path, api_port: int) -> dict[str, str]:
    """The whole configuration of the replay's Airflow and pipeline, under ``home``."""
    return airflow_env(
        home / "airflow",
        base=os.environ,
        state_dir=home,
        api_port=api_port,
        step_worker=True,
        extra={
            # Parsed once: a new parse would give back the nightly slot held below (hold_schedule).
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(30 * 24 * 3600),
            "MLOPS_PARAMS": str(home / "params.yaml"),
            "MLOPS_STEP_WORKER_SOCKET": str(home / "worker" / "worker.sock"),
        },
    )


def nights(first: dt.date, last: dt.date) -> list[dt.date]:
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


# --------------------------------------------------------------------------- what a night left


def monitoring_summary(decision: Mapping[str, Any] | None) -> dict[str, Any]:
    """The figures of a monitoring run's ``decision.json`` that the table shows."""
    if not decision:
        return {"decided": False}
    checks = decision.get("checks") or {}
    drift = checks.get("data_drift") or {}
    perf = checks.get("performance") or {}
    return {
        "decided": True,
        "retrain": bool(decision.get("retrain")),
        "triggers": list(decision.get("triggers") or []),
        "blocked_by": decision.get("blocked_by"),
        "reason": decision.get("reason", ""),
        "training_run_id": decision.get("trigger_run_id") if decision.get("retrain") else None,
        "drift_share": drift.get("share"),
        "drifted": list(drift.get("drifted") or []),
        "drift_columns": len(drift.get("columns") or []),
        "performance_status": perf.get("status"),
        "worsening": dict(perf.get("worsening") or {}),
        "exceeded": list(perf.get("exceeded") or []),
    }


def _monitoring_cell(m: Mapping[str, Any]) -> str:
    if not m.get("decided"):
        return f"{m.get('state', '?')}: no decision" + (f" ({m['note']})" if m.get("note") else "")
    parts = []
    if m.get("drift_share") is not None:
        cols = f": {', '.join(m['drifted'])}" if m["drifted"] else ""
        parts.append(f"drift {len(m['drifted'])}/{m['drift_columns']}{cols}")
    if m.get("worsening"):
        parts.append(
            ", ".join(
                f"{k} {'+' if v >= 0 else ''}{v:.3f}{' (over)' if k in m['exceeded'] else ''}"
                for k, v in m["worsening"].items()
            )
        )
    elif m.get("performance_status") and m["performance_status"] != "ok":
        parts.append("performance: too few labels")
    if m["retrain"]:
        verdict = f"**retrain** ({', '.join(m['triggers'])})"
    elif m.get("blocked_by"):
        verdict = f"refused: {m['blocked_by'].replace('_', ' ')} ({', '.join(m['triggers'])})"
    else:
        verdict = "no retraining"
    return "; ".join([*parts, verdict])


def _run_cell(run: Mapping[str, Any] | None) -> str:
    if not run:
        return "-"
    took = f"{run['seconds']:.0f} s" if run.get("seconds") is not None else "?"
    trained = "trained" if run.get("trained") else "no training"
    return f"{run['state']}, {took}, {trained}"


def _version_cell(run: Mapping[str, Any] | None) -> str:
    if not run or not run.get("model_version"):
        return "-"
    return f"v{run['model_version']} {'promoted' if run.get('promoted') else 'refused'}"


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The per-night table, as Markdown, from the nights' records (what ``replay.json`` holds)."""
    lines = [
        "| day | night run | its model | monitoring (drift; performance worsening; decision) | retraining run | its model | next day scored by | night took |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        monitoring = "<br>".join(_monitoring_cell(m) for m in r.get("monitoring") or []) or "no monitoring run"
        scored = r.get("scored") or {}
        by = ", ".join(f"v{v}" for v in scored.get("versions") or []) or "nothing scored"
        lines.append(
            f"| {r['day']} | {_run_cell(r.get('training'))} | {_version_cell(r.get('training'))} | {monitoring} "
            f"| {_run_cell(r.get('retraining'))} | {_version_cell(r.get('retraining'))} "
            f"| {scored.get('day', '-')}: {by} | {r.get('seconds', 0):.0f} s |"
        )
    trained = sum(1 for r in records for k in ("training", "retraining") if (r.get(k) or {}).get("trained"))
    retrainings = sum(1 for r in records if r.get("retraining"))
    lines += [
        "",
        f"{len(records)} nights; {trained} runs trained a model, {retrainings} of them started by monitoring; "
        f"{sum(r.get('seconds', 0) for r in records) / 60:.1f} min in all.",
    ]
    return "\n".join(lines) + "\n"


def write_table(home: Path, records: Sequence[Mapping[str, Any]]) -> str:
    table = markdown_table(records)
    (home / TABLE_JSON).write_text(json.dumps(list(records), indent=1, default=str), encoding="utf-8")
    (home / TABLE_MD).write_text(table, encoding="utf-8")
    return table


# --------------------------------------------------------------------------- the clock


class Replay:
    """The running components of one replay, and what a night leaves in Airflow, MLflow and the data."""

    def __init__(self, cluster: Any, settings: Settings, night_timeout: float) -> None:
        import mlflow

        from pipelines.config import load_params

        self.cluster = cluster
        self.settings = settings
        self.params = load_params(settings.params_path)
        self.client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
        self.timeout = night_timeout

    def champion(self) -> str | None:
        from pipelines.promotion import CHAMPION, alias_version

        return alias_version(self.client, self.params.registration.model_name, CHAMPION)

    def hold_schedule(self) -> None:
        """No scheduled nightly run (today's date mapped onto 2013) while the replay plays the clock."""
        for attempt in range(5):
            try:
                self.cluster.hold_schedule(TRAINING)
                return
            except Exception as err:  # SQLite's lock while the scheduler writes
                if "locked" not in str(err) or attempt == 4:
                    raise
                time.sleep(2 * (attempt + 1))

    def play(self, day: dt.date, conf: Mapping[str, Any], force_first: bool) -> dict[str, Any]:
        """One night: trigger its training run, wait until it and all it set off are over; its record."""
        started = time.monotonic()
        self.hold_schedule()
        run_id = f"replay__{day.isoformat()}"
        if self.cluster.run_state(TRAINING, run_id) is None:
            night_conf = {"data_date": day.isoformat(), **conf}
            if force_first and self.champion() is None and not conf.get("force_promotion"):
                night_conf.update(FIRST_CHAMPION)
            # Its data interval is the night's, as a scheduled run's would be (the UI shows it).
            logical = f"{(day + dt.timedelta(days=1)).isoformat()}T03:00:00+00:00"
            self.cluster.trigger(TRAINING, run_id, logical_date=logical, conf=night_conf)
        self.cluster.wait_for_run(TRAINING, run_id, timeout=self.timeout)
        self.wait_settled(time.monotonic() + self.timeout)
        return self.record(day, run_id, time.monotonic() - started)

    def wait_settled(self, deadline: float, poll: float = 3.0) -> None:
        """Until no training or monitoring run is queued or running and no Asset event waits (twice in a row)."""
        quiet = 0
        while quiet < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"runs still active: {self.cluster.active_runs(TRAINING)} {self.cluster.active_runs(MONITORING)}"
                )
            self.cluster.services.check_alive()
            busy = (
                self.cluster.active_runs(TRAINING)
                or self.cluster.active_runs(MONITORING)
                or self.cluster.pending_asset_triggers(MONITORING)
            )
            quiet = 0 if busy else quiet + 1
            time.sleep(poll)

    def training_run(self, run_id: str) -> dict[str, Any]:
        from pipelines.steps.should_train import DECISION_FILE

        start, end = self.cluster.run_times(TRAINING, run_id)
        tasks = self.cluster.task_states(TRAINING, run_id)
        decision_path = self.settings.run_dir(TRAINING, run_id) / DECISION_FILE
        decision = json.loads(decision_path.read_text()) if decision_path.is_file() else {}
        name = self.params.registration.model_name
        versions = self.client.search_model_versions(f"name = '{name}' and tags.`lineage.run_id` = '{run_id}'")
        version = max(versions, key=lambda v: int(v.version)) if versions else None
        return {
            "run_id": run_id,
            "state": self.cluster.run_state(TRAINING, run_id),
            "seconds": (end - start).total_seconds() if start and end else None,
            "trained": tasks.get("train") == "success",
            "why": decision.get("reason"),
            "failed_tasks": sorted(t for t, s in tasks.items() if s in ("failed", "upstream_failed")),
            "model_version": str(version.version) if version else None,
            "promoted": version.tags.get("promotion.decision", "").startswith("promoted") if version else None,
        }

    def monitoring_runs(self, source_run_ids: set[str]) -> list[dict[str, Any]]:
        out, seen = [], set()
        for row in self.cluster.asset_triggered_by(MONITORING):
            if row["source_run_id"] not in source_run_ids or row["run_id"] in seen:
                continue
            seen.add(row["run_id"])
            path = self.settings.run_dir(MONITORING, row["run_id"]) / "monitor" / "decision.json"
            decision = json.loads(path.read_text()) if path.is_file() else None
            tasks = self.cluster.task_states(MONITORING, row["run_id"])
            note = None
            if decision is None:
                note = ", ".join(
                    f"{t} {s}" for t, s in sorted(tasks.items()) if s in ("failed", "skipped", "upstream_failed")
                )
            out.append(
                {
                    "run_id": row["run_id"],
                    "state": row["state"],
                    "after": row["source_run_id"],
                    "note": note,
                    **monitoring_summary(decision),
                }
            )
        return out

    def record(self, day: dt.date, run_id: str, seconds: float) -> dict[str, Any]:
        from pipelines.steps.predict import PREDICTION_FILE, next_day

        training = self.training_run(run_id)
        monitoring = self.monitoring_runs({run_id})
        retraining = None
        asked = next((m["training_run_id"] for m in monitoring if m.get("training_run_id")), None)
        if asked and self.cluster.run_state(TRAINING, asked) is not None:
            retraining = self.training_run(asked)
            monitoring += self.monitoring_runs({asked})
        scored: dict[str, Any] = {}
        nxt = next_day(self.params.dataset, day)
        if nxt is not None:
            import pandas as pd

            path = self.settings.predictions_dir / f"date={nxt.isoformat()}" / PREDICTION_FILE
            frame = pd.read_parquet(path, columns=["model_version"]) if path.is_file() else None
            scored = {
                "day": nxt.isoformat(),
                "rows": 0 if frame is None else len(frame),
                "versions": [] if frame is None else sorted(set(frame["model_version"]), key=int),
            }
        return {
            "day": day.isoformat(),
            "seconds": round(seconds, 1),
            "training": training,
            "monitoring": monitoring,
            "retraining": retraining,
            "scored": scored,
            "champion_after": self.champion(),
        }


def replay(
    first: dt.date,
    last: dt.date,
    home: Path,
    overrides: Mapping[str, Any],
    conf: Mapping[str, Any],
    api_port: int = 18190,
    night_timeout: float = 3600,
    force_first: bool = True,
) -> list[dict[str, Any]]:
    """Play the nights ``first``..``last`` through the scheduler; returns their records (also written to ``home``)."""
    from pipelines.ops import worker
    from pipelines.ops.cluster import AirflowCluster

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "params.yaml").write_text(replay_params(REPO_ROOT / "params.yaml", overrides), encoding="utf-8")
    env = replay_env(home, api_port)
    settings = resolve(env)
    done_path = home / TABLE_JSON
    records: list[dict[str, Any]] = json.loads(done_path.read_text()) if done_path.is_file() else []
    done = {r["day"] for r in records}
    todo = [d for d in nights(first, last) if d.isoformat() not in done]
    print(
        f"replay of {len(todo)} night(s) in {home} (logs: {home / 'services'}, Airflow UI on port {api_port})",
        flush=True,
    )
    cluster = AirflowCluster(env, log_dir=home / "services", api_port=api_port)
    cluster.migrate()
    with cluster:
        worker.start_service(cluster.services, env)
        worker.wait_ready(env, services=cluster.services)
        cluster.wait_for_dag(TRAINING)
        cluster.wait_for_dag(MONITORING)
        cluster.unpause(MONITORING)
        player = Replay(cluster, settings, night_timeout)
        player.hold_schedule()
        cluster.unpause(TRAINING)
        try:
            for day in todo:
                record = player.play(day, conf, force_first)
                records.append(record)
                write_table(home, records)
                m = "; ".join(_monitoring_cell(x) for x in record["monitoring"]) or "no monitoring run"
                print(f"{day}: {_run_cell(record['training'])}; {m}; {record['seconds']:.0f} s", flush=True)
        finally:
            # Leave the state as an operator would find it after hours: nothing scheduled.
            cluster.airflow("dags", "pause", TRAINING, check=False)
            cluster.airflow("dags", "pause", MONITORING, check=False)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.ops.replay", description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="first", required=True, type=dt.date.fromisoformat, help="first night (YYYY-MM-DD)")
    p.add_argument("--to", dest="last", required=True, type=dt.date.fromisoformat, help="last night (YYYY-MM-DD)")
    p.add_argument("--home", required=True, type=Path, help="the replay's state folder (created; reused to resume)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml override, on top of train.retrain=on_demand and monitor.wait_poke_seconds=10 "
        "(repeatable), e.g. --set train.epochs=4",
    )
    p.add_argument("--conf", default="{}", help="trigger parameters of every night's run, as JSON")
    p.add_argument(
        "--no-force-first",
        dest="force_first",
        action="store_false",
        help="do not force the first model champion (nights then score nothing until one passes the gate)",
    )
    p.add_argument(
        "--api-port", type=int, default=18190, help="the replay's API server (the log server takes the next port)"
    )
    p.add_argument("--night-timeout", type=float, default=3600, help="seconds a night may take, retraining included")
    args = p.parse_args(argv)
    overrides = {**DEFAULT_OVERRIDES, **parse_set(args.overrides)}
    records = replay(
        args.first,
        args.last,
        args.home,
        overrides,
        json.loads(args.conf),
        api_port=args.api_port,
        night_timeout=args.night_timeout,
        force_first=args.force_first,
    )
    print("\n" + markdown_table(records))
    print(f"table: {args.home / TABLE_MD} and {args.home / TABLE_JSON}")
    failed = [r["day"] for r in records if (r.get("training") or {}).get("state") != "success"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
