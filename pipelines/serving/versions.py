"""A registered model version loaded for serving: the batch model, called on the fast path.

:func:`load_version` loads a version the way batch scoring does (the MLflow
pyfunc of :mod:`pipelines.model.pyfunc`, whose Keras model holds the
preprocessing), then wraps the same Keras model in a ``tf.function`` with a
fixed input signature: one traced graph called directly, without the fixed
cost of ``model.predict`` on every call. All preprocessing is inside that
model, as in training and batch scoring: no training/serving skew. Request
rows become its raw inputs with the types that
:func:`pipelines.model.features.to_model_inputs` gives a frame (float32 with
NaN for a missing number, strings for categories).

Before a version may serve, :func:`load_version` checks it: the features it
needs are all in the request schema, and its scores of its own logged input
example, sent through the request path, are finite and equal (to float
tolerance) to the batch pyfunc's scores of the same frame.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import FeatureSpec
from pipelines.serving.schema import Rows

log = logging.getLogger(__name__)

# Where evaluate logs its result (with the decision threshold) in the version's run.
EVALUATION_ARTIFACT = "evaluation/evaluation.json"
DATASET_REVISION_TAG = "lineage.dataset_git_rev"
# Online and batch scores of the same rows must agree this closely (float32 arithmetic in another order).
PARITY_TOLERANCE = 1e-5


class VersionRejected(RuntimeError):
    """A version that failed to load or failed its checks: it is not swapped in."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded version: what it is, where it came from, and its scoring function."""

    name: str
    version: str
    alias: str
    run_id: str | None
    dataset_revision: str | None
    threshold: float
    threshold_source: str  # "evaluation" (recorded with the version's run) or "params" (evaluate.threshold)
    features: FeatureSpec
    loaded_at: str
    load_seconds: float
    _score: Callable[[dict[str, Any]], Any] = field(repr=False, compare=False)

    def score_rows(self, rows: Rows | Sequence[dict[str, Any]]) -> np.ndarray:
        """Delay probabilities of validated rows (columns, or dicts of raw feature values), as float32.

        The request schema has already typed every value, so what :func:`to_model_inputs` does to a
        frame comes down to casting the columns (``None`` as NaN, or as the missing category), without
        a frame per request. The check at load time and the parity test hold both paths equal.
        """
        from pipelines.model.features import MISSING_CATEGORY

        columns = rows.columns if isinstance(rows, Rows) else {c: [row[c] for row in rows] for c in self.features.all}
        inputs = {col: _as_float32(columns[col]) for col in self.features.numeric}
        for col in self.features.categorical:
            values = np.asarray(columns[col], dtype=object)
            missing = values == None  # noqa: E711 (elementwise)
            if missing.any():
                values = np.where(missing, MISSING_CATEGORY, values)
            inputs[col] = values.astype(str)
        return self._score(inputs)

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` shows of this version."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "mlflow_run_id": self.run_id,
            "dataset_revision": self.dataset_revision,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
        }


def _as_float32(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values.astype(np.float32)
    return np.array(list(values), dtype=np.float32)  # None becomes NaN


def fast_scorer(model: Any) -> Callable[[dict[str, Any]], Any]:
    """The Keras model as one traced function of its raw inputs, returning probabilities as a NumPy vector.

    The input signature is fixed (a vector per input, any length), so the function is traced
    once, whatever the batch size. The float inputs travel as the columns of one matrix, split
    back into the model's inputs inside the graph, and the traced graph is called directly:
    converting 16 separate arrays and matching them to the signature on each call cost about
    0.6 ms of the 1.2 ms a single row took (measured on this project's model).
    """
    import tensorflow as tf

    inputs = model.input if isinstance(model.input, dict) else {t.name: t for t in model.inputs}
    packed = tuple(name for name, tensor in inputs.items() if tensor.dtype == tf.float32)
    apart = {
        name: tf.TensorSpec(shape=(None,), dtype=tensor.dtype, name=name)
        for name, tensor in inputs.items()
        if name not in packed
    }

    @tf.function(input_signature=[tf.TensorSpec(shape=(None, len(packed)), dtype=tf.float32), apart])
    def _probabilities(matrix: Any, others: dict[str, Any]) -> Any:
        features = {name: matrix[:, i] for i, name in enumerate(packed)} | others
        return tf.reshape(model(features, training=False), [-1])

    graph = _probabilities.get_concrete_function()
    others = tuple(apart)
    # Binding the arguments to the signature costs about 0.15 ms a call; with the tensors in
    # the graph's flat order (tf.nest's: dict keys sorted) its flat call skips that. The parity
    # check at load compares these scores with the batch pyfunc's, so a change in TensorFlow
    # that broke this would refuse the version, never serve wrong scores.
    call_flat = getattr(graph, "_call_flat", None)

    def score(values: dict[str, Any]) -> Any:
        n = len(values[packed[0] if packed else others[0]])
        matrix = np.empty((n, len(packed)), dtype=np.float32)
        for i, name in enumerate(packed):
            matrix[:, i] = values[name]
        args = (matrix, {name: values[name] for name in others})
        if call_flat is None:
            return graph(*args).numpy()
        flat = [tf.constant(value) for value in tf.nest.flatten(args)]
        return call_flat(flat, graph.captured_inputs).numpy()

    return score


def prepare_runtime() -> None:
    """Import what loading a version needs, then exempt everything alive from garbage collection.

    A load allocates a great many objects, which sets off full collections; each one walks
    every object of TensorFlow, MLflow and pandas while holding the GIL, and requests wait it
    out (up to about 300 ms a collection, several per load, measured on this machine).
    ``gc.freeze`` moves what exists now, modules and nothing served, to the permanent
    generation: later collections walk only what came after, and no version is ever frozen,
    so a version swapped out is still collected.
    """
    import gc

    import mlflow.pyfunc  # noqa: F401
    import tensorflow  # noqa: F401

    import pipelines.model.pyfunc  # noqa: F401

    gc.collect()
    gc.freeze()


def _threshold(client: Any, run_id: str | None, default: float) -> tuple[float, str]:
    """The decision threshold the version was evaluated at, else ``evaluate.threshold``."""
    if run_id:
        import tempfile

        try:
            with tempfile.TemporaryDirectory(prefix="serving-") as tmp:
                path = client.download_artifacts(run_id, EVALUATION_ARTIFACT, tmp)
                with open(path, encoding="utf-8") as fh:
                    return float(json.load(fh)["threshold"]), "evaluation"
        except Exception as err:  # an older or hand-registered version has no evaluation: use the params
            log.info("no recorded threshold for run %s (%s): using evaluate.threshold", run_id, err)
    return default, "params"


def load_version(
    client: Any,
    name: str,
    version: str,
    alias: str,
    request_features: FeatureSpec,
    default_threshold: float,
) -> ServedModel:
    """Load, trace and check one registered version.

    MLflow's global tracking and registry URI must name the registry ``client`` reads
    (``pyfunc.load_model`` resolves ``models:/`` URIs through them): the service sets them once.

    Args:
        client: an ``mlflow.MlflowClient`` of the registry.
        name, version, alias: the version, and the alias it is served under.
        request_features: the features the request schema carries (``dataset.features``).
        default_threshold: ``evaluate.threshold``, for a version without a recorded one.

    Returns:
        The loaded version, ready to score.

    Raises:
        VersionRejected: it could not be loaded, needs a feature requests do not carry, or its
            warm-up scores are not finite or differ from the batch model's.
    """
    import mlflow.pyfunc

    started = time.monotonic()
    try:
        meta = client.get_model_version(name, version)
        path_before = list(sys.path)
        try:
            pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        finally:
            # The model's logged code is already imported (the service's own): keep sys.path from growing per load.
            sys.path[:] = path_before
        inner = pyfunc.unwrap_python_model()
        keras_model, features = inner.model, inner.features
    except Exception as err:
        raise VersionRejected(f"{name} v{version} could not be loaded: {type(err).__name__}: {err}") from err
    missing = [c for c in features.all if c not in request_features.all]
    if missing:
        raise VersionRejected(f"{name} v{version} needs features the requests do not carry: {missing}")
    try:
        score = fast_scorer(keras_model)
    except Exception as err:
        raise VersionRejected(f"{name} v{version} could not be traced: {type(err).__name__}: {err}") from err
    threshold, source = _threshold(client, meta.run_id, default_threshold)
    served = ServedModel(
        name=name,
        version=str(version),
        alias=alias,
        run_id=meta.run_id,
        dataset_revision=(meta.tags or {}).get(DATASET_REVISION_TAG),
        threshold=threshold,
        threshold_source=source,
        features=features,
        loaded_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        load_seconds=0.0,
        _score=score,
    )
    _warm_up(served, pyfunc, request_features)
    served = replace(served, load_seconds=time.monotonic() - started)
    log.info(
        "loaded %s v%s (%s) in %.1f s, threshold %.3f (%s)",
        name,
        version,
        alias,
        served.load_seconds,
        threshold,
        source,
    )
    return served


def _warm_up(served: ServedModel, pyfunc: Any, request_features: FeatureSpec) -> None:
    """Score the version's input example as request rows: finite, and equal to the batch pyfunc's scores of the frame."""
    from pipelines.model.pyfunc import PROBABILITY

    example = None
    try:
        example = pyfunc.input_example
    except Exception as err:  # a version logged without an example: a synthetic row stands in
        log.info("%s v%s has no input example (%s)", served.name, served.version, err)
    if not isinstance(example, pd.DataFrame) or example.empty or not set(served.features.all) <= set(example.columns):
        example = pd.DataFrame(
            {c: [np.nan] for c in served.features.numeric} | {c: [""] for c in served.features.categorical}
        )
    example = example[list(request_features.all)] if set(request_features.all) <= set(example.columns) else example
    rows = example.astype(object).where(example.notna(), None).to_dict("records")
    try:
        online = served.score_rows(rows)
        batch = pyfunc.predict(example)[PROBABILITY].to_numpy(dtype=np.float32)
    except Exception as err:
        raise VersionRejected(
            f"{served.name} v{served.version} failed its warm-up prediction: {type(err).__name__}: {err}"
        ) from err
    if online.shape != (len(example),) or not np.isfinite(online).all():
        raise VersionRejected(f"{served.name} v{served.version} warm-up scores are not finite: {online.tolist()}")
    gap = float(np.max(np.abs(online - batch)))
    if gap > PARITY_TOLERANCE:
        raise VersionRejected(f"{served.name} v{served.version}: online and batch scores differ by {gap:.2e}")
