"""A saved Keras model registered in a throw-away MLflow registry, as the register step logs it (without the gate)."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.config import FeatureSpec


def register_keras_model(
    keras_path: Path, features: FeatureSpec, root: Path, name: str, alias: str = "champion"
) -> dict:
    """Log ``keras_path`` as the project's pyfunc in a SQLite registry under ``root``; ``alias`` points to it.

    Returns:
        ``uri`` (tracking and registry), ``version``.
    """
    import mlflow

    from pipelines.model.pyfunc import ProbabilityModel
    from pipelines.tracking import use_tracking

    spec = root / "feature_spec.json"
    spec.write_text(json.dumps({"numeric": list(features.numeric), "categorical": list(features.categorical)}))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    exp = client.create_experiment(f"registry-{name}", artifact_location=(root / "artifacts").as_uri())
    with use_tracking(uri), mlflow.start_run(experiment_id=exp):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ProbabilityModel(),
            artifacts={"keras_model": str(keras_path), "feature_spec": str(spec)},
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    return {"uri": uri, "version": version}
