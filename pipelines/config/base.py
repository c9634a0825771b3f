"""What every section shares: the error a bad value raises, and the frozen, closed base model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipelines.errors import StepError


class ConfigError(StepError, ValueError):
    """A configuration value is missing, unknown or out of its allowed range.

    A :class:`~pipelines.errors.StepError` (no retry fixes it) and a ``ValueError``.
    """


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
