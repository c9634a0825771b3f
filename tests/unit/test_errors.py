"""Step errors (pipelines.errors): one base for failures a retry cannot fix, one way a task reports them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect

import pytest
from airflow.sdk.exceptions import AirflowFailException
from helpers import light_worker

from pipelines.config import ConfigError
from pipelines.errors import (
    CollectError,
    MonitorError,
    PreprocessError,
    StepError,
    TransientVersioningError,
    ValidationFailed,
    VersioningError,
    fail_fast,
)
from pipelines.ops import worker
from pipelines.runner import RunContext, run_collect, run_record_retraining
from pipelines.settings import resolve


def test_every_failure_a_retry_cannot_fix_is_a_step_error() -> None:
    for cls in (CollectError, ValidationFailed, PreprocessError, VersioningError, MonitorError, ConfigError):
        assert issubclass(cls, StepError), cls.__name__
    assert issubclass(ConfigError, ValueError), "code catching ValueError still catches a bad configuration"
    assert not issubclass(worker.WorkerError, StepError), "a step worker that failed is worth a retry"
    assert not issubclass(TransientVersioningError, StepError), "a push lost on the network is worth a retry"


def test_the_step_modules_still_name_their_errors() -> None:
    from pipelines.steps import collect, monitor, preprocess, validate, version

    assert collect.CollectError is CollectError
    assert validate.ValidationFailed is ValidationFailed
    assert preprocess.PreprocessError is PreprocessError
    assert monitor.MonitorError is MonitorError
    assert version.VersioningError is VersioningError


def test_a_step_error_fails_the_task_without_a_retry() -> None:
    @fail_fast
    def preprocess() -> dict:
        raise PreprocessError("2 day(s) of the training window are not in data/raw: 2013-06-01, 2013-06-02")

    with pytest.raises(AirflowFailException) as info:
        preprocess()
    assert str(info.value) == (
        "PreprocessError: 2 day(s) of the training window are not in data/raw: 2013-06-01, 2013-06-02"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__, "the readable message only"


def test_a_configuration_error_too() -> None:
    @fail_fast
    def collect() -> dict:
        raise ConfigError("unknown parameter 'train.epoch'")

    with pytest.raises(AirflowFailException, match=r"^ConfigError: unknown parameter 'train\.epoch'$"):
        collect()


@pytest.mark.parametrize(
    "error",
    [
        OSError("disk full"),
        KeyError("day"),
        worker.WorkerError("the step died"),
        TransientVersioningError("git push of 'datasets' to remote 'origin' failed (worth a retry): timed out"),
    ],
)
def test_other_errors_propagate_unchanged_to_be_retried(error: Exception) -> None:
    @fail_fast
    def step() -> dict:
        raise error

    with pytest.raises(type(error)) as info:
        step()
    assert info.value is error


def test_the_wrapped_task_keeps_its_name_signature_and_result() -> None:
    """Airflow takes the task id from the name and binds the arguments by the signature."""

    def register(processed: dict, trained: dict, versioned: dict | None = None) -> dict:
        return {"processed": processed, "trained": trained, "versioned": versioned}

    wrapped = fail_fast(register)
    assert wrapped.__name__ == "register"
    assert inspect.signature(wrapped) == inspect.signature(register)
    assert wrapped({"a": 1}, trained={"b": 2}) == {"processed": {"a": 1}, "trained": {"b": 2}, "versioned": None}


# --------------------------------------------------------------------------- through the step worker


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A step worker with a light preload: steps run in its forks, as in a warm deployment."""
    with light_worker(tmp_path_factory.mktemp("worker"), "errors") as worker_:
        yield worker_["env"]


@pytest.fixture
def use_worker(warm, monkeypatch):
    for key in (worker.ENV_MODE, worker.ENV_SOCKET):
        monkeypatch.setenv(key, warm[key])
    assert worker.enabled()


def test_a_step_error_raised_in_the_step_worker_fails_the_task(use_worker, tmp_path) -> None:
    """The step's ConfigError crosses from the worker's process intact, then fails the task at once."""
    missing = tmp_path / "no-params.yaml"
    ctx = RunContext(
        dag_id="flights_training",
        run_id="manual__errors",
        run_day=dt.date(2013, 6, 1),
        settings=dataclasses.replace(resolve(), params_path=missing),
    )
    with pytest.raises(ConfigError) as raw:
        run_collect(ctx)
    assert any("step worker" in note for note in raw.value.__notes__), "raised in the worker's process"

    with pytest.raises(AirflowFailException, match=f"^ConfigError: params file not found: {missing}$"):
        fail_fast(run_collect)(ctx)


def test_another_error_from_the_step_worker_is_left_to_the_retry(use_worker) -> None:
    ctx = RunContext(dag_id="flights_monitoring", run_id="manual__errors", run_day=dt.date(2013, 6, 1))
    with pytest.raises(KeyError) as info:
        fail_fast(run_record_retraining)(ctx, {})  # a decision without its fields: a bug, not bad data
    assert any("step worker" in note for note in info.value.__notes__)
