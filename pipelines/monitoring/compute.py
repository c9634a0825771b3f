"""Compute regressions: each step's time and peak memory, logged every run and compared across runs.

The step worker (:mod:`pipelines.ops.worker_server`) measures every step it runs: wall-clock
seconds, CPU seconds and peak resident memory of the step's process. :func:`log_step_stats`
puts them on the MLflow run of the pipeline run the step belongs to, as metrics
``step.<step>.seconds``, ``step.<step>.cpu_seconds`` and ``step.<step>.peak_memory_mib``:
a training run's in ``mlflow.experiment``, a monitoring run's in ``monitor.experiment``.

Each monitoring run then takes the newest pipeline run up to the monitored day and compares
every step with its median over the last ``monitor.compute.window_runs`` earlier runs that ran
it (:func:`compute_regressions`): slower than ``max_slowdown`` times the median, or peaking
above ``max_memory_growth`` times it, is a regression, and alerts (``compute_regression``).
Fewer than ``min_runs`` earlier runs is "insufficient history": reported, never alerted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.alerts import Alert
from pipelines.config import MonitorConfig
from pipelines.tracking import Tracking

log = logging.getLogger(__name__)

PREFIX = "step."
FIGURES = ("seconds", "cpu_seconds", "peak_memory_mib")
RUN_DAY_TAG = "run_day"  # every pipeline run's MLflow run has it (pipelines.runner.RunContext.tracking)
SCAN_RUNS = 1000  # the newest runs of the experiment searched for history
# The monitoring DAG's steps (pipelines.runner's monitoring functions, without "run_"): their figures go
# to the monitoring run, in monitor.experiment, not to a run of the training experiment.
MONITORING_STEPS = frozenset(
    {
        "check_published",
        "resolve_champion",
        "check_data_drift",
        "check_prediction_drift",
        "check_performance",
        "retrain_decision",
        "record_retraining",
        "check_served",
        "check_staleness",
        "check_compute",
    }
)


# --------------------------------------------------------------------------- logging (every step)


def step_metrics(step: str, stats: Mapping[str, float]) -> dict[str, float]:
    """The MLflow metrics of one step's figures as the step worker measured them (``peak_rss`` in bytes)."""
    return {
        f"{PREFIX}{step}.seconds": float(stats["seconds"]),
        f"{PREFIX}{step}.cpu_seconds": float(stats["cpu_seconds"]),
        f"{PREFIX}{step}.peak_memory_mib": float(stats["peak_rss"]) / 2**20,
    }


@contextlib.contextmanager
def measured(ctx: Any, step: str) -> Iterator[None]:
    """Measure a step run in this process and log its figures as the step worker logs its own.

    Wall and CPU seconds are this process's across the step; the peak is the process's peak
    resident memory since the step began (Linux resets it through ``/proc/self/clear_refs``;
    elsewhere it is the process's peak so far). Logged only when the step succeeds, and a
    failure to log never fails the step.
    """
    import resource
    import time

    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident memory
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    yield
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_rss": _peak_rss(),
    }
    try:
        log_step_stats(ctx, step, stats)
    except Exception as err:  # bookkeeping must never fail a step that succeeded
        log.warning("the figures of step %s could not be logged to MLflow: %s", step, err)


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``; ``ru_maxrss`` where /proc has none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def step_tracking(ctx: Any, step: str) -> Tracking:
    """The MLflow identity of the pipeline run a step belongs to: the monitoring run for a monitoring step."""
    if step in MONITORING_STEPS:
        return replace(ctx.tracking, experiment=ctx.params.monitor.experiment)
    return ctx.tracking


def log_step_stats(ctx: Any, step: str, stats: Mapping[str, float]) -> str | None:
    """Put a step's figures on its pipeline run's MLflow run (created if it has none yet).

    Args:
        ctx: the step's first argument: a :class:`pipelines.runner.RunContext`, else nothing is logged.
        step: the step's name (its runner function's, without ``run_``).
        stats: ``seconds``, ``cpu_seconds`` and ``peak_rss`` (bytes).

    Returns:
        The MLflow run id, or None when the step has no run context.
    """
    from pipelines.runner import RunContext

    if not isinstance(ctx, RunContext):
        return None
    import time

    import mlflow

    from pipelines.tracking import get_or_create_run

    tracking = step_tracking(ctx, step)
    run_id = get_or_create_run(tracking)
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(k, v, now, 0) for k, v in step_metrics(step, stats).items()]
    mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri).log_batch(run_id, metrics=metrics)
    return run_id


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class RunFigures:
    """One pipeline run's step figures, as its MLflow run holds them."""

    run_id: str
    run_key: str
    run_day: str
    start_time: int
    steps: dict[str, dict[str, float]]  # step -> seconds, cpu_seconds, peak_memory_mib


def figures_of(run_id: str, run_key: str, run_day: str, start_time: int, metrics: Mapping[str, float]) -> RunFigures:
    """Gather ``step.<step>.<figure>`` metrics by step."""
    steps: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(PREFIX):
            step, _, figure = key.removeprefix(PREFIX).rpartition(".")
            if step and figure in FIGURES:
                steps.setdefault(step, {})[figure] = float(value)
    return RunFigures(run_id, run_key, run_day, start_time, steps)


