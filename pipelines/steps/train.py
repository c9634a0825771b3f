"""Train: fit the Keras model on the streamed training split, logging to MLflow.

The model's preprocessing part (lookups, imputation, scaling, derived
features) runs in the tf.data pipeline; the core model (embeddings, dense
layers) is built inside the distribution strategy and fitted on its outputs,
so multi-device training never sees a string tensor. The two are then
composed into the full model (raw features in, probability out), which is
what ``model.keras`` holds. With ``train.backend: jax`` the core is fitted
under Keras' JAX backend in a subprocess fed by the same pipeline, and its
weights come back into the same TensorFlow-backend model before it is saved.

Checkpoints go to the run's own folder (Keras ``BackupAndRestore``, the
previous epoch's kept too), so a retried task resumes from its last completed
epoch, or the one before when a kill left the last checkpoint half-written. Early stopping watches
the validation AUC and restores the best weights. A NaN or infinite training loss stops the fit at
that batch (:func:`pipelines.model.finite.nan_guard`, under either backend) with a
:class:`~pipelines.model.finite.TrainingDiverged` naming the epoch and batch: nothing is saved,
so nothing can be registered.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.config import DatasetConfig, PreprocessConfig, TrainConfig
from pipelines.model.finite import TrainingDiverged
from pipelines.steps.preprocess import STATS_FILE, load_manifest
from pipelines.tracking import Tracking, get_or_create_run

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


def _mlflow_epoch_callback(client: Any, run_id: str):
    import keras

    class MlflowEpochLogger(keras.callbacks.Callback):
        """Per-epoch metrics into the MLflow run, with the epoch as the step."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, epoch) for k, v in (logs or {}).items()]
            if metrics:
                client.log_batch(run_id, metrics=metrics)

    return MlflowEpochLogger()


def _epoch_log_callback(epochs: int):
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """One log line per epoch (to the task log), instead of Keras' progress output on stdout."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if not hasattr(self, "started") and epoch > 0:
                # Keras starts after the epochs a BackupAndRestore checkpoint holds: a resumed training.
                log.info(
                    "resumed training from its checkpoint: %d of %d epoch(s) already done, continuing with epoch %d",
                    epoch,
                    epochs,
                    epoch + 1,
                )
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            metrics = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
            log.info("epoch %d/%d (%.1fs): %s", epoch + 1, epochs, time.perf_counter() - self.started, metrics)

    return EpochLogger()


def _flat_params(cfg: TrainConfig, preprocess_cfg: PreprocessConfig) -> dict[str, str]:
    """The ``train`` and ``preprocess`` sections as MLflow params, ``section.key[.subkey]``."""
    out = {}
    for section, values in (("train", cfg), ("preprocess", preprocess_cfg)):
        for k, v in values.model_dump(by_alias=True).items():
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    out[f"{section}.{k}.{k2}"] = str(v2)
            else:
                out[f"{section}.{k}"] = str(v)
    return out


def load_boundaries(
    dataset: DatasetConfig, cfg: TrainConfig, processed_dir: Path, stats: dict[str, Any]
) -> dict[str, list[float]] | None:
    """Quantile bucket boundaries of the numeric features, from the training split only.

    From the quantiles preprocessing stored in ``stats.json``; processed data of
    earlier versions has none, and is read from its training split instead.
    """
    from pipelines.model.network import boundaries_from_quantiles, bucket_boundaries

    buckets = cfg.numeric_buckets
    if not buckets:
        return None
    if "quantiles" in stats:
        return boundaries_from_quantiles(stats["quantiles"], buckets)
    import pandas as pd

    from pipelines.config import FeatureSpec
    from pipelines.model.features import to_model_inputs

    numeric = dataset.features.numeric
    frame = pd.read_parquet(load_manifest(processed_dir)["splits"]["train"]["parquet"], columns=list(numeric))
    values = to_model_inputs(frame, FeatureSpec(numeric=numeric, categorical=()))  # as the model will see them
    return bucket_boundaries(values, buckets)


def cache_plan(mode: str, rows: int, bytes_per_row: int, memory_mb: int) -> str:
    """Where the input pipeline caches a split of ``rows`` rows: ``memory``, ``disk`` or ``off``.

    ``auto`` keeps it in memory while the estimate fits in ``memory_mb``, on disk beyond.
    """
    if mode != "auto":
        return mode
    return "memory" if rows * bytes_per_row <= memory_mb * 2**20 else "disk"


def _cached_bytes_per_row(preprocessing: Any) -> int:
    """Bytes of one preprocessed row in the cache: the model's input tensors, and the label."""
    from pipelines.model.network import IDS, NUMERIC

    width = {k: int(v.shape[-1]) for k, v in preprocessing.output.items()}
    return 4 * width[NUMERIC] + 8 * width[IDS] + 8


