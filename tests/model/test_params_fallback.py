"""The params diff against a champion registered before versions logged their ``params.yaml``.

Such a champion is compared on its MLflow run's params (the ``train`` and ``preprocess``
sections, as the train step logs them), and the summary says so; a ``params.yaml`` named on
the champion but unreadable falls back the same way, saying why. Against a real registry, no training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_params
from pipelines.promotion.params_diff import PARAMS_URI_TAG, champion_params_diff

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory):
    """v1 of a model whose run logged the train step's params with 2 epochs, and no params.yaml."""
    import mlflow

    from pipelines.steps.train import _flat_params

    root = tmp_path_factory.mktemp("fallback")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    params = load_params(REPO / "params.yaml").with_overrides({"train.epochs": 2})
    run = client.create_run(client.create_experiment("fallback", artifact_location=str(root / "artifacts")))
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        params=[mlflow.entities.Param(k, v) for k, v in _flat_params(params.train, params.preprocess).items()],
    )
    client.create_registered_model("m")
    client.create_model_version("m", str(root), run_id=run_id)
    return {"client": client, "uri": uri}


def test_a_champion_without_params_yaml_is_compared_on_its_run_params(champion) -> None:
    effective = load_params(REPO / "params.yaml").with_overrides({"train.epochs": 5, "monitor.window_days": 3})
    diff = champion_params_diff(
        champion["client"], "m", "1", effective.model_dump(mode="json", by_alias=True), champion["uri"]
    )
    assert diff.changed == {"train.epochs": ("2", "5")}, "only train and preprocess are compared"
    assert not diff.added and not diff.removed
    assert diff.summary() == (
        "vs champion v1 (its MLflow run's train and preprocess params): 1 changed, 0 added, 0 removed: "
        "train.epochs 2 -> 5"
    )


def test_an_unreadable_params_yaml_falls_back_and_says_why(champion) -> None:
    client = champion["client"]
    run_id = client.get_model_version("m", "1").run_id
    client.set_model_version_tag("m", "1", PARAMS_URI_TAG, f"runs:/{run_id}/model_spec/v1/params.yaml")
    try:
        effective = load_params(REPO / "params.yaml").with_overrides({"train.epochs": 2})
        diff = champion_params_diff(client, "m", "1", effective.model_dump(mode="json", by_alias=True), champion["uri"])
    finally:
        client.delete_model_version_tag("m", "1", PARAMS_URI_TAG)
    assert diff.identical
    assert "its params.yaml could not be read" in diff.summary()
