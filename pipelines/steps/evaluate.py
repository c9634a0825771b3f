"""Evaluate: the model and a scikit-learn baseline on the same time-based holdout.

The model is scored through the same tf.data path it was trained with; the
baseline (``HistGradientBoostingClassifier``) is fitted on the same training
split. Both sets of metrics go to the pipeline run's MLflow run, prefixed
``holdout_`` and ``baseline_holdout_``. Each feature's permutation importance
(:mod:`pipelines.model.importance`) goes there too, as ``importance_<feature>``
metrics and a table; features whose shuffling barely lowers the AUC are flagged.

Every score and metric must be finite: a NaN fails the step
(:mod:`pipelines.model.finite`) instead of being dropped from the run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import (
    BaselineConfig,
    DatasetConfig,
    EvaluateConfig,
    PreprocessConfig,
    RegisterConfig,
    TrainConfig,
)
from pipelines.data.partitions import read_sample
from pipelines.model.features import LABEL
from pipelines.model.finite import require_finite_metrics, require_finite_scores, row_labels
from pipelines.model.metrics import binary_metrics
from pipelines.steps.preprocess import load_manifest
from pipelines.tracking import Tracking, get_or_create_run, use_tracking

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


def _baseline_frame(frame: pd.DataFrame, spec: DatasetConfig, categories: dict[str, list[str]]) -> pd.DataFrame:
    out = frame[list(spec.features.numeric)].astype("float64")
    for col in spec.features.categorical:
        out[col] = pd.Categorical(frame[col].astype("string").fillna(""), categories=categories[col])
    return out


def _passive_openmp() -> None:
    """OpenMP threads that sleep, not spin, while they wait (unless the environment says otherwise).

    The baseline's gradient boosting runs many short OpenMP loops. With the default
    policy a waiting thread spins, and on a shared machine whose other thread is
    descheduled the fit took ten times as long (measured: 40 iterations in 62.6 s
    instead of 6.0 s, load average about 8 on 2 cores). The OpenMP runtime reads the
    variable when it loads (TensorFlow loads it too), so this only takes effect
    before that; the step worker sets it before importing anything.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def fit_baseline(train: pd.DataFrame, dataset: DatasetConfig, cfg: BaselineConfig, seed: int):
    """A ``HistGradientBoostingClassifier`` on the raw features (native categorical support).

    Args:
        train: the (sampled) training rows.
        dataset: the feature spec.
        cfg: ``evaluate.baseline``.
        seed: ``train.seed``, so the baseline is as reproducible as the model.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    spec = dataset
    categories = {c: sorted(train[c].astype("string").fillna("").unique()) for c in spec.features.categorical}
    model = HistGradientBoostingClassifier(
        max_iter=cfg.max_iter,
        learning_rate=cfg.learning_rate,
        max_leaf_nodes=cfg.max_leaf_nodes,
        categorical_features="from_dtype",
        random_state=seed,
    )
    model.fit(_baseline_frame(train, spec, categories), train[LABEL].to_numpy())
    return model, categories


def slice_keys(frame: pd.DataFrame, cfg: EvaluateConfig) -> dict[str, pd.Series]:
    """The slicing columns: each configured column, plus hour-of-day buckets."""
    keys = {col: frame[col].astype(str) for col in cfg.slice_columns}
    hb = cfg.hour_buckets
    if hb is not None:
        edges = list(hb.edges)
        labels = [f"{lo:02d}-{hi:02d}h" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        keys["hour_bucket"] = pd.cut(frame[hb.column], bins=edges, right=False, labels=labels).astype(str)
    return keys


def slice_metrics(
    frame: pd.DataFrame, y: np.ndarray, proba: np.ndarray, cfg: EvaluateConfig, threshold: float
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per slice value, for slices with at least ``cfg.min_slice_rows`` rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, key in slice_keys(frame, cfg).items():
        out[name] = {}
        for value, idx in key.groupby(key, observed=True).indices.items():
            if len(idx) >= cfg.min_slice_rows and len(np.unique(y[idx])) == 2:
                out[name][str(value)] = binary_metrics(y[idx], proba[idx], threshold)
    return out


def flag_slices(overall: dict[str, float], slices: dict[str, dict[str, dict[str, float]]], margin: float) -> list[str]:
    """Slices whose AUC falls more than ``margin`` below the overall AUC."""
    return [
        f"{name}={value}: AUC {m['auc']:.3f} vs {overall['auc']:.3f} overall"
        for name, values in slices.items()
        for value, m in values.items()
        if m["auc"] < overall["auc"] - margin
    ]


def _plots(y: np.ndarray, curves: dict[str, np.ndarray], threshold: float, out_dir: Path) -> list[Path]:
    """ROC, precision-recall, reliability curves and the challenger's confusion matrix, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve

    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, proba in curves.items():
        fpr, tpr, _ = roc_curve(y, proba)
        axes[0].plot(fpr, tpr, label=name)
        prec, rec, _ = precision_recall_curve(y, proba)
        axes[1].plot(rec, prec, label=name)
        frac, mean = calibration_curve(y, proba, n_bins=10, strategy="quantile")
        axes[2].plot(mean, frac, marker="o", label=name)
    axes[0].plot([0, 1], [0, 1], "k:", lw=1)
    axes[2].plot([0, 1], [0, 1], "k:", lw=1)
    for ax, (title, xl, yl) in zip(
        axes,
        [
            ("ROC", "false positive rate", "true positive rate"),
            ("Precision-recall", "recall", "precision"),
            ("Reliability", "mean predicted probability", "observed positive rate"),
        ],
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "curves.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        y, (curves["challenger"] >= threshold).astype(int), display_labels=["on time", "late"], ax=ax, colorbar=False
    )
    ax.set_title(f"Challenger at threshold {threshold}")
    fig.tight_layout()
    paths.append(out_dir / "confusion_matrix.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def _score_champion(
    name: str, dataset: DatasetConfig, holdout: pd.DataFrame, tracking_uri: str
) -> tuple[str | None, np.ndarray | None]:
    """The current champion's probabilities on the same holdout (None before the first promotion)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.model.pyfunc import PROBABILITY

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        return None, None
    with use_tracking(tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    proba = model.predict(holdout[list(dataset.features.all)])[PROBABILITY].to_numpy()
    return str(version), np.asarray(proba, dtype=np.float32)


def evaluate(
    dataset: DatasetConfig,
    preprocess_cfg: PreprocessConfig,
    train_cfg: TrainConfig,
    cfg: EvaluateConfig,
    register_cfg: RegisterConfig,
    processed_dir: Path,
    model_path: Path,
    out_dir: Path,
    tracking: Tracking,
) -> dict[str, Any]:
    """Score the challenger, the current champion and a baseline on the same holdout.

    Overall and per-slice metrics for each, flagged slices, and ROC, precision-recall,
    reliability and confusion-matrix plots; all logged to the run's MLflow run and
    written to ``out_dir`` (``evaluation.json``, ``holdout_scores.parquet``, PNGs).

    Args:
        dataset: the feature spec, key and time columns.
        preprocess_cfg: how the holdout shards were written (compression).
        train_cfg: its ``seed`` seeds the baseline and its training sample.
        cfg: the ``evaluate`` section: threshold, baseline, slices.
        register_cfg: its ``model_name`` names the champion scored beside the challenger.
        processed_dir: the output of :func:`pipelines.steps.preprocess.preprocess`.
        model_path: the challenger's ``model.keras``.
        out_dir: where the evaluation files go.
        tracking: the MLflow run to log into.

    Returns:
        The MLflow run id, the path of ``evaluation.json``, the overall metrics of the
        challenger, the baseline and the champion, the flagged slices and the features
        flagged as not helping (permutation importance below ``cfg.importance.min_drop``).

    Raises:
        NonFiniteScores: a model scored a holdout row NaN or infinite.
        NonFiniteMetrics: an overall metric or an importance came out NaN or infinite (e.g. a
            holdout of one class has no AUC).
    """
    _passive_openmp()
    import mlflow

    from pipelines.model.importance import flag_unhelpful, importance_table, permutation_importances
    from pipelines.model.network import load_model
    from pipelines.model.tfdata import make_dataset

    spec, threshold = dataset, cfg.threshold
    manifest = load_manifest(processed_dir)
    splits = manifest["splits"]
    holdout = pd.read_parquet(splits["holdout"]["parquet"])
    y = holdout[LABEL].to_numpy()

    model = load_model(str(model_path))
    ds = make_dataset(splits["holdout"]["tfrecords"], spec, 8192, compression=preprocess_cfg.compression).map(
        lambda x, y: x
    )
    proba = np.asarray(model.predict(ds, verbose=0), dtype=np.float32).reshape(-1)
    if len(proba) != len(holdout):
        raise RuntimeError(f"holdout shards hold {len(proba)} rows, the holdout split {len(holdout)}")
    # Rows named by their key in a non-finite score's message, or by their position in the holdout split.
    keys = list(spec.key_columns) or ["holdout row number"]
    ids = row_labels(holdout[keys]) if spec.key_columns else [str(i) for i in range(len(holdout))]
    require_finite_scores(proba, ids, "challenger on the holdout", keys)  # before the baseline's fit
    curves = {"challenger": proba}

    train = read_sample(splits["train"]["parquet"], cfg.baseline.max_rows, train_cfg.seed)
    baseline, categories = fit_baseline(train, spec, cfg.baseline, train_cfg.seed)
    del train
    curves["baseline"] = baseline.predict_proba(_baseline_frame(holdout, spec, categories))[:, 1]
    champion_version, champion_proba = _score_champion(register_cfg.model_name, spec, holdout, tracking.tracking_uri)
    if champion_proba is not None:
        curves["champion"] = champion_proba

    classes = np.unique(y)
    hint = f" (the holdout holds {len(y)} rows of class {classes[0]} only)" if len(classes) == 1 else ""
    result: dict[str, Any] = {"threshold": threshold, "champion_version": champion_version}
    for name, p in curves.items():
        who = f"{name} v{champion_version}" if name == "champion" else name
        require_finite_scores(p, ids, f"{who} on the holdout", keys)
        overall = binary_metrics(y, p, threshold)
        require_finite_metrics(overall, f"{who} on the holdout", hint)
        slices = slice_metrics(holdout, y, p, cfg, threshold)
        result[name] = {"overall": overall, "slices": slices}
    result["flagged_slices"] = flag_slices(
        result["challenger"]["overall"], result["challenger"]["slices"], cfg.slice_flag_margin
    )
    # Kept at the top level too: what register and the CLI read.
    result["model"] = result["challenger"]["overall"]
    importance = permutation_importances(model, spec.features, holdout, y, cfg.importance, train_cfg.seed)
    require_finite_metrics(
        {f"importance of {k}": v["mean"] for k, v in importance["features"].items()}, "permutation importance"
    )
    result["feature_importance"] = importance
    result["unhelpful_features"] = flag_unhelpful(importance, cfg.importance.min_drop)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=1))
    scores = holdout[list(dict.fromkeys([*spec.key_columns, spec.time_column]))].copy()
    scores[LABEL] = y
    for name, p in curves.items():
        scores[name] = p
    scores.to_parquet(out_dir / "holdout_scores.parquet", index=False)
    plots = _plots(y, curves, threshold, out_dir)

    run_id = get_or_create_run(tracking)
    client = mlflow.MlflowClient(tracking.tracking_uri)
    now = int(time.time() * 1000)
    metrics = {f"holdout_{k}": v for k, v in result["challenger"]["overall"].items()}
    metrics.update({f"baseline_holdout_{k}": v for k, v in result["baseline"]["overall"].items()})
    if "champion" in result:
        metrics.update({f"champion_holdout_{k}": v for k, v in result["champion"]["overall"].items()})
    metrics.update({f"importance_{k}": v["mean"] for k, v in importance["features"].items()})
    metrics["importance_seconds"] = importance["seconds"]
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_table(
        run_id, importance_table(importance, cfg.importance.min_drop), "evaluation/feature_importance.json"
    )
    client.set_tag(run_id, "evaluation.flagged_slices", "; ".join(result["flagged_slices"]) or "none")
    client.set_tag(
        run_id,
        "evaluation.unhelpful_features",
        ", ".join(line.split(":")[0] for line in result["unhelpful_features"]) or "none",
    )
    for path in [out_dir / EVALUATION_FILE, *plots]:
        client.log_artifact(run_id, str(path), "evaluation")
    for line in result["flagged_slices"]:
        log.warning("flagged slice: %s", line)
    for line in result["unhelpful_features"]:
        log.warning("feature not helping: %s", line)
    log.info(
        "permutation importance of %d features on %d holdout rows (%d repeats) in %.1fs",
        len(importance["features"]),
        importance["rows"],
        importance["repeats"],
        importance["seconds"],
    )
    log.info(
        "holdout AUC: challenger %.4f, baseline %.4f, champion %s",
        result["challenger"]["overall"]["auc"],
        result["baseline"]["overall"]["auc"],
        f"{result['champion']['overall']['auc']:.4f} (v{champion_version})" if "champion" in result else "none yet",
    )
    return {
        "mlflow_run_id": run_id,
        "evaluation_path": str(out_dir / EVALUATION_FILE),
        "model": result["challenger"]["overall"],
        "baseline": result["baseline"]["overall"],
        "champion": result.get("champion", {}).get("overall"),
        "champion_version": champion_version,
        "flagged_slices": result["flagged_slices"],
        "unhelpful_features": [line.split(":")[0] for line in result["unhelpful_features"]],
    }
