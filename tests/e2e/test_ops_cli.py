"""The operators' command line (``python -m pipelines.ops``) against a real Airflow API server.

The API server, DAG processor and scheduler are Airflow's own processes on a fresh SQLite
database (pipelines.ops.cluster); the DAG is a one-task probe with the training DAG's schedule,
so the scheduler's part takes seconds. First the commands that only need the API server
(login, trigger, parameter validation, status, backfill planning and creation), then, with the
scheduler started, a backfill that runs one day at a time in order and a trigger that waits.

SQLite allows one writer at a time, and Airflow refuses to create a backfill while another
component writes (it answers 503 on SQLite): backfills are created before the scheduler starts.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from cluster_env import PASSWORD, USER, fresh_airflow_env

from pipelines.ops.cluster import AirflowCluster

API_PORT = 18102  # the task log server takes 18103
DAG_ID = "ops_probe"
PROBE_DAG = '''
"""A one-task DAG with the training DAG's schedule, for the ops CLI tests."""
import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task


@dag(
    dag_id="ops_probe",
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "epochs": Param(1, type="integer", minimum=1, title="Epochs"),
        "data_date": Param(None, type=["null", "string"], format="date"),
        "force_promotion": Param(False, type="boolean"),
        "promotion_reason": Param(None, type=["null", "string"]),
    },
)
def ops_probe():
    @task
    def record() -> dict:
        import time

        ctx = get_current_context()
        time.sleep(2)  # long enough that overlapping runs would show
        start = ctx.get("data_interval_start")
        return {"day": start.date().isoformat() if start else None, "epochs": ctx["params"]["epochs"]}

    record()


