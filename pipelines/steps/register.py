"""Register: log the model to the MLflow registry with its lineage, and run the promotion gate.

Every registered version gets the alias ``challenger``. It becomes
``champion`` only when :func:`pipelines.promotion.promotion_decision` says so (or a manual
run forces it, with a reason); the decision, its reasons and a model card are
recorded on the version, and the move in the promotion log. The previous
champion stays registered: ``python -m pipelines rollback`` restores it.
Aliases, never stages.

Before the gate decides, the batch canary (:mod:`pipelines.promotion.canary`, with
``register.canary.min_agreement``) scores the next day's rows with the new version
beside the champion. With ``register.min_shadow_requests`` > 0 a passing version
waits under ``challenger`` (only passing versions take it then) and
:mod:`pipelines.promotion.shadow` promotes it later. Every version's effective params and their
diff against the champion's are logged beside it (:mod:`pipelines.promotion.params_diff`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import DatasetConfig, MonitorConfig, PredictConfig, RegisterConfig, TrainConfig
from pipelines.promotion import CHALLENGER, CHAMPION, alias_version, model_card, promotion_decision, record_move
from pipelines.promotion.canary import run_canary
from pipelines.promotion.params_diff import record_params
from pipelines.promotion.shadow import PENDING_TAG, SHADOW_SINCE_TAG
from pipelines.settings import REPO_ROOT
from pipelines.steps.preprocess import load_manifest
from pipelines.tracking import Tracking, code_revision, get_or_create_run, use_tracking

log = logging.getLogger(__name__)


# What the pyfunc model needs when it is loaded: Keras and TensorFlow (the model), pandas and NumPy
# (the frame conversion) and pydantic and PyYAML (pipelines.config); the pipelines code travels
# with the model (code_paths). Naming them skips MLflow's inference of the requirements, which
# loads the model again in a new interpreter (about 15 s of a register task) and listed whatever
# that interpreter had imported, the project's own unpublished package among them.
_SERVING_PACKAGES = (
    ("tensorflow-cpu", "tensorflow"),
    ("keras",),
    ("numpy",),
    ("pandas",),
    ("pydantic",),
    ("pyyaml",),
    ("cloudpickle",),
)


def serving_requirements() -> list[str]:
    """Pinned requirements of the served model, from the installed versions."""
    from importlib.metadata import PackageNotFoundError, version

    import mlflow

    pins = [f"mlflow=={mlflow.__version__}"]
    for alternatives in _SERVING_PACKAGES:
        for name in alternatives:
            try:
                pins.append(f"{name}=={version(name)}")
                break
            except PackageNotFoundError:
                continue
    return pins


def _input_example(dataset: DatasetConfig, processed_dir: Path) -> pd.DataFrame:
    manifest = load_manifest(processed_dir)
    holdout = pd.read_parquet(manifest["splits"]["holdout"]["parquet"], columns=list(dataset.features.all))
    sample = holdout.dropna().head(5)
    if sample.empty:
        sample = holdout.head(5)
    # Raw dtypes as collected (int columns stay long): the signature then matches what serving reads.
    return sample.reset_index(drop=True)


def dataset_lineage(versioned: dict[str, Any] | None, dvc_repo: Path) -> dict[str, str]:
    """The lineage of the data a model was trained on, from the ``version_data`` step's result.

    Args:
        versioned: what :func:`pipelines.steps.version.version_data` recorded (via the runner), or None.
        dvc_repo: the repository the dataset version's commit is in.

    Returns:
        ``dataset_git_rev``, ``dataset_branch``, ``dataset_content_hash`` and ``dvc_repo``;
        only ``dataset_git_rev``, saying so, when the data was not versioned.
    """
    if not (versioned and versioned.get("versioned")):
        return {"dataset_git_rev": "not versioned (MLOPS_VERSIONING=off)"}
    return {
        "dataset_git_rev": versioned["git_rev"],
        "dataset_branch": versioned["branch"],
        "dataset_content_hash": versioned["content_hash"],
        "dvc_repo": str(dvc_repo),
    }


def register(
    dataset: DatasetConfig,
    train_cfg: TrainConfig,
    predict_cfg: PredictConfig,
    cfg: RegisterConfig,
    monitor_cfg: MonitorConfig,
    processed_dir: Path,
    model_path: Path,
    evaluation: dict[str, Any],
    tracking: Tracking,
    lineage: dict[str, str],
    work_dir: Path,
    log_dir: Path,
    force_reason: str | None = None,
    data_warnings: list[str] | None = None,
    *,
    effective_params: dict[str, Any] | None = None,
    run_day: dt.date | None = None,
    raw_dir: Path | None = None,
    max_rows_per_day: int | None = None,
    forced_by: str | None = None,
) -> dict[str, Any]:
    """Log the pyfunc model in the pipeline run, register a version, run the canary and the promotion gate.

    Args:
        dataset: the feature spec and label rule (the model's spec, signature and card).
        train_cfg: recorded on the version as ``params.*`` tags.
        predict_cfg: its ``batch_rows`` is the served model's batch size.
        cfg: the ``register`` section: the model's name and the promotion gate's thresholds.
        monitor_cfg: how the version's monitoring reference is sampled.
        processed_dir: the output of :func:`pipelines.steps.preprocess.preprocess`.
        model_path: the challenger's ``model.keras``.
        evaluation: the result of :func:`pipelines.steps.evaluate.evaluate`.
        lineage: extra tags for the version (DAG id, run id, data version, ...).
        work_dir: scratch for the files logged beside the model (model card, feature spec).
        log_dir: where the promotion log lives.
        tracking: the pipeline run's MLflow run, where the model is logged.
        force_reason: promote whatever the gate says, for this stated reason.
        data_warnings: the warnings of the run's validation (its ``warnings``): with any, the gate
            refuses automatic promotion; None when the run did not validate.
        effective_params: the run's whole params (overrides applied), logged and diffed against the
            champion's; None: only ``train`` is known (recorded as ``params.*`` tags, as always).
        run_day: the run's data day: the canary scores the day after it.
        raw_dir: the published partitions: the canary's fallback day.
        max_rows_per_day: the most rows the canary's fetched day may hold (``validate.rows_per_day``).
        forced_by: who forces the promotion (with ``force_reason``).

    Returns:
        Model name, version, URI, aliases, why the champion alias moved or not, the canary's
        figures, whether the version waits in shadow, and its params diff.
    """
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.model.pyfunc import PROBABILITY, ProbabilityModel

    name = cfg.model_name
    run_id = get_or_create_run(tracking)
    client = mlflow.MlflowClient(tracking.tracking_uri, tracking.tracking_uri)
    manifest = load_manifest(processed_dir)

    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = work_dir / "feature_spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "numeric": list(dataset.features.numeric),
                "categorical": list(dataset.features.categorical),
                "batch_size": predict_cfg.batch_rows,
            }
        )
    )
    example = _input_example(dataset, processed_dir)
    python_model = ProbabilityModel()
    signature = infer_signature(example, pd.DataFrame({PROBABILITY: [0.5] * len(example)}))
    with use_tracking(tracking.tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts={"keras_model": str(model_path), "feature_spec": str(spec_file)},
            code_paths=[str(REPO_ROOT / "pipelines")],
            signature=signature,
            input_example=example,
            pip_requirements=serving_requirements(),
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    # Drift monitoring compares against this version's own training sample and probabilities.
    from pipelines.monitoring.reference import REFERENCE_ARTIFACT_DIR, REFERENCE_URI_TAG, write_reference

    reference = write_reference(
        dataset,
        monitor_cfg,
        predict_cfg.batch_rows,
        Path(manifest["splits"]["train"]["parquet"]),
        model_path,
        work_dir / "monitoring",
    )
    client.log_artifact(run_id, str(reference), REFERENCE_ARTIFACT_DIR)
    client.set_model_version_tag(
        name, version, REFERENCE_URI_TAG, f"runs:/{run_id}/{REFERENCE_ARTIFACT_DIR}/{reference.name}"
    )

    full = json.loads(Path(evaluation["evaluation_path"]).read_text())
    auc = float(full["challenger"]["overall"]["auc"])
    tags = {
        "lineage.code_revision": code_revision(),
        "lineage.data_fingerprint": manifest["data_fingerprint"],
        "lineage.raw_fingerprint": manifest["raw_fingerprint"],
        "lineage.window_end": manifest["window_end"],
        "lineage.mlflow_run_id": run_id,
        "metrics.holdout_auc": f"{auc:.6f}",
        "metrics.baseline_holdout_auc": f"{float(full['baseline']['overall']['auc']):.6f}",
        **{f"lineage.{k}": str(v) for k, v in lineage.items()},
        **{f"params.{k}": str(v) for k, v in train_cfg.model_dump(by_alias=True).items()},
    }
    if full.get("champion"):
        tags["metrics.champion_holdout_auc"] = f"{float(full['champion']['overall']['auc']):.6f}"
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)

    previous = alias_version(client, name, CHAMPION)
    params_diff = None
    if effective_params is not None:
        params_diff = record_params(
            client, run_id, name, version, effective_params, previous, tracking.tracking_uri, work_dir
        )
    canary = None
    if cfg.canary.min_agreement is not None:
        canary = run_canary(
            dataset,
            cfg.canary,
            predict_cfg,
            name,
            version,
            previous,
            float(full.get("threshold", 0.5)),
            run_day,
            raw_dir,
            tracking.tracking_uri,
            max_rows_per_day,
        )
        for k, v in canary.tags().items():
            client.set_model_version_tag(name, version, k, v)

    decision = promotion_decision(full, cfg, force_reason, data_warnings, canary, forced_by)
    shadow_mode = cfg.min_shadow_requests > 0
    aliases = []
    # In shadow mode the alias challenger means "passed, waiting": a refused version leaves it alone.
    if decision.promote or decision.pending or not shadow_mode:
        _supersede_pending(client, name, version)
        client.set_registered_model_alias(name, CHALLENGER, version)
        aliases.append(CHALLENGER)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        aliases.append(CHAMPION)
    if decision.pending:
        client.set_model_version_tag(name, version, PENDING_TAG, "shadow")
        client.set_model_version_tag(name, version, SHADOW_SINCE_TAG, dt.datetime.now(dt.UTC).isoformat())
    client.set_model_version_tag(name, version, "promotion.decision", decision.summary[:5000])
    client.set_model_version_tag(name, version, "promotion.previous_champion", previous or "none")
    client.set_model_version_tag(name, version, "promotion.forced", str(decision.forced).lower())
    if decision.forced:
        client.set_model_version_tag(name, version, "promotion.forced_by", decision.forced_by or "unknown")
    if decision.pending:
        action = "shadow"
    elif decision.promote:
        action = "force-promote" if decision.forced else "promote"
    else:
        action = "refuse"
    record_move(
        client,
        name,
        version,
        action=action,
        previous=previous,
        reason=decision.summary,
        run=f"{lineage.get('dag_id', '')}/{lineage.get('run_id', '')}",
        metrics={"auc": auc},
        log_dir=log_dir,
    )
    card = work_dir / "model_card.md"
    card.write_text(
        model_card(
            name,
            version,
            full,
            decision,
            {k.removeprefix("lineage."): v for k, v in tags.items() if k.startswith("lineage.")},
            {"numeric": list(dataset.features.numeric), "categorical": list(dataset.features.categorical)},
            f"{dataset.label.source_column} {dataset.label.operator} {dataset.label.threshold:g}, "
            f"missing counts as {dataset.label.missing}",
            dataset,
            params_diff,
        ),
        encoding="utf-8",
    )
    client.log_artifact(run_id, str(card), f"model_card/v{version}")
    client.update_model_version(name, version, description=decision.summary[:5000])
    client.set_tag(run_id, "registered_model_version", version)
    client.set_tag(run_id, "promotion.decision", decision.summary[:5000])
    log.info("registered %s version %s (%s); %s", name, version, ", ".join(aliases), decision.summary)
    return {
        "model_name": name,
        "model_version": version,
        "model_uri": f"models:/{name}/{version}",
        "aliases": aliases,
        "promoted": decision.promote,
        "pending_shadow": decision.pending,
        "decision": decision.summary,
        "previous_champion": previous,
        "forced_by": decision.forced_by,
        "canary": canary.as_dict() if canary is not None else None,
        "params_diff": params_diff.summary() if params_diff is not None else None,
        "mlflow_run_id": run_id,
        "model_card": str(card),
    }


def _supersede_pending(client: Any, name: str, version: str) -> None:
    """The version waiting in shadow, if another, loses the alias challenger to ``version``: say so on it."""
    waiting = alias_version(client, name, CHALLENGER)
    if waiting is None or waiting == version:
        return
    if client.get_model_version(name, waiting).tags.get(PENDING_TAG) == "shadow":
        client.set_model_version_tag(name, waiting, PENDING_TAG, f"superseded by v{version}")
        log.info("v%s was waiting in shadow: superseded by v%s, which now holds the alias challenger", waiting, version)
