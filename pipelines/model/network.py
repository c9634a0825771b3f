"""The Keras model in two parts, the saved model they make, and the hardware they run on.

* The *preprocessing* model turns raw features (numeric as float32 with NaN
  for missing, categorical as strings) into two dense tensors: ``numeric``
  (imputed, standardised values, missing-value indicators, periodic encodings
  of the time of day and of the year) and ``ids`` (one integer id per
  categorical feature, per integer feature embedded as a category, per
  numeric feature's quantile bucket and per feature cross). Its statistics,
  vocabularies and bucket boundaries come from the training split. It has no
  weights and, in training, runs inside the tf.data pipeline, outside any
  distribution strategy: strings never reach the replicas (a
  ``MirroredStrategy`` cannot reduce them; this is how TensorFlow recommends
  using preprocessing layers under distribution).
* The *core* model takes those two tensors and returns the delay
  probability: a wide (linear) part over every id and value plus a small deep
  part (embeddings, dense layers). It is built and fitted inside the strategy.
  Its code is in :mod:`pipelines.model.core`, which needs no TensorFlow: with
  ``train.backend: jax`` it trains under Keras' JAX backend in a subprocess
  (:mod:`pipelines.model.jax_fit`) and its weights come back to the same
  TensorFlow-backend model.
* :func:`compose_model` joins the two into the *full* model, raw features in
  and probability out, which is what is saved, evaluated and served: the same
  preprocessing layers run in training and serving, so there is no skew.

TensorFlow is imported inside functions only: importing this module is cheap
and never touches CUDA.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import DatasetConfig, TrainConfig
from pipelines.model.core import IDS, NUMERIC  # the preprocessing model's outputs, the core's inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    strategy: Any  # a tf.distribute.Strategy; None under JAX (the training subprocess distributes)
    strategy_name: str
    devices: list[str]
    precision: str  # Keras dtype policy name
    backend: str = "tensorflow"  # the Keras backend the core trains under (train.backend)
    env: dict[str, str] = field(default_factory=dict)  # for the JAX training subprocess (e.g. XLA_FLAGS)

    @property
    def replicas(self) -> int:
        """Devices a global batch is split over."""
        return self.strategy.num_replicas_in_sync if self.strategy is not None else len(self.devices)

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy_name,
            "devices": ",".join(self.devices),
            "replicas": self.replicas,
            "precision": self.precision,
        }


def select_hardware(
    mixed_precision: bool = False, devices: list[str] | None = None, backend: str = "tensorflow"
) -> Hardware:
    """Pick the distribution and precision for the visible devices.

    TensorFlow: several GPUs (or several ``devices`` given explicitly, e.g. logical
    CPUs in tests): ``MirroredStrategy`` over all of them. One GPU: that GPU. None: the
    default strategy on the CPU. Mixed precision (float16) is applied on GPUs only.

    JAX (:func:`pipelines.model.jax_fit.jax_hardware`): Keras' ``DataParallel`` over JAX's devices, in the
    training subprocess; TensorFlow, which then only runs the input pipeline, is kept
    off the GPUs here so that JAX gets their memory.
    """
    if backend == "jax":
        from pipelines.model.jax_fit import jax_hardware

        return jax_hardware(mixed_precision, devices)
    import keras
    import tensorflow as tf

    gpus = [f"/gpu:{i}" for i, _ in enumerate(tf.config.list_physical_devices("GPU"))]
    chosen = devices if devices is not None else gpus
    if len(chosen) > 1:
        strategy, name = tf.distribute.MirroredStrategy(devices=chosen), "MirroredStrategy"
    elif len(chosen) == 1 and chosen[0].lower().startswith("/gpu"):
        strategy, name = tf.distribute.OneDeviceStrategy(chosen[0]), "OneDeviceStrategy"
    else:
        strategy, name = tf.distribute.get_strategy(), "default"
        chosen = chosen or ["/cpu:0"]
    on_gpu = any(d.lower().startswith("/gpu") for d in chosen)
    precision = "mixed_float16" if (mixed_precision and on_gpu) else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return Hardware(strategy=strategy, strategy_name=name, devices=list(chosen), precision=precision)


# --------------------------------------------------------------------------- custom layers


def _layer_classes() -> dict[str, type]:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="pipelines")
    class NumericPreprocessing(keras.layers.Layer):
        """Stack numeric inputs, replace NaN by the training mean, standardise."""

        def __init__(self, means: list[float], stds: list[float], **kwargs: Any):
            super().__init__(**kwargs)
            self.means = [float(m) for m in means]
            self.stds = [float(s) for s in stds]

        def call(self, inputs):
            x = ops.stack([ops.cast(t, "float32") for t in inputs], axis=-1)
            means = ops.convert_to_tensor(self.means, dtype="float32")
            stds = ops.convert_to_tensor(self.stds, dtype="float32")
            x = ops.where(ops.isnan(x), means, x)
            return ops.cast((x - means) / stds, self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0], len(self.means))

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "means": self.means, "stds": self.stds}

    @keras.saving.register_keras_serializable(package="pipelines")
    class MissingIndicators(keras.layers.Layer):
        """1.0 where an input is NaN, else 0.0, one column per input.

        Imputation hides that a value was missing, and missingness can carry
        signal (the weather station fails more often in bad weather).
        """

        def call(self, inputs):
            return ops.cast(ops.stack([ops.isnan(ops.cast(t, "float32")) for t in inputs], axis=-1), self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0], len(input_shape))

    @keras.saving.register_keras_serializable(package="pipelines")
    class PeriodicEncoding(keras.layers.Layer):
        """``sin`` and ``cos`` of ``2 pi t / period`` with ``t = sum(coefficients * inputs)``.

        Puts the ends of a cycle next to each other (23:00 beside 00:00, late
        December beside early January). Missing inputs give ``(0, 0)``, the
        centre of the circle.
        """

        def __init__(self, coefficients: list[float], period: float, **kwargs: Any):
            super().__init__(**kwargs)
            self.coefficients = [float(c) for c in coefficients]
            self.period = float(period)

        def call(self, inputs):
            t = sum(ops.cast(x, "float32") * w for x, w in zip(inputs, self.coefficients, strict=True))
            angle = t * (2 * math.pi / self.period)
            out = ops.stack([ops.sin(angle), ops.cos(angle)], axis=-1)
            return ops.cast(ops.where(ops.isnan(out), 0.0, out), self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0], 2)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "coefficients": self.coefficients, "period": self.period}

    @keras.saving.register_keras_serializable(package="pipelines")
    class IntegerCategories(keras.layers.Layer):
        """An integer-valued numeric input in ``[low, high]`` as a category id in ``[1, high - low + 1]``.

        Missing, fractional and out-of-range values all map to id 0 (like an
        unseen string in ``StringLookup``).
        """

        def __init__(self, low: int, high: int, **kwargs: Any):
            super().__init__(**kwargs)
            self.low, self.high = int(low), int(high)

        @property
        def size(self) -> int:
            return self.high - self.low + 2

        def call(self, x):
            x = ops.cast(x, "float32")
            valid = (x >= self.low) & (x <= self.high) & (ops.floor(x) == x)  # False for NaN
            return ops.cast(ops.where(valid, x - (self.low - 1), 0.0), "int64")

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, dtype="int64")

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "low": self.low, "high": self.high}

    @keras.saving.register_keras_serializable(package="pipelines")
    class NumericBuckets(keras.layers.Layer):
        """A numeric input as the id of its bucket: ``1 + #(boundaries <= x)``; missing is id 0.

        With quantile boundaries from the training split, an embedding of the
        bucket id is a learnt step function of the value, the kind of split a
        tree ensemble finds, next to the scaled value itself.
        """

        def __init__(self, boundaries: list[float], **kwargs: Any):
            super().__init__(**kwargs)
            self.boundaries = [float(b) for b in boundaries]

        @property
        def size(self) -> int:
            return len(self.boundaries) + 2

        def call(self, x):
            x = ops.cast(x, "float32")
            bounds = ops.convert_to_tensor(self.boundaries, dtype="float32")
            above = ops.sum(ops.cast(ops.expand_dims(x, -1) >= bounds, "int64"), axis=-1)
            return ops.where(ops.isnan(x), ops.zeros_like(above), above + 1)

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, dtype="int64")

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "boundaries": self.boundaries}

    @keras.saving.register_keras_serializable(package="pipelines")
    class CategoryIds(keras.layers.Layer):
        """Per-feature ids -> one ``(batch, features + crosses)`` tensor of ids into a shared table.

        Input ``i`` holds ids in ``[0, sizes[i])``. A cross ``(i, j, ...)`` is
        the mixed-radix id of the tuple, so each combination gets its own row.
        Every column is offset by the sizes of the columns before it, so one
        ``Embedding`` of ``total_size`` rows serves them all.
        """

        def __init__(self, sizes: list[int], crosses: list[list[int]] | None = None, **kwargs: Any):
            super().__init__(**kwargs)
            self.sizes = [int(s) for s in sizes]
            self.crosses = [[int(i) for i in c] for c in (crosses or [])]

        @property
        def column_sizes(self) -> list[int]:
            return self.sizes + [math.prod(self.sizes[i] for i in c) for c in self.crosses]

        @property
        def total_size(self) -> int:
            return sum(self.column_sizes)

        def call(self, inputs):
            ids = [ops.cast(x, "int64") for x in inputs]
            columns = list(ids)
            for cross in self.crosses:
                combined = ids[cross[0]]
                for i in cross[1:]:
                    combined = combined * self.sizes[i] + ids[i]
                columns.append(combined)
            offsets, start = [], 0
            for size in self.column_sizes:
                offsets.append(start)
                start += size
            return ops.stack(columns, axis=-1) + ops.convert_to_tensor(offsets, dtype="int64")

        def compute_output_spec(self, inputs):
            return keras.KerasTensor((inputs[0].shape[0], len(self.column_sizes)), dtype="int64")

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "sizes": self.sizes, "crosses": self.crosses}

    return {
        cls.__name__: cls
        for cls in (
            NumericPreprocessing,
            MissingIndicators,
            PeriodicEncoding,
            IntegerCategories,
            NumericBuckets,
            CategoryIds,
        )
    }


_LAYERS: dict[str, type] | None = None


def layer_classes() -> dict[str, type]:
    """The registered custom layers (created once, on first use, so importing is cheap)."""
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = _layer_classes()
    return _LAYERS


# --------------------------------------------------------------------------- the model


def _check_columns(spec: DatasetConfig, cfg: TrainConfig) -> None:
    """Fail early, naming the ``train.*`` key, if a derived feature refers to an unknown column."""
    from pipelines.config import ConfigError, train_column_problems

    problems = train_column_problems(spec, cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def bucket_boundaries(values: dict[str, Any], buckets: int) -> dict[str, list[float]]:
    """Quantile boundaries splitting each column's finite values into about ``buckets`` equal parts.

    Ties collapse (a column that is mostly one value gets fewer buckets).
    """
    import numpy as np

    out = {}
    for col, x in values.items():
        x = np.asarray(x, dtype=np.float64)
        x = x[np.isfinite(x)]
        if buckets < 2 or not x.size:
            out[col] = []
            continue
        qs = np.quantile(x, np.linspace(0, 1, buckets + 1)[1:-1])
        out[col] = [float(q) for q in np.unique(qs) if q > x.min()]
    return out


def boundaries_from_quantiles(quantiles: dict[str, list[float]], buckets: int) -> dict[str, list[float]]:
    """:func:`bucket_boundaries` from each column's quantiles on an even grid of levels (``stats.json``).

    Levels that fall on the grid give exactly what :func:`bucket_boundaries` gives
    on the values themselves; others are interpolated between grid points.
    """
    import numpy as np

    out = {}
    for col, q in quantiles.items():
        if buckets < 2 or not q:
            out[col] = []
            continue
        q = np.asarray(q, dtype=np.float64)
        qs = np.interp(np.linspace(0, 1, buckets + 1)[1:-1], np.linspace(0, 1, q.size), q)
        out[col] = [float(v) for v in np.unique(qs) if v > q[0]]
    return out


def build_preprocessing(
    spec: DatasetConfig,
    stats: dict[str, Any],
    cfg: TrainConfig,
    boundaries: dict[str, list[float]] | None = None,
):
    """Raw features -> ``{"numeric": (batch, n) float32, "ids": (batch, k) int64}``.

    Weight-free and deterministic. Training maps it over the tf.data pipeline;
    :func:`compose_model` puts it in front of the core model for serving.

    Args:
        spec: which features are numeric and categorical.
        stats: ``stats.json`` from preprocessing (means, stds, missing fractions, vocabularies).
        cfg: the derived features (``missing_indicators``, ``numeric_buckets``,
            ``integer_categories``, ``periodic``, ``crosses``).
        boundaries: bucket boundaries per numeric column, from
            :func:`bucket_boundaries` over the training split (needed with ``numeric_buckets``).

    Raises:
        ConfigError: a derived feature names a column that is not a feature.
    """
    import keras

    _check_columns(spec, cfg)
    layers = layer_classes()
    inputs: dict[str, Any] = {}
    for col in spec.features.numeric:
        inputs[col] = keras.Input(shape=(), dtype="float32", name=col)
    for col in spec.features.categorical:
        inputs[col] = keras.Input(shape=(), dtype="string", name=col)

    num = stats["numeric"]
    numeric = [
        layers["NumericPreprocessing"](
            means=[num[c]["mean"] for c in spec.features.numeric],
            stds=[num[c]["std"] for c in spec.features.numeric],
            dtype="float32",
            name="numeric_preprocessing",
        )([inputs[c] for c in spec.features.numeric])
    ]
    sometimes_missing = [c for c in spec.features.numeric if num[c].get("null_fraction", 0.0) > 0]
    if cfg.missing_indicators and sometimes_missing:
        numeric.append(
            layers["MissingIndicators"](dtype="float32", name="missing_indicators")(
                [inputs[c] for c in sometimes_missing]
            )
        )
    for name, enc in cfg.periodic.items():
        numeric.append(
            layers["PeriodicEncoding"](
                coefficients=list(enc.columns.values()), period=enc.period, dtype="float32", name=f"{name}_periodic"
            )([inputs[c] for c in enc.columns])
        )
    numeric_out = numeric[0] if len(numeric) == 1 else keras.layers.Concatenate(name=NUMERIC, dtype="float32")(numeric)

    ids: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for col in spec.features.categorical:
        vocab = stats["vocabulary"][col]
        ids[col] = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name=f"{col}_lookup")(inputs[col])
        sizes[col] = len(vocab) + 1
    for col, (low, high) in cfg.integer_categories.items():
        layer = layers["IntegerCategories"](low=low, high=high, name=f"{col}_category")
        ids[col], sizes[col] = layer(inputs[col]), layer.size
    if cfg.numeric_buckets:
        if boundaries is None:
            raise ValueError("train.numeric_buckets is set: pass the bucket boundaries (see bucket_boundaries)")
        for col in spec.features.numeric:
            layer = layers["NumericBuckets"](boundaries=boundaries.get(col, []), name=f"{col}_bucket")
            ids[f"{col}_bucket"], sizes[f"{col}_bucket"] = layer(inputs[col]), layer.size
    order = list(ids)
    ids_out = layers["CategoryIds"](
        sizes=[sizes[c] for c in order],
        crosses=[[order.index(c) for c in cross] for cross in cfg.crosses],
        name=IDS,
    )([ids[c] for c in order])
    return keras.Model(inputs=inputs, outputs={NUMERIC: numeric_out, IDS: ids_out}, name="preprocessing")


def core_shape(preprocessing: Any):
    """The core's input widths (:class:`pipelines.model.core.CoreShape`) from the preprocessing model."""
    from pipelines.model.core import CoreShape

    id_layer = preprocessing.get_layer(IDS)
    return CoreShape(
        numeric_width=int(preprocessing.output[NUMERIC].shape[-1]),
        id_columns=len(id_layer.column_sizes),
        id_rows=int(id_layer.total_size),
    )


