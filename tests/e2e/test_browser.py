"""The Airflow UI in a real browser: trigger the training DAG from its form, follow a task's link to MLflow.

Airflow's API server, scheduler and DAG processor (LocalExecutor, a fresh SQLite database and
local state) and the MLflow UI run as real processes; headless Chromium, driven by Playwright,
signs in, opens the training DAG, fills the trigger form with non-default parameters and submits
it. The test checks that the run exists and carries those parameters (in the UI and through the
REST API), waits until the scheduler has run ``train``, then opens that task's **MLflow run**
extra link and checks it lands on the MLflow run the task logged to. Screenshots of each screen
go to ``test-artifacts/browser/`` (git-ignored).

Needs Chromium (``/usr/bin/chromium``, Debian's ``chromium`` package: ``make browser-deps``);
skipped with that message where it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from cluster_env import PASSWORD, USER, fresh_airflow_env

from pipelines.ops.cluster import AirflowCluster, Services, wait_http

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MLOPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
API_PORT, MLFLOW_PORT = 18104, 18106  # the task log server takes 18105
DAG_ID = "flights_training"
# Cheap, and not the defaults: one epoch on 35 days (7 training days before the 14 validation and
# 14 holdout days, the least params.yaml allows).
DATA_DATE, EPOCHS, WINDOW = "2013-03-10", 1, 35

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"Chromium is not installed ({CHROMIUM} missing): `make browser-deps` installs Debian's chromium",
    ),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Airflow (API server, scheduler, DAG processor) and the MLflow UI on one fresh local state."""
    root = tmp_path_factory.mktemp("browser")
    mlflow_ui = f"http://127.0.0.1:{MLFLOW_PORT}"
    env = fresh_airflow_env(root, api_port=API_PORT, extra={"MLOPS_MLFLOW_UI_URL": mlflow_ui})
    tracking_uri = f"sqlite:///{root / 'mlops' / 'mlflow' / 'mlflow.db'}"
    (root / "mlops" / "mlflow").mkdir(parents=True)
    logs = root / "services"
    cluster = AirflowCluster(env, log_dir=logs, api_port=API_PORT)
    with Services(logs) as mlflow_service:
        # The MLflow UI starts while Airflow's database is migrated.
        mlflow_service.start(
            "mlflow-ui",
            [
                sys.executable, "-m", "mlflow", "ui",
                "--backend-store-uri", tracking_uri, "--registry-store-uri", tracking_uri,
                "--host", "127.0.0.1", "--port", str(MLFLOW_PORT),
            ],
            env,
        )  # fmt: skip
        cluster.migrate()
        cluster.start()
        try:
            cluster.wait_for_dag(DAG_ID)
            wait_http(mlflow_ui + "/health", 120, mlflow_service)
            yield {"cluster": cluster, "env": env, "mlflow_ui": mlflow_ui, "tracking_uri": tracking_uri, "logs": logs}
        finally:
            # The run is still going (evaluate, register...): nothing to wait for, stop everything at once.
            cluster.services.stop(timeout=3)
            cluster.stop()
            mlflow_service.stop(timeout=3)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _wait_for_task(cluster: AirflowCluster, run_id: str, task_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster.services.check_alive()
        states = cluster.task_states(DAG_ID, run_id)
        if states.get(task_id) == "success":
            return
        failed = {t: s for t, s in states.items() if s in ("failed", "upstream_failed")}
        if failed or cluster.run_state(DAG_ID, run_id) == "failed":
            logs = Path(cluster.env["AIRFLOW_HOME"]) / "logs"
            raise AssertionError(f"run {run_id} failed: {states}; task logs under {logs}")
        time.sleep(2)
    raise AssertionError(f"{task_id} of {run_id} not done after {timeout:.0f}s: {cluster.task_states(DAG_ID, run_id)}")


def test_trigger_from_the_form_then_follow_the_mlflow_link(stack, browser) -> None:
    from pipelines.ops.airflow_api import AirflowAPI

    cluster, base = stack["cluster"], stack["cluster"].api_url
    api = AirflowAPI.login(base, USER, PASSWORD)
    api.unpause(DAG_ID)  # the schedule itself creates no runs here (use_job_schedule off)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(90_000)  # the UI answers slowly while the scheduler runs tasks on 2 busy cores
    # Sign in.
    page.goto(base + "/")
    page.wait_for_url(re.compile(r".*/auth/login.*"))
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    _shot(page, "01-login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)

    # The training DAG and its trigger form.
    page.goto(f"{base}/dags/{DAG_ID}")
    page.get_by_text("batch_predict").first.wait_for()
    _shot(page, "02-dag")
    page.get_by_role("button", name="Trigger").click()
    form = page.get_by_role("dialog")
    form.get_by_text("Run Parameters").wait_for()
    form.locator("input[name=element_data_date]").fill(DATA_DATE)
    form.locator("input[name=element_epochs]").fill(str(EPOCHS))
    form.locator("input[name=element_training_window_days]").fill(str(WINDOW))
    form.get_by_text("Training window (days)").scroll_into_view_if_needed()
    _shot(page, "03-trigger-form")
    form.get_by_role("button", name="Trigger").click()

    # The run exists and carries the parameters: through the API...
    deadline = time.monotonic() + 60
    runs = []
    while not runs and time.monotonic() < deadline:
        runs = [r for r in api.dag_runs(DAG_ID, limit=5) if r["run_type"] == "manual"]
        time.sleep(1)
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["conf"]["data_date"] == DATA_DATE
    assert run["conf"]["epochs"] == EPOCHS and run["conf"]["training_window_days"] == WINDOW
    assert run["triggered_by"] == "ui"
    run_id = run["dag_run_id"]

    # ... and in the UI, on the run's details.
    page.goto(f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/details")
    conf_text = page.get_by_text(f'"training_window_days": {WINDOW}')
    conf_text.wait_for()
    assert page.get_by_text(f'"data_date": "{DATA_DATE}"').count() >= 1
    _shot(page, "04-run-details")

    # The scheduler runs it: wait until `train` has logged its MLflow run.
    _wait_for_task(cluster, run_id, "train", timeout=300)
    import mlflow

    client = mlflow.MlflowClient(stack["tracking_uri"])
    (logged,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`airflow.run_id` = '{run_id}'",
    )
    assert logged.data.params["train.epochs"] == str(EPOCHS)
    assert logged.data.params["preprocess.training_window_days"] == str(WINDOW)

    # The task's extra link points at that MLflow run ...
    page.goto(f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/train/details")
    link = page.get_by_role("link", name="MLflow run")
    link.wait_for()
    expected = f"{stack['mlflow_ui']}/#/runs/{logged.info.run_id}"
    assert link.get_attribute("href") == expected
    _shot(page, "05-task-extra-links")

    # ... and following it opens that run in the MLflow UI.
    with page.context.expect_page() as opened:
        link.click()
    mlflow_page = opened.value
    mlflow_page.set_viewport_size({"width": 1400, "height": 1000})
    mlflow_page.wait_for_url(re.compile(rf".*#/experiments/\d+/runs/{logged.info.run_id}.*"), timeout=60_000)
    mlflow_page.get_by_text(logged.info.run_name).first.wait_for(timeout=60_000)
    assert mlflow_page.get_by_text(logged.info.run_id).count() >= 1
    _shot(mlflow_page, "06-mlflow-run")
    mlflow_page.close()

    # The validation report behind `validate`'s link is served by the plugin to the signed-in browser.
    page.goto(f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/validate/details")
    docs = page.get_by_role("link", name="Data docs")
    docs.wait_for()
    assert docs.get_attribute("href").startswith("/mlops/reports/flights_training/")
    docs.click()  # same origin: opens in this tab
    page.wait_for_url(re.compile(r".*/mlops/reports/flights_training/.*/validation/data_docs/index.html"))
    assert page.title() == "Data Docs created by Great Expectations"
    _shot(page, "07-data-docs")

    (ARTIFACTS / "run.json").write_text(
        json.dumps({"dag_run_id": run_id, "conf": run["conf"], "mlflow_run_id": logged.info.run_id}, indent=1)
    )
