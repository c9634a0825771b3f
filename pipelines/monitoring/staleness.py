"""Staleness: how old the champion's data is on the monitored day, and an alert past a limit.

A model's age is the number of days between the monitored day and the last day of the data
it was built from: ``lineage.window_end`` of its registered version (the end of its
preprocessing window, validation and holdout included, in the source's calendar), which
:mod:`pipelines.steps.register` records. Every monitoring run reports it; past
``monitor.max_model_age_days`` it sends a ``model_stale`` alert. Age alone never retrains:
the drift and performance checks decide that.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.alerts import Alert
from pipelines.config import DatasetConfig, MonitorConfig
from pipelines.monitoring.reference import Champion
from pipelines.tracking import Tracking

log = logging.getLogger(__name__)

TRAINED_UNTIL_TAG = "lineage.window_end"  # model version tag, set at registration


@dataclass(frozen=True)
class Staleness:
    status: str  # "ok" | "unknown" (the version has no lineage.window_end)
    detected: bool  # older than the limit
    model_name: str
    version: str
    day: str  # the monitored day, in the source's calendar
    trained_until: str | None  # the last day of its data
    age_days: int | None
    max_age_days: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        who = f"{self.model_name} v{self.version}"
        if self.status != "ok":
            return f"model age: unknown, {who} has no {TRAINED_UNTIL_TAG} tag (registered before it was recorded)"
        verdict = "stale" if self.detected else "within"
        days = "1 day" if self.age_days == 1 else f"{self.age_days} days"
        return (
            f"model age: {who} was trained on data up to {self.trained_until}, {days} before "
            f"{self.day} ({verdict}: limit {self.max_age_days} days, monitor.max_model_age_days)"
        )


def model_age(champion: Champion, trained_until: dt.date | None, day: dt.date, max_age_days: int) -> Staleness:
    """The champion's age on ``day`` and whether it passes ``max_age_days``.

    Args:
        champion: the version watched.
        trained_until: the last day of its data (None when its version does not say).
        day: the monitored day, in the source's calendar (that of ``trained_until``).
        max_age_days: the limit (``monitor.max_model_age_days``).
    """
    common = dict(model_name=champion.model_name, version=champion.version, day=day.isoformat())
    if trained_until is None:
        return Staleness("unknown", False, trained_until=None, age_days=None, max_age_days=max_age_days, **common)
    age = (day - trained_until).days
    return Staleness(
        "ok",
        age > max_age_days,
        trained_until=trained_until.isoformat(),
        age_days=age,
        max_age_days=max_age_days,
        **common,
    )


def trained_until(tracking_uri: str, champion: Champion) -> dt.date | None:
    """The last day of the champion's data, from its registered version's ``lineage.window_end`` tag."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    tag = client.get_model_version(champion.model_name, champion.version).tags.get(TRAINED_UNTIL_TAG)
    return dt.date.fromisoformat(tag) if tag else None


def stale_alert(result: Staleness, *, dag_id: str, run_id: str) -> Alert | None:
    """The ``model_stale`` alert for a result of :func:`model_age`, or None when the model is within the limit."""
    if not result.detected:
        return None
    return Alert(
        event="model_stale",
        summary=(
            f"{result.model_name} v{result.version} is {result.age_days} days old on {result.day} "
            f"(data up to {result.trained_until}; limit {result.max_age_days} days)"
        ),
        details=result.as_dict(),
        dag_id=dag_id,
        run_id=run_id,
    )


def staleness_step(
    dataset: DatasetConfig, cfg: MonitorConfig, run_day: dt.date, champion: Champion, tracking: Tracking
) -> Staleness:
    """The champion's age on ``run_day`` (mapped to the source's calendar), logged to the monitoring run.

    Args:
        dataset: the source's calendar.
        cfg: the ``monitor`` section: ``max_model_age_days`` and the experiment.
        run_day: the monitored day, in the run's calendar.
        champion: the version watched.
        tracking: the monitoring run's MLflow identity (its tracking URI is the registry's).
    """
    from pipelines.monitoring.runlog import log_numbers
    from pipelines.steps.collect import source_date

    result = model_age(
        champion, trained_until(tracking.tracking_uri, champion), source_date(dataset, run_day), cfg.max_model_age_days
    )
    log_numbers(
        tracking,
        cfg.experiment,
        "staleness",
        {"age_days": result.age_days, "max_age_days": result.max_age_days},
        {"staleness.status": result.status, "staleness.detected": str(result.detected).lower()},
    )
    (log.warning if result.detected or result.status != "ok" else log.info)("%s", result.summary())
    return result
