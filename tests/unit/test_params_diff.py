"""A version's params against its champion's (``pipelines.promotion.params_diff``): flattening, the diff, its summary."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import load_params
from pipelines.promotion.params_diff import _run_param_form, diff_params, flatten

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"


def test_flatten_keeps_lists_whole_and_values_as_json() -> None:
    flat = flatten({"train": {"epochs": 2, "hidden_units": [64, 32], "jax": {"x": None}}, "a": "b", "empty": {}})
    assert flat == {
        "train.epochs": "2",
        "train.hidden_units": "[64, 32]",
        "train.jax.x": "null",
        "a": '"b"',
        "empty": "{}",
    }


def test_the_diff_names_changed_added_and_removed_keys() -> None:
    old = flatten({"train": {"epochs": 2, "learning_rate": 0.001, "seed": 1}, "gone": 1})
    new = flatten({"train": {"epochs": 1, "learning_rate": 1e-06, "seed": 1}, "new": True})
    diff = diff_params(old, new, "1", "its params.yaml")
    assert diff.changed == {"train.epochs": ("2", "1"), "train.learning_rate": ("0.001", "1e-06")}
    assert diff.added == {"new": "true"} and diff.removed == {"gone": "1"}
    summary = diff.summary()
    assert summary.startswith("vs champion v1 (its params.yaml): 2 changed, 1 added, 1 removed: ")
    assert "train.epochs 2 -> 1" in summary and "new added" in summary and "gone removed" in summary
    assert diff.summary(limit=1).endswith(", and 3 more")
    assert diff.as_dict()["changed"]["train.epochs"] == {"champion": "2", "this": "1"}


def test_identical_params_and_no_champion_say_so() -> None:
    flat = flatten({"train": {"epochs": 2}})
    assert diff_params(flat, flat, "4", "its params.yaml").summary() == (
        "params identical to champion v4's (its params.yaml)"
    )
    assert diff_params({}, flat, None, "first version").summary() == "no champion to compare with (first version)"


def test_the_fallback_reads_params_as_the_train_step_logs_them() -> None:
    """A champion registered before params.yaml was logged is compared on its MLflow run params."""
    from pipelines.steps.train import _flat_params

    params = load_params(PARAMS_FILE)
    logged = _flat_params(params.train, params.preprocess)
    assert _run_param_form(params.model_dump(mode="json", by_alias=True)) == logged
