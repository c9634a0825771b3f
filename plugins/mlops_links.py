"""Airflow UI links from each pipeline task to what it produced, and the reports served behind them.

Extra links (buttons on a task instance's page) read the task's XCom return value:

* **MLflow run**: ``train``, ``evaluate``, ``register`` (their ``mlflow_run_id``) and the
  monitoring checks and ``decide`` (the run in their report's ``runs:/`` URI);
* **Model version**: ``register`` (``model_name`` and ``model_version``);
* **Data docs**: ``validate`` (the Great Expectations data docs, ``data_docs``);
* **Evidently report**: ``check_data_drift``, ``check_prediction_drift``,
  ``check_performance`` (``report_html``) and ``decide`` (``report_path``).

A task that has not run, or returned nothing a link needs, shows no button.

The static reports live in the run folders (``$MLOPS_HOME/runs/<dag>/<run>/...``); the
``/mlops/reports/<path>`` app serves files below that folder to a logged-in user (the UI's session
cookie or a bearer token) and nothing outside it. MLflow links go to the MLflow UI at
``MLOPS_MLFLOW_UI_URL`` (default ``http://localhost:5000``, what ``make mlflow-ui`` serves).

Loading this plugin imports neither FastAPI nor MLflow nor anything of the pipeline: Airflow loads
plugins in every component and task process. The link functions below are plain functions of the
XCom value, tested in ``tests/test_plugins.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

MLFLOW_UI_ENV = "MLOPS_MLFLOW_UI_URL"
DEFAULT_MLFLOW_UI = "http://localhost:5000"
REPORTS_PREFIX = "/mlops"  # where the reports app is mounted on the API server
REPORTS_ROUTE = "/reports"

MLFLOW_RUN = "MLflow run"
MODEL_VERSION = "Model version"
DATA_DOCS = "Data docs"
EVIDENTLY_REPORT = "Evidently report"

# Which tasks carry which link, and the key of their return value that holds what it needs.
_RUN_ID_TASKS = {"train": "mlflow_run_id", "evaluate": "mlflow_run_id", "register": "mlflow_run_id"}
_REPORT_URI_TASKS = {"check_data_drift", "check_prediction_drift", "check_performance", "decide"}
_MODEL_VERSION_TASKS = {"register"}
_DATA_DOCS_TASKS = {"validate": "data_docs"}
_EVIDENTLY_TASKS = {
    "check_data_drift": "report_html",
    "check_prediction_drift": "report_html",
    "check_performance": "report_html",
    "decide": "report_path",
}
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})/")


# --------------------------------------------------------------------------- link logic (pure)


def mlflow_ui_url(env: dict[str, str] | None = None) -> str:
    """The MLflow UI's base URL, from ``MLOPS_MLFLOW_UI_URL``."""
    env = os.environ if env is None else env
    return (env.get(MLFLOW_UI_ENV) or DEFAULT_MLFLOW_UI).rstrip("/")


def runs_root(env: dict[str, str] | None = None) -> Path:
    """The folder whose files the reports app serves: ``$MLOPS_HOME/runs``."""
    from pipelines.settings import resolve  # light: paths and os only

    return resolve(env).home / "runs"


def as_dict(value: Any) -> dict[str, Any] | None:
    """An XCom return value as a dict (it may come back JSON-encoded), or None."""
    for _ in range(2):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
    return value if isinstance(value, dict) else None


def mlflow_run_id(task_id: str, value: dict[str, Any]) -> str | None:
    """The MLflow run a task logged to, from its return value."""
    if task_id in _RUN_ID_TASKS:
        run_id = value.get(_RUN_ID_TASKS[task_id])
        return run_id if isinstance(run_id, str) and run_id else None
    if task_id in _REPORT_URI_TASKS:
        match = _RUNS_URI.match(str(value.get("report_uri") or value.get("report") or ""))
        return match.group(1) if match else None
    return None


def mlflow_run_url(run_id: str, mlflow_ui: str) -> str:
    # The MLflow UI's run route that needs no experiment id: it finds the run's experiment itself.
    return f"{mlflow_ui}/#/runs/{quote(run_id, safe='')}"


def model_version_url(name: str, version: str | int, mlflow_ui: str) -> str:
    return f"{mlflow_ui}/#/models/{quote(str(name), safe='')}/versions/{quote(str(version), safe='')}"


def report_url(path: str | os.PathLike, root: Path, prefix: str = REPORTS_PREFIX) -> str | None:
    """The URL the reports app serves ``path`` at, or None when ``path`` is not below ``root``."""
    try:
        rel = Path(path).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return f"{prefix}{REPORTS_ROUTE}/{quote(rel.as_posix())}"


