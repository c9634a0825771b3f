"""Whether a training run trains: the ``train.retrain`` policy.

``nightly``: every run trains a model (and the gate decides whether it serves).
``on_demand``: a run trains only when it is asked to, by ``flights_monitoring``
(drift or decay: its conf carries ``trigger_reason``) or by hand (the trigger
form's ``retrain`` or ``force_promotion``), or when the registry has no champion
to score with. Every other run still collects, validates and publishes its day,
versions the raw data and scores the next day with the current champion.

A plain function of the policy, the run's trigger parameters and the champion's
version, so that it is tested without Airflow or MLflow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

RetrainPolicy = Literal["nightly", "on_demand"]
# The steps a run leaves out when it does not train (they show as skipped in Airflow).
TRAINING_STEPS = ("preprocess", "train", "evaluate", "register")
DECISION_FILE = "training_decision.json"  # in the run's folder


@dataclass(frozen=True)
class TrainingDecision:
    """Whether this run trains, and why (one readable sentence, for the task log and the run's folder)."""

    train: bool
    reason: str
    policy: str
    champion_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_decision(
    policy: RetrainPolicy, trigger_params: Mapping[str, Any], champion_version: str | None
) -> TrainingDecision:
    """Decide whether a training run trains.

    Args:
        policy: ``train.retrain`` of params.yaml.
        trigger_params: the DAG run's parameters: ``trigger_reason`` (set by monitoring),
            ``retrain`` and ``force_promotion`` (the trigger form).
        champion_version: the registry's champion, None when there is none (ignored with ``nightly``).

    Returns:
        The decision with its reason.
    """
    if policy == "nightly":
        return TrainingDecision(True, "train.retrain is nightly: every run trains", policy, champion_version)
    if policy != "on_demand":
        raise ValueError(f"train.retrain must be 'nightly' or 'on_demand', got {policy!r}")
    reason = str(trigger_params.get("trigger_reason") or "").strip()
    if reason:
        short = reason if len(reason) <= 300 else reason[:297] + "..."
        return TrainingDecision(True, f"asked by monitoring (trigger_reason): {short}", policy, champion_version)
    if trigger_params.get("retrain"):
        return TrainingDecision(True, "asked on the trigger form (retrain: true)", policy, champion_version)
    if trigger_params.get("force_promotion"):
        return TrainingDecision(
            True,
            "force_promotion asks for this run's model to become champion: it trains one",
            policy,
            champion_version,
        )
    if champion_version is None:
        return TrainingDecision(True, "no champion in the registry yet: this run trains the first one", policy, None)
    return TrainingDecision(
        False,
        f"train.retrain is on_demand and nothing asked for retraining (no trigger_reason, retrain or "
        f"force_promotion): {', '.join(TRAINING_STEPS)} skipped; champion version {champion_version} "
        "scores the next day",
        policy,
        champion_version,
    )


def record_decision(decision: TrainingDecision, run_dir: Path) -> Path:
    """Log the decision and write it to the run's folder (``training_decision.json``).

    Returns:
        The file written.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / DECISION_FILE
    path.write_text(json.dumps(decision.as_dict(), indent=1), encoding="utf-8")
    log.info("%s: %s", "training" if decision.train else "not training", decision.reason)
    return path
