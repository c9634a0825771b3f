"""Operators' command line over Airflow's REST API: the UI's actions from a terminal or a script.

    python -m pipelines.ops trigger  [--date 2013-06-30] [--conf JSON] [--logical-date ISO] [--wait]
    python -m pipelines.ops status   [--limit 5] [--run-id ID]
    python -m pipelines.ops backfill --from 2013-03-01 --to 2013-03-14 [--conf JSON] [--wait] [--dry-run]
    python -m pipelines.ops backfill --watch ID | --cancel ID

Where and who (flags win over the environment):
    AIRFLOW_API_URL       the API server, default ``http://localhost:8080``
    AIRFLOW_API_USER      default ``admin``
    AIRFLOW_API_PASSWORD  exchanged for a token at ``POST /auth/token``
    AIRFLOW_API_TOKEN     a token already issued (then no user or password is needed)

Every command speaks to the API server only (``/auth/token`` then ``/api/v2``): no database, no
Airflow import, so it runs from any machine that can reach the server. ``--json`` prints what the
API returned, for scripts. Exit status: 0 on success; 1 when a waited-for run or backfill has a
failed run; 2 on a usage, login or API error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://localhost:8080"
DEFAULT_DAG = "flights_training"
TERMINAL_STATES = {"success", "failed"}


class APIError(RuntimeError):
    """The API server refused a request or could not be reached; the message says what it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AirflowAPI:
    """A thin client of Airflow's REST API v2, authenticated with a bearer token."""

    base_url: str
    token: str
    timeout: float = 30.0

    @classmethod
    def login(cls, base_url: str, username: str, password: str, timeout: float = 30.0) -> AirflowAPI:
        """Exchange a user and password for a token (``POST /auth/token``)."""
        body = _call(
            base_url.rstrip("/") + "/auth/token", "POST", {"username": username, "password": password}, None, timeout
        )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise APIError(f"{base_url}/auth/token returned no access_token")
        return cls(base_url.rstrip("/"), token, timeout)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}/api/v2{path}"
        if query:
            url += "?" + urllib.parse.urlencode(
                [(k, v) for k, vs in query.items() if vs is not None for v in (vs if isinstance(vs, list) else [vs])]
            )
        return _call(url, method, body, self.token, self.timeout)

    # -- DAGs and runs -----------------------------------------------------
    def dag(self, dag_id: str) -> dict:
        return self.request("GET", f"/dags/{_q(dag_id)}")

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.request("PATCH", f"/dags/{_q(dag_id)}", {"is_paused": paused})

    def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        logical_date: str | None = None,
        run_id: str | None = None,
        note: str | None = None,
    ) -> dict:
        """Create a DAG run; ``logical_date`` None makes a run without one (Airflow 3)."""
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        if note:
            body["note"] = note
        return self.request("POST", f"/dags/{_q(dag_id)}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")

    def dag_runs(self, dag_id: str, limit: int = 10, run_type: str | None = None) -> list[dict]:
        """The most recent runs first (by creation)."""
        query = {"limit": limit, "order_by": "-id", "run_type": run_type}
        return list(self.request("GET", f"/dags/{_q(dag_id)}/dagRuns", query=query)["dag_runs"])

    def task_order(self, dag_id: str) -> list[str]:
        """The DAG's task ids, upstream before downstream (ties by name)."""
        tasks = self.request("GET", f"/dags/{_q(dag_id)}/tasks")["tasks"]
        return topological_order({t["task_id"]: t.get("downstream_task_ids") or [] for t in tasks})

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances"
        return list(self.request("GET", path, query={"limit": 1000})["task_instances"])

    # -- backfills ---------------------------------------------------------
    def create_backfill(
        self,
        dag_id: str,
        from_date: str,
        to_date: str,
        conf: dict[str, Any] | None = None,
        max_active_runs: int = 1,
        reprocess: str = "none",
        dry_run: bool = False,
    ) -> dict:
        body = {
            "dag_id": dag_id,
            "from_date": from_date,
            "to_date": to_date,
            "dag_run_conf": conf or {},
            "max_active_runs": max_active_runs,
            "reprocess_behavior": reprocess,
            "run_backwards": False,
        }
        return self.request("POST", "/backfills/dry_run" if dry_run else "/backfills", body)

    def backfill(self, backfill_id: int) -> dict:
        return self.request("GET", f"/backfills/{backfill_id}")

    def backfills(self, dag_id: str) -> list[dict]:
        return list(self.request("GET", "/backfills", query={"dag_id": dag_id, "limit": 100})["backfills"])

    def cancel_backfill(self, backfill_id: int) -> dict:
        return self.request("PUT", f"/backfills/{backfill_id}/cancel")

    def backfill_runs(self, dag_id: str, backfill: dict) -> list[dict]:
        """The backfill's runs, oldest logical date first (runs carry no backfill id in the API)."""
        runs = self.request(
            "GET",
            f"/dags/{_q(dag_id)}/dagRuns",
            query={
                "run_type": "backfill",
                "logical_date_gte": backfill["from_date"],
                "logical_date_lte": backfill["to_date"],
                "order_by": "logical_date",
                "limit": 1000,
            },
        )["dag_runs"]
        return list(runs)


def topological_order(downstream: dict[str, list[str]]) -> list[str]:
    """Task ids so that every task comes after its upstream tasks (Kahn's algorithm, ties by name)."""
    upstream_count = dict.fromkeys(downstream, 0)
    for targets in downstream.values():
        for target in targets:
            upstream_count[target] = upstream_count.get(target, 0) + 1
    ready = sorted(t for t, n in upstream_count.items() if n == 0)
    order: list[str] = []
    while ready:
        task = ready.pop(0)
        order.append(task)
        for target in downstream.get(task, []):
            upstream_count[target] -= 1
            if upstream_count[target] == 0:
                ready.append(target)
        ready.sort()
    return order + sorted(set(upstream_count) - set(order))  # a cycle cannot happen in a DAG; just in case


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _call(url: str, method: str, body: Any, token: str | None, timeout: float) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("detail", detail)
        except (ValueError, AttributeError):
            pass
        raise APIError(f"{method} {url}: HTTP {err.code}: {detail}", err.code) from None
    except (urllib.error.URLError, OSError) as err:
        raise APIError(f"{method} {url}: cannot reach the API server ({getattr(err, 'reason', err)})") from None
    return json.loads(raw) if raw else None


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
    deadline, last, order = time.monotonic() + timeout, None, api.task_order(dag_id)
    while True:
        run = api.dag_run(dag_id, run_id)
        tasks = api.task_instances(dag_id, run_id)
        text = format_run(run, tasks, order)
        if text != last:
            echo(text)
            last = text
        if run["state"] in TERMINAL_STATES:
            return run
        if time.monotonic() > deadline:
            raise APIError(f"run {run_id} not finished after {timeout:.0f}s (state {run['state']})")
        time.sleep(poll)


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
        api.set_paused(dag_id, False)
        echo(f"unpaused {dag_id}")
    else:
        echo(f"note: {dag_id} is paused; the scheduler starts its runs once it is unpaused (--unpause)")


def cmd_trigger(api: AirflowAPI, args: argparse.Namespace) -> int:
    conf = dict(args.conf)
    if args.date:
        conf["data_date"] = args.date
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
    p.add_argument("--url", default=os.environ.get("AIRFLOW_API_URL", DEFAULT_URL), help="API server (AIRFLOW_API_URL)")
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
            api = AirflowAPI(args.url.rstrip("/"), args.token)
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
