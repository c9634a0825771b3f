"""The tf.data input pipeline: stream sharded TFRecord blocks into training batches.

interleave (parallel reads over shards) -> parse whole blocks (records of
``rows_per_record`` rows) in parallel -> optional ``preprocess`` per block ->
optional cache -> shuffle -> cut into batches -> prefetch.

No stage works row by row, which is what kept a CPU epoch slow: shuffling
moves whole blocks (their order) and then permutes rows within windows of
``shuffle_buffer`` rows with one gather per tensor, and ``rebatch`` cuts
batches out of blocks without unbatching them. Memory is bounded by the
buffers and the prefetch depth, not by the size of the data, unless
``cache`` is on (then the parsed data is held in memory once).

With ``preprocess`` (the model's preprocessing part,
:func:`pipelines.model.build_preprocessing`) each block goes through it
before the cache: the lookups run once per block (once in all with
``cache``) on the input pipeline's threads, outside any distribution
strategy, and the batches hold the model's tensors instead of raw features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipelines.config import DatasetConfig
from pipelines.features import LABEL

SHUFFLE_BLOCKS = 64  # blocks held to shuffle their order


def feature_description(spec: DatasetConfig) -> dict:
    import tensorflow as tf

    desc = {LABEL: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)}
    for col in spec.features.numeric:
        desc[col] = tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)
    for col in spec.features.categorical:
        desc[col] = tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)
    return desc


def _splitter(preprocess: Callable[[dict[str, Any]], Any] | None):
    """Block of parsed columns -> ``(features, label)``, the features through ``preprocess`` if given."""

    def split(block: dict):
        features = {k: v for k, v in block.items() if k != LABEL}
        return (features if preprocess is None else preprocess(features)), block[LABEL]

    return split


def _permute_rows(seed: Any, element: Any):
    """The rows of every tensor of ``element`` in one random order, drawn from ``seed``."""
    import tensorflow as tf

    rows = tf.shape(tf.nest.flatten(element)[0])[0]
    order = tf.random.experimental.stateless_shuffle(tf.range(rows), seed=seed)
    return tf.nest.map_structure(lambda t: tf.gather(t, order), element)


def make_dataset(
    files: Sequence[str],
    spec: DatasetConfig,
    batch_size: int,
    *,
    compression: str = "GZIP",
    shuffle: bool = False,
    shuffle_buffer: int = 50_000,
    seed: int = 42,
    deterministic: bool = True,
    cache: bool = False,
    repeat: bool = False,
    preprocess: Callable[[dict[str, Any]], Any] | None = None,
):
    """A ``tf.data.Dataset`` of ``(features, label)`` batches; features map name -> (batch,) tensor.

    Args:
        files: TFRecord shards written by :func:`pipelines.preprocess.preprocess`.
        spec: the data set spec (which columns are numeric, categorical).
        batch_size: examples per batch (the global batch under a distribution strategy).
        compression: the shards' compression ("GZIP", "ZLIB" or "").
        shuffle: shuffle shard and block order, and rows within windows of
            ``shuffle_buffer`` rows, anew each epoch (training); off for evaluation.
        seed: the seed of every shuffle.
        deterministic: keep a fixed element order in parallel stages (reproducible runs).
        cache: keep parsed (and preprocessed) blocks in memory after the first epoch.
        repeat: repeat the data indefinitely.
        preprocess: a row-wise map from a block's raw features to model tensors
            (a dict of ``(rows, ...)`` tensors); the batches then hold its outputs.
    """
    import tensorflow as tf

    if not files:
        raise ValueError("make_dataset needs at least one TFRecord file")
    autotune = tf.data.AUTOTUNE
    desc = feature_description(spec)
    split = _splitter(preprocess)
    ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 8),
        num_parallel_calls=autotune,
        deterministic=deterministic,
    )
    ds = ds.map(
        lambda rec: split(tf.io.parse_single_example(rec, desc)),
        num_parallel_calls=autotune,
        deterministic=deterministic,
    )
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(SHUFFLE_BLOCKS, seed=seed, reshuffle_each_iteration=True)
        windows = ds.rebatch(shuffle_buffer)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(seeds, windows).map(
            _permute_rows, num_parallel_calls=autotune, deterministic=deterministic
        )
    if repeat:
        ds = ds.repeat()
    ds = ds.rebatch(batch_size)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    return ds.prefetch(autotune)
