"""What every run shares: the run's context (paths, params, MLflow identity), trigger checks, the step worker hand-off."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, Params, load_params
from pipelines.settings import Settings, resolve
from pipelines.tracking import Tracking

# Trigger-form parameters of the training DAG -> dotted keys of params.yaml.
PARAM_OVERRIDES: dict[str, str] = {
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "training_window_days": "preprocess.training_window_days",
}
PROMOTION_REASON_MIN_CHARS = 10
# Trigger-form parameters of the tuning DAG -> dotted keys of params.yaml.
TUNE_PARAM_OVERRIDES: dict[str, str] = {
    "n_trials": "tune.n_trials",
    "timeout_seconds": "tune.timeout_seconds",
    "trial_epochs": "tune.epochs",
}


def check_trigger_conf(conf: Mapping[str, Any], declared: Iterable[str], dag_id: str) -> None:
    """Refuse a manual run's conf that names an undeclared parameter or forces promotion without a reason.

    Airflow passes conf keys the DAG does not declare through to the run, where nothing
    reads them (``{"epochz": 3}`` would train with the default epochs): the DAG's first
    task and the operators' CLI both check with this, against the DAG's declared params.

    Args:
        conf: the run's conf (trigger parameters).
        declared: the DAG's declared parameter names (``dag.params``).
        dag_id: the DAG, for the message.

    Raises:
        ConfigError: naming each unknown key and the allowed ones, or the missing reason.
    """
    allowed = sorted(declared)
    unknown = sorted(set(conf) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown trigger parameter(s) for {dag_id}: {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    force_reason(conf)


def force_reason(trigger_params: Mapping[str, Any]) -> str | None:
    """The stated reason of a run that forces promotion, None when it does not force it.

    Raises:
        ConfigError: ``force_promotion`` without a ``promotion_reason`` of 10 characters or more.
    """
    if not trigger_params.get("force_promotion"):
        return None
    reason = str(trigger_params.get("promotion_reason") or "").strip()
    if len(reason) < PROMOTION_REASON_MIN_CHARS:
        raise ConfigError(
            f"force_promotion needs 'promotion_reason': say in at least {PROMOTION_REASON_MIN_CHARS} characters why "
            "the gate is overridden (it is recorded on the model version and in the promotion log)"
        )
    return reason


@dataclass(frozen=True)
class RunContext:
    """Everything a step needs to know about the run it belongs to."""

    dag_id: str
    run_id: str
    run_day: dt.date  # the day of data this run collects, in the run's calendar
    overrides: dict[str, Any] = field(default_factory=dict)
    settings: Settings = field(default_factory=resolve)
    force_reason: str | None = None  # a manual run's stated reason to promote whatever the gate says
    user: str | None = None  # who triggered the run (Airflow's triggering user), recorded with a forced promotion

    @classmethod
    def from_trigger(
        cls,
        dag_id: str,
        run_id: str,
        run_day: dt.date,
        trigger_params: dict[str, Any] | None = None,
        user: str | None = None,
    ) -> RunContext:
        """Build from a DAG run: trigger-form values become params.yaml overrides; ``user`` triggered it."""
        trigger_params = trigger_params or {}
        overrides = {PARAM_OVERRIDES[k]: v for k, v in trigger_params.items() if k in PARAM_OVERRIDES and v is not None}
        return cls(
            dag_id=dag_id,
            run_id=run_id,
            run_day=run_day,
            overrides=overrides,
            force_reason=force_reason(trigger_params),
            user=user,
        )

    @cached_property
    def params(self) -> Params:
        params = load_params(self.settings.params_path)
        return params.with_overrides(self.overrides) if self.overrides else params

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir(self.dag_id, self.run_id)

    @property
    def tracking(self) -> Tracking:
        return Tracking(
            tracking_uri=self.settings.tracking_uri,
            experiment=self.params.mlflow.experiment,
            artifact_root=self.settings.artifact_root,
            run_key=f"{self.dag_id}/{self.run_id}",
            tags={"airflow.dag_id": self.dag_id, "airflow.run_id": self.run_id, "run_day": self.run_day.isoformat()},
        )


def in_step_worker(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run the step in the warm step worker when ``MLOPS_STEP_WORKER=warm`` (see :mod:`pipelines.ops.worker`).

    Otherwise, and always inside the worker's own step processes, the step runs here; here, outside
    the worker, its time, CPU time and peak memory go to its run's MLflow run as the worker's do.
    Either way the caller gets the step's result or its exception, class and message
    intact (a :class:`~pipelines.errors.StepError` stays one, for :func:`~pipelines.errors.fail_fast`).
    """

    @functools.wraps(fn)
    def step(*args: Any, **kwargs: Any) -> dict[str, Any]:
        from pipelines.ops import worker

        if worker.enabled():
            return worker.call(fn, *args, **kwargs)
        if worker.in_step_process():
            return fn(*args, **kwargs)  # the worker measures and logs the steps it runs
        from pipelines.monitoring.compute import measured

        with measured(args[0] if args else None, fn.__name__.lstrip("_").removeprefix("run_")):
            return fn(*args, **kwargs)

    return step


def train_placement(params_path: Path) -> dict[str, Any]:
    """The Celery queue, pool and pool slots of a task that trains models (``train.queue``, ...).

    Read when a DAG is parsed: light (YAML and pydantic only).
    """
    train = load_params(params_path).train
    return {"queue": train.queue, "pool": train.pool, "pool_slots": train.pool_slots}
