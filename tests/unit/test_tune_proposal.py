"""The tuning step's light parts: its params section, the proposal file and ``--apply`` (no model is trained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, load_params, parse_params
from pipelines.errors import StepError
from pipelines.proposal import apply_proposal, proposal_text, set_flags
from pipelines.steps.tune import current_values, describe_dataset, trial_config

REPO = Path(__file__).resolve().parents[2]
PROPOSAL = {"learning_rate": 0.00421, "hidden_units": [64, 32], "embedding_dim": 8, "dropout": 0.15, "batch_size": 4096}


def _proposal(tmp_path: Path, values: dict = PROPOSAL) -> Path:
    path = tmp_path / "proposal.yaml"
    text = proposal_text(
        values,
        best_auc=0.71,
        current_auc=0.70,
        best_trial=3,
        trials=5,
        epochs=3,
        data="abc (window ending 2013-06-30)",
        run="cli/x (MLflow run r)",
        path=path,
    )
    path.write_text(text)
    return path


def test_params_yaml_has_a_valid_tune_section() -> None:
    tune = load_params(REPO / "params.yaml").tune
    assert tune.n_trials >= 1 and tune.epochs >= 1
    assert tune.space.learning_rate.log and tune.space.learning_rate.low < tune.space.learning_rate.high


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"batch_size": [4, 2048]}, "tune.space.batch_size: Input should be greater than or equal to 8"),
        ({"dropout": {"low": 0.0, "high": 1.0}}, "tune.space.dropout.high: Input should be less than 1"),
        ({"learning_rate": {"low": 0.1, "high": 0.01}}, "tune.space.learning_rate: .*low \\(0.1\\) must be below"),
        ({"learning_rate": {"low": 0.0, "high": 0.01, "log": True}}, "a log range needs low > 0"),
        ({"embedding_dim": []}, "tune.space.embedding_dim"),
    ],
)
def test_a_bad_search_space_names_its_key(space: dict, message: str) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"]["space"].update(space)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_a_trial_changes_only_its_values_and_epochs() -> None:
    train = load_params(REPO / "params.yaml").train
    assert current_values(train)["hidden_units"] == list(train.hidden_units)
    cfg = trial_config(train, PROPOSAL, epochs=2)
    assert cfg.hidden_units == (64, 32) and cfg.epochs == 2 and cfg.learning_rate == 0.00421
    assert cfg.crosses == train.crosses and cfg.seed == train.seed
    with pytest.raises(ValueError, match="dropout"):
        trial_config(train, {**PROPOSAL, "dropout": 1.5}, epochs=2)


def test_apply_edits_the_keys_in_place_and_keeps_the_comments(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    params.write_text(original)
    changed = apply_proposal(_proposal(tmp_path), params)
    assert changed["train.hidden_units"] == {"from": [32], "to": [64, 32]}
    assert changed["train.learning_rate"]["to"] == 0.00421
    text = params.read_text()
    assert "  hidden_units: [64, 32]\n" in text
    assert "  batch_size: 4096            # per replica: the global batch is this times the replicas\n" in text
    # Only the five lines differ; the tune section's own batch_size choices are untouched.
    diff = [(a, b) for a, b in zip(original.splitlines(), text.splitlines(), strict=True) if a != b]
    assert len(diff) == 5, diff
    train = load_params(params).train
    assert (train.learning_rate, train.embedding_dim, train.dropout, train.batch_size) == (0.00421, 8, 0.15, 4096)
    assert apply_proposal(_proposal(tmp_path), params) == {}, "applying it twice changes nothing"


def test_apply_refuses_what_it_cannot_edit_safely(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        (REPO / "params.yaml").read_text().replace("  hidden_units: [32]\n", "  hidden_units:\n    - 32\n")
    )
    before = params.read_text()
    with pytest.raises(ConfigError, match="'train.hidden_units' is not a value on one line"):
        apply_proposal(_proposal(tmp_path), params)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {dropout: 2.0}\n")
    with pytest.raises(ConfigError, match="train.dropout: Input should be less than 1"):
        apply_proposal(bad, params)
    assert params.read_text() == before, "nothing is written when a key fails"
    with pytest.raises(ConfigError, match="proposal file not found"):
        apply_proposal(tmp_path / "missing.yaml", params)


def test_set_flags_read_back_as_the_same_overrides() -> None:
    flags = set_flags({"hidden_units": [64, 32], "learning_rate": 0.00421})
    assert flags == "--set 'train.hidden_units=[64, 32]' --set train.learning_rate=0.00421"
    params = load_params(REPO / "params.yaml")
    from pipelines.__main__ import _overrides

    pairs = [flags.split("'")[1], flags.split()[-1].removeprefix("--set ")]
    got = params.with_overrides(_overrides(pairs)).train
    assert got.hidden_units == (64, 32) and got.learning_rate == 0.00421


def test_cli_apply_writes_the_params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from pipelines.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    monkeypatch.setenv("MLOPS_PARAMS", str(params))
    assert main(["tune", "--apply", str(_proposal(tmp_path))]) == 0
    assert "train.embedding_dim: 4 -> 8" in capsys.readouterr().out
    assert load_params(params).train.embedding_dim == 8


def test_cli_tune_without_data_says_so(tmp_path: Path, capsys) -> None:
    from pipelines.__main__ import main

    assert main(["tune", "--processed", str(tmp_path)]) == 2
    assert f"no preprocessed dataset in {tmp_path}" in capsys.readouterr().err


def test_describe_dataset_refuses_an_empty_validation_split(tmp_path: Path) -> None:
    manifest = {
        "window_end": "2013-06-21",
        "data_fingerprint": "f" * 64,
        "splits": {"train": {"rows": 10}, "validation": {"rows": 0}, "holdout": {"rows": 5}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StepError, match="the validation split of .* has no rows"):
        describe_dataset(tmp_path)
    manifest["splits"]["validation"]["rows"] = 4
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert describe_dataset(tmp_path)["rows"] == {"train": 10, "validation": 4, "holdout": 5}
