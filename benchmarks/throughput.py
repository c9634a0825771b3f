"""Throughput of the row-wise steps: batch scoring (rows/s, peak memory), validation and drift checks per million rows.

    .venv/bin/python -m benchmarks.throughput [--rows 1000000]

* Scoring: the registered pyfunc model (``pipelines/model/pyfunc.py``) on ``--rows``
  rows, the production path (``batch_predict``: ``predict.batch_rows`` rows
  per call) against the baseline (one ``predict`` on the whole frame). Each in
  its own process, with its peak RSS and the RSS before the rows were read
  (the libraries and the model).
* Validation: the Great Expectations suite of the ``validate`` step on the
  year's published rows (336,776 rows, or grown ``--rows``), seconds per
  million rows.
* Drift check: Evidently's data drift report of the monitoring DAG (the
  champion's 20,000-row reference against the current rows), seconds per
  million current rows.

The model is trained for one epoch on the prepared year (benchmarks/data.py):
scoring cost does not depend on how well it was trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import command_line, machine, markdown_table, mib, report, run_child, self_peak_rss
from benchmarks.data import bench_root, prepared


def _model(params_file: Path, processed: Path) -> Path:
    """A saved pyfunc model (as ``register`` logs it), trained for one epoch; built once."""
    out = bench_root() / "scoring-model"
    if (out / "pyfunc" / "MLmodel").exists():
        return out / "pyfunc"
    import json as _json

    import mlflow.pyfunc

    from pipelines.config import load_params
    from pipelines.model.network import select_hardware
    from pipelines.model.pyfunc import ProbabilityModel
    from pipelines.settings import REPO_ROOT
    from pipelines.steps.register import serving_requirements
    from pipelines.steps.train import fit_model

    params = load_params(params_file).with_overrides({"train.epochs": 1})
    model, _, _ = fit_model(params.dataset, params.preprocess, params.train, processed, select_hardware(False))
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    spec = out / "feature_spec.json"
    spec.write_text(
        _json.dumps(
            {
                "numeric": list(params.dataset.features.numeric),
                "categorical": list(params.dataset.features.categorical),
                "batch_size": params.predict.batch_rows,
            }
        )
    )
    mlflow.pyfunc.save_model(
        str(out / "pyfunc"),
        python_model=ProbabilityModel(),
        artifacts={"keras_model": str(out / "model.keras"), "feature_spec": str(spec)},
        code_paths=[str(REPO_ROOT / "pipelines")],
        pip_requirements=serving_requirements(),
    )
    return out / "pyfunc"


def _rows(processed: Path, n: int):
    """``n`` rows of the year's published data (repeated as needed), features and keys."""
    import pandas as pd

    from pipelines.steps.preprocess import load_manifest

    manifest = load_manifest(processed)
    frame = pd.concat([pd.read_parquet(manifest["splits"][s]["parquet"]) for s in ("train", "validation", "holdout")])
    reps = -(-n // len(frame))
    return pd.concat([frame] * reps, ignore_index=True).iloc[:n]


def child_score(variant: str, model_dir: str, processed: str, n: int, batch_rows: int) -> dict:
    import mlflow.pyfunc
    import numpy as np

    from pipelines.config import FeatureSpec  # noqa: F401 - what the model's code imports
    from pipelines.model.pyfunc import PROBABILITY

    model = mlflow.pyfunc.load_model(model_dir)
    frame = _rows(Path(processed), n)
    features = [
        c
        for c in frame.columns
        if c
        in json.loads((Path(model_dir) / "artifacts" / "feature_spec.json").read_text())["numeric"]
        + json.loads((Path(model_dir) / "artifacts" / "feature_spec.json").read_text())["categorical"]
    ]
    frame = frame[features]
    before = self_peak_rss()
    t0 = time.perf_counter()
    if variant == "batched":
        parts = [
            model.predict(frame.iloc[lo : lo + batch_rows])[PROBABILITY].to_numpy()
            for lo in range(0, len(frame), batch_rows)
        ]
        proba = np.concatenate(parts)
    else:
        proba = model.predict(frame)[PROBABILITY].to_numpy()
    seconds = time.perf_counter() - t0
    return {
        "rows": len(proba),
        "seconds": seconds,
        "rows_per_s": len(proba) / seconds,
        "peak_rss": self_peak_rss(),
        "rss_before_rows": before,
    }


def child_validate(params_file: str, processed: str, n: int) -> dict:
    import datetime as dt
    import tempfile

    from pipelines.config import load_params
    from pipelines.steps.validate import validate_frame

    params = load_params(params_file)
    frame = _rows(Path(processed), n) if n else None
    spec = params.dataset
    # The raw schema: the processed splits keep key, time, feature and label columns; read the raw year.
    raw = Path(processed).parent / "raw"
    import pandas as pd

    year = pd.concat([pd.read_parquet(p) for p in sorted(raw.glob("date=*/part-0.parquet"))], ignore_index=True)
    if n and n > len(year):
        from pipelines.data.grow import grow

        year = grow(year, -(-n // len(year)), dt.date(2013, 12, 30)).iloc[:n]
    del frame
    days = sorted(pd.to_datetime(year[spec.time_column]).dt.date.unique())
    t0 = time.perf_counter()
    report_ = validate_frame(
        year, spec, params.validation, Path(tempfile.mkdtemp()), n_days=len(days), first_day=days[0], last_day=days[-1]
    )
    seconds = time.perf_counter() - t0
    return {
        "rows": len(year),
        "seconds": seconds,
        "s_per_million": seconds / len(year) * 1e6,
        "success": report_.success,
        "peak_rss": self_peak_rss(),
    }


def child_drift(params_file: str, processed: str, n: int) -> dict:
    import tempfile

    import pandas as pd

    from pipelines.config import load_params
    from pipelines.monitoring.checks import check_data_drift
    from pipelines.monitoring.reference import reference_sample
    from pipelines.steps.preprocess import load_manifest

    params = load_params(params_file)
    manifest = load_manifest(Path(processed))
    reference = reference_sample(
        pd.read_parquet(manifest["splits"]["train"]["parquet"]), params.monitor.reference_rows, params.monitor.seed
    )
    current = _rows(Path(processed), n)
    t0 = time.perf_counter()
    result = check_data_drift(reference, current, params.dataset, params.monitor.drift, Path(tempfile.mkdtemp()))
    seconds = time.perf_counter() - t0
    return {
        "rows": len(current),
        "seconds": seconds,
        "s_per_million": seconds / len(current) * 1e6,
        "drifted": len(result.drifted),
        "peak_rss": self_peak_rss(),
    }


def _child(*args: str) -> dict:
    return run_child("benchmarks.throughput", *args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="bench")
    p.add_argument("args", nargs="*")
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args(argv)
    if args.what == "child":
        kind, *rest = args.args
        fn = {"score": child_score, "validate": child_validate, "drift": child_drift}[kind]
        conv = [int(a) if a.isdigit() else a for a in rest]
        print(json.dumps(fn(*conv)))
        return 0
    from pipelines.config import load_params

    params_file, processed = prepared(1)
    batch_rows = load_params(params_file).predict.batch_rows
    model_dir = _model(params_file, processed)
    raw: dict = {"machine": machine(), "rows": args.rows}
    for variant in ("batched", "whole"):
        raw[f"score_{variant}"] = _child(
            "score", variant, str(model_dir), str(processed), str(args.rows), str(batch_rows)
        )
    raw["validate_year"] = _child("validate", str(params_file), str(processed), "0")
    raw["validate_grown"] = _child("validate", str(params_file), str(processed), str(args.rows))
    raw["drift"] = _child("drift", str(params_file), str(processed), str(args.rows))
    b, w = raw["score_batched"], raw["score_whole"]
    rows = [
        [
            f"batch scoring, production path (batches of {batch_rows} rows)",
            f"{b['rows']:,}",
            f"{b['rows_per_s']:,.0f} rows/s",
            f"{mib(b['peak_rss'])} (+{mib(b['peak_rss'] - b['rss_before_rows'])})",
        ],
        [
            "batch scoring, baseline (pyfunc predict on the whole frame)",
            f"{w['rows']:,}",
            f"{w['rows_per_s']:,.0f} rows/s",
            f"{mib(w['peak_rss'])} (+{mib(w['peak_rss'] - w['rss_before_rows'])})",
        ],
    ]
    for key, label in (
        ("validate_year", "validation (GX suite), the year"),
        ("validate_grown", "validation (GX suite), grown"),
        ("drift", "drift check (Evidently, 20,000-row reference)"),
    ):
        r = raw[key]
        rows.append(
            [
                label,
                f"{r['rows']:,}",
                f"{r['seconds']:.1f} s = **{r['s_per_million']:.1f} s per million rows**",
                mib(r["peak_rss"]),
            ]
        )
    table = markdown_table(["what", "rows", "throughput", "peak RSS MiB (+ for the rows)"], rows)
    report("throughput", "Throughput: batch scoring, validation and drift checks", command_line(), table, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
