"""The tf.data input pipeline: stream sharded TFRecord blocks into training batches.

interleave (parallel reads over shards) -> parse whole blocks in parallel and\npack each into three dense tensors (numeric, categorical, label) ->
optional cache -> unbatch -> shuffle -> batch -> prefetch. Memory is bounded
by the shuffle buffer and the prefetch depth, not by the size of the data,
unless ``cache`` is on (then the parsed data is held in memory once).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.config import DatasetConfig
from pipelines.features import LABEL


def feature_description(spec: DatasetConfig) -> dict:
    import tensorflow as tf

    desc = {LABEL: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)}
    for col in spec.features.numeric:
        desc[col] = tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)
    for col in spec.features.categorical:
        desc[col] = tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)
    return desc


def _packer(spec: DatasetConfig):
    """Block of parsed columns -> three dense tensors, so per-row stages move 3 tensors, not ~20."""
    import tensorflow as tf

    numeric, categorical = list(spec.features.numeric), list(spec.features.categorical)

    def pack(block: dict):
        num = tf.stack([block[c] for c in numeric], axis=1) if numeric else tf.zeros([tf.shape(block[LABEL])[0], 0])
        cat = tf.stack([block[c] for c in categorical], axis=1) if categorical else tf.zeros([tf.shape(block[LABEL])[0], 0], tf.string)
        return num, cat, block[LABEL]

    def unpack(num, cat, label):
        features = {c: num[:, i] for i, c in enumerate(numeric)}
        features.update({c: cat[:, i] for i, c in enumerate(categorical)})
        return features, label

    return pack, unpack


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
):
    """A ``tf.data.Dataset`` of ``(features, label)`` batches; features map name -> (batch,) tensor.

    Args:
        files: TFRecord shards written by :func:`pipelines.preprocess.preprocess`.
        spec: the data set spec (which columns are numeric, categorical).
        batch_size: examples per batch (the global batch under a distribution strategy).
        compression: the shards' compression ("GZIP", "ZLIB" or "").
        shuffle: shuffle shard order and examples (training); off for evaluation.
        deterministic: keep a fixed element order in parallel stages (reproducible runs).
        cache: keep parsed blocks in memory after the first epoch.
    """
    import tensorflow as tf

    if not files:
        raise ValueError("make_dataset needs at least one TFRecord file")
    autotune = tf.data.AUTOTUNE
    desc = feature_description(spec)
    ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 8),
        num_parallel_calls=autotune,
        deterministic=deterministic,
    )
    pack, unpack = _packer(spec)
    ds = ds.map(
        lambda rec: pack(tf.io.parse_single_example(rec, desc)),
        num_parallel_calls=autotune,
        deterministic=deterministic,
    )
    if cache:
        ds = ds.cache()
    ds = ds.unbatch()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, num_parallel_calls=autotune, deterministic=deterministic)
    ds = ds.map(unpack, num_parallel_calls=autotune, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    return ds.prefetch(autotune)
