"""``train.backend: jax``: fit the core under Keras' JAX backend, in a subprocess fed by tf.data.

Keras picks its backend once per process, and the training step's process (the
step worker preloads TensorFlow's Keras) has TensorFlow's. So the core trains in a
child process started with ``KERAS_BACKEND=jax``:

* the parent exports the preprocessing model as a TensorFlow SavedModel and
  writes a job file: the splits' ``make_dataset`` arguments (the same as the
  TensorFlow path's, cache included), the core's input widths and parameters;
* the child builds the same ``tf.data`` pipeline, TensorFlow kept off the GPUs
  (it only parses and preprocesses, on the CPU) and the exported preprocessing
  mapped over it, builds :func:`pipelines.model.core.build_core` under
  ``keras.distribution.DataParallel`` when JAX sees several devices, fits it
  (early stopping on validation AUC, ``BackupAndRestore`` in the run's folder) and
  saves the weights;
* each epoch's start and end come back as one line on the child's stdout, and
  the parent hands them to its own callbacks (MLflow metrics, the epoch log), so
  the run looks as it does under TensorFlow;
* a NaN or infinite loss stops the child at that batch (the same guard as under
  TensorFlow) and comes back as a line of its own: the parent raises the same
  :class:`~pipelines.model.finite.TrainingDiverged`, naming the epoch and batch;
* the parent loads the weights into the TensorFlow-backend core, which is
  composed with the preprocessing model and saved as under TensorFlow: what is
  served never depends on the backend that trained it.

Run as ``python -m pipelines.model.jax_fit JOB.json`` by :func:`fit_core_jax` only.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EVENT = "@@jax_fit "  # prefix of the child's progress lines on its stdout

# Lists JAX's devices without taking a GPU's memory (JAX preallocates most of it otherwise).
_JAX_PROBE = "import json, jax; print(json.dumps([f'{d.platform}:{d.id}' for d in jax.devices()]))"


def jax_hardware(mixed_precision: bool = False, devices: list[str] | None = None):
    """The devices the JAX training subprocess will see, asked of JAX in a subprocess of its own.

    Asking here would start JAX's GPU backend in this (TensorFlow) process. TensorFlow
    is kept off the GPUs here too: in this process it only builds and saves the model.

    Args:
        mixed_precision: bfloat16 compute on GPUs (float32 on CPUs).
        devices: ``["cpu:0", "cpu:1", ...]`` to train on that many CPU devices
            (``--xla_force_host_platform_device_count``; tests); None: JAX's default devices.

    Returns:
        A :class:`pipelines.model.network.Hardware` with ``backend="jax"`` and no strategy.
    """
    import keras
    import tensorflow as tf

    from pipelines.model.network import Hardware

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow had already started on its devices
        log.warning("TensorFlow already initialised its devices; it may hold GPU memory that JAX needs")
    env = {}
    if devices is not None:
        env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={len(devices)}"}
    probe_env = {**os.environ, **env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", _JAX_PROBE], env=probe_env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"train.backend jax: JAX does not start: {proc.stderr.strip()[-1000:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    on_gpu = any(d.startswith(("gpu", "cuda")) for d in found)
    precision = "mixed_bfloat16" if (mixed_precision and on_gpu) else "float32"
    # The model saved here is built from the child's float32 weights: float32 layers.
    keras.mixed_precision.set_global_policy("float32")
    name = "DataParallel" if len(found) > 1 else "single device"
    return Hardware(strategy=None, strategy_name=name, devices=found, precision=precision, backend="jax", env=env)


def fit_core_jax(
    preprocessing: Any,
    core: Any,
    job: dict[str, Any],
    work_dir: Path,
    hardware: Any,
    callbacks: list[Any] | None = None,
) -> dict[str, list[float]]:
    """Fit ``core``'s twin under JAX in a subprocess and load the weights it ends with into ``core``.

    Args:
        preprocessing: the preprocessing model (exported for the child's tf.data pipeline).
        core: the TensorFlow-backend core from :func:`pipelines.model.network.build_core_model`;
            it receives the trained weights.
        job: ``splits`` (``make_dataset`` arguments per split, without spec and preprocess),
            ``dataset`` (the dataset section as a dict), ``params`` (:class:`CoreParams` as a
            dict), ``shape``, ``steps_per_epoch``, ``patience``, ``seed``.
        work_dir: a folder of this fit's own for the job, the export and the weights.
        hardware: from :func:`jax_hardware`: the precision and the child's environment.
        callbacks: Keras callbacks; a ``BackupAndRestore`` is run in the child (its folder),
            the others receive each epoch's begin and end with its logs.

    Returns:
        The fit history (metric -> one value per epoch).

    Raises:
        TrainingDiverged: the loss became NaN or infinite in the child (its epoch and batch named).
        RuntimeError: the child failed otherwise; the message holds the end of its output.
    """
    import keras

    from pipelines.model.finite import TrainingDiverged

    relayed = []
    job = {**job, "precision": hardware.precision, "backup_dir": None}
    for cb in callbacks or []:
        if isinstance(cb, keras.callbacks.BackupAndRestore):
            job["backup_dir"] = str(cb.backup_dir)
        else:
            relayed.append(cb)
    work_dir.mkdir(parents=True, exist_ok=True)
    job["preprocessing"] = str(work_dir / "preprocessing")
    job["weights"] = str(work_dir / "core.weights.h5")
    job["history"] = str(work_dir / "history.json")
    preprocessing.export(job["preprocessing"], format="tf_saved_model", verbose=False)
    job_file = work_dir / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")

    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", **hardware.env}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    diverged: dict[str, Any] | None = None
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.model.jax_fit", str(job_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            if line.startswith(EVENT):
                event = json.loads(line[len(EVENT) :])
                if event["event"] == "diverged":
                    diverged = event
                    continue
                for cb in relayed:
                    hook = cb.on_epoch_begin if event["event"] == "begin" else cb.on_epoch_end
                    hook(event["epoch"], event.get("logs"))
                continue
            tail.append(line)
            if line.strip():
                log.info("[jax] %s", line)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # this process is being stopped: stop the child too
            proc.kill()
            proc.wait()
    if diverged is not None:
        raise TrainingDiverged(diverged["message"], diverged["epoch"], diverged["batch"])
    if code != 0:
        raise RuntimeError(f"the JAX training subprocess failed (exit {code}):\n" + "\n".join(tail))
    with warnings.catch_warnings():
        # The weights file holds the child's optimizer state too; this core only scores.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        core.load_weights(job["weights"])
    return json.loads(Path(job["history"]).read_text(encoding="utf-8"))


def _emit(event: str, epoch: int, **extra: Any) -> None:
    print(EVENT + json.dumps({"event": event, "epoch": epoch, **extra}), flush=True)


def _child(job_file: Path) -> None:
    """The subprocess: the tf.data pipeline on the CPU, the core under JAX, the weights to a file."""
    job = json.loads(job_file.read_text(encoding="utf-8"))
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # before any TensorFlow op: JAX gets the GPUs' memory
    import jax
    import keras

    from pipelines.config import DatasetConfig
    from pipelines.model.core import CoreParams, CoreShape, build_core
    from pipelines.model.finite import TrainingDiverged, nan_guard
    from pipelines.model.tfdata import make_dataset

    # The core's ids input is int64 (as under TensorFlow); JAX computes them in int32, plenty for the ids.
    warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
    if keras.backend.backend() != "jax":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}, not 'jax'")
    keras.utils.set_random_seed(job["seed"])
    keras.mixed_precision.set_global_policy(job["precision"])
    devices = jax.devices()
    if len(devices) > 1:
        # Each batch is split over the devices; the weights are replicated.
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    log.info(
        "JAX %s on %s, precision %s",
        jax.__version__,
        ",".join(f"{d.platform}:{d.id}" for d in devices),
        job["precision"],
    )

    serve = tf.saved_model.load(job["preprocessing"]).serve
    spec = DatasetConfig.model_validate(job["dataset"])
    splits = {name: make_dataset(spec=spec, preprocess=serve, **args) for name, args in job["splits"].items()}
    core = build_core(CoreShape(**job["shape"]), CoreParams.of(job["params"]), job["steps_per_epoch"])

    class Relay(keras.callbacks.Callback):
        """Each epoch's begin and end (with its logs and the batches run) on stdout, for the parent."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.steps = 0
            _emit("begin", epoch)

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.steps += 1

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            log.info("epoch %d: %d batches", epoch + 1, self.steps)
            _emit("end", epoch, logs={k: float(v) for k, v in (logs or {}).items()})

    callbacks: list[Any] = [nan_guard(job["params"]["learning_rate"])]  # first: it raises before the others run
    if job["backup_dir"]:
        callbacks.append(keras.callbacks.BackupAndRestore(job["backup_dir"], double_checkpoint=True))
    callbacks += [
        Relay(),
        keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=job["patience"], restore_best_weights=True
        ),
    ]
    try:
        history = core.fit(
            splits["train"],
            validation_data=splits["validation"],
            epochs=job["params"]["epochs"],
            callbacks=callbacks,
            verbose=0,
        )
    except TrainingDiverged as err:
        _emit("diverged", err.epoch, batch=err.batch, message=str(err))
        sys.exit(3)  # no weights written: the parent raises the same error
    core.save_weights(job["weights"])
    Path(job["history"]).write_text(
        json.dumps({k: [float(v) for v in vs] for k, vs in history.history.items()}), encoding="utf-8"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    _child(Path(sys.argv[1]))
