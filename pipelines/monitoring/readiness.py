"""Whether a monitoring run can start: light enough for the monitoring DAG's sensor.

The sensor pokes every ``monitor.wait_poke_seconds`` in its own process; these two
pure functions keep pandas, NumPy and the checks out of it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any


def source_run_day(conf: Mapping[str, Any] | None, data_interval_start: Any, logical_date: Any) -> dt.date | None:
    """The day a training run collected, as the training DAG reads it: ``data_date``, else its data interval.

    Args:
        conf: the training run's conf.
        data_interval_start: its data interval's start (a datetime, an ISO string or None).
        logical_date: its logical date, when it has no data interval.

    Returns:
        The day, or None when the run says nothing about one.
    """
    if conf and conf.get("data_date"):
        return dt.date.fromisoformat(str(conf["data_date"]))
    for moment in (data_interval_start, logical_date):
        if moment is not None:
            return moment.date() if isinstance(moment, dt.datetime) else dt.date.fromisoformat(str(moment)[:10])
    return None


def data_ready(published: bool, source_run_states: Sequence[str]) -> str:
    """Whether a monitoring run can start: ``ready``, ``wait`` or ``missing``.

    Monitoring waits for the day to be published *and* for the training runs
    that brought it to finish: they publish the day after validating it, score
    the next day and may promote a new champion; a retraining decided while
    one of them still runs would only pile up behind it. A day that is not
    published once they are over will not come (its validation failed).

    Args:
        published: the monitored day's partition is in the published data.
        source_run_states: the states of the training runs that collected the day.

    Returns:
        ``ready``, ``wait`` (a run is still going) or ``missing`` (they are over, the day is not published).
    """
    finished = all(state in ("success", "failed") for state in source_run_states)
    if not finished:
        return "wait"
    return "ready" if published else "missing"
