"""The GPU check: the project's trainable core under Keras' JAX backend, on a GPU and on its machine's CPUs.

Two commands (docs/gpu.md has the exact device call and what it carries)::

    # here, with the project's environment (TensorFlow): the data and the reference
    .venv/bin/python -m benchmarks.gpu_check export --out .gpu-data [--processed DIR]
    # on the GPU machine: JAX, numpy and scikit-learn there, Keras carried as wheels
    python3 -m benchmarks.gpu_check run --data .gpu-data [--out DIR]

``export`` applies the project's own preprocessing model to the train, validation
and holdout splits of a real run's processed data (default: the benchmarks' prepared
year, ``benchmarks/data.py``), and writes the model's input tensors (``numeric``
float32, ``ids`` int16: fewer than 32,768 ids), the labels, the core's input widths
and ``train`` parameters, compressed (8.7 MiB for the year), then trains the
same core here on the same arrays, as ``run`` does, for the reference AUC.

``run`` needs no TensorFlow and no ``pipelines.config``: it imports
:mod:`pipelines.model.core` alone. For each platform (``gpu``, ``cpu``) a process of
its own (``JAX_PLATFORMS``) trains the core at each batch size, float32 and bf16 mixed
precision, up to ``epochs`` epochs with the cosine decay and early stopping on the
validation AUC of the training step, and reports examples/s (the median epoch after
the first, which compiles; validation included) and the holdout AUC. A time budget
per platform skips what does not fit (reported as skipped), so the whole check stays
under five minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ARRAYS = "arrays.npz"
META = "meta.json"
SPLITS = ("train", "validation", "holdout")
BATCHES = (2048, 16384, 131072)
PRECISIONS = ("float32", "mixed_bfloat16")
RESULT_PREFIX = "@@gpu_check "


# --------------------------------------------------------------------------- training (any backend)


def _core_arrays(arrays: Any) -> dict[str, Any]:
    """Per split ``{"numeric", "ids", "label"}`` in the dtypes the core takes, from the exported arrays."""
    return {
        s: {
            "numeric": arrays[f"{s}_numeric"].astype("float32"),
            "ids": arrays[f"{s}_ids"].astype("int32"),
            "label": arrays[f"{s}_label"].astype("float32"),
        }
        for s in SPLITS
    }


def load_arrays(data: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(arrays, meta)`` of an export: the splits as :func:`_core_arrays` gives them, and ``meta.json``."""
    import numpy as np

    meta = json.loads((data / META).read_text(encoding="utf-8"))
    with np.load(data / ARRAYS) as z:
        return _core_arrays(z), meta


