"""The season replay driver's own logic (pipelines/ops/replay.py): its params, its nights, its table.

The driver itself runs the real scheduler for hours; what is tested here is what it decides and
writes from the records it gathers.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, parse_params
from pipelines.ops.replay import DEFAULT_OVERRIDES, markdown_table, monitoring_summary, nights, parse_set, replay_params

REPO = Path(__file__).resolve().parents[2]

DECISION = {  # what flights_monitoring's decide writes to decision.json, cut to what the table reads
    "day": "2013-07-07",
    "retrain": True,
    "triggers": ["data_drift", "performance"],
    "blocked_by": None,
    "reason": "retraining: data drift and performance beyond thresholds on 2013-07-07: ...",
    "trigger_run_id": "retrain__2013-07-07__asset_triggered__x",
    "checks": {
        "data_drift": {"share": 0.176, "drifted": ["temp", "dewp", "dest"], "columns": ["c"] * 17, "detected": True},
        "prediction_drift": {"detected": False, "score": 0.4},
        "performance": {"status": "ok", "worsening": {"auc": 0.01, "brier": 0.1}, "exceeded": ["brier"]},
    },
}


def _record(day: str, monitoring: list[dict], retraining: dict | None, versions: list[str]) -> dict:
    return {
        "day": day,
        "seconds": 95.0,
        "training": {
            "run_id": f"replay__{day}",
            "state": "success",
            "seconds": 40.2,
            "trained": False,
            "model_version": None,
        },
        "monitoring": monitoring,
        "retraining": retraining,
        "scored": {"day": "next", "rows": 900, "versions": versions},
    }


def test_overrides_from_the_command_line() -> None:
    assert parse_set(["train.epochs=4", "monitor.drift.drift_share=0.2", "train.retrain=nightly"]) == {
        "train.epochs": 4,
        "monitor.drift.drift_share": 0.2,
        "train.retrain": "nightly",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set(["train.epochs"])


def test_replay_params_are_params_yaml_with_the_overrides_validated() -> None:
    text = replay_params(REPO / "params.yaml", {**DEFAULT_OVERRIDES, "preprocess.split.holdout_days": 2})
    params = parse_params(yaml.safe_load(text))
    assert params.train.retrain == "on_demand"
    assert params.monitor.wait_poke_seconds == DEFAULT_OVERRIDES["monitor.wait_poke_seconds"]
    assert params.preprocess.split.holdout_days == 2
    with pytest.raises(ConfigError, match="train.retrian"):
        replay_params(REPO / "params.yaml", {"train.retrian": "on_demand"})


def test_nights_in_order() -> None:
    assert nights(dt.date(2013, 5, 30), dt.date(2013, 6, 2))[1:3] == [dt.date(2013, 5, 31), dt.date(2013, 6, 1)]
    with pytest.raises(ValueError, match="before"):
        nights(dt.date(2013, 6, 2), dt.date(2013, 6, 1))


def test_monitoring_summary_reads_the_decision_and_its_checks() -> None:
    m = monitoring_summary(DECISION)
    assert m["retrain"] and m["training_run_id"] == DECISION["trigger_run_id"]
    assert m["drifted"] == ["temp", "dewp", "dest"] and m["drift_columns"] == 17
    assert m["exceeded"] == ["brier"]
    refused = monitoring_summary({**DECISION, "retrain": False, "blocked_by": "cooldown"})
    assert refused["training_run_id"] is None and refused["blocked_by"] == "cooldown"
    assert monitoring_summary(None) == {"decided": False}


def test_table_shows_each_night_decision_and_who_scored() -> None:
    asked = {"run_id": "m1", "state": "success", **monitoring_summary(DECISION)}
    cooldown = {
        "run_id": "m2",
        "state": "success",
        **monitoring_summary({**DECISION, "retrain": False, "blocked_by": "cooldown"}),
    }
    retraining = {
        "run_id": DECISION["trigger_run_id"],
        "state": "success",
        "seconds": 88.0,
        "trained": True,
        "model_version": "4",
        "promoted": True,
    }
    skipped = {"run_id": "m3", "state": "success", "decided": False, "note": "wait_for_data skipped"}
    table = markdown_table(
        [_record("2013-07-07", [asked, cooldown], retraining, ["4"]), _record("2013-07-08", [skipped], None, ["4"])]
    )
    lines = table.splitlines()
    assert lines[0].startswith("| day | night run |") and len(lines) == 2 + 2 + 2
    first, second = lines[2], lines[3]
    assert first.startswith("| 2013-07-07 | success, 40 s, no training | - |")
    assert "drift 3/17: temp, dewp, dest" in first and "brier +0.100 (over)" in first
    assert "**retrain** (data_drift, performance)" in first and "refused: cooldown" in first
    assert "success, 88 s, trained | v4 promoted | next: v4 | 95 s |" in first
    assert "success: no decision (wait_for_data skipped)" in second
    assert lines[-1].startswith("2 nights; 1 runs trained a model, 1 of them started by monitoring")
