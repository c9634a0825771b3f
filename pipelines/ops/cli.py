"""Operators' command line over Airflow's REST API: the UI's actions from a terminal or a script.

    python -m pipelines.ops trigger  [--date 2013-06-30] [--conf JSON] [--logical-date ISO] [--wait]
    python -m pipelines.ops status   [--limit 5] [--run-id ID]
    python -m pipelines.ops backfill --from 2013-03-01 --to 2013-03-14 [--conf JSON] [--wait] [--dry-run]
    python -m pipelines.ops backfill --watch ID | --cancel ID

Where and who (flags win over the environment):
    AIRFLOW_API_URL       the API server, default ``http://localhost:$MLOPS_AIRFLOW_PORT`` (8080: the local one)
    AIRFLOW_API_USER      default ``admin``
    AIRFLOW_API_PASSWORD  exchanged for a token at ``POST /auth/token``
    AIRFLOW_API_TOKEN     a token already issued (then no user or password is needed)

Every command speaks to the API server only (``/auth/token`` then ``/api/v2``, through
:class:`pipelines.ops.airflow_api.AirflowAPI`): no database, no Airflow import, so it runs from
any machine that can reach the server. ``--json`` prints what the API returned, for scripts.
Exit status: 0 on success; 1 when a waited-for run or backfill has a failed run; 2 on a usage,
login or API error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from pipelines.ops.airflow_api import AirflowAPI, APIError
from pipelines.settings import resolve

DEFAULT_URL = "http://localhost:{port}"  # the local Airflow's port from the settings
DEFAULT_DAG = "flights_training"


# --------------------------------------------------------------------------- formatting


def _duration(run: dict) -> str:
    if run.get("duration") is not None:
        return f"{run['duration']:.0f}s"
    return ""


def format_run(run: dict, tasks: Iterable[dict] | None = None, order: list[str] | None = None) -> str:
    """One run on one line (id, state, logical date, duration, conf), then its task states in DAG order."""
    logical = run.get("logical_date") or "-"
    conf = json.dumps(run.get("conf") or {}, sort_keys=True)
    line = f"{run['dag_run_id']}  {run['state']:<8} logical {logical}  {_duration(run):>6}  conf {conf}"
    if run.get("note"):
        line += f"\n    note: {run['note']}"
    if tasks is not None:
        rank = {task_id: i for i, task_id in enumerate(order or [])}
        ordered = sorted(tasks, key=lambda t: (rank.get(t["task_id"], len(rank)), t["task_id"], t.get("map_index", -1)))
        states = "  ".join(f"{t['task_id']}={t.get('state') or 'none'}" for t in ordered)
        line += f"\n    tasks: {states}" if states else "\n    tasks: (none scheduled yet)"
    return line


# --------------------------------------------------------------------------- commands


def day_bounds(first: str, last: str) -> tuple[str, str]:
    """ISO bounds covering the days ``first`` to ``last`` inclusive (full timestamps pass through)."""

    def parse(value: str, end: bool) -> str:
        if "T" in value:
            return value
        day = dt.date.fromisoformat(value)
        moment = dt.datetime.combine(day, dt.time(23, 59, 59) if end else dt.time(0, 0), tzinfo=dt.UTC)
        return moment.isoformat()

    a, b = parse(first, False), parse(last, True)
    if a > b:
        raise ValueError(f"--from {first} is after --to {last}")
    return a, b


def wait_for_run(
    api: AirflowAPI, dag_id: str, run_id: str, timeout: float, poll: float = 5.0, echo: Callable[[str], None] = print
) -> dict:
    """Poll a run until it ends; print each change of its task states."""
    order, last = api.task_order(dag_id), [""]

    def show(run: dict) -> None:
        text = format_run(run, api.task_instances(dag_id, run_id), order)
        if text != last[0]:
            echo(text)
            last[0] = text

    return api.wait_for_run(dag_id, run_id, timeout, poll, watch=show)


def wait_for_backfill(
    api: AirflowAPI,
    dag_id: str,
    backfill_id: int,
    timeout: float,
    poll: float = 15.0,
    echo: Callable[[str], None] = print,
) -> tuple[dict, list[dict]]:
    """Poll a backfill until it completes; print each run as its state changes."""
    deadline, seen = time.monotonic() + timeout, {}
    while True:
        backfill = api.backfill(backfill_id)
        runs = api.backfill_runs(dag_id, backfill)
        for run in runs:
            if seen.get(run["dag_run_id"]) != run["state"]:
                seen[run["dag_run_id"]] = run["state"]
                echo(format_run(run))
        if backfill.get("completed_at"):
            return backfill, runs
        if time.monotonic() > deadline:
            raise APIError(f"backfill {backfill_id} not complete after {timeout:.0f}s")
        time.sleep(poll)


def _ensure_unpaused(api: AirflowAPI, dag_id: str, unpause: bool, echo: Callable[[str], None]) -> None:
    if not api.dag(dag_id).get("is_paused"):
        return
    if unpause:
        api.unpause(dag_id)
        echo(f"unpaused {dag_id}")
    else:
        echo(f"note: {dag_id} is paused; the scheduler starts its runs once it is unpaused (--unpause)")


def check_conf(api: AirflowAPI, dag_id: str, conf: dict[str, Any]) -> None:
    """Refuse, before anything is created, conf keys the DAG does not declare and a forced promotion without a reason.

    Airflow's API accepts undeclared keys (and the run ignores them); the declared ones are
    the DAG's own params, as the API server knows them.

    Raises:
        pipelines.config.ConfigError: naming the key and the allowed ones (a ``ValueError``: exit status 2).
    """
    from pipelines.runner import check_trigger_conf

    details = api.dag_details(dag_id)
    check_trigger_conf(conf, (details or {}).get("params") or {}, dag_id)


def cmd_trigger(api: AirflowAPI, args: argparse.Namespace) -> int:
    conf = dict(args.conf)
    if args.date:
        conf["data_date"] = args.date
    check_conf(api, args.dag, conf)
    _ensure_unpaused(api, args.dag, args.unpause, _err)
    run = api.trigger(args.dag, conf, args.logical_date, args.run_id, args.note)
    if args.json and not args.wait:
        print(json.dumps(run, indent=1))
        return 0
    say = _err if args.json else print
    say(f"triggered {run['dag_run_id']} of {args.dag}")
    if not args.wait:
        return 0
    run = wait_for_run(api, args.dag, run["dag_run_id"], args.timeout, echo=say)
    if args.json:
        print(json.dumps(run, indent=1))
    return 0 if run["state"] == "success" else 1


def cmd_status(api: AirflowAPI, args: argparse.Namespace) -> int:
    runs = [api.dag_run(args.dag, args.run_id)] if args.run_id else api.dag_runs(args.dag, args.limit)
    out = [(run, api.task_instances(args.dag, run["dag_run_id"])) for run in runs]
    if args.json:
        print(json.dumps([{**run, "task_instances": tasks} for run, tasks in out], indent=1))
        return 0
    dag, order = api.dag(args.dag), api.task_order(args.dag)
    print(f"{args.dag}: {'paused' if dag.get('is_paused') else 'active'}; {len(out)} most recent run(s)")
    for run, tasks in out:
        print(format_run(run, tasks, order))
    return 0


def cmd_backfill(api: AirflowAPI, args: argparse.Namespace) -> int:
    if args.cancel is not None:
        done = api.cancel_backfill(args.cancel)
        print(f"cancelled backfill {done['id']} of {done['dag_id']} (runs already running finish)")
        return 0
    if args.watch is not None:
        return _finish_backfill(api, args, api.backfill(args.watch))
    if not (args.from_date and args.to_date):
        raise ValueError("backfill needs --from and --to (or --watch ID, or --cancel ID)")
    start, end = day_bounds(args.from_date, args.to_date)
    check_conf(api, args.dag, args.conf)
    if args.dry_run:
        planned = api.create_backfill(
            args.dag, start, end, args.conf, args.max_active_runs, args.reprocess, dry_run=True
        )
        if args.json:
            print(json.dumps(planned, indent=1))
        else:
            print(f"{planned['total_entries']} run(s) would be created:")
            for item in planned["backfills"]:
                print(f"  logical date {item['logical_date']}")
        return 0
    _ensure_unpaused(api, args.dag, args.unpause, _err)
    try:
        backfill = api.create_backfill(args.dag, start, end, args.conf, args.max_active_runs, args.reprocess)
    except APIError as err:
        if err.status == 409:
            active = [b for b in api.backfills(args.dag) if not b.get("completed_at")]
            ids = ", ".join(str(b["id"]) for b in active) or "?"
            raise APIError(
                f"{err}\nactive backfill(s) of {args.dag}: {ids}; `backfill --cancel ID` stops one"
            ) from None
        raise
    say = _err if args.json else print  # with --json, stdout carries JSON only
    say(
        f"backfill {backfill['id']} of {args.dag}: {backfill['from_date']} to {backfill['to_date']}, "
        f"at most {backfill['max_active_runs']} run(s) at a time, conf {json.dumps(backfill['dag_run_conf'] or {})}"
    )
    if not args.wait:
        if args.json:
            print(json.dumps(backfill, indent=1))
        return 0
    return _finish_backfill(api, args, backfill)


def _finish_backfill(api: AirflowAPI, args: argparse.Namespace, backfill: dict) -> int:
    say = _err if args.json else print
    backfill, runs = wait_for_backfill(api, backfill["dag_id"], backfill["id"], args.timeout, echo=say)
    failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
    if args.json:
        print(json.dumps({"backfill": backfill, "runs": runs}, indent=1))
    say(f"backfill {backfill['id']} complete: {len(runs) - len(failed)} of {len(runs)} run(s) succeeded")
    return 1 if failed else 0


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--conf must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.ops", description=__doc__.split("\n")[0])
    default_url = os.environ.get("AIRFLOW_API_URL") or DEFAULT_URL.format(port=resolve().airflow_port)
    p.add_argument("--url", default=default_url, help="API server (AIRFLOW_API_URL)")
    p.add_argument("--user", default=os.environ.get("AIRFLOW_API_USER", "admin"), help="user (AIRFLOW_API_USER)")
    p.add_argument("--password", default=os.environ.get("AIRFLOW_API_PASSWORD"), help="password (AIRFLOW_API_PASSWORD)")
    p.add_argument(
        "--token", default=os.environ.get("AIRFLOW_API_TOKEN"), help="a token instead of a password (AIRFLOW_API_TOKEN)"
    )
    p.add_argument("--dag", default=DEFAULT_DAG, help=f"DAG id (default {DEFAULT_DAG})")
    p.add_argument("--json", action="store_true", help="print the API's answers as JSON")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trigger", help="create a DAG run (the UI's trigger form)")
    t.add_argument("--date", help="the run's data day, YYYY-MM-DD (conf data_date)")
    t.add_argument("--conf", type=_json_object, default={}, help="trigger parameters as JSON, e.g. '{\"epochs\": 3}'")
    t.add_argument(
        "--logical-date",
        default=None,
        help="ISO timestamp with zone; default none (a run without one). Airflow infers a manual run's data "
        "interval as the one that ends at this date: to choose the training DAG's data day, use --date",
    )
    t.add_argument("--run-id", default=None)
    t.add_argument("--note", default=None, help="a note shown on the run in the UI")
    t.add_argument("--unpause", action="store_true", help="unpause the DAG if it is paused")
    t.add_argument("--wait", action="store_true", help="wait until the run ends; exit 1 if it failed")
    t.add_argument("--timeout", type=float, default=3600)

    s = sub.add_parser("status", help="recent runs and their task states")
    s.add_argument("--limit", type=int, default=5)
    s.add_argument("--run-id", default=None, help="one run only")

    b = sub.add_parser("backfill", help="replay a range of days, one run per day, in order")
    b.add_argument("--from", dest="from_date", help="first day (YYYY-MM-DD, or an ISO timestamp)")
    b.add_argument("--to", dest="to_date", help="last day, inclusive")
    b.add_argument("--conf", type=_json_object, default={}, help="trigger parameters for every run, as JSON")
    b.add_argument("--max-active-runs", type=int, default=1, help="runs at once (default 1: strictly in order)")
    b.add_argument(
        "--reprocess",
        choices=["none", "failed", "completed"],
        default="none",
        help="days that already have a run: skip them (none), rerun failed ones, or rerun all",
    )
    b.add_argument("--dry-run", action="store_true", help="list the runs it would create, create nothing")
    b.add_argument("--unpause", action="store_true", help="unpause the DAG if it is paused (its runs need it)")
    b.add_argument("--wait", action="store_true", help="wait until every run ended; exit 1 if one failed")
    b.add_argument("--timeout", type=float, default=24 * 3600)
    b.add_argument(
        "--watch", type=int, default=None, metavar="ID", help="wait for backfill ID (created before) instead"
    )
    b.add_argument("--cancel", type=int, default=None, metavar="ID", help="cancel backfill ID instead")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.token:
            api = AirflowAPI(args.url, args.token)
        elif args.password:
            api = AirflowAPI.login(args.url, args.user, args.password)
        else:
            _err("no credentials: set AIRFLOW_API_PASSWORD (or --password), or AIRFLOW_API_TOKEN (or --token)")
            return 2
        command = {"trigger": cmd_trigger, "status": cmd_status, "backfill": cmd_backfill}[args.command]
        return command(api, args)
    except APIError as err:
        _err(f"error: {err}")
        return 2
    except ValueError as err:
        _err(f"error: {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
