"""The Airflow plugin (plugins/mlops_links.py): extra links from tasks to what they produced, and the reports app.

The link logic is tested as plain functions of real task return values' shapes; the reports app
and the plugin's registration through a real Airflow API server on a fresh database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cluster_env import PASSWORD, USER, fresh_airflow_env

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))  # as Airflow does for its plugins folder

import mlops_links as links  # noqa: E402

API_PORT = 18100
MLFLOW = "http://mlflow.example:5000"
RUN_ID = "604524aeac2349ce895a92f4870de61d"


def _url(name: str, task_id: str, value, root: Path) -> str | None:
    return links.link_url(name, task_id, value, mlflow_ui=MLFLOW, root=root)


# --------------------------------------------------------------------------- link logic


def test_mlflow_run_link_from_train_evaluate_and_register(tmp_path) -> None:
    for task_id in ("train", "evaluate", "register"):
        assert _url(links.MLFLOW_RUN, task_id, {"mlflow_run_id": RUN_ID, "model_path": "/x"}, tmp_path) == (
            f"{MLFLOW}/#/runs/{RUN_ID}"
        )
    # Tasks that log no run, or have not returned anything yet, get no link.
    assert _url(links.MLFLOW_RUN, "collect", {"mlflow_run_id": RUN_ID}, tmp_path) is None
    assert _url(links.MLFLOW_RUN, "train", None, tmp_path) is None
    assert _url(links.MLFLOW_RUN, "train", {"model_path": "/x"}, tmp_path) is None


def test_mlflow_run_link_of_monitoring_checks_from_their_report_uri(tmp_path) -> None:
    check = {"report_html": "/r/data_drift.html", "report_uri": f"runs:/{RUN_ID}/reports/data_drift.html"}
    assert _url(links.MLFLOW_RUN, "check_data_drift", check, tmp_path) == f"{MLFLOW}/#/runs/{RUN_ID}"
    decision = {"report": f"runs:/{RUN_ID}/reports/data_drift.html", "report_path": "/r/data_drift.html"}
    assert _url(links.MLFLOW_RUN, "decide", decision, tmp_path) == f"{MLFLOW}/#/runs/{RUN_ID}"
    assert _url(links.MLFLOW_RUN, "check_performance", {"report_uri": None}, tmp_path) is None


def test_model_version_link_from_register(tmp_path) -> None:
    registered = {"model_name": "flight_delay", "model_version": "7", "mlflow_run_id": RUN_ID, "promoted": True}
    assert _url(links.MODEL_VERSION, "register", registered, tmp_path) == f"{MLFLOW}/#/models/flight_delay/versions/7"
    assert _url(links.MODEL_VERSION, "train", registered, tmp_path) is None
    assert _url(links.MODEL_VERSION, "register", {"model_name": "flight_delay"}, tmp_path) is None


def test_xcom_values_stored_as_json_text_are_read(tmp_path) -> None:
    registered = {"model_name": "flight_delay", "model_version": 3}
    assert _url(links.MODEL_VERSION, "register", json.dumps(registered), tmp_path).endswith("/versions/3")
    assert _url(links.MODEL_VERSION, "register", json.dumps(json.dumps(registered)), tmp_path).endswith("/versions/3")
    assert _url(links.MODEL_VERSION, "register", "not json", tmp_path) is None
    assert _url(links.MODEL_VERSION, "register", [1, 2], tmp_path) is None


def test_report_links_point_into_the_reports_app(tmp_path) -> None:
    runs = tmp_path / "runs"
    docs = runs / "flights_training" / "manual__2013-03-10" / "validation" / "data_docs" / "index.html"
    drift = runs / "flights_monitoring" / "m 1" / "monitor" / "data_drift.html"
    assert _url(links.DATA_DOCS, "validate", {"data_docs": str(docs), "success": True}, runs) == (
        "/mlops/reports/flights_training/manual__2013-03-10/validation/data_docs/index.html"
    )
    for task_id in ("check_data_drift", "check_prediction_drift", "check_performance"):
        assert _url(links.EVIDENTLY_REPORT, task_id, {"report_html": str(drift)}, runs) == (
            "/mlops/reports/flights_monitoring/m%201/monitor/data_drift.html"
        )
    assert _url(links.EVIDENTLY_REPORT, "decide", {"report_path": str(drift)}, runs).endswith("data_drift.html")
    # Under the API server's base path when it has one.
    assert links.link_url(
        links.DATA_DOCS, "validate", {"data_docs": str(docs)}, mlflow_ui=MLFLOW, root=runs, prefix="/airflow/mlops"
    ).startswith("/airflow/mlops/reports/flights_training/")
    # Reports outside the run folders, or insufficient data (no report), give no link.
    assert _url(links.DATA_DOCS, "validate", {"data_docs": "/etc/passwd"}, runs) is None
    assert _url(links.EVIDENTLY_REPORT, "check_data_drift", {"report_html": None}, runs) is None
    assert _url(links.EVIDENTLY_REPORT, "validate", {"report_html": str(drift)}, runs) is None


def test_every_link_names_its_tasks() -> None:
    assert links.tasks_with_link(links.MLFLOW_RUN) >= {"train", "evaluate", "register", "check_data_drift"}
    assert links.tasks_with_link(links.MODEL_VERSION) == {"register"}
    assert links.tasks_with_link(links.DATA_DOCS) == {"validate"}
    assert "check_performance" in links.tasks_with_link(links.EVIDENTLY_REPORT)


def test_mlflow_ui_url_from_the_environment() -> None:
    assert links.mlflow_ui_url({}) == "http://localhost:5000"
    assert links.mlflow_ui_url({"MLOPS_MLFLOW_UI_URL": "https://mlflow.team.example/"}) == "https://mlflow.team.example"


def test_resolve_report_refuses_paths_outside_the_run_folders(tmp_path) -> None:
    runs = tmp_path / "runs"
    report = runs / "dag" / "run" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>ok</html>")
    (tmp_path / "secret.txt").write_text("secret")
    (runs / "dag" / "escape").symlink_to(tmp_path)
    assert links.resolve_report(runs, "dag/run/report.html") == report.resolve()
    assert links.resolve_report(runs, "/dag/run/report.html") == report.resolve()
    for bad in (
        "../secret.txt",
        "dag/../../secret.txt",
        "dag/escape/secret.txt",
        "dag/run",
        "dag/run/none.html",
        "a\x00b",
    ):
        assert links.resolve_report(runs, bad) is None, bad


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """Airflow loads plugins in every process: no web framework, ML library or pipeline code at import."""
    code = (
        "import sys; sys.path.insert(0, 'plugins'); import mlops_links; "
        "heavy = {'fastapi', 'mlflow', 'tensorflow', 'great_expectations', 'evidently', 'pandas', 'pipelines'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


# --------------------------------------------------------------------------- through a real API server


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    from pipelines.ops.cluster import AirflowCluster

    root = tmp_path_factory.mktemp("plugins")
    env = fresh_airflow_env(root, api_port=API_PORT)
    runs = Path(env["MLOPS_HOME"]) / "runs"
    report = runs / "flights_training" / "manual__1" / "validation" / "data_docs" / "index.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html><body>validation results</body></html>")
    (Path(env["MLOPS_HOME"]) / "secret.txt").write_text("not to be served")
    cluster = AirflowCluster(env, log_dir=root / "services", components=("api-server",), api_port=API_PORT)
    cluster.migrate()
    with cluster:
        yield cluster


def _get(url: str, token: str | None = None, cookie: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if cookie:
        req.add_header("Cookie", f"_token={cookie}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_plugin_is_registered(api_server) -> None:
    from pipelines.ops.airflow_api import AirflowAPI

    api = AirflowAPI.login(api_server.api_url, USER, PASSWORD)
    (plugin,) = [p for p in api.request("GET", "/plugins")["plugins"] if p["name"] == "mlops_links"]
    assert len(plugin["global_operator_extra_links"]) == 4
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/mlops"
    assert plugin["external_views"][0]["href"] == os.environ.get("MLOPS_MLFLOW_UI_URL", "http://localhost:5000")


def test_reports_are_served_to_logged_in_users_only(api_server) -> None:
    from pipelines.ops.airflow_api import AirflowAPI

    token = AirflowAPI.login(api_server.api_url, USER, PASSWORD).token
    url = f"{api_server.api_url}/mlops/reports/flights_training/manual__1/validation/data_docs/index.html"
    assert _get(url, token) == (200, "<html><body>validation results</body></html>")
    assert _get(url, cookie=token)[0] == 200  # the UI's session cookie
    assert _get(url)[0] == 401
    assert _get(url, "not-a-token")[0] in (401, 403)
    for escape in ("..%2Fsecret.txt", "%2E%2E/secret.txt", "flights_training/..%2F..%2Fsecret.txt", "missing.html"):
        status, body = _get(f"{api_server.api_url}/mlops/reports/{escape}", token)
        assert status == 404 and "not to be served" not in body, escape
