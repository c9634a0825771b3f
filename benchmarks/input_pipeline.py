"""The tf.data input pipeline against what training consumes, and against an in-memory baseline.

    .venv/bin/python -m benchmarks.input_pipeline [--scales 1,10] [--epochs 2]
    .venv/bin/python -m benchmarks.input_pipeline per-core [--cores 1,2] [--batches 2048,16384]

On the prepared year (benchmarks/data.py), at each growth factor, each
measurement in its own process (peak RSS is that process's ``VmHWM``; "+" is
the part above the process's RSS once its libraries were imported):

* input, iteration only: one epoch of the training split through
  ``pipelines.model.tfdata.make_dataset`` as training builds it (shard interleave,
  block parsing, the model's preprocessing, windowed shuffle, batches), no
  model: examples/s the pipeline can deliver;
* training step: the core model fitted on batches already in memory (the
  same batches, repeated): examples/s training consumes; the input should
  be at least 5x faster;
* training, streaming: ``pipelines.steps.train.fit_model`` (the production path,
  validation included) for ``--epochs`` epochs, with the cache of parsed
  blocks as ``train.cache: auto`` (the default) places it (in memory while it
  fits in ``train.cache_memory_mb``, in files beyond) and off;
* training, in-memory baseline: the splits read into pandas, converted and
  preprocessed whole, and fed to Keras as arrays (``fit(x, y)``), same model,
  same epochs.

CPU only: no GPU was lent to this project's sessions, so the GPU path (one
GPU, ``MirroredStrategy`` over several, mixed precision) is not measured.
Mixed precision applies on GPUs only in the pipeline (``train.mixed_precision``);
on this CPU the training step is also measured with Keras' ``mixed_bfloat16``
policy (the CPU has AVX512-BF16) to show what it would give.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import command_line, machine, markdown_table, mib, report, run_child, self_peak_rss
from benchmarks.data import prepared


def _rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _setup(params_file: str, processed: str):
    import keras

    from pipelines.config import load_params
    from pipelines.model.network import build_preprocessing, select_hardware
    from pipelines.steps.preprocess import STATS_FILE, load_manifest
    from pipelines.steps.train import load_boundaries

    params = load_params(params_file)
    keras.utils.set_random_seed(params.train.seed)
    hardware = select_hardware(False)
    manifest = load_manifest(Path(processed))
    stats = json.loads((Path(processed) / STATS_FILE).read_text())
    boundaries = load_boundaries(params.dataset, params.train, Path(processed), stats)
    preprocessing = build_preprocessing(params.dataset, stats, params.train, boundaries)
    return params, hardware, manifest, preprocessing


def child_input(params_file: str, processed: str, with_model_preprocessing: str) -> dict:
    from pipelines.model.tfdata import make_dataset

    params, _, manifest, preprocessing = _setup(params_file, processed)
    cfg = params.train
    base = _rss()
    ds = make_dataset(
        manifest["splits"]["train"]["tfrecords"],
        params.dataset,
        cfg.batch_size,
        compression=params.preprocess.compression,
        shuffle=True,
        shuffle_buffer=cfg.shuffle_buffer,
        rows_per_record=params.preprocess.rows_per_record,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        cache=with_model_preprocessing == "cached",
        preprocess=None if with_model_preprocessing == "no" else preprocessing,
    )
    epochs = []
    for _ in range(3):  # the first pass also instantiates the pipeline's functions
        t0 = time.perf_counter()
        n = 0
        for _, y in ds:
            n += int(y.shape[0])
        epochs.append(time.perf_counter() - t0)
    seconds = min(epochs[1:])
    return {
        "examples": n,
        "seconds": seconds,
        "examples_per_s": n / seconds,
        "first_pass_s": epochs[0],
        "peak_rss": self_peak_rss(),
        "base_rss": base,
    }


def child_per_core(params_file: str, processed: str, cores: int, batch: int) -> dict:
    """The input pipeline as training builds it, on ``cores`` CPUs: uncached and cached examples/s.

    The affinity is set before TensorFlow starts, so tf.data sizes its parallel stages
    (``pipelines.model.tfdata.cpu_threads``) and TensorFlow its thread pools to it.
    """
    import os

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    from pipelines.model.tfdata import make_dataset

    params, _, manifest, preprocessing = _setup(params_file, processed)
    cfg = params.train

    def epochs(cache: bool, n: int) -> tuple[int, list[float]]:
        ds = make_dataset(
            manifest["splits"]["train"]["tfrecords"], params.dataset, batch,
            compression=params.preprocess.compression, shuffle=True, shuffle_buffer=cfg.shuffle_buffer,
            rows_per_record=params.preprocess.rows_per_record, seed=cfg.seed,
            deterministic=cfg.deterministic, cache=cache, preprocess=preprocessing,
        )  # fmt: skip
        seconds = []
        for _ in range(n):
            t0, rows = time.perf_counter(), 0
            for _, y in ds:
                rows += int(y.shape[0])
            seconds.append(time.perf_counter() - t0)
        return rows, seconds

    rows, uncached = epochs(False, 2)  # the first pass also instantiates the pipeline's functions
    _, cached = epochs(True, 3)  # the first pass fills the cache
    return {
        "cores": len(os.sched_getaffinity(0)), "batch": batch, "rows": rows,
        "uncached_per_s": rows / min(uncached), "cached_per_s": rows / min(cached[1:]), "peak_rss": self_peak_rss(),
    }  # fmt: skip


def per_core(scale: int, cores: list[int], batches: list[int]) -> int:
    """What the input delivers per CPU core (parse + preprocessing, uncached and cached), for docs/gpu.md."""
    pf, processed = (str(x) for x in prepared(scale))
    raw: dict = {"machine": machine(), "results": []}
    rows = []
    for batch in batches:
        for n in cores:
            r = _child("per_core", pf, processed, str(n), str(batch))
            raw["results"].append(r)
            rows.append([f"{batch:,}", str(r["cores"]), f"{r['uncached_per_s']:,.0f}", f"{r['uncached_per_s'] / r['cores']:,.0f}",
                         f"{r['cached_per_s']:,.0f}", f"{r['cached_per_s'] / r['cores']:,.0f}"])  # fmt: skip
            print(json.dumps(r), flush=True)
    table = markdown_table(["batch", "cores", "uncached examples/s", "per core", "cached examples/s", "per core"], rows)
    notes = [
        "- uncached: TFRecord parsing and the model's preprocessing every epoch (train.cache off, or the first epoch);"
        " cached: the epochs after the first, from the in-memory cache of preprocessed blocks."
    ]
    report(
        "input_per_core",
        "Input pipeline per CPU core (for sizing a GPU worker, docs/gpu.md)",
        command_line(),
        table,
        raw,
        notes,
    )
    return 0


def child_train_step(params_file: str, processed: str, policy: str) -> dict:
    import keras

    from pipelines.model.network import build_core_model
    from pipelines.model.tfdata import make_dataset

    params, _, manifest, preprocessing = _setup(params_file, processed)
    cfg = params.train
    keras.mixed_precision.set_global_policy(policy)
    steps = 60
    batches = (
        make_dataset(
            manifest["splits"]["train"]["tfrecords"],
            params.dataset,
            cfg.batch_size,
            compression=params.preprocess.compression,
            shuffle=True,
            seed=cfg.seed,
            preprocess=preprocessing,
        )
        .take(steps)
        .cache()
    )
    for _ in batches:  # fill the cache: what follows is the training step alone
        pass
    core = build_core_model(preprocessing, cfg, steps_per_epoch=steps)
    core.fit(batches.take(5), epochs=1, verbose=0)  # trace and warm up
    t0 = time.perf_counter()
    core.fit(batches.repeat(), steps_per_epoch=steps, epochs=3, verbose=0)
    seconds = time.perf_counter() - t0
    n = 3 * steps * cfg.batch_size
    return {
        "examples": n,
        "seconds": seconds,
        "examples_per_s": n / seconds,
        "policy": policy,
        "peak_rss": self_peak_rss(),
    }


def child_fit(params_file: str, processed: str, mode: str, epochs: int) -> dict:
    from pipelines.config import load_params
    from pipelines.model.network import select_hardware
    from pipelines.steps.preprocess import load_manifest

    params = load_params(params_file).with_overrides(
        {
            "train.epochs": epochs,
            "train.early_stopping_patience": 1000,
            "train.cache": "off" if mode == "streaming-nocache" else "auto",
        }
    )
    manifest = load_manifest(Path(processed))
    rows = manifest["splits"]["train"]["rows"]
    if mode.startswith("streaming"):
        import tensorflow as tf  # noqa: F401 - imported before the baseline RSS, as in the in-memory mode

        from pipelines.steps.train import fit_model

        base = _rss()
        import tempfile

        with tempfile.TemporaryDirectory(dir=processed) as cache_dir:  # a disk cache beside the data, as in a run
            _, _, seconds = fit_model(
                params.dataset,
                params.preprocess,
                params.train,
                Path(processed),
                select_hardware(False),
                cache_dir=Path(cache_dir),
            )
    else:
        import keras
        import numpy as np
        import pandas as pd
        import tensorflow as tf

        from pipelines.model.features import LABEL, to_model_inputs
        from pipelines.model.network import build_core_model

        _, hardware, _, preprocessing = _setup(params_file, processed)
        base = _rss()
        t0 = time.perf_counter()
        arrays = {}
        for split in ("train", "validation"):
            frame = pd.read_parquet(manifest["splits"][split]["parquet"])
            inputs = to_model_inputs(frame, params.dataset.features)
            x = preprocessing({k: tf.constant(v) for k, v in inputs.items()})
            arrays[split] = ({k: np.asarray(v) for k, v in x.items()}, frame[LABEL].to_numpy(dtype=np.float32))
            del frame, inputs, x
        load_s = time.perf_counter() - t0
        keras.utils.set_random_seed(params.train.seed)
        core = build_core_model(preprocessing, params.train, steps_per_epoch=-(-rows // params.train.batch_size))
        t1 = time.perf_counter()
        core.fit(
            arrays["train"][0],
            arrays["train"][1],
            batch_size=params.train.batch_size,
            epochs=epochs,
            validation_data=arrays["validation"],
            shuffle=True,
            verbose=0,
        )
        seconds = time.perf_counter() - t1 + load_s
    return {
        "mode": mode,
        "rows": rows,
        "epochs": epochs,
        "seconds": seconds,
        "examples_per_s": rows * epochs / seconds,
        "peak_rss": self_peak_rss(),
        "base_rss": base,
    }


def _child(*args: str) -> dict:
    return run_child("benchmarks.input_pipeline", *args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="bench")
    p.add_argument("args", nargs="*")
    p.add_argument("--scales", default="1,10")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cores", default="1,2", help="per-core: CPUs the pipeline may use, each measured alone")
    p.add_argument("--batches", default="2048,16384", help="per-core: batch sizes")
    args = p.parse_args(argv)
    if args.what == "child":
        kind, *rest = args.args
        fn = {"input": child_input, "train_step": child_train_step, "fit": child_fit, "per_core": child_per_core}[kind]
        print(json.dumps(fn(*[int(a) if a.isdigit() else a for a in rest])))
        return 0
    scales = [int(s) for s in args.scales.split(",")]
    if args.what == "per-core":
        return per_core(scales[0], [int(c) for c in args.cores.split(",")], [int(b) for b in args.batches.split(",")])
    raw: dict = {"machine": machine(), "epochs": args.epochs}
    rows = []
    for scale in scales:
        pf, processed = (str(x) for x in prepared(scale))
        r = raw[f"x{scale}"] = {}
        r["input_raw"] = _child("input", pf, processed, "no")
        r["input"] = _child("input", pf, processed, "yes")
        if scale == scales[0]:
            r["input_cached"] = _child("input", pf, processed, "cached")
        if scale == scales[0]:
            r["train_step"] = _child("train_step", pf, processed, "float32")
            r["train_step_bf16"] = _child("train_step", pf, processed, "mixed_bfloat16")
        for mode in ("streaming", "streaming-nocache", "in-memory"):
            r[mode] = _child("fit", pf, processed, mode, str(args.epochs))
        print(json.dumps(r, indent=1), flush=True)
        label = f"x{scale} ({r['streaming']['rows']:,} training rows)"
        rows.append(
            [
                label,
                "input pipeline, iteration only: parse only",
                f"{r['input_raw']['examples_per_s']:,.0f}",
                mib(r["input_raw"]["peak_rss"]),
            ]
        )
        rows.append(
            [
                label,
                "input pipeline, iteration only: parse + model preprocessing",
                f"{r['input']['examples_per_s']:,.0f}",
                mib(r["input"]["peak_rss"]),
            ]
        )
        if "input_cached" in r:
            rows.append(
                [
                    label,
                    "input pipeline, iteration only: epochs after the first, from the in-memory cache",
                    f"{r['input_cached']['examples_per_s']:,.0f}",
                    mib(r["input_cached"]["peak_rss"]),
                ]
            )
        if "train_step" in r:
            ratio = r["input"]["examples_per_s"] / r["train_step"]["examples_per_s"]
            rows.append(
                [
                    label,
                    f"training step alone (float32); input/training = **{ratio:.1f}x**",
                    f"{r['train_step']['examples_per_s']:,.0f}",
                    mib(r["train_step"]["peak_rss"]),
                ]
            )
            rows.append(
                [
                    label,
                    "training step alone, mixed_bfloat16 (not used on CPU by the pipeline)",
                    f"{r['train_step_bf16']['examples_per_s']:,.0f}",
                    mib(r["train_step_bf16"]["peak_rss"]),
                ]
            )
        for mode, text in (
            ("streaming", "training, streaming (cache auto, the default: memory at x1, files at x10)"),
            ("streaming-nocache", "training, streaming (cache off)"),
            ("in-memory", "training, in-memory baseline (pandas -> Keras arrays)"),
        ):
            m = r[mode]
            rows.append(
                [
                    label,
                    f"{text}, {args.epochs} epochs",
                    f"{m['examples_per_s']:,.0f}",
                    f"{mib(m['peak_rss'])} (+{mib(m['peak_rss'] - m['base_rss'])})",
                ]
            )
    notes = []
    if len(scales) > 1:
        a, b = raw[f"x{scales[0]}"], raw[f"x{scales[-1]}"]
        for mode in ("streaming", "streaming-nocache", "in-memory"):
            notes.append(
                f"- {mode}: peak RSS x{scales[-1]} / x{scales[0]} = **{b[mode]['peak_rss'] / a[mode]['peak_rss']:.2f}x** "
                f"(above the libraries: {(b[mode]['peak_rss'] - b[mode]['base_rss']) / max(a[mode]['peak_rss'] - a[mode]['base_rss'], 1):.2f}x); "
                f"throughput x{scales[-1]} / x{scales[0]} = {b[mode]['examples_per_s'] / a[mode]['examples_per_s']:.2f}x"
            )
    if "train_step" in raw[f"x{scales[0]}"]:
        step = raw[f"x{scales[0]}"]["train_step"]["examples_per_s"]
        notes.append(
            "- input (parse + model preprocessing, no cache) / training step: "
            + ", ".join(f"x{s}: **{raw[f'x{s}']['input']['examples_per_s'] / step:.1f}x**" for s in scales)
        )
    notes.append("- CPU only: the GPU path (one GPU, MirroredStrategy, mixed precision) is not yet measured.")
    table = markdown_table(["data", "what", "examples/s", "peak RSS MiB"], rows)
    report("input_pipeline", "Input pipeline and training throughput (CPU)", command_line(), table, raw, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