def train_core(
    arrays: dict[str, Any], meta: dict[str, Any], batch: int, precision: str = "float32", epochs: int = 8
) -> dict[str, Any]:
    """Train the core on the arrays as the training step would; examples/s and holdout AUC.

    Returns:
        ``epochs_run``, ``examples_per_s`` (median epoch after the first, validation
        included; the first also compiles), ``first_epoch_s``, ``holdout_auc``.
    """
    import keras
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from pipelines.model.core import IDS, NUMERIC, CoreParams, CoreShape, build_core

    keras.mixed_precision.set_global_policy(precision)
    params = CoreParams.of({**meta["params"], "epochs": epochs})
    keras.utils.set_random_seed(params.seed)
    train, val, holdout = (arrays[s] for s in SPLITS)
    rows = len(train["label"])
    core = build_core(CoreShape(**meta["shape"]), params, steps_per_epoch=-(-rows // batch))
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    def x(split: dict[str, Any]) -> dict[str, Any]:
        return {NUMERIC: split["numeric"], IDS: split["ids"]}

    core.fit(
        x(train),
        train["label"],
        batch_size=batch,
        epochs=params.epochs,
        validation_data=(x(val), val["label"]),
        validation_batch_size=max(batch, 8192),
        callbacks=[
            Timer(),
            keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=meta.get("patience", 3), restore_best_weights=True
            ),
        ],
        shuffle=True,
        verbose=0,
    )
    scores = np.asarray(core.predict(x(holdout), batch_size=max(batch, 8192), verbose=0)).reshape(-1)
    keras.mixed_precision.set_global_policy("float32")
    steady = seconds[1:] or seconds
    return {
        "epochs_run": len(seconds),
        "examples_per_s": round(rows / statistics.median(steady)),
        "first_epoch_s": round(seconds[0], 2),
        "holdout_auc": round(float(roc_auc_score(holdout["label"], scores)), 4),
    }


# --------------------------------------------------------------------------- export (here, with TensorFlow)


def export(out: Path, processed: Path | None, params_file: Path, reference_epochs: int) -> dict[str, Any]:
    """Write the preprocessed splits, the core's shape and parameters, and the reference run."""
    import dataclasses

    import keras
    import numpy as np
    import pandas as pd

    from pipelines.config import load_params
    from pipelines.model.core import IDS, NUMERIC, CoreParams
    from pipelines.model.features import LABEL, to_model_inputs
    from pipelines.model.network import build_preprocessing, core_shape
    from pipelines.steps.preprocess import STATS_FILE, load_manifest
    from pipelines.steps.train import load_boundaries

    if processed is None:
        from benchmarks.data import prepared

        params_file, processed = prepared(1)
    params = load_params(params_file)
    manifest = load_manifest(processed)
    stats = json.loads((processed / STATS_FILE).read_text(encoding="utf-8"))
    boundaries = load_boundaries(params.dataset, params.train, processed, stats)
    preprocessing = build_preprocessing(params.dataset, stats, params.train, boundaries)
    shape = core_shape(preprocessing)
    if shape.id_rows > np.iinfo(np.int16).max:
        raise SystemExit(f"{shape.id_rows} ids do not fit int16")
    arrays: dict[str, Any] = {}
    for split in SPLITS:
        frame = pd.read_parquet(manifest["splits"][split]["parquet"])
        inputs = to_model_inputs(frame, params.dataset.features)
        parts = [
            preprocessing.predict_on_batch({k: v[lo : lo + 65536] for k, v in inputs.items()})
            for lo in range(0, len(frame), 65536)
        ]
        arrays[f"{split}_numeric"] = np.concatenate([np.asarray(p[NUMERIC], np.float32) for p in parts])
        arrays[f"{split}_ids"] = np.concatenate([np.asarray(p[IDS]).astype(np.int16) for p in parts])
        arrays[f"{split}_label"] = frame[LABEL].to_numpy().astype(np.int8)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / ARRAYS, **arrays)
    meta: dict[str, Any] = {
        "shape": dataclasses.asdict(shape),
        "params": CoreParams.of(params.train).as_dict(),
        "patience": params.train.early_stopping_patience,
        "rows": {s: int(len(arrays[f"{s}_label"])) for s in SPLITS},
        "source": {"processed": processed.name, "fingerprint": manifest.get("data_fingerprint")},
    }
    keras.utils.set_random_seed(params.train.seed)
    started = time.perf_counter()
    reference = train_core(_core_arrays(arrays), meta, params.train.batch_size, epochs=reference_epochs)
    meta["reference"] = {
        "where": f"export machine, {os.cpu_count()} CPUs",
        "backend": keras.backend.backend(),
        "batch": params.train.batch_size,
        "seconds": round(time.perf_counter() - started, 1),
        **reference,
    }
    (out / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


# --------------------------------------------------------------------------- run (there, with JAX)


def measure(data: Path, platform: str, batches: list[int], precisions: list[str], epochs: int, budget_s: float) -> None:
    """One platform's measurements, each printed as a result line as soon as it is done."""
    import jax
    import keras

    devices = jax.devices()
    print(
        f"{platform}: JAX {jax.__version__}, Keras {keras.__version__} ({keras.backend.backend()}), {devices}",
        flush=True,
    )
    arrays, meta = load_arrays(data)
    started = time.perf_counter()
    for precision in precisions:
        for batch in batches:
            row = {"platform": platform, "device": str(devices[0].device_kind), "batch": batch, "precision": precision}
            if time.perf_counter() - started > budget_s:
                row["skipped"] = f"over the {budget_s:.0f}s budget"
            else:
                row.update(train_core(arrays, meta, batch, precision, epochs))
            print(RESULT_PREFIX + json.dumps(row), flush=True)


def run(
    data: Path,
    out: Path | None,
    platforms: list[str],
    batches: list[int],
    precisions: list[str],
    epochs: int,
    budget_s: float,
) -> list[dict[str, Any]]:
    """Each platform in a process of its own; the table of results, also in ``out`` if given."""
    meta = json.loads((data / META).read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = []
    for platform in platforms:
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cuda" if platform == "gpu" else "cpu"}
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "measure", "--data", str(data), "--platform", platform,
               "--batches", ",".join(map(str, batches)), "--precisions", ",".join(precisions),
               "--epochs", str(epochs), "--budget-s", str(budget_s)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                rows.append(json.loads(line[len(RESULT_PREFIX) :]))
            else:
                print(line)
        if proc.returncode != 0:
            print(f"{platform}: failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            rows.append({"platform": platform, "skipped": f"failed (exit {proc.returncode})"})
    table = _table(rows, meta)
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1), encoding="utf-8")
        (out / "gpu_check.md").write_text(table + "\n", encoding="utf-8")
    return rows


def _table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    ref = meta.get("reference", {})
    lines = [
        f"train/validation/holdout rows: {meta['rows']}; core: {meta['shape']}",
        f"reference (trained here at export): {ref.get('where')}, {ref.get('backend')}, batch {ref.get('batch')}: "
        f"{ref.get('examples_per_s')} examples/s, holdout AUC {ref.get('holdout_auc')}",
        "",
        "| platform | device | precision | batch | examples/s | first epoch s | epochs | holdout AUC | AUC - reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"| {r['platform']} | {r.get('device', '')} | {r.get('precision', '')} | {r.get('batch', '')} | {r['skipped']} | | | | |"
            )
            continue
        delta = r["holdout_auc"] - ref["holdout_auc"] if "holdout_auc" in ref else float("nan")
        lines.append(
            f"| {r['platform']} | {r['device']} | {r['precision']} | {r['batch']:,} | {r['examples_per_s']:,} | "
            f"{r['first_epoch_s']} | {r['epochs_run']} | {r['holdout_auc']:.4f} | {delta:+.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="here: the preprocessed splits and the reference AUC")
    ex.add_argument("--out", type=Path, default=Path(".gpu-data"))
    ex.add_argument("--processed", type=Path, help="a processed folder (default: the benchmarks' prepared year)")
    ex.add_argument("--params", type=Path, default=Path("params.yaml"), help="with --processed: its params file")
    ex.add_argument("--reference-epochs", type=int, default=8)
    for name in ("run", "measure"):
        p = sub.add_parser(name, help="on the GPU machine" if name == "run" else "one platform (run starts it)")
        p.add_argument("--data", type=Path, default=Path(".gpu-data"))
        p.add_argument("--batches", default=",".join(map(str, BATCHES)))
        p.add_argument("--precisions", default=",".join(PRECISIONS))
        p.add_argument("--epochs", type=int, default=8)
        p.add_argument("--budget-s", type=float, default=90.0, help="per platform; what would start later is skipped")
        if name == "run":
            p.add_argument("--platforms", default="gpu,cpu")
            p.add_argument("--out", type=Path, help="also write gpu_check.json and gpu_check.md here")
        else:
            p.add_argument("--platform", required=True)
    args = ap.parse_args(argv)
    if args.command == "export":
        meta = export(args.out, args.processed, args.params, args.reference_epochs)
        size = (args.out / ARRAYS).stat().st_size / 2**20
        print(json.dumps({**meta, "arrays_mib": round(size, 1)}, indent=1))
        return
    batches = [int(b) for b in args.batches.split(",")]
    precisions = args.precisions.split(",")
    if args.command == "measure":
        measure(args.data, args.platform, batches, precisions, args.epochs, args.budget_s)
    else:
        run(args.data, args.out, args.platforms.split(","), batches, precisions, args.epochs, args.budget_s)


if __name__ == "__main__":
    main()