ops_probe()
'''

pytestmark = pytest.mark.e2e


def _ops(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {
        "AIRFLOW_API_URL": f"http://127.0.0.1:{API_PORT}",
        "AIRFLOW_API_USER": USER,
        "AIRFLOW_API_PASSWORD": PASSWORD,
    }
    return subprocess.run(
        [sys.executable, "-m", "pipelines.ops.cli", "--dag", DAG_ID, *args],
        env={**_env_base(), **base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env_base() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_API_")}


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ops")
    dags = root / "dags"
    dags.mkdir()
    (dags / "ops_probe.py").write_text(PROBE_DAG)
    return fresh_airflow_env(root, api_port=API_PORT, dags_folder=dags)


@pytest.fixture(scope="module")
def api_server(cluster_env):
    """The API server alone, on a database where the DAG processor has serialised the probe DAG."""
    logs = Path(cluster_env["AIRFLOW_HOME"]) / "services"
    parser = AirflowCluster(cluster_env, log_dir=logs, components=("dag-processor",), api_port=API_PORT)
    parser.migrate()
    with parser:
        parser.wait_for_dag(DAG_ID)
    with AirflowCluster(cluster_env, log_dir=logs, components=("api-server",), api_port=API_PORT) as api:
        yield api


@pytest.fixture(scope="module")
def scheduler(api_server, cluster_env):
    """The scheduler and DAG processor, started after the API-only tests created their runs."""
    logs = Path(cluster_env["AIRFLOW_HOME"]) / "services"
    with AirflowCluster(cluster_env, log_dir=logs, components=("scheduler", "dag-processor"), api_port=API_PORT) as s:
        yield s


# --------------------------------------------------------------------------- API server only


def test_login_errors_are_clear(api_server) -> None:
    bad = _ops("status", env={"AIRFLOW_API_PASSWORD": "wrong"})
    assert bad.returncode == 2
    assert "/auth/token: HTTP 401" in bad.stderr, bad.stderr
    none = _ops("status", env={"AIRFLOW_API_PASSWORD": ""})
    assert none.returncode == 2 and "no credentials" in none.stderr
    unreachable = _ops("status", env={"AIRFLOW_API_URL": "http://127.0.0.1:18119"})
    assert unreachable.returncode == 2 and "cannot reach the API server" in unreachable.stderr


def test_trigger_with_conf_and_logical_date(api_server) -> None:
    done = _ops(
        "--json",
        "trigger",
        "--conf",
        '{"epochs": 3}',
        "--date",
        "2013-06-30",
        "--logical-date",
        "2013-06-30T03:00:00+00:00",
        "--run-id",
        "ops_manual_1",
        "--note",
        "from the ops test",
        "--unpause",
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["dag_run_id"] == "ops_manual_1"
    assert run["conf"] == {"epochs": 3, "data_date": "2013-06-30"}
    assert run["logical_date"].startswith("2013-06-30T03:00:00")
    assert run["note"] == "from the ops test"
    assert "unpaused ops_probe" in done.stderr
    # With a token instead of a password: the same API, no login.
    from pipelines.ops.airflow_api import AirflowAPI

    token = AirflowAPI.login(f"http://127.0.0.1:{API_PORT}", USER, PASSWORD).token
    status = _ops("status", "--run-id", "ops_manual_1", env={"AIRFLOW_API_PASSWORD": "", "AIRFLOW_API_TOKEN": token})
    assert status.returncode == 0, status.stderr
    assert "ops_manual_1  queued" in status.stdout
    assert '"data_date": "2013-06-30", "epochs": 3' in status.stdout


def test_trigger_refuses_a_parameter_outside_its_schema(api_server) -> None:
    done = _ops("trigger", "--conf", '{"epochs": 0}')
    assert done.returncode == 2
    assert "HTTP 400" in done.stderr and "epochs" in done.stderr, done.stderr


def test_trigger_refuses_undeclared_keys_and_a_forced_promotion_without_reason(api_server) -> None:
    """Airflow's API would accept both and the run would ignore them: the CLI refuses before it triggers."""
    runs_before = json.loads(_ops("--json", "status", "--limit", "100").stdout)
    unknown = _ops("trigger", "--conf", '{"epochz": 3}')
    assert unknown.returncode == 2, unknown.stderr
    assert "unknown trigger parameter(s) for ops_probe: 'epochz'" in unknown.stderr, unknown.stderr
    assert "allowed: data_date, epochs, force_promotion, promotion_reason" in unknown.stderr, unknown.stderr
    forced = _ops("trigger", "--conf", '{"force_promotion": true, "promotion_reason": "why"}')
    assert forced.returncode == 2 and "force_promotion needs 'promotion_reason'" in forced.stderr, forced.stderr
    assert json.loads(_ops("--json", "status", "--limit", "100").stdout) == runs_before, "no run was created"


def test_backfill_dry_run_lists_one_run_per_day(api_server) -> None:
    done = _ops("backfill", "--from", "2013-03-01", "--to", "2013-03-03", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "3 run(s) would be created" in done.stdout
    for day in ("2013-03-01", "2013-03-02", "2013-03-03"):
        assert f"logical date {day}T03:00:00" in done.stdout


def test_backfill_refuses_undeclared_conf_keys_before_planning(api_server) -> None:
    done = _ops("backfill", "--from", "2013-03-01", "--to", "2013-03-03", "--conf", '{"epochz": 2}', "--dry-run")
    assert done.returncode == 2, done.stderr
    assert "unknown trigger parameter(s) for ops_probe: 'epochz'" in done.stderr, done.stderr


def test_backfill_creates_the_runs_and_refuses_a_second_one(api_server) -> None:
    done = _ops("--json", "backfill", "--from", "2013-03-01", "--to", "2013-03-03", "--conf", '{"epochs": 2}')
    assert done.returncode == 0, done.stderr
    backfill = json.loads(done.stdout)
    assert backfill["max_active_runs"] == 1 and backfill["dag_run_conf"] == {"epochs": 2}
    again = _ops("backfill", "--from", "2013-03-05", "--to", "2013-03-06")
    assert again.returncode == 2
    assert "HTTP 409" in again.stderr and f"active backfill(s) of {DAG_ID}: {backfill['id']}" in again.stderr
    status = _ops("status", "--limit", "10")
    for day in ("2013-03-01", "2013-03-02", "2013-03-03"):
        assert f"logical {day}T03:00:00Z" in status.stdout
    assert "tasks: record=none" in status.stdout


# --------------------------------------------------------------------------- with the scheduler


def test_backfill_runs_one_day_at_a_time_in_order(scheduler) -> None:
    from pipelines.ops.airflow_api import AirflowAPI

    api = AirflowAPI.login(f"http://127.0.0.1:{API_PORT}", USER, PASSWORD)
    (backfill,) = api.backfills(DAG_ID)
    done = _ops("backfill", "--watch", str(backfill["id"]), timeout=420)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "complete: 3 of 3 run(s) succeeded" in done.stdout
    runs = api.backfill_runs(DAG_ID, api.backfill(backfill["id"]))
    assert [r["logical_date"][:10] for r in runs] == ["2013-03-01", "2013-03-02", "2013-03-03"]
    assert all(r["state"] == "success" and r["conf"] == {"epochs": 2} for r in runs)
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert later["start_date"] >= earlier["end_date"], "backfill runs overlapped"
    for run in runs:
        (ti,) = api.task_instances(DAG_ID, run["dag_run_id"])
        path = (
            f"/dags/{DAG_ID}/dagRuns/{quote(run['dag_run_id'], safe='')}/taskInstances/record/xcomEntries/return_value"
        )
        value = api.request("GET", path)["value"]
        value = json.loads(value) if isinstance(value, str) else value
        assert value == {"day": run["logical_date"][:10], "epochs": 2}
        assert ti["state"] == "success"


def test_trigger_and_wait(scheduler) -> None:
    started = time.monotonic()
    done = _ops(
        "trigger", "--conf", '{"epochs": 5}', "--logical-date", "2013-04-01T03:00:00+00:00", "--wait", timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "success" in done.stdout and "record=success" in done.stdout
    assert time.monotonic() - started < 300
    # The run waited for is in the status, with its conf.
    status = _ops("status", "--limit", "1")
    assert "logical 2013-04-01T03:00:00Z" in status.stdout and '"epochs": 5' in status.stdout
    assert dt.date(2013, 4, 1).isoformat() in status.stdout