def _batch_size(rows: int, global_batch: int, replicas: int) -> int:
    """The global batch or, for a split smaller than it, the largest multiple of the replicas in it.

    Keras' TF trainer reduces the first batch across the replicas to build the
    model, which fails unless every replica gets as many rows of it.
    """
    if rows >= global_batch or replicas == 1:
        return global_batch
    return max(replicas, rows - rows % replicas)


def fit_model(
    dataset: DatasetConfig,
    preprocess_cfg: PreprocessConfig,
    cfg: TrainConfig,
    processed_dir: Path,
    hardware: Any,
    callbacks: list[Any] | None = None,
    cache_dir: Path | None = None,
) -> tuple[Any, dict[str, list[float]], float]:
    """Fit the core model on the preprocessed training split and compose the full model.

    Args:
        dataset: the data set's feature spec.
        preprocess_cfg: how the shards were written (compression, rows per record).
        cfg: the ``train`` section: epochs, batch size, model shape, cache, seed.
        processed_dir: the output of :func:`pipelines.steps.preprocess.preprocess`.
        hardware: from :func:`pipelines.model.network.select_hardware`; the global
            batch is ``train.batch_size`` per replica times the replicas. Its backend
            ``jax`` fits the core in a JAX subprocess (:mod:`pipelines.model.jax_fit`),
            fed by the same input pipeline, and loads the weights it ends with.
        callbacks: Keras callbacks besides early stopping (checkpoints, logging).
        cache_dir: where a disk cache (``train.cache``) goes, in a folder of its own
            removed when fitting ends; None: the system's temporary folder.

    Returns:
        The full model (raw features in, probability out), the fit history and
        the seconds spent fitting.

    Raises:
        TrainingDiverged: the training loss became NaN or infinite (the epoch and batch named).
    """
    import keras

    from pipelines.model.finite import nan_guard
    from pipelines.model.network import build_core_model, build_preprocessing, compose_model
    from pipelines.model.tfdata import make_dataset

    manifest = load_manifest(processed_dir)
    stats = json.loads((processed_dir / STATS_FILE).read_text())
    replicas = hardware.replicas
    global_batch = cfg.batch_size * replicas
    log.info("training on %s under %s, global batch %d", hardware.as_dict(), hardware.backend, global_batch)

    splits = manifest["splits"]
    boundaries = load_boundaries(dataset, cfg, processed_dir, stats)
    preprocessing = build_preprocessing(dataset, stats, cfg, boundaries)  # outside the strategy: no variables
    row_bytes = _cached_bytes_per_row(preprocessing)
    if cache_dir is not None:  # what a killed attempt left: tf.data refuses a cache it did not finish
        for stale in Path(cache_dir).glob("tfdata-cache-*"):
            shutil.rmtree(stale, ignore_errors=True)
    cache_files = Path(tempfile.mkdtemp(prefix="tfdata-cache-", dir=cache_dir))

    def split_args(split: str, **kwargs: Any) -> dict[str, Any]:
        """``make_dataset``'s arguments for a split, but the spec and the preprocessing (the same under both backends)."""
        plan = cache_plan(cfg.cache, splits[split]["rows"], row_bytes, cfg.cache_memory_mb)
        log.info("%s split: %d rows, cache %s (train.cache: %s)", split, splits[split]["rows"], plan, cfg.cache)
        return dict(
            files=list(splits[split]["tfrecords"]),
            batch_size=_batch_size(splits[split]["rows"], global_batch, replicas),
            compression=preprocess_cfg.compression,
            rows_per_record=preprocess_cfg.rows_per_record,
            deterministic=cfg.deterministic,
            cache={"memory": True, "off": False, "disk": str(cache_files / split)}[plan],
            **kwargs,
        )

    train_args = split_args("train", shuffle=True, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed)
    val_args = split_args("validation")
    steps_per_epoch = -(-splits["train"]["rows"] // global_batch)
    started = time.perf_counter()
    try:
        if hardware.backend == "jax":
            from pipelines.model.core import CoreParams
            from pipelines.model.jax_fit import fit_core_jax
            from pipelines.model.network import core_shape

            core = build_core_model(preprocessing, cfg, steps_per_epoch)  # receives the weights trained under JAX
            job = {
                # DataParallel splits every batch evenly over the devices: each a multiple of them.
                "splits": {
                    name: {**args, "batch_multiple": replicas}
                    for name, args in (("train", train_args), ("validation", val_args))
                },
                "dataset": dataset.model_dump(mode="json", by_alias=True),
                "params": CoreParams.of(cfg).as_dict(),
                "shape": dataclasses.asdict(core_shape(preprocessing)),
                "steps_per_epoch": steps_per_epoch,
                "patience": cfg.early_stopping_patience,
                "seed": cfg.seed,
            }
            callbacks = [*(callbacks or []), _epoch_log_callback(cfg.epochs)]
            history = fit_core_jax(preprocessing, core, job, cache_files / "jax", hardware, callbacks)
        else:
            train_ds = make_dataset(spec=dataset, preprocess=preprocessing, **train_args)
            val_ds = make_dataset(spec=dataset, preprocess=preprocessing, **val_args)
            with hardware.strategy.scope():
                core = build_core_model(preprocessing, cfg, steps_per_epoch=steps_per_epoch)
            early_stopping = keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=cfg.early_stopping_patience, restore_best_weights=True
            )
            history = core.fit(
                train_ds,
                validation_data=val_ds,
                epochs=cfg.epochs,
                callbacks=[
                    nan_guard(cfg.learning_rate),  # first: it raises before anything sees the broken batch
                    *(callbacks or []),
                    early_stopping,
                    _epoch_log_callback(cfg.epochs),
                ],
                verbose=0,
            ).history
    finally:
        shutil.rmtree(cache_files, ignore_errors=True)
    seconds = time.perf_counter() - started
    return compose_model(preprocessing, core), history, seconds


