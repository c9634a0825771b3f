"""Sensitive columns through a whole run: nothing the pipeline writes holds a clear-text value.

The synthetic events with an e-mail address (hashed) and a phone number (dropped) go
through every step on params alone (collect, validate, preprocess, train, evaluate,
register, batch prediction on two nights, then the monitoring command's drift reports);
every file under the data and home folders (partitions, reports, data docs, processed
splits, MLflow's store and artifacts, predictions, drift reports) is searched for the
clear text and the salt.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import set_env
from sensitive_events import SALT, SALT_ENV, add_sensitive_columns, clear_text_in, sensitive_params
from synthetic_events import FIRST_DAY, write_events

pytestmark = pytest.mark.e2e

RUN_DAY = FIRST_DAY + dt.timedelta(days=160)
NIGHTS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
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

    root = tmp_path_factory.mktemp("sensitive")
    write_events(root)
    add_sensitive_columns(root / "events")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(sensitive_params(root, epochs=1)), encoding="utf-8")
    restore = set_env(
        {
            "MLOPS_HOME": str(root / "home"),
            "MLOPS_DATA_DIR": str(root / "data"),
            "MLOPS_VERSIONING": "off",
            "MLOPS_PARAMS": str(params),
            SALT_ENV: SALT,
        }
    )
    try:
        ctx = RunContext(dag_id="events", run_id="r1", run_day=RUN_DAY)
        validated = run_validate(ctx, run_collect(ctx))
        processed = run_preprocess(ctx)
        trained = run_train(ctx, processed, validated)
        evaluation = run_evaluate(ctx, processed, trained)
        run_register(ctx, processed, trained, evaluation, None, validated)
        predicted = [run_batch_predict(ctx)]
        for i in range(1, NIGHTS + 1):
            night = RunContext(dag_id="events", run_id=f"n{i}", run_day=RUN_DAY + dt.timedelta(days=i))
            run_validate(night, run_collect(night))
            predicted.append(run_batch_predict(night))
        monitored = RUN_DAY + dt.timedelta(days=NIGHTS)
        code = main(["monitor", "--date", monitored.isoformat(), "--run-id", "m1"])
        yield {"root": root, "settings": resolve(), "predicted": predicted, "monitor_code": code}
    finally:
        restore()


def test_predictions_hold_no_sensitive_column(run: dict) -> None:
    written = [p for p in run["settings"].predictions_dir.rglob("*.parquet")]
    assert written, run["predicted"]
    for path in written:
        columns = set(pd.read_parquet(path).columns)
        assert not columns & {"email", "phone"}, path


def test_no_file_the_run_wrote_holds_clear_text(run: dict) -> None:
    root: Path = run["root"]
    assert run["monitor_code"] in (0, 1)  # drift asked for or not: its reports are written either way
    assert list((root / "home").rglob("data_drift*")), "the monitoring run wrote its drift report"
    for out in ("data", "home"):
        assert clear_text_in(root / out) == [], out
