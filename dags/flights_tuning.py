"""
### Hyper-parameter tuning

By hand only: **check_data → tune**.

An Optuna study over the model's main hyper-parameters (learning rate, hidden units,
embedding size, dropout, batch size; the ranges in `params.yaml`'s `tune.space`) on a
preprocessed dataset's validation split. Each trial is a short training run
(`tune.epochs` epochs) of the training step's own model and input pipeline; trial 0 is
always the current `train` values, so the proposal is never worse than them on
validation. Every trial is an MLflow run nested under the study's parent run
(experiment `tune.experiment`).

The best values are a **proposal**, not a change: `proposal.yaml` in the run's folder
(`$MLOPS_HOME/runs/flights_tuning/<run>/tune/`) and on the parent MLflow run. The
`tune` task's log and result give the command that writes it into `params.yaml`
(`python -m pipelines tune --apply <proposal.yaml>`) and the `--set` flags for one run.

`check_data` fails at once, before any model is built, when the folder holds no
preprocessed dataset. `tune` runs where training runs (`train.queue`, `train.pool`);
a retry resumes its study, keeping the finished trials.

#### Trigger parameters
Empty fields take their value from `params.yaml`.

* **processed_dir**: the preprocessed data to tune on. Empty: `data/processed`, the latest
  dataset version (`python -m pipelines data pull` or `dvc checkout` for another one).
* **n_trials**, **timeout_seconds**, **trial_epochs**: `tune.n_trials`, `tune.timeout_seconds`
  and `tune.epochs` for this run.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from pipelines.alerts import on_failure_callback, record_task_failure
from pipelines.config import field_bounds
from pipelines.errors import fail_fast

DAG_ID = "flights_tuning"


def _run_context():
    """The pipeline's view of the current task's DAG run: the form's values as params.yaml overrides."""
    from pipelines.runner import TUNE_PARAM_OVERRIDES, RunContext, check_trigger_conf

    ctx = get_current_context()
    # Airflow lets undeclared conf keys through: refuse them before any work.
    check_trigger_conf(ctx["dag_run"].conf or {}, ctx["dag"].params, DAG_ID)
    params = dict(ctx["params"])
    overrides = {TUNE_PARAM_OVERRIDES[k]: v for k, v in params.items() if k in TUNE_PARAM_OVERRIDES and v is not None}
    # No data interval: the day the run was triggered for only labels its MLflow runs.
    return RunContext(dag_id=DAG_ID, run_id=ctx["run_id"], run_day=ctx["dag_run"].run_after.date(), overrides=overrides)


def _train_placement() -> dict:
    """Queue and pool of the training task, from params.yaml: trials train models (light: YAML and pydantic)."""
    from pipelines.runner import train_placement
    from pipelines.settings import resolve

    return train_placement(resolve().params_path)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    on_failure_callback=on_failure_callback,
    tags=["mlops", "tuning"],
    doc_md=__doc__,
    default_args={
        "on_failure_callback": record_task_failure,
        "retries": 1,
        "retry_delay": dt.timedelta(seconds=30),
        "execution_timeout": dt.timedelta(minutes=10),
    },
    params={
        "processed_dir": Param(
            None,
            type=["null", "string"],
            title="Preprocessed data",
            description="Folder of a preprocessed dataset (manifest.json, splits). Empty: data/processed.",
        ),
        "n_trials": Param(
            None,
            type=["null", "integer"],
            **field_bounds("tune.n_trials"),
            title="Trials",
            description="Trials in all, the current values' included. Empty: params.yaml.",
        ),
        "timeout_seconds": Param(
            None,
            type=["null", "integer"],
            **field_bounds("tune.timeout_seconds"),
            title="Time limit (s)",
            description="No trial starts after this many seconds. Empty: params.yaml.",
        ),
        "trial_epochs": Param(
            None,
            type=["null", "integer"],
            **field_bounds("tune.epochs"),
            title="Epochs per trial",
            description="Epochs each trial trains. Empty: params.yaml.",
        ),
    },
)
def flights_tuning():
    @task
    @fail_fast
    def check_data() -> dict:
        from pipelines.runner import run_check_tuning_data

        return run_check_tuning_data(_run_context(), get_current_context()["params"]["processed_dir"])

    # tune.timeout_seconds stops new trials; this bounds the whole study, the last trial included.
    @task(execution_timeout=dt.timedelta(hours=3), **_train_placement())
    @fail_fast
    def tune(data: dict) -> dict:
        from pipelines.runner import run_tune

        return run_tune(_run_context(), data["processed_dir"])

    tune(check_data())


flights_tuning()