def train(
    dataset: DatasetConfig,
    preprocess_cfg: PreprocessConfig,
    cfg: TrainConfig,
    processed_dir: Path,
    model_dir: Path,
    tracking: Tracking,
) -> dict[str, Any]:
    """Fit the model on ``processed_dir``'s shards; save it to ``model_dir``.

    Args:
        dataset: the data set's feature spec.
        preprocess_cfg: how the shards were written; logged with ``cfg`` as the run's params.
        cfg: the ``train`` section: epochs, batch size, model shape, cache, seed.
        processed_dir: the output of :func:`pipelines.steps.preprocess.preprocess`.
        model_dir: the run's model folder: checkpoints and ``model.keras``.
        tracking: the MLflow run to log into.

    Returns:
        The MLflow run id, the model path, the epochs run and the best validation AUC.

    Raises:
        TrainingDiverged: the loss became NaN or infinite; the run is tagged ``train.diverged``
            and its checkpoints are removed, so a run after a fix starts afresh.
    """
    import keras
    import mlflow
    import tensorflow as tf

    from pipelines.model.network import select_hardware

    manifest = load_manifest(processed_dir)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    hardware = select_hardware(cfg.mixed_precision, backend=cfg.backend)

    run_id = get_or_create_run(tracking)
    client = mlflow.MlflowClient(tracking.tracking_uri)
    logged = set(client.get_run(run_id).data.params)  # params are immutable: a retry logs only new ones
    new_params = {k: v for k, v in _flat_params(cfg, preprocess_cfg).items() if k not in logged}
    new_params.update({f"hardware.{k}": str(v) for k, v in hardware.as_dict().items() if f"hardware.{k}" not in logged})
    if new_params:
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in new_params.items()])
    client.set_tag(run_id, "data.fingerprint", manifest["data_fingerprint"])
    client.set_tag(run_id, "data.raw_fingerprint", manifest["raw_fingerprint"])

    model_dir.mkdir(parents=True, exist_ok=True)
    # double_checkpoint: the previous epoch's checkpoint is kept beside the last one, and read
    # when the last cannot be (a process killed while writing it left it corrupt).
    backup = keras.callbacks.BackupAndRestore(str(model_dir / "backup"), double_checkpoint=True)
    callbacks = [backup, _mlflow_epoch_callback(client, run_id)]
    try:
        model, history, seconds = fit_model(
            dataset, preprocess_cfg, cfg, processed_dir, hardware, callbacks, cache_dir=model_dir
        )
    except TrainingDiverged as err:
        client.set_tag(run_id, "train.diverged", str(err)[:5000])
        # The checkpoints lead to the same NaN: a run after a fix (data, learning rate) starts afresh.
        shutil.rmtree(model_dir / "backup", ignore_errors=True)
        log.error("%s", err)
        raise
    model_path = model_dir / MODEL_FILE
    model.save(model_path)
    val_auc = history.get("val_auc", [float("nan")])
    result = {
        "mlflow_run_id": run_id,
        "model_path": str(model_path),
        "epochs_run": len(val_auc),
        "best_val_auc": float(max(val_auc)),
        "train_seconds": round(seconds, 2),
        "hardware": hardware.as_dict(),
    }
    client.log_metric(run_id, "train_seconds", seconds)
    client.log_metric(run_id, "best_val_auc", result["best_val_auc"])
    (model_dir / "history.json").write_text(json.dumps(history, indent=1))
    log.info("trained %d epoch(s) in %.1fs, best val AUC %.4f", result["epochs_run"], seconds, result["best_val_auc"])
    return result
