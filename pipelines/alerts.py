"""Alerts: a notification for a failed run, a triggered retraining and a refused promotion.

:func:`notify` sends an :class:`Alert` through the channels of ``monitor.alerts``
in ``params.yaml``:

* ``log``: one ``WARNING`` line in the task's log;
* ``file``: one JSON line appended to ``$MLOPS_HOME/alerts/alerts.jsonl``;
* a webhook, when a URL is configured (``MLOPS_ALERT_WEBHOOK_URL``, else
  ``monitor.alerts.webhook_url``): the alert POSTed as JSON, with a ``text``
  field that chat webhooks (Slack, Teams, Mattermost) display as is;
* ``monitor.alerts.callback``: any ``package.module:function``, called with
  the alert as a dict: the place for a pager or a ticket system.

A channel that fails is logged and skipped: an alert never fails the run it
reports on. Only the standard library is imported here, so a DAG file can
import this module at parse time.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import importlib
import json
import logging
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pipelines.config import MonitorConfig

log = logging.getLogger(__name__)

WEBHOOK_ENV = "MLOPS_ALERT_WEBHOOK_URL"
ALERTS_FILE = Path("alerts") / "alerts.jsonl"

Event = Literal[
    "run_failed",
    "retraining_triggered",
    "promotion_refused",
    "serving_model_rejected",
    "model_stale",  # the champion's data is older than monitor.max_model_age_days
    "compute_regression",  # a step slower or larger than its median over earlier runs
]


@dataclass(frozen=True)
class Alert:
    """One notification: what happened, where, and the details a reader needs to act."""

    event: Event
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    dag_id: str | None = None
    run_id: str | None = None
    # When the alert was raised (wall clock): metadata for the reader, never used in logic.
    raised_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def alerts_file(home: Path) -> Path:
    """The JSON-lines file the ``file`` channel appends to."""
    return home / ALERTS_FILE


def read_alerts(home: Path) -> list[dict[str, Any]]:
    """Every alert the ``file`` channel wrote under ``home``, oldest first."""
    path = alerts_file(home)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _to_log(alert: Alert) -> None:
    where = f" ({alert.dag_id} {alert.run_id})" if alert.dag_id else ""
    log.warning("ALERT %s%s: %s", alert.event, where, alert.summary)


def _to_file(alert: Alert, home: Path) -> None:
    path = alerts_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(alert.as_dict(), default=str, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        # Tasks of several runs can alert at once: one whole line each.
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _to_webhook(alert: Alert, url: str, timeout: float) -> None:
    payload = {"text": f"[{alert.event}] {alert.summary}", **alert.as_dict()}
    request = urllib.request.Request(
        url,
        data=json.dumps(payload, default=str).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the URL is configuration)
        if not 200 <= response.status < 300:
            raise OSError(f"HTTP {response.status}")


def _to_callback(alert: Alert, target: str) -> None:
    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(alert.as_dict())


def webhook_url(cfg: MonitorConfig.Alerts, env: Mapping[str, str] | None = None) -> str | None:
    """The webhook to post to: ``MLOPS_ALERT_WEBHOOK_URL``, else ``monitor.alerts.webhook_url``."""
    env = os.environ if env is None else env
    return env.get(WEBHOOK_ENV) or cfg.webhook_url


def notify(alert: Alert, cfg: MonitorConfig.Alerts, home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Send ``alert`` through every configured channel.

    Args:
        cfg: ``monitor.alerts`` of the params.
        home: the local state folder (``MLOPS_HOME``), where the ``file`` channel writes.
        env: the environment to read the webhook URL from (``os.environ`` by default).

    Returns:
        Channel -> ``"sent"`` or ``"failed: <why>"``; a failure is also logged, never raised.
    """
    sends: dict[str, Any] = {}
    if "log" in cfg.channels:
        sends["log"] = lambda: _to_log(alert)
    if "file" in cfg.channels:
        sends["file"] = lambda: _to_file(alert, home)
    url = webhook_url(cfg, env)
    if url:
        sends["webhook"] = lambda: _to_webhook(alert, url, cfg.timeout_seconds)
    if cfg.callback:
        sends["callback"] = lambda: _to_callback(alert, cfg.callback)
    outcome = {}
    for channel, send in sends.items():
        try:
            send()
            outcome[channel] = "sent"
        except Exception as err:  # a broken channel must not fail the run it reports on
            outcome[channel] = f"failed: {type(err).__name__}: {err}"
            log.error("alert %s could not be sent to %s: %s", alert.event, channel, outcome[channel])
    return outcome


def send(
    event: Event,
    summary: str,
    details: dict[str, Any] | None = None,
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, str]:
    """Build an alert and send it with the configuration of this environment (params and ``MLOPS_HOME``).

    If the params cannot be read (they may be what broke), the defaults of
    ``monitor.alerts`` are used, so the alert still goes out.
    """
    from pipelines.config import ConfigError, MonitorConfig, load_params
    from pipelines.settings import resolve

    settings = resolve()
    try:
        cfg = load_params(settings.params_path).monitor.alerts
    except ConfigError as err:
        log.error("params unreadable (%s): alerting with the default channels", err)
        cfg = MonitorConfig.Alerts()
    alert = Alert(event=event, summary=summary, details=details or {}, dag_id=dag_id, run_id=run_id)
    return notify(alert, cfg, settings.home)


