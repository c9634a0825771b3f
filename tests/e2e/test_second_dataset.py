"""A second data set, unlike the flights, through params.yaml alone: step by step, then the Airflow DAGs.

Synthetic sparse events (:mod:`synthetic_events`): daily CSV files with many days without a
file, 0-8 rows a day, no key column, day-first dates, a label from an outcome count, columns
that are empty or all-integer on some days. Nothing but the params file (``MLOPS_PARAMS``)
says what the data is. Real Great Expectations, TensorFlow, MLflow, Evidently and Airflow.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import set_env
from synthetic_events import FIRST_DAY, events_params, write_events

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

RUN_DAY = FIRST_DAY + dt.timedelta(days=160)  # a 150-day training window ends here
NIGHTS = 8  # later nights: collect, validate and score the next day with the champion
MONITORED = RUN_DAY + dt.timedelta(days=NIGHTS)


def _env(root: Path) -> dict[str, str]:
    write_events(root)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(events_params(root)), encoding="utf-8")
    return {
        "MLOPS_HOME": str(root / "home"),
        "MLOPS_DATA_DIR": str(root / "data"),
        "MLOPS_VERSIONING": "off",
        "MLOPS_PARAMS": str(params),
    }


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory):
    """Every training step through the runner, later nights, then ``python -m pipelines monitor``."""
    from pipelines.__main__ import main
    from pipelines.runner import (
        RunContext,
        run_batch_predict,
        run_collect,
        run_evaluate,
        run_preprocess,
        run_register,
        run_train,
        run_validate,
    )
    from pipelines.settings import resolve

    root = tmp_path_factory.mktemp("events")
    restore_env = set_env(_env(root))
    try:
        ctx = RunContext(dag_id="events", run_id="r1", run_day=RUN_DAY)
        out: dict = {"root": root, "settings": resolve()}
        out["collect"] = collected = run_collect(ctx)
        out["validate"] = validated = run_validate(ctx, collected)
        out["preprocess"] = processed = run_preprocess(ctx)
        out["train"] = trained = run_train(ctx, processed, validated)
        out["evaluate"] = evaluation = run_evaluate(ctx, processed, trained)
        out["register"] = run_register(ctx, processed, trained, evaluation, None, validated)
        out["predict"] = [run_batch_predict(ctx)]
        for i in range(1, NIGHTS + 1):
            night = RunContext(dag_id="events", run_id=f"n{i}", run_day=RUN_DAY + dt.timedelta(days=i))
            run_validate(night, run_collect(night))
            out["predict"].append(run_batch_predict(night))
        out["monitor_code"] = main(["monitor", "--date", MONITORED.isoformat(), "--run-id", "m1"])
        yield out
    finally:
        restore_env()


def test_every_day_of_the_window_is_published_empty_days_included(steps) -> None:
    raw = steps["settings"].raw_dir
    assert steps["validate"]["published"] == 150
    days = sorted(raw.glob("date=*/part-0.parquet"))
    assert len(days) == 150 + NIGHTS
    rows = [len(pd.read_parquet(p)) for p in days]
    assert min(rows) == 0 and max(rows) <= 8
    assert steps["collect"]["rows"] == sum(rows[:150])


def test_files_are_typed_by_the_schema_not_their_content(steps) -> None:
    raw = steps["settings"].raw_dir
    window = pd.concat([pd.read_parquet(p) for p in sorted(raw.glob("date=*/part-0.parquet"))], ignore_index=True)
    assert pd.api.types.is_datetime64_any_dtype(window["event_day"])
    assert window["event_day"].dt.month.max() == 6  # day-first dates read as such (June, not the 1st-12th month)
    assert window["segment"].map(type).eq(str).all()  # "10", "20": codes, not numbers
    assert window["amount"].dtype == "float64"


def test_learnt_daily_volume_allows_an_empty_day(steps) -> None:
    import json

    reference = json.loads((Path(steps["preprocess"]["processed_dir"]) / "reference.json").read_text())
    assert reference["rows_per_day"]["min"] == 0


def test_model_registered_and_promoted(steps) -> None:
    reg = steps["register"]
    assert "champion" in reg["aliases"], reg
    assert reg["model_version"] == "1" or int(reg["model_version"]) == 1


def test_predictions_written_with_the_configured_columns(steps) -> None:
    scored = [p for p in steps["predict"] if p["rows"]]
    empty = [p for p in steps["predict"] if p["path"] and not p["rows"]]
    assert scored and empty  # sparse: some next days have events, some none
    frame = pd.read_parquet(scored[0]["path"])
    assert {"row_id", "event_day", "followup_probability", "followup_expected", "model_name"} <= set(frame.columns)
    assert frame["followup_probability"].between(0, 1).all()
    assert frame["model_name"].eq("event_followup").all()
    assert "outcome" not in frame.columns


def test_monitoring_from_the_cli(steps) -> None:
    assert steps["monitor_code"] == 0
    reports = steps["settings"].run_dir("cli", "m1") / "monitor"
    assert reports.is_dir()


# --------------------------------------------------------------------------- the Airflow DAGs


@pytest.fixture(scope="module")
def dag_runs(tmp_path_factory: pytest.TempPathFactory, airflow_db):
    """One night of flights_training and one of flights_monitoring on the events (dag.test())."""
    from airflow.dag_processing.dagbag import DagBag

    root = tmp_path_factory.mktemp("events-dags")
    restore_env = set_env(_env(root))
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
        day = RUN_DAY.isoformat()
        training = bag.dags["flights_training"].test(
            logical_date=dt.datetime.combine(RUN_DAY, dt.time(3), tzinfo=dt.UTC), run_conf={"data_date": day}
        )
        monitoring = bag.dags["flights_monitoring"].test(run_conf={"monitor_date": day})
        from pipelines.settings import resolve

        yield {"training": training, "monitoring": monitoring, "settings": resolve()}
    finally:
        restore_env()


def test_training_dag_night(dag_runs) -> None:
    run = dag_runs["training"]
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    for task_id in ("collect", "validate", "preprocess", "train", "evaluate", "register", "batch_predict"):
        assert states[task_id] == "success", states
    assert len(list(dag_runs["settings"].raw_dir.glob("date=*/part-0.parquet"))) == 150


def test_monitoring_dag_night(dag_runs) -> None:
    run = dag_runs["monitoring"]
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert not [t for t, s in states.items() if s == "failed"], states


def test_the_docs_page_shows_these_params(tmp_path: Path) -> None:
    """docs/your-own-table.md's params file is the one this module runs (files under /landing)."""
    from pipelines.config import load_params

    text = (REPO / "docs" / "your-own-table.md").read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == events_params(Path("/landing"))
    (tmp_path / "params.yaml").write_text(block, encoding="utf-8")
    assert load_params(tmp_path / "params.yaml").dataset.key_columns == ()
