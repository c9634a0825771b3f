"""The ``train.retrain`` policy (pipelines/steps/should_train.py) and what a run that does not train still records.

The policy is a plain function: no Airflow, no MLflow. The dataset version of a run that did
not preprocess is recorded with real git and DVC in a temporary repository.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import isolated_git_dvc_env

from pipelines.config import ConfigError, load_params
from pipelines.steps.should_train import TRAINING_STEPS, training_decision

REPO = Path(__file__).resolve().parents[2]


def test_nightly_always_trains_without_asking_the_registry() -> None:
    for champion in (None, "3"):
        decision = training_decision("nightly", {}, champion)
        assert decision.train and "nightly" in decision.reason


def test_on_demand_with_a_champion_and_no_request_skips_training() -> None:
    decision = training_decision("on_demand", {"trigger_reason": None, "retrain": False, "force_promotion": False}, "7")
    assert not decision.train
    assert "version 7" in decision.reason
    assert all(step in decision.reason for step in TRAINING_STEPS)


def test_on_demand_trains_when_monitoring_asks() -> None:
    reason = "retraining: data drift beyond thresholds on 2013-07-07: 3 of 17 features drifted " + "x" * 400
    decision = training_decision("on_demand", {"trigger_reason": reason, "trigger_report": "runs:/abc/reports"}, "7")
    assert decision.train
    assert decision.reason.startswith("asked by monitoring") and "data drift" in decision.reason
    assert len(decision.reason) < 400  # the log line stays readable


def test_on_demand_trains_when_a_manual_run_asks() -> None:
    assert training_decision("on_demand", {"retrain": True}, "7").train
    assert training_decision("on_demand", {"force_promotion": True, "promotion_reason": "first model"}, "7").train


def test_on_demand_trains_the_first_champion() -> None:
    decision = training_decision("on_demand", {}, None)
    assert decision.train and "no champion" in decision.reason


def test_a_blank_trigger_reason_is_no_request() -> None:
    assert not training_decision("on_demand", {"trigger_reason": "  "}, "2").train


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="nightly"):
        training_decision("weekly", {}, "1")  # type: ignore[arg-type]


def test_policy_key_in_params_yaml() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.train.retrain == "nightly", "the default keeps every night training"
    assert params.with_overrides({"train.retrain": "on_demand"}).train.retrain == "on_demand"
    with pytest.raises(ConfigError, match="train.retrain"):
        params.with_overrides({"train.retrain": "sometimes"})


# --------------------------------------------------------------------------- version_data without preprocess


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_version_data_of_a_run_that_did_not_preprocess_records_the_raw_data_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    from pipelines.runner import RunContext, run_version_data
    from pipelines.settings import resolve

    home = tmp_path / "home"
    for key, value in {**isolated_git_dvc_env(home), "MLOPS_STEP_WORKER": "off"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLOPS_DATASETS_GIT_REMOTE", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet", "--initial-branch", "main")
    (repo / ".gitignore").write_text("/data/raw/\n/data/processed/\n")
    _git(repo, "add", ".gitignore")
    _git(repo, "commit", "--quiet", "-m", "code")
    part = repo / "data" / "raw" / "date=2013-07-01" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pd.DataFrame({"flight": [1, 2], "arr_delay": [3.0, 40.0]}).to_parquet(part)
    champion_data = repo / "data" / "processed" / "manifest.json"
    champion_data.parent.mkdir(parents=True)
    champion_data.write_text('{"window_end": "2013-06-30"}')
    settings = resolve(
        {
            "MLOPS_HOME": str(tmp_path / "mlops"),
            "MLOPS_DATA_DIR": str(repo / "data"),
            "MLOPS_DVC_REPO": str(repo),
            "MLOPS_PARAMS": str(REPO / "params.yaml"),
            "MLOPS_VERSIONING": "on",
        }
    )
    monkeypatch.setenv("MLOPS_DVC_REMOTE_URL", str(tmp_path / "remote"))
    ctx = RunContext("flights_training", "scheduled__2013-07-01", dt.date(2013, 7, 1), settings=settings)

    versioned = run_version_data(ctx, None, {"success": True, "evaluated": 10, "warnings": []})

    assert versioned["versioned"] and versioned["raw_only"] and versioned["data_fingerprint"] is None
    files = _git(repo, "ls-tree", "-r", "--name-only", versioned["git_rev"]).splitlines()
    assert "data/raw.dvc" in files and "data/processed.dvc" not in files
    sheet = _git(repo, "show", f"{versioned['git_rev']}:DATASHEET.md")
    assert "raw partitions only" in sheet
    assert "raw data only" in _git(repo, "log", "-1", "--format=%s", versioned["git_rev"])
    # The champion's processed data (the next validations' reference) is left as it was.
    assert champion_data.read_text() == '{"window_end": "2013-06-30"}'
