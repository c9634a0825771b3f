"""One pipeline run: resolves paths, params and MLflow identity, and runs each step.

The Airflow tasks, the CLI (``python -m pipelines``) and the DVC stages call
these ``run_*`` functions, so every entry point executes the same code with
the same layout. Each returns a small JSON-able dict (paths, ids, metrics):
what travels between Airflow tasks as XCom.

The functions live by DAG: :mod:`.training` (collect to batch_predict, and ``run_all`` for the CLI),
:mod:`.monitoring`, :mod:`.tuning`; :mod:`.context` holds what they share.
"""

from __future__ import annotations

from pipelines.runner.context import (
    PARAM_OVERRIDES,
    PROMOTION_REASON_MIN_CHARS,
    TUNE_PARAM_OVERRIDES,
    RunContext,
    check_trigger_conf,
    force_reason,
    in_step_worker,
    train_placement,
)
from pipelines.runner.monitoring import (
    run_check_compute,
    run_check_data_drift,
    run_check_performance,
    run_check_prediction_drift,
    run_check_published,
    run_check_served,
    run_check_staleness,
    run_record_retraining,
    run_resolve_champion,
    run_retrain_decision,
)
from pipelines.runner.training import (
    run_alert_promotion,
    run_all,
    run_batch_predict,
    run_collect,
    run_evaluate,
    run_preprocess,
    run_promote_challenger,
    run_record_trigger,
    run_register,
    run_should_train,
    run_train,
    run_validate,
    run_version_data,
)
from pipelines.runner.tuning import (
    run_check_tuning_data,
    run_tune,
)

__all__ = [
    "PARAM_OVERRIDES",
    "PROMOTION_REASON_MIN_CHARS",
    "RunContext",
    "TUNE_PARAM_OVERRIDES",
    "check_trigger_conf",
    "force_reason",
    "in_step_worker",
    "run_alert_promotion",
    "run_all",
    "run_batch_predict",
    "run_check_compute",
    "run_check_data_drift",
    "run_check_performance",
    "run_check_prediction_drift",
    "run_check_published",
    "run_check_served",
    "run_check_staleness",
    "run_check_tuning_data",
    "run_collect",
    "run_evaluate",
    "run_preprocess",
    "run_promote_challenger",
    "run_record_retraining",
    "run_record_trigger",
    "run_register",
    "run_resolve_champion",
    "run_retrain_decision",
    "run_should_train",
    "run_train",
    "run_tune",
    "run_validate",
    "run_version_data",
    "train_placement",
]
