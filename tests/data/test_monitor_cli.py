"""``python -m pipelines monitor`` and batch prediction of an empty day, against a real champion.

The champion is trained as in ``tests/dags/test_monitor.py``, on a short window (one epoch,
forced through the gate: its quality is not under test). Real MLflow, Evidently and data.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from helpers import set_env

pytestmark = pytest.mark.e2e

CHAMPION_DAY = dt.date(2013, 3, 14)
MONITORED = CHAMPION_DAY + dt.timedelta(days=1)  # the day the champion's run scored
OVERRIDES = {
    "preprocess.training_window_days": 12,
    "preprocess.split": {"validation_days": 2, "holdout_days": 2, "min_train_days": 3},
    "train.epochs": 1,
    "evaluate.baseline.max_iter": 5,
    "monitor.window_days": 3,
}
FORCE_REASON = "the CLI monitoring test needs a champion; its quality is not under test"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory):
    """A champion, and MONITORED published as collect + validate would (scored by the champion's run)."""
    from pipelines.config import load_params
    from pipelines.data.partitions import partition_path, write_partition
    from pipelines.runner import RunContext, run_all
    from pipelines.settings import resolve
    from pipelines.steps.collect import fetch_day

    root = tmp_path_factory.mktemp("cli-monitor")
    env = {"MLOPS_HOME": str(root / "home"), "MLOPS_DATA_DIR": str(root / "data"), "MLOPS_VERSIONING": "off"}
    restore_env = set_env(env)
    try:
        ctx = RunContext(
            dag_id="cli_test", run_id="champion", run_day=CHAMPION_DAY, overrides=OVERRIDES, force_reason=FORCE_REASON
        )
        trained = run_all(ctx)
        assert "champion" in trained["register"]["aliases"]
        spec = load_params(resolve().params_path).dataset
        write_partition(fetch_day(spec, MONITORED), partition_path(resolve().raw_dir, MONITORED), spec.key_columns)
        yield {"root": root, "trained": trained, "settings": resolve()}
    finally:
        restore_env()


def _set(overrides: dict) -> list[str]:
    import json

    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def test_monitor_command_runs_the_checks_and_writes_the_reports(champion, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.__main__ import main

    code = main(["monitor", "--date", MONITORED.isoformat(), "--run-id", "m1", *_set(OVERRIDES)])

    out = capsys.readouterr().out
    assert code == 0, out
    version = champion["trained"]["register"]["model_version"]
    assert out.splitlines()[0] == f"monitored {MONITORED.isoformat()} with flight_delay v{version}"
    for check in ("data drift:", "prediction drift", "performance"):
        assert check in out
    # Beside them: served traffic (none here), the champion's age (a day), compute (no step worker here).
    assert "served traffic: no served traffic in 2013-03-13..2013-03-15" in out
    assert "model age: flight_delay v" in out and "1 day before 2013-03-15" in out
    # The training run measured its steps in place: one run, not yet a history to compare with.
    assert "compute of cli_test/champion: insufficient history for every step" in out
    assert "decision: " in out
    reports = champion["settings"].run_dir("cli", "m1") / "monitor"
    assert f"reports: {reports}" in out
    assert (reports / "data_drift.html").is_file() and (reports / "data_drift.json").is_file()


def test_monitor_command_on_a_day_not_published(champion, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.__main__ import main

    assert main(["monitor", "--date", "2013-09-01", *_set(OVERRIDES)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 2013-09-01 is not published")


def test_batch_predict_of_an_empty_day_writes_an_empty_partition(
    champion, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sparse source's day without a file: scored as a day without rows, not a missing file."""
    from pipelines.runner import RunContext, run_batch_predict

    day = dt.date(2013, 3, 21)
    landing = tmp_path / "landing"
    landing.mkdir()
    overrides = {
        **OVERRIDES,
        "dataset.source": {
            "kind": "files",
            "path_template": str(landing / "{date:%Y-%m-%d}" / "*.csv"),
            "format": "csv",
            "missing_day": "empty",
        },
        # A data set whose days can be empty: no lower bound, the learnt one widened to zero.
        "validate.rows_per_day": [0, 5000],
        "validate.reference_row_margin": 1.0,
    }
    ctx = RunContext(dag_id="cli_test", run_id="empty", run_day=day - dt.timedelta(days=1), overrides=overrides)

    with caplog.at_level("INFO", logger="pipelines.steps.predict"):
        result = run_batch_predict(ctx)

    assert result["rows"] == 0 and result["day"] == day.isoformat()
    scored = pd.read_parquet(result["path"])
    assert len(scored) == 0
    assert {"delay_probability", "predicted_delayed", "model_version", "input_fingerprint"} <= set(scored.columns)
    assert "no rows to score for 2013-03-21: writing an empty prediction partition" in caplog.text
