"""Permutation importance of each raw feature on the holdout, through the composed (saved) model.

scikit-learn's :func:`sklearn.inspection.permutation_importance` shuffles one raw
column at a time and measures how much the holdout AUC falls. It scores the model
as served, raw rows in: a raw column's shuffle reaches every derived input made from
it (scaled value, bucket, category, crosses), so the drop is what the model would
lose without the column. :class:`ComposedModelClassifier` is the scikit-learn
estimator over the Keras model; :func:`flag_unhelpful` names the features whose
shuffle costs less than ``evaluate.importance.min_drop``: candidates to drop, or
signs of a broken input.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from pipelines.config import FeatureSpec, ImportanceConfig

SCORING = "roc_auc"  # the drop is in holdout AUC, the metric the promotion gate reads


class ComposedModelClassifier(ClassifierMixin, BaseEstimator):
    """A fitted Keras model (raw features in, probability out) as a scikit-learn binary classifier.

    Rows go through :func:`pipelines.model.features.to_model_inputs`, as in batch scoring
    and evaluation. Never fitted here: ``fit`` refuses.
    """

    def __init__(self, model: Any = None, features: FeatureSpec | None = None, batch_size: int = 8192):
        self.model = model
        self.features = features
        self.batch_size = batch_size

    @property
    def classes_(self) -> np.ndarray:
        return np.array([0, 1])

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X: pd.DataFrame, y: Any = None) -> ComposedModelClassifier:  # noqa: N803 (scikit-learn's names)
        raise NotImplementedError("the model is trained by the train step; this wrapper only scores it")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        from pipelines.model.features import to_model_inputs
        from pipelines.model.network import predict_proba

        p = predict_proba(self.model, to_model_inputs(X, self.features), self.batch_size).astype(np.float64)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def permutation_importances(
    model: Any, features: FeatureSpec, holdout: pd.DataFrame, y: np.ndarray, cfg: ImportanceConfig, seed: int
) -> dict[str, Any]:
    """Each feature's drop in holdout AUC when its column is shuffled, mean and std over the repeats.

    Args:
        model: the composed Keras model.
        features: the raw feature columns (each one permuted in turn).
        holdout: the holdout rows (at least the feature columns).
        y: their labels.
        cfg: ``evaluate.importance``: repeats and the row cap.
        seed: seeds the row sample and the shuffles (``train.seed``).

    Returns:
        ``scoring``, ``rows``, ``repeats``, ``baseline`` (the unshuffled score), ``seconds``
        and ``features``: name -> ``{"mean", "std"}``, largest drop first.
    """
    from sklearn.inspection import permutation_importance

    started = time.perf_counter()
    X = holdout[list(features.all)].reset_index(drop=True)  # noqa: N806
    y = np.asarray(y).astype(int)
    if len(X) > cfg.max_rows:
        take = np.sort(np.random.default_rng(seed).choice(len(X), size=cfg.max_rows, replace=False))
        X, y = X.iloc[take].reset_index(drop=True), y[take]  # noqa: N806
    estimator = ComposedModelClassifier(model, features)
    found = permutation_importance(
        estimator, X, y, scoring=SCORING, n_repeats=cfg.repeats, random_state=seed, n_jobs=None
    )
    from sklearn.metrics import get_scorer

    baseline = float(get_scorer(SCORING)(estimator, X, y))
    order = np.argsort(-found.importances_mean, kind="stable")
    return {
        "scoring": SCORING,
        "rows": int(len(X)),
        "repeats": cfg.repeats,
        "baseline": baseline,
        "seconds": round(time.perf_counter() - started, 2),
        "features": {
            X.columns[i]: {"mean": float(found.importances_mean[i]), "std": float(found.importances_std[i])}
            for i in order
        },
    }


def flag_unhelpful(importance: dict[str, Any], min_drop: float) -> list[str]:
    """Features whose shuffling lowers the score by less than ``min_drop``, as lines naming the drop."""
    return [
        f"{name}: shuffling it lowers the holdout AUC by {v['mean']:.4f} (+/- {v['std']:.4f}), "
        f"less than evaluate.importance.min_drop {min_drop:g}"
        for name, v in importance["features"].items()
        if v["mean"] < min_drop
    ]


def importance_table(importance: dict[str, Any], min_drop: float) -> pd.DataFrame:
    """One row per feature: the mean and std drop, its rank, and whether it is flagged."""
    rows = [
        {
            "feature": name,
            "rank": rank,
            "auc_drop_mean": v["mean"],
            "auc_drop_std": v["std"],
            "helps": v["mean"] >= min_drop,
        }
        for rank, (name, v) in enumerate(importance["features"].items(), start=1)
    ]
    return pd.DataFrame(rows)


def card_lines(evaluation: dict[str, Any]) -> list[str]:
    """The model card's section on feature importance, from an evaluation (empty when it has none)."""
    imp = evaluation.get("feature_importance")
    if not imp:
        return []
    lines = [
        "## Feature importance",
        f"Drop in holdout AUC when each feature is shuffled ({imp['repeats']} repeats, {imp['rows']} rows; "
        f"AUC {imp['baseline']:.4f} unshuffled).",
        "",
        "| feature | AUC drop | std |",
        "|---|---|---|",
        *(f"| {name} | {v['mean']:.4f} | {v['std']:.4f} |" for name, v in imp["features"].items()),
        "",
    ]
    flagged = evaluation.get("unhelpful_features") or []
    lines += [f"- Not helping: {line}" for line in flagged] or ["- Every feature helps."]
    return [*lines, ""]
