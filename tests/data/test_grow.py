"""Growing the replay for scale tests (pipelines.data.grow, dataset.source.scale)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from pipelines.config import load_params
from pipelines.data.grow import JITTER, grow
from pipelines.settings import REPO_ROOT
from pipelines.steps.collect import fetch_day

DAY = dt.date(2013, 2, 8)  # a snowy day: missing weather readings and many delays


def _day(scale: int = 1):
    params = load_params(REPO_ROOT / "params.yaml")
    if scale > 1:
        params = params.with_overrides({"dataset.source.scale": scale})
    return params, fetch_day(params.dataset, DAY)


def test_scale_one_is_the_real_day() -> None:
    params, frame = _day()
    assert params.dataset.source.scale == 1
    assert grow(frame, 1, DAY) is frame


def test_grown_day_has_k_times_the_rows_unique_keys_and_the_same_schema() -> None:
    params, real = _day()
    _, grown = _day(scale=4)
    assert len(grown) == 4 * len(real)
    assert not grown.duplicated(list(params.dataset.key_columns)).any()
    assert grown.dtypes.equals(real.dtypes)
    assert (grown["flight_date"] == real["flight_date"].iloc[0]).all()


def test_jitter_stays_within_the_day_and_keeps_missing_values_missing() -> None:
    _, real = _day()
    real = real.reset_index(drop=True)
    grown = grow(real, 3, DAY)
    copy = grown.iloc[len(real) : 2 * len(real)].reset_index(drop=True)
    for col in JITTER:
        assert (copy[col].isna() == real[col].isna()).all(), col
        assert copy[col].min() >= real[col].min() and copy[col].max() <= real[col].max(), col
    assert not np.allclose(copy["temp"].dropna(), real["temp"].dropna())  # jittered, not copied


def test_growth_is_the_same_on_every_run() -> None:
    _, real = _day()
    a, b = grow(real, 3, DAY), grow(real, 3, DAY)
    assert a.equals(b)
