"""The staleness benchmark's summary (``benchmarks/staleness.py``): buckets, pairing with a fresh model, suggested age."""

from __future__ import annotations

import math

import pytest

from benchmarks.staleness import _bucket, summarise


def _cell(origin: int, bucket: int, auc: float, fresh_auc: float | None = None) -> dict:
    cell = {"origin": f"o{origin}", "bucket": bucket, "ages": [7 * bucket + 1, 7 * bucket + 7], "auc": auc}
    cell["brier"] = 0.2
    if fresh_auc is not None:
        cell.update({"fresh_auc": fresh_auc, "fresh_brier": 0.19})
    return cell


def test_ages_fall_into_weekly_buckets() -> None:
    assert [_bucket(a, 7) for a in (1, 7, 8, 14, 15, 60)] == [0, 0, 1, 1, 2, 8]


def test_the_curve_compares_each_model_with_the_fresh_one_on_the_same_days() -> None:
    cells = [
        _cell(0, 0, 0.74),
        _cell(1, 0, 0.72),
        _cell(0, 1, 0.71, fresh_auc=0.72),  # 0.01 below the model trained the night before that week
        _cell(1, 1, 0.70, fresh_auc=0.70),
        _cell(0, 2, 0.66, fresh_auc=0.69),
        _cell(1, 2, 0.67),  # no fresh model for that week: counted in the mean AUC, not in the pairs
    ]
    rows, suggested = summarise(cells, [0, 1, 2], tolerance=0.01)
    assert [r["pairs"] for r in rows] == [0, 2, 1]
    assert rows[0]["auc_change"] == 0.0, "fresh models are the reference"
    assert rows[1]["auc_change"] == pytest.approx(-0.005)
    assert rows[1]["worst_auc_change"] == pytest.approx(-0.01)
    assert rows[2]["auc"] == pytest.approx(0.665) and rows[2]["auc_change"] == pytest.approx(-0.03)
    assert rows[1]["brier_change"] == pytest.approx(0.01)
    assert suggested == 14, "the last bucket before the mean loss exceeds the tolerance"


def test_no_loss_beyond_the_tolerance_suggests_the_longest_age_measured() -> None:
    rows, suggested = summarise([_cell(0, 0, 0.7), _cell(0, 1, 0.7, fresh_auc=0.705)], [0, 1], tolerance=0.01)
    assert suggested == 14
    assert math.isnan(rows[0]["worst_auc_change"])
