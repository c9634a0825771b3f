"""DAG tests: the DAGs import cleanly, stay light at parse time, and have the expected shape."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "great_expectations", "evidently", "mlflow", "sklearn", "dvc")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "flights_training" in dagbag.dags


def test_parsing_imports_no_heavy_library() -> None:
    """Parsing the DAG folder in a fresh interpreter imports none of the heavy libraries."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        f"print(json.dumps({{'errors': list(bag.import_errors), 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"errors": [], "heavy": []}


def test_task_processes_start_light() -> None:
    """What a task process imports before its step runs: no pandas, NumPy or Arrow either.

    With the step worker the step itself runs elsewhere; the task parses the DAG, imports the
    runner and, when the step fails, unpickles its error (from pipelines.errors).
    """
    code = (
        "import json, pickle, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "import pipelines.runner, pipelines.alerts\n"
        "from pipelines import errors\n"
        "blobs = [pickle.dumps(c('bad')) for c in (errors.StepError, errors.CollectError, errors.PreprocessError,"
        " errors.MonitorError, errors.VersioningError)]\n"
        "from pipelines.config import ConfigError\n"
        "blobs.append(pickle.dumps(ConfigError('bad')))\n"
        "assert all(isinstance(pickle.loads(b), errors.StepError) for b in blobs)\n"
        f"heavy = [m for m in {(*HEAVY, 'pandas', 'numpy', 'pyarrow')!r} if m in sys.modules]\n"
        "print(json.dumps({'errors': list(bag.import_errors), 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"errors": [], "heavy": []}


def test_training_dag_shape(dagbag) -> None:
    dag = dagbag.dags["flights_training"]
    upstream = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    assert upstream == {
        "collect": [],
        "validate": ["collect"],
        "should_train": ["validate"],
        "preprocess": ["should_train", "validate"],
        "version_data": ["preprocess", "validate"],
        "train": ["preprocess", "validate", "version_data"],
        "evaluate": ["preprocess", "train"],
        "register": ["evaluate", "preprocess", "train", "validate", "version_data"],
        "batch_predict": ["register"],
    }
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    for t in dag.tasks:
        assert t.retries >= 1, t.task_id
        assert t.execution_timeout is not None, t.task_id
    assert dag.doc_md and "collect" in dag.doc_md


def test_a_run_that_does_not_train_still_versions_and_scores(dagbag) -> None:
    """should_train skips preprocess only; train, evaluate and register follow by their trigger rules."""
    dag = dagbag.dags["flights_training"]
    assert dag.get_task("should_train").ignore_downstream_trigger_rules is False
    rules = {
        t.task_id: str(t.trigger_rule.value if hasattr(t.trigger_rule, "value") else t.trigger_rule) for t in dag.tasks
    }
    assert rules["version_data"] == rules["batch_predict"] == "none_failed"
    for task_id in ("preprocess", "train", "evaluate", "register"):
        assert rules[task_id] == "all_success", task_id


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", "ten"),
        ("learning_rate", 0),
        ("learning_rate", 2.0),
        ("batch_size", 4),
        ("training_window_days", 1),
        ("data_date", "2013-13-01"),
    ],
)
def test_trigger_params_reject_bad_values(dagbag, key: str, value: object) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["flights_training"].params)
    with pytest.raises(ParamValidationError, match=key):
        params[key] = value
        params.validate()


def test_trigger_params_accept_good_values(dagbag) -> None:
    params = copy.deepcopy(dagbag.dags["flights_training"].params)
    for key, value in {
        "epochs": 3,
        "learning_rate": 0.01,
        "training_window_days": 60,
        "data_date": "2013-06-30",
    }.items():
        params[key] = value
    assert params.validate()["epochs"] == 3


def test_trigger_params_map_onto_params_yaml(dagbag) -> None:
    """Every hyper-parameter of the trigger form overrides a real key of params.yaml."""
    from pipelines.config import load_params
    from pipelines.runner import PARAM_OVERRIDES

    form = set(dagbag.dags["flights_training"].params) - {
        "data_date",
        "force_promotion",
        "promotion_reason",
        "trigger_reason",
        "trigger_report",
        "retrain",
    }
    assert form == set(PARAM_OVERRIDES)
    params = load_params(REPO / "params.yaml")
    raw = params.model_dump(by_alias=True)
    for dotted in PARAM_OVERRIDES.values():
        section, key = dotted.split(".")
        assert params.with_overrides({dotted: raw[section][key]}) == params


def test_trigger_form_bounds_are_the_configs(dagbag) -> None:
    """The form refuses what params.yaml's validation refuses: its bounds come from the config's fields."""
    from pipelines.config import field_bounds
    from pipelines.runner import PARAM_OVERRIDES

    keywords = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
    params = dagbag.dags["flights_training"].params
    for name, dotted in PARAM_OVERRIDES.items():
        schema = params.get_param(name).schema
        form = {k: schema[k] for k in keywords if k in schema}
        assert form, f"{name} has no bounds on the form"
        assert form == field_bounds(dotted), name


def test_field_bounds_name_a_real_key() -> None:
    from pipelines.config import ConfigError, field_bounds

    assert field_bounds("train.learning_rate") == {"exclusiveMinimum": 0, "maximum": 1}
    assert field_bounds("validate.chunk_rows") == {"minimum": 1000}  # a section under its params.yaml name
    with pytest.raises(ConfigError, match="train.epoch'"):
        field_bounds("train.epoch")


def test_bad_configuration_fails_the_task_at_once_and_alerts(dagbag, airflow_db) -> None:
    """force_promotion without a reason: collect fails on its first try (no retry), and a failure alert goes out."""
    import datetime as dt

    from pipelines.alerts import read_alerts
    from pipelines.settings import resolve

    dag = dagbag.dags["flights_training"]
    before = len(read_alerts(resolve().home))
    dag_run = dag.test(
        logical_date=dt.datetime(2013, 6, 2, 3, tzinfo=dt.UTC),
        run_conf={"data_date": "2013-06-01", "force_promotion": True, "promotion_reason": "why"},
    )
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    assert dag_run.state == "failed"
    assert tis["collect"].state == "failed"
    assert tis["collect"].try_number == 1, "a bad configuration is not retried"
    for downstream in ("validate", "preprocess", "version_data", "train", "batch_predict"):
        assert tis[downstream].state in ("upstream_failed", None), downstream
    alerts = [a for a in read_alerts(resolve().home)[before:] if a["run_id"] == dag_run.run_id]
    assert [(a["event"], a["details"]["task_id"]) for a in alerts] == [("run_failed", "collect")]
    # The alert says what failed, not just where.
    assert alerts[0]["details"]["error"].startswith("ConfigError: force_promotion needs 'promotion_reason'")
    assert "ConfigError: force_promotion" in alerts[0]["summary"]
    assert alerts[0]["details"]["failed_tasks"] == [{"task_id": "collect", "error": alerts[0]["details"]["error"]}]


def _parse_in_fresh_interpreter(params_path: Path) -> dict:
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "dag = bag.dags.get('flights_training')\n"
        "t = dag.get_task('train') if dag else None\n"
        "print(json.dumps({'errors': [str(e) for e in bag.import_errors.values()],"
        " 'train': [t.queue, t.pool, t.pool_slots] if t else None,"
        " 'collect': [dag.get_task('collect').queue, dag.get_task('collect').pool] if dag else None}))\n"
    )
    env = {**os.environ, "MLOPS_PARAMS": str(params_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_train_task_queue_and_pool_come_from_params(tmp_path) -> None:
    """A GPU deployment routes training to its GPU workers by editing params.yaml only."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update({"queue": "gpu", "pool": "gpu", "pool_slots": 2})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    report = _parse_in_fresh_interpreter(path)
    assert report["errors"] == []
    assert report["train"] == ["gpu", "gpu", 2]
    assert report["collect"] == ["default", "default_pool"]  # only training moves


def test_bad_train_queue_is_an_import_error_naming_the_key(tmp_path) -> None:
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["queue"] = "gpu queue!"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    report = _parse_in_fresh_interpreter(path)
    assert report["train"] is None
    # Every DAG reads params.yaml when parsed (training, monitoring, tuning): each import error names the key.
    assert len(report["errors"]) == 3 and all("train.queue" in e for e in report["errors"])
