"""The ways a step fails that a retry cannot fix, and how an Airflow task reports them.

Every such failure is a :class:`StepError`: bad data (:class:`CollectError`,
:class:`ValidationFailed`, :class:`PreprocessError`), bad configuration
(:class:`pipelines.config.ConfigError`), nothing to work on (:class:`MonitorError`) or an
unusable DVC repository or remote (:class:`VersioningError`). The message says what and
where. Anything else (a lost connection, a killed process, the step worker's own
``WorkerError``) is infrastructure, and worth a retry: a DVC or git push that failed on
the way to a usable remote is a :class:`TransientVersioningError`, deliberately not a
:class:`StepError`, so the task's retries get their chance.

The steps raise these classes and the DAG tasks never name them: a task function
wrapped in :func:`fail_fast` turns any of them into Airflow's no-retry failure. Only
the standard library is imported here, so the DAG files (parsed often) and a task
process unpickling an error from the step worker import it for next to nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pipelines.validation.results import ValidationReport

F = TypeVar("F", bound=Callable[..., Any])


class StepError(RuntimeError):
    """A step failed for a reason a retry cannot fix; the message says what and where."""


class CollectError(StepError):
    """The source could not deliver a day's rows."""


class ValidationFailed(StepError):
    """A batch failed the gate; the message lists each failed rule."""

    def __init__(self, message: str, report: ValidationReport):
        super().__init__(message)
        self.report = report

    def __reduce__(self):
        # With its report, so it crosses from the step worker's process to the task intact.
        return (type(self), (str(self), self.report))


class PreprocessError(StepError):
    """The published data cannot make a training set (missing days, a split too short)."""


class VersioningError(StepError):
    """The DVC repository or remote is unusable (missing, misconfigured, refusing us); the message says which, where, and why."""


class TransientVersioningError(RuntimeError):
    """A DVC or git push to a usable remote failed on the way (network, a lost race): a retry may succeed.

    Not a :class:`StepError`: :func:`fail_fast` lets it through, so Airflow retries the task.
    """


class MonitorError(StepError):
    """Monitoring cannot run: no champion, no reference, nothing to compare."""


def fail_fast(task_fn: F) -> F:
    """Wrap an Airflow task function: a :class:`StepError` fails the task at once, without a retry.

    The error becomes Airflow's ``AirflowFailException`` with ``"ClassName: message"``
    (the readable part only); any other exception propagates unchanged, so Airflow
    retries it. Put it under ``@task``: the wrapper keeps the function's name and
    signature, which give the task its id and arguments.

    Args:
        task_fn: the task's Python function.

    Returns:
        The wrapped function.
    """

    @functools.wraps(task_fn)
    def run_task(*args: Any, **kwargs: Any) -> Any:
        try:
            return task_fn(*args, **kwargs)
        except StepError as err:
            # Imported here: pipelines code outside Airflow never needs it.
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{type(err).__name__}: {err}") from None

    return run_task  # type: ignore[return-value]
