"""A synthetic, sparse event data set unlike the flights, for running the pipeline on params.yaml alone.

One CSV file per day (``events/YYYY-MM-DD.csv``), 0 to 8 rows a day and no file at all on
days without events; no key column; dates written day first (``%d/%m/%Y``); a label
derived from an ``outcome`` count (``outcome >= 1``) with a clear signal in the features.
Some days make per-file type inference go wrong on purpose: ``region`` empty (read alone,
a float column), ``segment`` only digit codes (an int column), ``amount`` only whole
numbers (an int column), ``visits`` empty (a float column, where the schema says int).
Seeded: the same arguments write the same files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

FIRST_DAY = dt.date(2024, 1, 1)
DAYS = 200
DATE_FORMAT = "%d/%m/%Y"
REGIONS = ("north", "south", "east", "west")
SEGMENTS = ("10", "20", "30", "k1")  # mostly digit codes: a day of only digits reads as int
_REGION_EFFECT = {"north": 1.2, "south": -1.0, "east": 0.3, "west": -0.4}


def events_params(root: Path, epochs: int = 3) -> dict:
    """A params.yaml (as a dict) for the files :func:`write_events` writes under ``root``.

    Args:
        root: the folder holding ``events/``.
        epochs: ``train.epochs``.

    Returns:
        Every section the pipeline reads, for this data set and nothing else.
    """
    return {
        "dataset": {
            "name": "synthetic_events",
            "source": {
                "kind": "files",
                "path_template": str(root / "events" / "{date:%Y-%m-%d}.csv"),
                "format": "csv",
                "date_format": DATE_FORMAT,
                "missing_day": "empty",
            },
            "time_column": "event_day",
            "key_columns": [],
            "description": "Scores the day's customer events with the probability of a follow-up order.",
            "entity": "event",
            "label": {
                "source_column": "outcome",
                "operator": "ge",
                "threshold": 1,
                "missing": "negative",
                "name": "followed by at least one order",
            },
            "post_event_columns": ["outcome"],
            "features": {"numeric": ["amount", "visits", "temperature"], "categorical": ["region", "segment"]},
            "schema": {
                "event_day": "date",
                "region": "string",
                "segment": "string",
                "amount": "float",
                "visits": "int",
                "temperature": "float",
                "note": "string",
                "outcome": "int",
            },
        },
        "validate": {
            "max_null_fraction": 0.05,
            # Whole days without a region, visits or temperature reading happen; the model imputes.
            "null_fraction_overrides": {"region": 1.0, "visits": 1.0, "temperature": 1.0, "note": 1.0},
            "ranges": {"amount": [0, 1000], "visits": [0, 100], "outcome": [0, 10]},
            "categories": {"region": list(REGIONS)},
            "rows_per_day": [0, 50],
            "severity": {"unseen_categories": "warn", "reference_ranges": "warn"},
            "escalate": {"unseen_categories": 0.5, "reference_ranges": 0.5},
        },
        "preprocess": {
            "training_window_days": 150,
            "split": {"validation_days": 25, "holdout_days": 40, "min_train_days": 30},
            "shards": 1,
            "rows_per_record": 64,
        },
        "train": {"epochs": epochs, "batch_size": 32, "learning_rate": 0.02, "hidden_units": [8], "seed": 7},
        "evaluate": {
            "slice_columns": ["region"],
            "min_slice_rows": 10,
            # The first model must beat the baseline; on a few hundred rows a one-iteration
            # baseline keeps that rule from deciding the test (the gate is tested elsewhere).
            "baseline": {"max_iter": 1},
        },
        "register": {"model_name": "event_followup", "champion_min_auc": 0.6},
        "predict": {"probability_column": "followup_probability", "decision_column": "followup_expected"},
        "mlflow": {"experiment": "event_followup"},
        "monitor": {
            "window_days": 7,
            "reference_rows": 200,
            "drift": {"min_rows": 10},  # a decision on a sparse week
            "prediction_drift": {"min_rows": 30},
            "performance": {"min_rows": 30},
            "experiment": "event_followup_monitoring",
        },
    }


def write_events(root: Path, seed: int = 0, first_day: dt.date = FIRST_DAY, days: int = DAYS) -> pd.DataFrame:
    """Write the daily files under ``root/events``; returns every row written (typed, for assertions).

    Args:
        root: where ``events/`` goes.
        seed: the generator's seed.
        first_day: the first day.
        days: how many days.

    Returns:
        The rows, with ``event_day`` as dates and the ``label`` the outcome implies.
    """
    rng = np.random.default_rng(seed)
    out = root / "events"
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(days):
        day = first_day + dt.timedelta(days=i)
        n = 0 if rng.random() < 0.4 else int(rng.integers(1, 9))
        if n == 0:
            continue  # no events, no file
        region = rng.choice(REGIONS, n)
        segment = rng.choice(SEGMENTS if rng.random() < 0.5 else SEGMENTS[:3], n)
        amount = rng.gamma(4.0, 12.0, n).round(2)
        visits = rng.poisson(3, n).astype(float)
        temperature = rng.normal(12 + 10 * np.sin(i / 58), 4, n).round(1)
        logit = -0.5 + 0.06 * (amount - 48) + np.vectorize(_REGION_EFFECT.get)(region) + 0.3 * (visits - 3)
        label = rng.random(n) < 1 / (1 + np.exp(-logit))
        outcome = np.where(label, rng.integers(1, 4, n), 0)
        frame = pd.DataFrame(
            {
                "event_day": [day] * n,
                "region": region.astype(object),
                "segment": segment.astype(object),
                "amount": amount,
                "visits": visits,
                "temperature": temperature,
                "note": [None] * n,
                "outcome": outcome,
            }
        )
        if i % 7 == 3:
            frame["region"] = None  # the region feed was down
        if i % 5 == 1:
            frame["amount"] = frame["amount"].round(0)  # whole amounts only: "42" reads as int
        if i % 6 == 2:
            frame["visits"] = np.nan  # no visit counts that day
            frame["temperature"] = np.nan
        elif n > 2:
            frame.loc[0, "visits"] = np.nan  # an int column with a gap
        frames.append(frame)
        text = frame.assign(
            event_day=day.strftime(DATE_FORMAT),
            amount=frame["amount"].map(lambda v: f"{v:g}"),
            visits=frame["visits"].map(lambda v: "" if np.isnan(v) else str(int(v))),
        )
        text.to_csv(out / f"{day:%Y-%m-%d}.csv", index=False)
    rows = pd.concat(frames, ignore_index=True)
    rows["label"] = (rows["outcome"] >= 1).astype(int)
    return rows
