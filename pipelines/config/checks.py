"""Checks across sections: every column a rule, feature, slice, key or derived feature names is in the schema.

Each returns its problems as lines naming the key; :class:`pipelines.config.Params` raises them all at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.config.dataset import DatasetConfig
from pipelines.config.training import TrainConfig

if TYPE_CHECKING:
    from pipelines.config import Params


def train_column_problems(spec: DatasetConfig, cfg: TrainConfig) -> list[str]:
    """What is wrong with the columns the model derives features from, each naming its ``train.*`` key."""
    numeric, categorical = set(spec.features.numeric), set(spec.features.categorical)
    problems = [
        f"train.integer_categories.{col}: not a numeric feature of dataset.features"
        for col in cfg.integer_categories
        if col not in numeric
    ]
    problems += [
        f"train.periodic.{name}.columns.{col}: not a numeric feature of dataset.features"
        for name, enc in cfg.periodic.items()
        for col in enc.columns
        if col not in numeric
    ]
    id_columns = categorical | set(cfg.integer_categories)
    if cfg.numeric_buckets:
        id_columns |= {f"{c}_bucket" for c in numeric}
    for cross in cfg.crosses:
        unknown = [c for c in cross if c not in id_columns]
        if unknown:
            problems.append(
                f"train.crosses {list(cross)}: {unknown} are neither categorical features "
                "nor listed in train.integer_categories nor <numeric column>_bucket (with train.numeric_buckets)"
            )
    return problems


def column_problems(params: Params) -> list[str]:
    """Every rule, slice, key or derived feature that names a column the data set does not have.

    A misspelt column in a rule would otherwise check nothing, silently; each problem names its key.
    """
    spec = params.dataset
    schema = set(spec.schema_)
    # What the processed splits carry, so what evaluation can slice on (see steps/preprocess.py).
    processed = {*spec.key_columns, spec.time_column, *spec.features.all}
    rules = params.validation
    problems = [
        f"validate.{rule}.{col}: no column '{col}' in dataset.schema"
        for rule, columns in (
            ("null_fraction_overrides", rules.null_fraction_overrides),
            ("ranges", rules.ranges),
            ("categories", rules.categories),
        )
        for col in columns
        if col not in schema
    ]
    problems += [
        f"evaluate.slice_columns: '{col}' is not a feature, key or time column of dataset"
        for col in params.evaluate.slice_columns
        if col not in processed
    ]
    hours = params.evaluate.hour_buckets
    if hours is not None and hours.column not in processed:
        problems.append(
            f"evaluate.hour_buckets.column: '{hours.column}' is not a feature, key or time column of dataset "
            "(set evaluate.hour_buckets: null to leave hour-of-day slices out)"
        )
    problems += [
        f"monitor.drift.exclude_columns: '{col}' is not a feature of dataset.features"
        for col in params.monitor.drift.exclude_columns
        if col not in spec.features.all
    ]
    return problems + train_column_problems(spec, params.train) + sensitive_problems(params)


def sensitive_problems(params: Params) -> list[str]:
    """Every key that uses a sensitive column (``dataset.sensitive``) where its values would show, naming the key.

    A slice, a cross or a value rule reads the values; a dropped column has none, a hashed one only digests.
    """
    spec = params.dataset
    sensitive = spec.sensitive
    problems = [
        f"dataset.sensitive.{col}: no column '{col}' in dataset.schema" for col in sensitive if col not in spec.schema_
    ]
    uses: dict[str, list[str]] = {}
    for col, use in (
        *((c, "a feature (dataset.features)") for c in spec.features.all),
        *((c, "a key column (dataset.key_columns)") for c in spec.key_columns),
        (spec.time_column, "the time column (dataset.time_column)"),
        (spec.label.source_column, "the label's source column (dataset.label.source_column)"),
    ):
        if col in sensitive:
            uses.setdefault(col, []).append(use)
    problems += [
        f"dataset.sensitive.{col}: a sensitive column cannot be {' nor '.join(what)}: its values are "
        f"{'dropped' if sensitive[col] == 'drop' else 'hashed'} as they are collected"
        for col, what in uses.items()
    ]
    rules = params.validation
    problems += [
        f"validate.{rule}.{col}: '{col}' is a sensitive column (dataset.sensitive: {sensitive[col]}); "
        "no value rule applies to it"
        for rule, columns in (
            ("null_fraction_overrides", rules.null_fraction_overrides),
            ("ranges", rules.ranges),
            ("categories", rules.categories),
        )
        for col in columns
        if col in sensitive
    ]
    problems += [
        f"evaluate.slice_columns: '{col}' is a sensitive column (dataset.sensitive: {sensitive[col]})"
        for col in params.evaluate.slice_columns
        if col in sensitive
    ]
    hours = params.evaluate.hour_buckets
    if hours is not None and hours.column in sensitive:
        problems.append(f"evaluate.hour_buckets.column: '{hours.column}' is a sensitive column (dataset.sensitive)")
    for cross in params.train.crosses:
        named = [c for c in cross if c in sensitive or c.removesuffix("_bucket") in sensitive]
        if named:
            problems.append(f"train.crosses {list(cross)}: {named} are sensitive columns (dataset.sensitive)")
    return problems
