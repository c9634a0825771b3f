"""The Keras model, with its preprocessing inside, and the hardware it runs on.

The model takes raw features (numeric as float32 with NaN for missing,
categorical as strings) and does its own imputation, scaling and vocabulary
lookup with statistics learnt from the training split, so the saved model
needs nothing else to score a raw row.

TensorFlow is imported inside functions only: importing this module is cheap
and never touches CUDA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipelines.config import DatasetConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    strategy: Any  # a tf.distribute.Strategy
    strategy_name: str
    devices: list[str]
    precision: str  # Keras dtype policy name

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy_name,
            "devices": ",".join(self.devices),
            "replicas": self.strategy.num_replicas_in_sync,
            "precision": self.precision,
        }


def select_hardware(mixed_precision: bool = True, devices: list[str] | None = None) -> Hardware:
    """Pick the distribution strategy and precision for the visible devices.

    Several GPUs (or several ``devices`` given explicitly, e.g. logical CPUs in
    tests): ``MirroredStrategy`` over all of them. One GPU: that GPU. None: the
    default strategy on the CPU. Mixed precision is applied on GPUs only.
    """
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


def _numeric_layer_class():
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

    return NumericPreprocessing


_NUMERIC_LAYER = None


def numeric_layer_class():
    """The registered custom layer (created once, on first use, so importing is cheap)."""
    global _NUMERIC_LAYER
    if _NUMERIC_LAYER is None:
        _NUMERIC_LAYER = _numeric_layer_class()
    return _NUMERIC_LAYER


def build_model(spec: DatasetConfig, stats: dict[str, Any], cfg: TrainConfig):
    """A compiled binary classifier over raw features.

    Args:
        spec: which features are numeric and categorical.
        stats: ``stats.json`` from preprocessing (means, stds, vocabularies).
        cfg: layer sizes, dropout, learning rate.
    """
    import keras

    numeric_cls = numeric_layer_class()
    inputs: dict[str, Any] = {}
    for col in spec.features.numeric:
        inputs[col] = keras.Input(shape=(), dtype="float32", name=col)
    for col in spec.features.categorical:
        inputs[col] = keras.Input(shape=(), dtype="string", name=col)

    num = stats["numeric"]
    parts = [
        numeric_cls(
            means=[num[c]["mean"] for c in spec.features.numeric],
            stds=[num[c]["std"] for c in spec.features.numeric],
            name="numeric_preprocessing",
        )([inputs[c] for c in spec.features.numeric])
    ]
    for col in spec.features.categorical:
        vocab = stats["vocabulary"][col]
        ids = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name=f"{col}_lookup")(inputs[col])
        emb = keras.layers.Embedding(len(vocab) + 1, cfg.embedding_dim, name=f"{col}_embedding")(ids)
        parts.append(emb)
    x = keras.layers.Concatenate(name="features")(parts)
    for i, units in enumerate(cfg.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed + i, name=f"dropout_{i}")(x)
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="delay_probability")(x)
    model = keras.Model(inputs=inputs, outputs=out, name="flight_delay")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    return model


def load_model(path: str):
    """Load a saved model, registering the custom layer first."""
    import keras

    numeric_layer_class()
    return keras.saving.load_model(path)


def predict_proba(model: Any, inputs: dict[str, Any], batch_size: int = 8192):
    """Delay probabilities for raw inputs from :func:`pipelines.features.to_model_inputs`."""
    import numpy as np
    import tensorflow as tf

    n = len(next(iter(inputs.values())))
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float32).reshape(-1)
