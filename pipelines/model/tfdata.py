"""The tf.data input pipeline: stream sharded TFRecord blocks into training batches.

interleave (parallel reads over shards) -> shuffle records -> parse groups of
``records_per_block`` records at once (records of ``rows_per_record`` rows) in
parallel -> optional ``preprocess`` per block -> optional cache -> permute the
rows of each block, shuffle the blocks -> cut into batches -> prefetch.

No stage works row by row, which is what kept a CPU epoch slow, and no stage
gathers rows into one large window: that copy, done by a single thread, was
the slowest stage. Shuffling instead moves whole records (serialised strings)
before parsing, so that a block holds records from across the shuffle buffer,
and permutes each block's rows in the same parallel stage that parses it; a
batch is then a random sample of a block's rows. ``rebatch`` cuts batches out
of blocks without unbatching them. Memory is bounded by the buffers and the
prefetch depth, not by the size of the data, unless ``cache`` holds the
parsed data in memory (``pipelines.steps.train`` does so only below a size, and
caches in files beyond it).

With ``preprocess`` (the model's preprocessing part,
:func:`pipelines.model.network.build_preprocessing`) each block goes through it
before the cache: the lookups run once per block (once in all with
``cache``) on the input pipeline's threads, outside any distribution
strategy, and the batches hold the model's tensors instead of raw features.

Parallelism is fixed, one call per CPU the process may use, with tf.data's
autotuning off: on a 2-core machine autotuning settled, at random, on one
thread for the stages after the cache, and a cached epoch then took 2.5 s
instead of 1.3 (the same data, the same process). With fixed parallelism and
a prefetch of ``PREFETCH_BATCHES`` batches, every cached epoch ran in 0.9 to
1.3 s (docs/benchmarks.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.config import DatasetConfig
from pipelines.model.features import LABEL

RECORDS_PER_BLOCK = 16  # records parsed, preprocessed (and cached) together
SHUFFLE_BLOCKS = 4  # parsed blocks held to shuffle their order
PREFETCH_BATCHES = 4  # batches made ahead of the model


def cpu_threads() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def feature_description(spec: DatasetConfig) -> dict:
    """How to parse a record: each column a list of values, one per row of the record."""
    import tensorflow as tf

    desc = {LABEL: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32)}
    for col in spec.features.numeric:
        desc[col] = tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int32)
    for col in spec.features.categorical:
        desc[col] = tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int32)
    return desc


def _parser(spec: DatasetConfig):
    """A vector of serialised records -> one block: each column's rows of all records, in order."""
    import tensorflow as tf

    desc = feature_description(spec)

    def parse(records):
        return {col: values.flat_values for col, values in tf.io.parse_example(records, desc).items()}

    return parse


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


def _cut_to_multiple(batch: Any, multiple: int):
    """The first ``rows - rows % multiple`` rows of every tensor of ``batch``."""
    import tensorflow as tf

    rows = tf.shape(tf.nest.flatten(batch)[0])[0]
    return tf.nest.map_structure(lambda t: t[: rows - rows % multiple], batch)


def make_dataset(
    files: Sequence[str],
    spec: DatasetConfig,
    batch_size: int,
    *,
    compression: str = "GZIP",
    shuffle: bool = False,
    shuffle_buffer: int = 50_000,
    rows_per_record: int = 1024,
    records_per_block: int = RECORDS_PER_BLOCK,
    seed: int = 42,
    deterministic: bool = True,
    cache: bool | str = False,
    repeat: bool = False,
    preprocess: Callable[[dict[str, Any]], Any] | None = None,
    batch_multiple: int = 1,
):
    """A ``tf.data.Dataset`` of ``(features, label)`` batches; features map name -> (batch,) tensor.

    Args:
        files: TFRecord shards written by :func:`pipelines.steps.preprocess.preprocess`.
        spec: the data set spec (which columns are numeric, categorical).
        batch_size: examples per batch (the global batch under a distribution strategy).
        compression: the shards' compression ("GZIP", "ZLIB" or "").
        shuffle: shuffle shard and record order, block order, and the rows of each
            block, anew each epoch (training); off for evaluation.
        shuffle_buffer: rows (whole records) held to shuffle the records.
        rows_per_record: rows in a record (``preprocess.rows_per_record``), to size the buffer.
        records_per_block: records parsed and preprocessed together; a batch is drawn
            from one block's rows.
        seed: the seed of every shuffle.
        deterministic: keep a fixed element order in parallel stages (reproducible runs).
        cache: keep parsed (and preprocessed) blocks after the first epoch: in memory
            (True), or in files with this path prefix (a str; the first epoch must run to
            its end before a second one reads them).
        repeat: repeat the data indefinitely.
        preprocess: a row-wise map from a block's raw features to model tensors
            (a dict of ``(rows, ...)`` tensors); the batches then hold its outputs.
        batch_multiple: every batch's rows a multiple of this: the last batch loses its
            last ``rows % batch_multiple`` rows (JAX's ``DataParallel`` splits each batch
            evenly over its devices; TensorFlow's strategies need no such cut).
    """
    import tensorflow as tf

    if not files:
        raise ValueError("make_dataset needs at least one TFRecord file")
    threads = cpu_threads()
    parse, split = _parser(spec), _splitter(preprocess)
    ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 8),
        num_parallel_calls=min(len(files), 8, threads),
        deterministic=deterministic,
    )
    if shuffle:
        records = max(2 * records_per_block, -(-shuffle_buffer // rows_per_record))
        ds = ds.shuffle(records, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(records_per_block).map(
        lambda records: split(parse(records)), num_parallel_calls=threads, deterministic=deterministic
    )
    if cache:
        ds = ds.cache("" if cache is True else cache)
    if shuffle:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(seeds, ds).map(_permute_rows, num_parallel_calls=threads, deterministic=deterministic)
        ds = ds.shuffle(SHUFFLE_BLOCKS, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.rebatch(batch_size)
    if batch_multiple > 1:
        ds = ds.map(
            lambda *b: _cut_to_multiple(b, batch_multiple), num_parallel_calls=threads, deterministic=deterministic
        )
        ds = ds.filter(lambda *b: tf.shape(tf.nest.flatten(b)[0])[0] > 0)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = False  # fixed parallelism (see the module docstring)
    ds = ds.with_options(options)
    return ds.prefetch(PREFETCH_BATCHES)
