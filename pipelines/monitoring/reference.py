"""The champion's monitoring reference: what its drift and performance are measured against.

When a model version is registered, a seeded sample of its own training split and
the model's probabilities on it are logged with it (:func:`write_reference`), and the
version is tagged with where (``REFERENCE_URI_TAG``), so the reference always matches
the model. Monitoring resolves the champion once per run (:func:`resolve_champion`)
and reads its reference back (:func:`load_champion_reference`).

Not to be confused with the *validation* reference (``reference.json``, what the
validation gate learns from the training data): :mod:`pipelines.validation.suite`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import DatasetConfig, MonitorConfig
from pipelines.errors import MonitorError

log = logging.getLogger(__name__)

# The reference's column of the model's probabilities; monitoring reads the window's scores
# (predict.probability_column in the prediction files) under this name too.
PROBABILITY = "probability"
_EARLIER_PROBABILITY = "delay_probability"  # what references written before it was generic call it
REFERENCE_ARTIFACT_DIR = "monitoring"  # in the MLflow run of the model version
REFERENCE_FILE = "reference.parquet"
REFERENCE_URI_TAG = "monitoring.reference_uri"  # model version tag: where its reference is


# --------------------------------------------------------------------------- the reference


def reference_sample(train: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``rows`` rows of the training split (all of it when smaller), in its order."""
    if len(train) > rows:
        train = train.sample(n=rows, random_state=seed).sort_index()
    return train.reset_index(drop=True)


def write_reference(
    dataset: DatasetConfig, cfg: MonitorConfig, batch_rows: int, train_parquet: Path, model_path: Path, out_dir: Path
) -> Path:
    """Write the monitoring reference of a model: a sample of its training split and its probabilities.

    The sample is read row group by row group (:func:`pipelines.data.partitions.read_sample`):
    the split is never held whole.

    The probabilities come from the saved Keras model through the same input
    path as serving (:func:`pipelines.model.features.to_model_inputs`), so they
    compare with what ``batch_predict`` writes.

    Args:
        dataset: its features.
        cfg: the ``monitor`` section: ``reference_rows`` and ``seed`` of the sample.
        batch_rows: rows per prediction batch (``predict.batch_rows``).
        train_parquet: the model's training split.
        model_path: the saved Keras model.
        out_dir: where the file goes.

    Returns:
        The Parquet file: key, time, feature and label columns, and ``probability``.
    """
    from pipelines.data.partitions import read_sample
    from pipelines.model.features import to_model_inputs
    from pipelines.model.network import load_model, predict_proba

    sample = read_sample(train_parquet, cfg.reference_rows, cfg.seed)
    model = load_model(str(model_path))
    sample[PROBABILITY] = predict_proba(model, to_model_inputs(sample, dataset.features), batch_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REFERENCE_FILE
    sample.to_parquet(path, index=False)
    log.info("monitoring reference: %d rows of the training split -> %s", len(sample), path)
    return path


# --------------------------------------------------------------------------- the champion


@dataclass(frozen=True)
class Champion:
    """The model version under watch, resolved once per monitoring run so every check sees the same one."""

    model_name: str
    version: str
    run_id: str
    reference_uri: str | None
    holdout: dict[str, float]  # its evaluation metrics on the holdout: auc, brier, log_loss, ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Champion:
        return cls(**d)


def resolve_champion(tracking_uri: str, model_name: str, alias: str = "champion") -> Champion:
    """The version behind ``models:/<name>@<alias>``, its reference and its holdout metrics.

    Raises:
        MonitorError: no version has the alias.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        raise MonitorError(
            f"no version of model '{model_name}' has the alias '{alias}': nothing to monitor ({err})"
        ) from None
    run_id = mv.run_id or mv.tags.get("lineage.mlflow_run_id")
    metrics = client.get_run(run_id).data.metrics
    holdout = {k.removeprefix("holdout_"): float(v) for k, v in metrics.items() if k.startswith("holdout_")}
    return Champion(model_name, str(mv.version), run_id, mv.tags.get(REFERENCE_URI_TAG), holdout)


def load_champion_reference(champion: Champion, tracking_uri: str, dst_dir: Path) -> pd.DataFrame:
    """Download and read the champion's reference.

    Args:
        champion: the version resolved for this monitoring run.
        tracking_uri: the MLflow tracking URI.
        dst_dir: where the file is downloaded.

    Returns:
        The reference: key, time, feature and label columns, and ``probability``.

    Raises:
        MonitorError: the version was registered without one.
    """
    import mlflow

    if not champion.reference_uri:
        raise MonitorError(
            f"{champion.model_name} version {champion.version} has no monitoring reference "
            f"(tag {REFERENCE_URI_TAG!r}): it was registered before monitoring existed; retrain to get one"
        )
    dst_dir.mkdir(parents=True, exist_ok=True)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=champion.reference_uri, dst_path=str(dst_dir), tracking_uri=tracking_uri
    )
    reference = pd.read_parquet(path)
    if PROBABILITY not in reference.columns and _EARLIER_PROBABILITY in reference.columns:
        reference = reference.rename(columns={_EARLIER_PROBABILITY: PROBABILITY})
    return reference
