"""Register: log the model to the MLflow registry with its lineage, and set its aliases.

Every registered version gets the alias ``challenger``. It also becomes
``champion`` when its holdout AUC meets ``register.champion_min_auc``; the
previous champion stays registered and can be restored by moving the alias
back. Aliases, never stages.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import Params
from pipelines.preprocess import load_manifest
from pipelines.settings import REPO_ROOT
from pipelines.tracking import Tracking, code_revision, get_or_create_run

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def _input_example(params: Params, processed_dir: Path) -> pd.DataFrame:
    manifest = load_manifest(processed_dir)
    holdout = pd.read_parquet(manifest["splits"]["holdout"]["parquet"], columns=list(params.dataset.features.all))
    sample = holdout.dropna().head(5)
    if sample.empty:
        sample = holdout.head(5)
    # Raw dtypes as collected (int columns stay long): the signature then matches what serving reads.
    return sample.reset_index(drop=True)


def register(
    params: Params,
    processed_dir: Path,
    model_path: Path,
    evaluation: dict[str, Any],
    tracking: Tracking,
    lineage: dict[str, str],
    work_dir: Path,
) -> dict[str, Any]:
    """Log the pyfunc model in the pipeline run, register a version, set its aliases.

    Args:
        evaluation: the result of :func:`pipelines.evaluate.evaluate`.
        lineage: extra tags for the version (DAG id, run id, data version, ...).
        work_dir: scratch for the files logged beside the model.

    Returns:
        Model name, version, URI, aliases, and why the champion alias moved or not.
    """
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.serving import FlightDelayModel

    name = params.register_.model_name
    run_id = get_or_create_run(tracking)
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    manifest = load_manifest(processed_dir)

    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = work_dir / "feature_spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "numeric": list(params.dataset.features.numeric),
                "categorical": list(params.dataset.features.categorical),
                "batch_size": params.predict.batch_rows,
            }
        )
    )
    example = _input_example(params, processed_dir)
    python_model = FlightDelayModel()
    signature = infer_signature(example, pd.DataFrame({"delay_probability": [0.5] * len(example)}))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts={"keras_model": str(model_path), "feature_spec": str(spec_file)},
            code_paths=[str(REPO_ROOT / "pipelines")],
            signature=signature,
            input_example=example,
            registered_model_name=name,
        )
    version = str(info.registered_model_version)

    auc = float(evaluation["model"]["auc"])
    floor = params.register_.champion_min_auc
    tags = {
        "lineage.code_revision": code_revision(),
        "lineage.data_fingerprint": manifest["data_fingerprint"],
        "lineage.raw_fingerprint": manifest["raw_fingerprint"],
        "lineage.window_end": manifest["window_end"],
        "lineage.mlflow_run_id": run_id,
        "metrics.holdout_auc": f"{auc:.6f}",
        "metrics.baseline_holdout_auc": f"{float(evaluation['baseline']['auc']):.6f}",
        **{f"lineage.{k}": str(v) for k, v in lineage.items()},
        **{f"params.{k}": str(v) for k, v in params.model_dump(by_alias=True)["train"].items()},
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)

    client.set_registered_model_alias(name, CHALLENGER, version)
    aliases = [CHALLENGER]
    previous = _alias_version(client, name, CHAMPION)
    if auc >= floor:
        client.set_registered_model_alias(name, CHAMPION, version)
        aliases.append(CHAMPION)
        decision = f"promoted: holdout AUC {auc:.4f} >= floor {floor}"
    else:
        decision = f"kept as challenger: holdout AUC {auc:.4f} < floor {floor}"
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, version, "promotion.decision", decision)
    client.set_model_version_tag(name, version, "promotion.previous_champion", previous or "none")
    client.set_model_version_tag(name, version, "promotion.decided_at", now)
    client.set_tag(run_id, "registered_model_version", version)
    log.info("registered %s version %s (%s); %s", name, version, ", ".join(aliases), decision)
    return {
        "model_name": name,
        "model_version": version,
        "model_uri": f"models:/{name}/{version}",
        "aliases": aliases,
        "decision": decision,
        "previous_champion": previous,
        "mlflow_run_id": run_id,
    }


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    import mlflow.exceptions

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None
