"""Compute regressions: every step's time and memory on its run's MLflow run, compared across runs by monitoring.

Real MLflow (SQLite) and a real step worker (with a light preload, as in tests/unit/test_worker.py);
the figures of earlier runs are logged through the same function the worker uses.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.monitoring.compute import RunFigures, compute_regressions

REPO = Path(__file__).resolve().parents[2]
NIGHTS = [dt.date(2013, 6, d) for d in range(1, 7)]


def _cfg(**overrides):
    from pipelines.config import load_params

    return load_params(REPO / "params.yaml").with_overrides(overrides).monitor.compute


def _stats(seconds: float, memory_mib: float, cpu: float | None = None) -> dict[str, float]:
    return {"seconds": seconds, "cpu_seconds": seconds if cpu is None else cpu, "peak_rss": memory_mib * 2**20}


def _figures(day: int, **steps: tuple[float, float]) -> RunFigures:
    return RunFigures(
        f"r{day}",
        f"flights_training/n{day}",
        f"2013-06-{day:02d}",
        day,
        {step: {"seconds": s, "cpu_seconds": s, "peak_memory_mib": m} for step, (s, m) in steps.items()},
    )


# --------------------------------------------------------------------------- the comparison


def test_a_step_slower_or_larger_than_its_median_is_a_regression() -> None:
    cfg = _cfg()  # 1.5x time, 1.25x memory, at least 3 earlier runs, steps under 5 s not timed
    history = [_figures(d, train=(100 + d, 1000), collect=(1.0, 300), predict=(20, 500)) for d in range(1, 6)]
    current = _figures(6, train=(160, 1100), collect=(3.0, 310), predict=(21, 700), tune=(50, 100))
    result = compute_regressions(current, history, cfg)
    assert result.detected and result.status == "ok"
    assert [(r["step"], r["figure"]) for r in result.regressions] == [
        ("predict", "peak_memory_mib"),
        ("train", "seconds"),
    ]
    train = next(r for r in result.regressions if r["step"] == "train")
    assert train["median"] == 103 and train["ratio"] == pytest.approx(160 / 103) and train["limit"] == 1.5
    assert "ratio_seconds" not in result.steps["collect"], "3x a second is jitter, not a regression"
    assert result.insufficient == ["tune"] and result.steps["tune"]["status"] == "insufficient_history"
    assert "train seconds 160.0 is 1.55x its median 103.0" in result.summary()


def test_the_median_is_over_the_last_window_runs_that_ran_the_step() -> None:
    # Slow long ago, fast lately: against the last 3 runs the current time is a regression.
    history = [_figures(d, train=(300, 1000)) for d in range(1, 4)] + [
        _figures(d, train=(100, 1000)) for d in range(4, 7)
    ]
    history.insert(4, _figures(99, collect=(1, 1)))  # a night that did not train counts for nothing
    current = _figures(7, train=(200, 1000))
    assert compute_regressions(current, history, _cfg(**{"monitor.compute.window_runs": 3})).detected
    assert not compute_regressions(current, history, _cfg(**{"monitor.compute.window_runs": 7})).detected


def test_insufficient_history_never_alerts() -> None:
    history = [_figures(1, train=(10, 100)), _figures(2, train=(10, 100))]
    result = compute_regressions(_figures(3, train=(100, 1000)), history, _cfg())
    assert result.status == "insufficient_history" and not result.detected
    assert "insufficient history" in result.summary()


def test_min_runs_cannot_exceed_the_window() -> None:
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="min_runs"):
        _cfg(**{"monitor.compute.window_runs": 2, "monitor.compute.min_runs": 3})


# --------------------------------------------------------------------------- through MLflow


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "home"


def _ctx(dag_id: str, run_id: str, day: dt.date, **overrides):
    from pipelines.runner import RunContext

    return RunContext(dag_id=dag_id, run_id=run_id, run_day=day, overrides=overrides)


def _runs(ctx, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(ctx.settings.tracking_uri, ctx.settings.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_monitoring_alerts_on_the_newest_runs_regression(home) -> None:
    from pipelines.alerts import read_alerts
    from pipelines.monitoring.compute import log_step_stats
    from pipelines.runner import run_check_compute

    for i, night in enumerate(NIGHTS):
        ctx = _ctx("flights_training", f"scheduled__{night}", night)
        log_step_stats(ctx, "collect", _stats(2.0, 400))
        log_step_stats(ctx, "train", _stats(300.0 if i == len(NIGHTS) - 1 else 100.0 + i, 2000))
        if i == 1:  # after two nights: too little history to judge anything
            early = run_check_compute(_ctx("flights_monitoring", f"m{i}", night))
            assert early["status"] == "insufficient_history" and not early["detected"] and early["alerts"] == {}
    # A monitoring step's figures go to the monitoring run, never to a training run.
    log_step_stats(_ctx("flights_monitoring", "m_last", NIGHTS[-1]), "check_data_drift", _stats(9.0, 900))

    monitor = _ctx("flights_monitoring", "m_last", NIGHTS[-1])
    result = run_check_compute(monitor)
    assert result["run_key"] == f"flights_training/scheduled__{NIGHTS[-1]}"
    assert result["detected"] and [(r["step"], r["figure"]) for r in result["regressions"]] == [("train", "seconds")]
    assert result["regressions"][0]["median"] == 102, "the median of the five nights before"
    assert result["alerts"]["file"] == "sent"
    [alert] = read_alerts(home)
    assert alert["event"] == "compute_regression" and alert["run_id"] == "m_last"
    assert "train seconds 300.0 is 2.94x its median 102.0" in alert["summary"]

    # Each training night has one MLflow run carrying its steps' figures; the monitoring run has its own.
    training = _runs(monitor, "flight_delay")
    assert len(training) == len(NIGHTS)
    assert all("step.check_data_drift.seconds" not in r.data.metrics for r in training)
    (watching,) = [
        r for r in _runs(monitor, "flight_delay_monitoring") if r.info.run_name == "flights_monitoring:m_last"
    ]
    assert watching.data.metrics["step.check_data_drift.peak_memory_mib"] == 900
    assert watching.data.metrics["compute.regressions"] == 1
    assert watching.data.tags["compute.status"] == "ok"

    # Nights after the monitored day are not the one checked (a backfill sees its own day).
    earlier = run_check_compute(_ctx("flights_monitoring", "m_back", NIGHTS[-2]))
    assert earlier["run_key"] == f"flights_training/scheduled__{NIGHTS[-2]}" and not earlier["detected"]


def test_monitoring_steps_are_all_routed_to_the_monitoring_run() -> None:
    """Every runner step the monitoring DAG and the monitor command call logs to the monitoring run."""
    from pipelines.monitoring.compute import MONITORING_STEPS

    called = set()
    for path in (REPO / "dags" / "flights_monitoring.py", REPO / "pipelines" / "__main__.py"):
        tree = ast.parse(path.read_text())
        called |= {
            alias.name.removeprefix("run_")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "pipelines.runner"
            for alias in node.names
            if alias.name.startswith("run_") and alias.name != "run_all"
        }
    monitor_dag = {n for n in called if n in MONITORING_STEPS}
    assert {"check_published", "check_served", "check_staleness", "check_compute"} <= monitor_dag
    dag_tree = ast.parse((REPO / "dags" / "flights_monitoring.py").read_text())
    in_dag = {
        alias.name.removeprefix("run_")
        for node in ast.walk(dag_tree)
        if isinstance(node, ast.ImportFrom) and node.module == "pipelines.runner"
        for alias in node.names
        if alias.name.startswith("run_")
    }
    assert in_dag <= MONITORING_STEPS, in_dag - MONITORING_STEPS


# --------------------------------------------------------------------------- through the step worker


@pytest.fixture
def warm(home, monkeypatch, tmp_path):
    """A step worker with a light preload; the task side set to hand it steps."""
    from pipelines.ops import worker

    path = Path("/tmp") / f"mlops-test-compute-{os.getpid()}.sock"
    env = {**os.environ, worker.ENV_MODE: "warm", worker.ENV_SOCKET: str(path)}
    with open(tmp_path / "worker.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.ops.worker", "serve", "--socket", str(path), "--idle-timeout", "0"]
            + ["--preload", "pipelines.config"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        worker.wait_ready(env, timeout=60)
        monkeypatch.setenv(worker.ENV_MODE, "warm")
        monkeypatch.setenv(worker.ENV_SOCKET, str(path))
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_step_worker_logs_every_steps_figures_on_its_run(warm) -> None:
    from pipelines.runner import run_check_published, run_should_train

    night = _ctx("flights_training", "scheduled__2013-06-01", NIGHTS[0], **{"train.retrain": "on_demand"})
    decided = run_should_train(night, {})  # on demand: asks the registry, in the worker
    assert decided["train"], "no champion yet: it trains"
    watch = _ctx("flights_monitoring", "m1", NIGHTS[0])
    assert run_check_published(watch)["published"] is False

    (training,) = _runs(night, "flight_delay")
    figures = training.data.metrics
    assert training.data.tags["pipeline.run_key"] == "flights_training/scheduled__2013-06-01"
    assert training.data.tags["run_day"] == "2013-06-01"
    assert figures["step.should_train_with_registry.seconds"] > 0
    assert figures["step.should_train_with_registry.cpu_seconds"] > 0
    assert figures["step.should_train_with_registry.peak_memory_mib"] > 50
    (monitoring,) = _runs(watch, "flight_delay_monitoring")
    assert monitoring.data.metrics["step.check_published.seconds"] > 0
    assert "step.check_published.seconds" not in figures


def test_steps_run_in_place_log_the_same_figures(home, monkeypatch) -> None:
    """Without the step worker (a Celery worker, dag.test(), the CLI) each step measures itself."""
    from pipelines.ops import worker
    from pipelines.runner import run_check_published, run_should_train

    monkeypatch.delenv(worker.ENV_MODE, raising=False)
    night = _ctx("flights_training", "manual__in_place", NIGHTS[0], **{"train.retrain": "on_demand"})
    assert run_should_train(night, {})["train"]
    watch = _ctx("flights_monitoring", "m_in_place", NIGHTS[0])
    run_check_published(watch)

    (training,) = _runs(night, "flight_delay")
    figures = training.data.metrics
    assert figures["step.should_train_with_registry.seconds"] > 0
    assert figures["step.should_train_with_registry.cpu_seconds"] >= 0
    assert figures["step.should_train_with_registry.peak_memory_mib"] > 50
    (monitoring,) = _runs(watch, "flight_delay_monitoring")
    assert monitoring.data.metrics["step.check_published.seconds"] > 0
