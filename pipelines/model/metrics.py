"""The binary classification metrics every comparison uses: evaluation's holdout and monitoring's window.

One definition, so a champion's holdout metrics and its metrics on scored days compare.
"""

from __future__ import annotations

import numpy as np


def binary_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, log loss, Brier score, accuracy, precision and recall at ``threshold``.

    Args:
        y_true: the 0/1 labels.
        proba: the predicted probabilities of label 1.
        threshold: a probability at or above it predicts 1 (accuracy, precision, recall).

    Returns:
        The metrics, with ``positive_rate`` and ``rows``; ``auc`` is NaN when only one class is present.
    """
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