def build_core_model(preprocessing: Any, cfg: TrainConfig, steps_per_epoch: int | None = None):
    """The compiled trainable part: ``{"numeric", "ids"}`` -> delay probability.

    :func:`pipelines.model.core.build_core` (importable without TensorFlow) over the
    input widths of ``preprocessing``. Build it inside the distribution strategy's scope.

    Args:
        preprocessing: the model from :func:`build_preprocessing` (for the input widths and id range).
        cfg: layer sizes, dropout, learning rate and its schedule.
        steps_per_epoch: batches per epoch; with it, the learning rate decays
            along a cosine over ``cfg.epochs`` epochs (``cfg.cosine_decay``).
    """
    from pipelines.model.core import build_core

    return build_core(core_shape(preprocessing), cfg, steps_per_epoch)


def compose_model(preprocessing: Any, core: Any):
    """The full model, raw features in and probability out: ``core(preprocessing(raw))``.

    It shares the layers (and so the trained weights) of both parts; this is
    the model to save, evaluate and serve. Not compiled: it is for scoring.
    """
    import keras

    raw = {name: keras.Input(shape=(), dtype=tensor.dtype, name=name) for name, tensor in preprocessing.input.items()}
    return keras.Model(inputs=raw, outputs=core(preprocessing(raw)), name="flight_delay")


def load_model(path: str):
    """Load a saved model, registering the custom layers first."""
    import keras

    layer_classes()
    return keras.saving.load_model(path)


def predict_proba(model: Any, inputs: dict[str, Any], batch_size: int = 8192):
    """Delay probabilities for raw inputs from :func:`pipelines.model.features.to_model_inputs`.

    Scored ``batch_size`` rows at a time through the model's compiled predict
    function (``predict_on_batch``), so memory is bounded by one chunk. A
    ``tf.data`` pipeline built per call, as before, copied each call's arrays into
    a new graph: scoring a million rows in chunks of 100,000 took ten times as long
    and 1.2 GiB more memory (measured: 24.5 s against 2.5 s, the same probabilities).
    """
    import numpy as np

    n = len(next(iter(inputs.values())))
    out = np.empty(n, dtype=np.float32)
    for lo in range(0, n, batch_size):
        chunk = {name: values[lo : lo + batch_size] for name, values in inputs.items()}
        out[lo : lo + batch_size] = np.asarray(model.predict_on_batch(chunk), dtype=np.float32).reshape(-1)
    return out
