"""Numbers that must be finite: the training loss, published scores, evaluation metrics.

A NaN or an infinity that slips through does not fail loudly on its own: a model trained
into NaN weights scores every row NaN, a NaN probability compares False with every
threshold (a silent "on time" decision), and a NaN metric used to be dropped from MLflow
without a word. Each guard here turns one into a :class:`~pipelines.errors.StepError`
that says what, where and how many.

Only NumPy and the standard library are imported at module level (Keras inside
:func:`nan_guard`), so the JAX training subprocess imports it without TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.errors import StepError

SHOWN = 10  # ids named in a message, at most


class TrainingDiverged(StepError):
    """The training loss became NaN or infinite; nothing was saved."""

    def __init__(self, message: str, epoch: int | None = None, batch: int | None = None):
        super().__init__(message)
        self.epoch, self.batch = epoch, batch

    def __reduce__(self):
        # With its epoch and batch, so it crosses from the step worker's process to the task intact.
        return (type(self), (str(self), self.epoch, self.batch))


class NonFiniteScores(StepError):
    """A model returned NaN or infinite probabilities; they were not published."""


class NonFiniteMetrics(StepError):
    """An evaluation metric came out NaN or infinite."""


def divergence_message(epoch: int, batch: int, loss: float, learning_rate: float | None = None) -> str:
    """What a :class:`TrainingDiverged` says: where (1-based epoch and batch), the loss, what to look at."""
    lr = f" at train.learning_rate {learning_rate:g}" if learning_rate is not None else ""
    return (
        f"training diverged: the loss became {loss} at epoch {epoch}, batch {batch}{lr}; "
        "training stopped and no model was saved or registered. Look for non-finite or extreme "
        "values in the training split, or lower train.learning_rate"
    )


def nan_guard(learning_rate: float | None = None):
    """A Keras callback that stops training with :class:`TrainingDiverged` at the first non-finite loss.

    Keras' ``TerminateOnNaN`` with ``raise_error``, raising the step's own error with the
    epoch and batch (1-based) instead of a bare ``RuntimeError``. It raises inside ``fit``,
    so no later callback runs for the broken epoch: no checkpoint of NaN weights, no NaN
    epoch metrics, and ``BackupAndRestore`` keeps the last good epoch.
    """
    import keras

    class NanGuard(keras.callbacks.TerminateOnNaN):
        def __init__(self) -> None:
            super().__init__(raise_error=True)
            self.epoch = 0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                message = divergence_message(self.epoch + 1, batch + 1, float(loss), learning_rate)
                raise TrainingDiverged(message, self.epoch + 1, batch + 1)

    return NanGuard()


def non_finite_rows(values: Any) -> np.ndarray:
    """Positions of the NaN or infinite values of a vector."""
    return np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))


def row_labels(frame: Any) -> list[str]:
    """Each row of a frame of identifying columns as ``(v1, v2, ...)``, dates without their midnight."""
    import pandas as pd

    def text(v: Any) -> str:
        if isinstance(v, pd.Timestamp) and v == v.normalize():
            return v.date().isoformat()
        return str(v)

    return ["(" + ", ".join(text(v) for v in row) + ")" for row in frame.itertuples(index=False, name=None)]


def require_finite_scores(scores: Any, ids: Sequence[str], what: str, id_columns: Sequence[str] = ()) -> None:
    """Refuse scores with a NaN or infinite value, naming how many and the first rows' ids.

    Args:
        scores: the probabilities, one per row.
        ids: one label per row (:func:`row_labels` of its key columns), named in the message.
        what: what was scored, by what, e.g. ``"flight_delay v3 on 2013-06-22"``.
        id_columns: the columns ``ids`` are made of, named once.

    Raises:
        NonFiniteScores: any score is NaN or infinite.
    """
    bad = non_finite_rows(scores)
    if not bad.size:
        return
    shown = ", ".join(str(ids[i]) for i in bad[:SHOWN])
    more = f" and {bad.size - SHOWN} more" if bad.size > SHOWN else ""
    keys = f" ({', '.join(id_columns)})" if id_columns else ""
    raise NonFiniteScores(
        f"{what}: {bad.size} of {len(scores)} scores are NaN or infinite, rows{keys} {shown}{more}; "
        "nothing was written. The model or these rows' inputs are broken"
    )


def require_finite_metrics(metrics: Mapping[str, float], what: str, hint: str = "") -> None:
    """Refuse metrics with a NaN or infinite value, naming each.

    Raises:
        NonFiniteMetrics: any value is NaN or infinite.
    """
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        listed = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteMetrics(f"{what}: {listed} not finite{hint}; the evaluation cannot be trusted")
