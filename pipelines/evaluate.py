"""Evaluate: the model and a scikit-learn baseline on the same time-based holdout.

The model is scored through the same tf.data path it was trained with; the
baseline (``HistGradientBoostingClassifier``) is fitted on the same training
split. Both sets of metrics go to the pipeline run's MLflow run, prefixed
``holdout_`` and ``baseline_holdout_``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import DatasetConfig, Params
from pipelines.features import LABEL
from pipelines.preprocess import load_manifest
from pipelines.tracking import Tracking, get_or_create_run

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


def binary_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, log loss, Brier score, accuracy, precision and recall at ``threshold``."""
    from sklearn import metrics

    y_true = np.asarray(y_true).astype(int)
    proba = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1 - 1e-7)
    pred = (proba >= threshold).astype(int)
    two_classes = len(np.unique(y_true)) == 2
    return {
        "auc": float(metrics.roc_auc_score(y_true, proba)) if two_classes else float("nan"),
        "log_loss": float(metrics.log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(metrics.brier_score_loss(y_true, proba)),
        "accuracy": float(metrics.accuracy_score(y_true, pred)),
        "precision": float(metrics.precision_score(y_true, pred, zero_division=0)),
        "recall": float(metrics.recall_score(y_true, pred, zero_division=0)),
        "positive_rate": float(y_true.mean()),
        "rows": float(len(y_true)),
    }


def _baseline_frame(frame: pd.DataFrame, spec: DatasetConfig, categories: dict[str, list[str]]) -> pd.DataFrame:
    out = frame[list(spec.features.numeric)].astype("float64")
    for col in spec.features.categorical:
        out[col] = pd.Categorical(frame[col].astype("string").fillna(""), categories=categories[col])
    return out


def fit_baseline(train: pd.DataFrame, params: Params):
    """A ``HistGradientBoostingClassifier`` on the raw features (native categorical support)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    spec, cfg = params.dataset, params.evaluate.baseline
    categories = {c: sorted(train[c].astype("string").fillna("").unique()) for c in spec.features.categorical}
    model = HistGradientBoostingClassifier(
        max_iter=cfg.max_iter,
        learning_rate=cfg.learning_rate,
        max_leaf_nodes=cfg.max_leaf_nodes,
        categorical_features="from_dtype",
        random_state=params.train.seed,
    )
    model.fit(_baseline_frame(train, spec, categories), train[LABEL].to_numpy())
    return model, categories


def evaluate(params: Params, processed_dir: Path, model_path: Path, out_dir: Path, tracking: Tracking) -> dict[str, Any]:
    """Score the model and the baseline on the holdout; log and return both metric sets."""
    import mlflow

    from pipelines.model import load_model
    from pipelines.tfdata import make_dataset

    spec, threshold = params.dataset, params.evaluate.threshold
    manifest = load_manifest(processed_dir)
    splits = manifest["splits"]
    holdout = pd.read_parquet(splits["holdout"]["parquet"])

    model = load_model(str(model_path))
    ds = make_dataset(
        splits["holdout"]["tfrecords"], spec, 8192, compression=params.preprocess.compression
    ).map(lambda x, y: x)
    proba = np.asarray(model.predict(ds, verbose=0), dtype=np.float32).reshape(-1)
    if len(proba) != len(holdout):
        raise RuntimeError(f"holdout shards hold {len(proba)} rows, the holdout split {len(holdout)}")
    model_metrics = binary_metrics(holdout[LABEL].to_numpy(), proba, threshold)

    train = pd.read_parquet(splits["train"]["parquet"])
    baseline, categories = fit_baseline(train, params)
    base_proba = baseline.predict_proba(_baseline_frame(holdout, spec, categories))[:, 1]
    baseline_metrics = binary_metrics(holdout[LABEL].to_numpy(), base_proba, threshold)

    result = {"model": model_metrics, "baseline": baseline_metrics, "threshold": threshold}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=1))

    run_id = get_or_create_run(tracking)
    client = mlflow.MlflowClient(tracking.tracking_uri)
    metrics = {f"holdout_{k}": v for k, v in model_metrics.items()}
    metrics.update({f"baseline_holdout_{k}": v for k, v in baseline_metrics.items()})
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items() if np.isfinite(v)],
    )
    client.log_artifact(run_id, str(out_dir / EVALUATION_FILE), "evaluation")
    log.info(
        "holdout AUC: model %.4f, baseline %.4f", model_metrics["auc"], baseline_metrics["auc"]
    )
    return {"mlflow_run_id": run_id, "evaluation_path": str(out_dir / EVALUATION_FILE), "model": model_metrics, "baseline": baseline_metrics}