# --------------------------------------------------------------------------- the three events


FAILURES_DIR = "failures"  # in the run's folder: one JSON file per failed task
NO_ERROR_RECORDED = "no error recorded (the task process may have been killed): see the task's log"


def _identity(context: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    dag = context.get("dag")
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None)
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    return dag_id, run_id, getattr(ti, "task_id", None)


def _failures_dir(dag_id: str, run_id: str) -> Path:
    from pipelines.settings import resolve

    return resolve().run_dir(dag_id, run_id) / FAILURES_DIR


def _describe(error: BaseException) -> str:
    # fail_fast's AirflowFailException already reads "ClassName: message".
    text = str(error)
    return text if type(error).__name__ == "AirflowFailException" and text else f"{type(error).__name__}: {text}"


def record_task_failure(context: Mapping[str, Any]) -> None:
    """A task-level ``on_failure_callback``: keep the task's error for the run's failure alert. Never raises.

    Airflow 3 gives a DAG's failure callback the run and its last failed task instance,
    not the exception: the task's own callback (which has it) writes it to
    ``<run folder>/failures/<task id>.json``, where :func:`on_failure_callback` reads it.
    """
    try:
        dag_id, run_id, task_id = _identity(context)
        error = context.get("exception")
        if not (dag_id and run_id and task_id):
            return
        folder = _failures_dir(dag_id, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        ti = context.get("task_instance") or context.get("ti")
        record = {
            "task_id": task_id,
            "try_number": getattr(ti, "try_number", None),
            "error": _describe(error) if error is not None else NO_ERROR_RECORDED,
        }
        (folder / f"{task_id}.json").write_text(json.dumps(record, default=str), encoding="utf-8")
    except Exception:  # a callback that raises only hides the original failure
        log.exception("the task's failure could not be recorded")


def failed_tasks(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The failures :func:`record_task_failure` kept for a run: task id, try number and error."""
    folder = _failures_dir(dag_id, run_id)
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def on_failure_callback(context: Mapping[str, Any]) -> None:
    """An Airflow ``on_failure_callback`` (DAG or task level): alert ``run_failed``, naming the task and its error.

    At task level the context holds the exception. At DAG level it holds the last failed
    task instance only: the errors come from what :func:`record_task_failure` kept for
    the run, and every failed task is listed. Never raises.
    """
    try:
        dag_id, run_id, task_id = _identity(context)
        error = context.get("exception")
        failures = []
        if error is not None:
            failures = [{"task_id": task_id, "error": _describe(error)}]
        elif dag_id and run_id:
            failures = [{"task_id": f["task_id"], "error": f["error"]} for f in failed_tasks(dag_id, run_id)]
        if task_id is not None and task_id not in {f["task_id"] for f in failures}:
            failures.append({"task_id": task_id, "error": NO_ERROR_RECORDED})
        first = next((f for f in failures if f["task_id"] == task_id), failures[0] if failures else None)
        what = f"task {first['task_id']}: {first['error']}" if first else "a task (none recorded)"
        summary = f"{dag_id} run {run_id} failed at {what}"
        if len(failures) > 1:
            summary += f" (and {len(failures) - 1} more: {', '.join(f['task_id'] for f in failures if f is not first)})"
        details = {
            "task_id": first["task_id"] if first else None,
            "error": first["error"] if first else NO_ERROR_RECORDED,
            "failed_tasks": failures,
            "reason": context.get("reason"),
        }
        send("run_failed", summary, details, dag_id=dag_id, run_id=run_id)
    except Exception:  # a callback that raises only hides the original failure
        log.exception("failure alert could not be sent")


def retraining_alert(decision: Mapping[str, Any], *, dag_id: str, run_id: str, training_run_id: str) -> Alert:
    """The ``retraining_triggered`` alert for a decision of :func:`pipelines.steps.monitor.retrain_decision`."""
    return Alert(
        event="retraining_triggered",
        summary=f"retraining triggered ({training_run_id}): {decision['reason']}",
        details={
            "day": decision["day"],
            "triggers": list(decision["triggers"]),
            "report": decision.get("report"),
            "report_path": decision.get("report_path"),
            "training_run_id": training_run_id,
        },
        dag_id=dag_id,
        run_id=run_id,
    )


def promotion_refused_alert(registered: Mapping[str, Any], *, dag_id: str, run_id: str) -> Alert | None:
    """The ``promotion_refused`` alert for a result of :func:`pipelines.steps.register.register`, or None if promoted."""
    if "champion" in registered.get("aliases", []):
        return None
    name, version = registered.get("model_name"), registered.get("model_version")
    return Alert(
        event="promotion_refused",
        summary=f"{name} version {version} was not promoted: {registered.get('decision', 'no reason recorded')}",
        details={
            "model_name": name,
            "model_version": version,
            "decision": registered.get("decision"),
            "champion": registered.get("previous_champion"),
            "mlflow_run_id": registered.get("mlflow_run_id"),
        },
        dag_id=dag_id,
        run_id=run_id,
    )
