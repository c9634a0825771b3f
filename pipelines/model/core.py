"""The trainable core of the model, importable with Keras alone (any backend, no TensorFlow).

The core takes the preprocessing model's two tensors, ``numeric`` (batch, width)
float32 and ``ids`` (batch, columns) int64, and returns the delay probability: a
wide (linear) part over every id and value plus a small deep part (one shared
embedding table, dense layers). Only Keras and the standard library are imported,
and those inside functions, so the same code builds the core under TensorFlow (the
training step), under JAX in a training subprocess (``train.backend: jax``) and on
a machine with JAX but no TensorFlow (``benchmarks/gpu_check.py``). Its weights
carry over between backends through ``save_weights``/``load_weights``: the layers
and their names are the same under every backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

NUMERIC = "numeric"  # the preprocessing model's outputs, the core model's inputs
IDS = "ids"


@dataclass(frozen=True)
class CoreShape:
    """The widths of the core's inputs, fixed by the preprocessing model."""

    numeric_width: int  # scaled values, missing indicators, periodic encodings
    id_columns: int  # one id per categorical, integer-category, bucket and cross column
    id_rows: int  # rows of the shared embedding table (every column's ids offset into it)


@dataclass(frozen=True)
class CoreParams:
    """The ``train`` keys the core reads (a plain copy, so no configuration library is needed)."""

    hidden_units: tuple[int, ...] = (32,)
    embedding_dim: int = 4
    dropout: float = 0.2
    wide: bool = True
    input_noise: float = 0.3
    seed: int = 42
    learning_rate: float = 0.003
    cosine_decay: bool = True
    epochs: int = 8

    @classmethod
    def of(cls, cfg: Any) -> CoreParams:
        """The core's keys from a ``train`` section (``TrainConfig``) or a dict of them."""
        values = cfg if isinstance(cfg, dict) else {k: getattr(cfg, k) for k in cls.__dataclass_fields__}
        values = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        if "hidden_units" in values:
            values["hidden_units"] = tuple(int(u) for u in values["hidden_units"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden_units": list(self.hidden_units)}


def build_core(shape: CoreShape, params: CoreParams | Any, steps_per_epoch: int | None = None):
    """The compiled core: ``{"numeric", "ids"}`` -> delay probability.

    The deep part concatenates the (noised, in training) numeric values with the
    embeddings and runs them through ``hidden_units`` ReLU layers; with ``wide``, a
    linear model over the same values and one weight per id adds to its logit. Under
    a distribution (TensorFlow's strategy scope, Keras' ``DataParallel`` under JAX)
    build it inside that distribution.

    Args:
        shape: the input widths, from the preprocessing model.
        params: layer sizes, dropout, learning rate and its schedule (:class:`CoreParams`
            or the ``train`` section itself).
        steps_per_epoch: batches per epoch; with it, the learning rate decays along a
            cosine over ``params.epochs`` epochs (``params.cosine_decay``).

    Returns:
        The compiled Keras model (binary cross-entropy, AUC and accuracy metrics).
    """
    import keras

    p = params if isinstance(params, CoreParams) else CoreParams.of(params)
    numeric = keras.Input(shape=(shape.numeric_width,), dtype="float32", name=NUMERIC)
    ids = keras.Input(shape=(shape.id_columns,), dtype="int64", name=IDS)
    emb = keras.layers.Embedding(shape.id_rows, p.embedding_dim, name="embeddings")(ids)
    x = numeric
    if p.input_noise:
        x = keras.layers.GaussianNoise(p.input_noise, seed=p.seed, name="input_noise")(x)
    x = keras.layers.Concatenate(name="features")([x, keras.layers.Flatten(name="flat_embeddings")(emb)])
    for i, units in enumerate(p.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if p.dropout:
            x = keras.layers.Dropout(p.dropout, seed=p.seed + i, name=f"dropout_{i}")(x)
    logit = keras.layers.Dense(1, name="deep_logit")(x)
    if p.wide:
        # A linear model over every id and scaled value, beside the deep part (wide & deep):
        # its weights are the convex, stable part of the fit.
        wide_ids = keras.layers.Embedding(shape.id_rows, 1, embeddings_initializer="zeros", name="wide_weights")(ids)
        wide = keras.layers.Concatenate(name="wide_features")(
            [numeric, keras.layers.Flatten(name="flat_wide")(wide_ids)]
        )
        logit = keras.layers.Add(name="logit")([logit, keras.layers.Dense(1, name="wide_logit")(wide)])
    out = keras.layers.Activation("sigmoid", dtype="float32", name="delay_probability")(logit)
    core = keras.Model(inputs={NUMERIC: numeric, IDS: ids}, outputs=out, name="core")

    learning_rate: Any = p.learning_rate
    if p.cosine_decay and steps_per_epoch:
        learning_rate = keras.optimizers.schedules.CosineDecay(
            p.learning_rate, decay_steps=p.epochs * steps_per_epoch, alpha=0.05
        )
    core.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    return core