def link_url(
    name: str,
    task_id: str,
    value: Any,
    *,
    mlflow_ui: str,
    root: Path,
    prefix: str = REPORTS_PREFIX,
) -> str | None:
    """The URL of link ``name`` on task ``task_id`` whose XCom return value is ``value``, or None."""
    result = as_dict(value)
    if result is None:
        return None
    if name == MLFLOW_RUN:
        run_id = mlflow_run_id(task_id, result)
        return mlflow_run_url(run_id, mlflow_ui) if run_id else None
    if name == MODEL_VERSION and task_id in _MODEL_VERSION_TASKS:
        if result.get("model_name") and result.get("model_version") is not None:
            return model_version_url(result["model_name"], result["model_version"], mlflow_ui)
        return None
    if name == DATA_DOCS and task_id in _DATA_DOCS_TASKS:
        path = result.get(_DATA_DOCS_TASKS[task_id])
        return report_url(path, root, prefix) if path else None
    if name == EVIDENTLY_REPORT and task_id in _EVIDENTLY_TASKS:
        path = result.get(_EVIDENTLY_TASKS[task_id])
        return report_url(path, root, prefix) if path else None
    return None


def tasks_with_link(name: str) -> set[str]:
    """Task ids that can carry link ``name`` (the others never read XCom for it)."""
    return {
        MLFLOW_RUN: set(_RUN_ID_TASKS) | _REPORT_URI_TASKS,
        MODEL_VERSION: _MODEL_VERSION_TASKS,
        DATA_DOCS: set(_DATA_DOCS_TASKS),
        EVIDENTLY_REPORT: set(_EVIDENTLY_TASKS),
    }[name]


# --------------------------------------------------------------------------- the links Airflow calls


def _return_value(ti_key) -> Any:
    """The task instance's XCom return value, read from the metadata database (API server side)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key="return_value",
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    return None if row is None else row.value


def _api_prefix() -> str:
    """Path of the API server's base URL (``[api] base_url``), before the reports app's prefix."""
    from urllib.parse import urlparse

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    return urlparse(base).path.rstrip("/")


class _PipelineLink(BaseOperatorLink):
    """A global link that appears only on the tasks that produce its target."""

    def get_link(self, operator, *, ti_key) -> str:
        if ti_key.task_id not in tasks_with_link(self.name):
            return ""
        url = link_url(
            self.name,
            ti_key.task_id,
            _return_value(ti_key),
            mlflow_ui=mlflow_ui_url(),
            root=runs_root(),
            prefix=_api_prefix() + REPORTS_PREFIX,
        )
        return url or ""


class MlflowRunLink(_PipelineLink):
    name = MLFLOW_RUN


class ModelVersionLink(_PipelineLink):
    name = MODEL_VERSION


class DataDocsLink(_PipelineLink):
    name = DATA_DOCS


class EvidentlyReportLink(_PipelineLink):
    name = EVIDENTLY_REPORT


# --------------------------------------------------------------------------- the reports app


def resolve_report(root: Path, path: str) -> Path | None:
    """The file ``path`` names below ``root``, or None if it is outside (``..``, links) or absent."""
    if "\x00" in path:
        return None
    root = root.resolve()
    try:
        target = (root / path.lstrip("/")).resolve()
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def build_reports_app():
    """The FastAPI app serving the run folders' static reports to logged-in users."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse

    async def require_login(request) -> None:
        # The same credentials as the REST API: a bearer token, else the UI's session cookie.
        from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
        from airflow.api_fastapi.core_api.security import resolve_user_from_token

        header = request.headers.get("authorization", "")
        bearer = header.lower().startswith("bearer ")
        await resolve_user_from_token(header[7:].strip() if bearer else request.cookies.get(COOKIE_NAME_JWT_TOKEN))

    # FastAPI reads parameter types from annotations; with postponed annotations (this module's
    # __future__ import) a name imported here would not resolve, so give it the class itself.
    require_login.__annotations__ = {"request": Request, "return": None}

    app = FastAPI(title="MLOps pipeline reports", dependencies=[Depends(require_login)])

    @app.get(REPORTS_ROUTE + "/{path:path}", response_class=FileResponse)
    async def report(path: str):
        target = resolve_report(runs_root(), path)
        if target is None:
            raise HTTPException(status_code=404, detail="no such report")
        return FileResponse(target)

    return app


class LazyASGIApp:
    """An ASGI app built on its first request, so loading the plugin imports no web framework."""

    def __init__(self, factory) -> None:
        self._factory = factory
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = self._factory()
        await self._app(scope, receive, send)


class MlopsLinksPlugin(AirflowPlugin):
    name = "mlops_links"
    global_operator_extra_links = [MlflowRunLink(), ModelVersionLink(), DataDocsLink(), EvidentlyReportLink()]
    fastapi_apps = [{"app": LazyASGIApp(build_reports_app), "url_prefix": REPORTS_PREFIX, "name": "MLOps reports"}]
    external_views = [
        {"name": "MLflow", "href": mlflow_ui_url(), "destination": "nav"},
    ]