def pipeline_runs(tracking_uri: str, experiment: str, day: dt.date) -> list[RunFigures]:
    """The runs of ``experiment`` up to ``day`` (their ``run_day`` tag) with step figures, oldest first.

    Ordered by run day, then start: a backfill's runs fall where their days are.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found, token, seen = [], None, 0
    while seen < SCAN_RUNS:
        page = client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=200, page_token=token
        )
        seen += len(page)
        for run in page:
            run_day = run.data.tags.get(RUN_DAY_TAG)
            if not run_day or run_day > day.isoformat():
                continue
            figures = figures_of(
                run.info.run_id,
                run.data.tags.get("pipeline.run_key", run.info.run_id),
                run_day,
                run.info.start_time or 0,
                run.data.metrics,
            )
            if figures.steps:
                found.append(figures)
        token = page.token
        if not token:
            break
    return sorted(found, key=lambda r: (r.run_day, r.start_time))


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class ComputeCheck:
    status: str  # "ok" | "insufficient_history" (no step has min_runs earlier runs, or no run has figures)
    detected: bool
    run_key: str | None  # the pipeline run checked
    run_day: str | None
    regressions: list[dict[str, Any]] = field(default_factory=list)  # step, figure, value, median, ratio, limit
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # per step: its figures, medians, ratios
    insufficient: list[str] = field(default_factory=list)  # steps with too little history

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.run_key is None:
            return "compute: insufficient history (no pipeline run has step figures yet)"
        if self.status != "ok":
            return f"compute of {self.run_key}: insufficient history for every step"
        if not self.regressions:
            judged = len(self.steps) - len(self.insufficient)
            return f"compute of {self.run_key}: no regression in {judged} step(s) against their medians"
        parts = [
            f"{r['step']} {r['figure']} {r['value']:.1f} is {r['ratio']:.2f}x its median {r['median']:.1f} "
            f"(limit {r['limit']}x)"
            for r in self.regressions
        ]
        return f"compute of {self.run_key}: " + "; ".join(parts)


def compute_regressions(current: RunFigures, history: Sequence[RunFigures], cfg: MonitorConfig.Compute) -> ComputeCheck:
    """Each step of ``current`` against its median over the last ``cfg.window_runs`` earlier runs that ran it.

    Args:
        current: the run checked.
        history: earlier runs, oldest first.
        cfg: ``monitor.compute``.
    """
    steps: dict[str, dict[str, Any]] = {}
    regressions, insufficient = [], []
    for step, figures in sorted(current.steps.items()):
        earlier = [run.steps[step] for run in history if step in run.steps][-cfg.window_runs :]
        row: dict[str, Any] = {**figures, "history_runs": len(earlier)}
        steps[step] = row
        if len(earlier) < cfg.min_runs:
            row["status"] = "insufficient_history"
            insufficient.append(step)
            continue
        row["status"] = "ok"
        limits = {"seconds": cfg.max_slowdown, "peak_memory_mib": cfg.max_memory_growth}
        for figure, limit in limits.items():
            values = [e[figure] for e in earlier if figure in e]
            if figure not in figures or not values:
                continue
            median = statistics.median(values)
            row[f"median_{figure}"] = median
            if median <= 0 or (figure == "seconds" and median < cfg.min_seconds):
                continue  # too short to judge: a second's jitter is no regression
            ratio = figures[figure] / median
            row[f"ratio_{figure}"] = ratio
            if ratio > limit:
                row["status"] = "regression"
                regressions.append(
                    {
                        "step": step,
                        "figure": figure,
                        "value": figures[figure],
                        "median": median,
                        "ratio": ratio,
                        "limit": limit,
                        "history_runs": len(values),
                    }
                )
    status = "ok" if len(insufficient) < len(steps) else "insufficient_history"
    return ComputeCheck(status, bool(regressions), current.run_key, current.run_day, regressions, steps, insufficient)


def compute_step(
    cfg: MonitorConfig, experiment: str, run_day: dt.date, tracking: Tracking, out_dir: Path
) -> ComputeCheck:
    """The newest pipeline run up to ``run_day`` against the ones before it, logged to the monitoring run.

    Args:
        cfg: the ``monitor`` section: ``compute`` and the monitoring experiment.
        experiment: the pipeline runs' experiment (``mlflow.experiment``).
        run_day: the monitored day, in the run's calendar (that of the runs' ``run_day`` tags).
        tracking: the monitoring run's MLflow identity.
        out_dir: where ``compute.json`` goes.
    """
    from pipelines.monitoring.runlog import log_json, log_numbers

    runs = pipeline_runs(tracking.tracking_uri, experiment, run_day)
    if not runs:
        result = ComputeCheck("insufficient_history", False, None, None)
    else:
        result = compute_regressions(runs[-1], runs[:-1], cfg.compute)
    log_numbers(
        tracking,
        cfg.experiment,
        "compute",
        {"regressions": len(result.regressions), "steps": len(result.steps), "insufficient": len(result.insufficient)},
        {"compute.status": result.status, "compute.detected": str(result.detected).lower()},
    )
    log_json(tracking, cfg.experiment, out_dir / "compute.json", result.as_dict())
    (log.warning if result.detected else log.info)("%s", result.summary())
    return result


def compute_alert(result: ComputeCheck, *, dag_id: str, run_id: str) -> Alert | None:
    """The ``compute_regression`` alert for a result of :func:`compute_regressions`, or None without a regression."""
    if not result.detected:
        return None
    return Alert(
        event="compute_regression",
        summary=result.summary(),
        details={"run_key": result.run_key, "run_day": result.run_day, "regressions": result.regressions},
        dag_id=dag_id,
        run_id=run_id,
    )
