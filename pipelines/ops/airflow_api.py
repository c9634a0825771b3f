"""Airflow's REST API (v2) as a client sees it: a token from ``POST /auth/token``, then JSON calls.

The one client of the tooling: the operators' command line (:mod:`pipelines.ops.cli`), the tests
and the benchmarks all speak to an API server through :class:`AirflowAPI`. Standard library only:
it runs from any machine that can reach the server, without Airflow installed.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The states a DAG run ends in: waiting stops there.
TERMINAL_STATES = frozenset({"success", "failed"})


class APIError(RuntimeError):
    """The API server refused a request or could not be reached; the message says what it answered.

    ``status`` is the HTTP status code (None when the server could not be reached).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AirflowAPI:
    """A thin client of Airflow's REST API v2, authenticated with a bearer token.

    Args:
        base_url: the API server, e.g. ``http://127.0.0.1:8080``.
        token: a JWT; :meth:`login` gets one for a user and password.
        timeout: seconds one HTTP call may take.
    """

    base_url: str
    token: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    @classmethod
    def login(cls, base_url: str, username: str, password: str, timeout: float = 30.0) -> AirflowAPI:
        """Exchange a user and password for a token (``POST /auth/token``).

        Returns:
            A client holding the token.
        """
        body = _call(
            base_url.rstrip("/") + "/auth/token", "POST", {"username": username, "password": password}, None, timeout
        )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise APIError(f"{base_url}/auth/token returned no access_token")
        return cls(base_url, token, timeout)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        """One authenticated call to ``/api/v2{path}``; returns the decoded JSON answer.

        Args:
            method: the HTTP method.
            path: below ``/api/v2``, e.g. ``/dags/flights_training``.
            body: sent as JSON when not None.
            query: query parameters; a list value repeats its key, None values are left out.
        """
        url = f"{self.base_url}/api/v2{path}"
        if query:
            url += "?" + urllib.parse.urlencode(
                [(k, v) for k, vs in query.items() if vs is not None for v in (vs if isinstance(vs, list) else [vs])]
            )
        return _call(url, method, body, self.token, self.timeout)

    # -- DAGs and runs -----------------------------------------------------
    def dag(self, dag_id: str) -> dict:
        return self.request("GET", f"/dags/{_q(dag_id)}")

    def dag_details(self, dag_id: str) -> dict:
        """The DAG with its details, among them its declared ``params``."""
        return self.request("GET", f"/dags/{_q(dag_id)}/details")

    def pause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/dags/{_q(dag_id)}", {"is_paused": True})

    def unpause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/dags/{_q(dag_id)}", {"is_paused": False})

    def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        logical_date: str | None = None,
        run_id: str | None = None,
        note: str | None = None,
    ) -> dict:
        """Create a DAG run; ``logical_date`` None makes a run without one (Airflow 3).

        Returns:
            The run as the API describes it (``dag_run_id``, ``state``, ``conf``...).
        """
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

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 900,
        poll: float = 3.0,
        watch: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll a DAG run until it ends.

        Args:
            watch: called with the run at every poll (to print its progress, or to check that the
                services are alive: an exception it raises ends the wait).

        Returns:
            The run, in a state of :data:`TERMINAL_STATES`.
        """
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if watch is not None:
                watch(run)
            if run["state"] in TERMINAL_STATES:
                return run
            if time.monotonic() > deadline:
                states = {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}
                raise APIError(
                    f"run {run_id} not finished after {timeout:.0f}s (state {run['state']}); tasks: {states}"
                )
            time.sleep(poll)

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
        """Create a backfill (or, with ``dry_run``, list the runs it would create)."""
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
