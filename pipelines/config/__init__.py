"""Typed configuration: ``params.yaml`` parsed once into validated objects.

Everything specific to a data set (its source, feature spec, label rule) and
every knob of every step lives in ``params.yaml``. This module turns it into
frozen pydantic models so that a typo or a bad value fails before any work,
with a message that names the key and what is allowed.

The sections live by the part of the pipeline that reads them: :mod:`.dataset` (the data set,
collect, validate), :mod:`.training` (preprocess, train, evaluate, tune), :mod:`.operations`
(register, predict, mlflow, monitor, serve); :mod:`.checks` holds the checks across sections.
Nothing here touches the file system at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from pipelines.config.base import (
    ConfigError,
    Section,
)
from pipelines.config.checks import (
    column_problems,
    sensitive_problems,
    train_column_problems,
)
from pipelines.config.dataset import (
    ESCALATE,
    CollectConfig,
    DatasetConfig,
    FeatureSpec,
    FilesSource,
    LabelRule,
    Nycflights13Source,
    Source,
    SqlSource,
    ValidateConfig,
    ValidationRule,
)
from pipelines.config.operations import (
    CanaryConfig,
    DriftMethod,
    MlflowConfig,
    MonitorConfig,
    PredictConfig,
    RegisterConfig,
    ServeConfig,
    SqlSink,
)
from pipelines.config.training import (
    BaselineConfig,
    EvaluateConfig,
    FloatRange,
    HourBuckets,
    ImportanceConfig,
    PreprocessConfig,
    SplitConfig,
    TrainConfig,
    TuneConfig,
)


class Params(Section):
    """The whole of ``params.yaml``."""

    dataset: DatasetConfig
    collect: CollectConfig = CollectConfig()
    validation: Annotated[ValidateConfig, Field(alias="validate")] = ValidateConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registration: Annotated[RegisterConfig, Field(alias="register")] = RegisterConfig()
    predict: PredictConfig = PredictConfig()
    mlflow: MlflowConfig = MlflowConfig()
    monitor: MonitorConfig = MonitorConfig()
    serve: ServeConfig = ServeConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _columns_known(self) -> Params:
        problems = column_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> Params:
        """Return a copy with dotted-key overrides applied, e.g. ``{"train.epochs": 3}``.

        Raises:
            ConfigError: naming the key, if it is unknown or its value is invalid.
        """
        raw = self.model_dump(by_alias=True)
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown parameter '{dotted}'")
                node = node[part]
            # A new leaf is fine in an open mapping (validate.ranges, ...); in a section,
            # validation below rejects it as an unknown key, naming it.
            node[leaf] = value
        return parse_params(raw)


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg}"
        if not key:  # a check across sections: its message names the keys
            lines.extend(f"  {line}" for line in msg.removeprefix("Value error, ").splitlines())
            continue
        lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
    return "invalid params.yaml:\n" + "\n".join(lines)


def parse_params(raw: Mapping[str, Any]) -> Params:
    """Validate a mapping as ``params.yaml``.

    Raises:
        ConfigError: listing every bad key with the reason and the value found.
    """
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_params(path: str | Path) -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds an invalid value.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw)


# JSON-schema keywords of the bounds that pydantic's Field(ge=, gt=, le=, lt=) sets.
_SCHEMA_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def field_bounds(dotted: str) -> dict[str, float]:
    """The bounds of a ``params.yaml`` key as JSON-schema keywords.

    The training DAG's trigger form takes them for its hyper-parameters, so the form
    allows what the configuration allows, from this one definition.

    Args:
        dotted: the key, e.g. ``"train.epochs"`` (section names as in ``params.yaml``).

    Returns:
        Those of ``minimum``, ``exclusiveMinimum``, ``maximum``, ``exclusiveMaximum`` the key has.

    Raises:
        ConfigError: the key is not a field of ``params.yaml``.
    """
    model: Any = Params
    field = None
    for part in dotted.split("."):
        if field is not None:
            model = field.annotation
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        field = next((f for name, f in fields.items() if part in (name, f.alias)), None)
        if field is None:
            raise ConfigError(f"unknown parameter '{dotted}'")
    bounds: dict[str, float] = {}
    for constraint in field.metadata:
        for attr, keyword in _SCHEMA_BOUNDS.items():
            value = getattr(constraint, attr, None)
            if value is not None:
                bounds[keyword] = value
    return bounds


__all__ = [
    "BaselineConfig",
    "CanaryConfig",
    "CollectConfig",
    "ConfigError",
    "DatasetConfig",
    "DriftMethod",
    "ESCALATE",
    "EvaluateConfig",
    "FeatureSpec",
    "FilesSource",
    "FloatRange",
    "HourBuckets",
    "ImportanceConfig",
    "LabelRule",
    "MlflowConfig",
    "MonitorConfig",
    "Nycflights13Source",
    "Params",
    "PredictConfig",
    "PreprocessConfig",
    "RegisterConfig",
    "Section",
    "ServeConfig",
    "Source",
    "SplitConfig",
    "SqlSink",
    "SqlSource",
    "TrainConfig",
    "TuneConfig",
    "ValidateConfig",
    "ValidationRule",
    "column_problems",
    "field_bounds",
    "load_params",
    "parse_params",
    "sensitive_problems",
    "train_column_problems",
]
