"""The expectation suite of the validation gate, built from ``params.yaml``.

Two phases, run one after the other:

1. *schema*: the exact column set and each column's type (``dataset.schema``);
2. *values*: null rates, ranges, allowed categories, duplicate keys and the dates of
   the run's interval (``validate``), narrowed by the *validation reference*: what the
   latest training data taught (the categories and ranges it held), which
   preprocessing writes as ``reference.json``.

The row count is a rule of each day, not of a batch: :func:`row_count_bounds` gives
a day's bounds (``validate.rows_per_day`` narrowed by the usual daily volume the
reference learnt), and :mod:`pipelines.steps.validate` counts every day of the batch
against them. Hashed sensitive columns (``dataset.sensitive``) get no value rule:
their values are digests, and a rule's sample of unexpected values would print them.

Great Expectations is imported where the expectations are built.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from pipelines.config import DatasetConfig, ValidateConfig

# Written by preprocessing beside the training data it describes; read here.
REFERENCE_FILE = "reference.json"

# pandas dtypes accepted for each kind of column in ``dataset.schema``.
# Nullable pandas dtypes go by their class names (Int64Dtype): Great Expectations looks the names
# up as numpy dtypes or pandas attributes, and "Int64" is neither, so it never matched.
_TYPES: dict[str, list[str]] = {
    "int": ["int64", "int32", "int16", "int8", "Int64Dtype", "Int32Dtype"],
    # Integers are fine where floats are expected: a CSV column of whole numbers reads as int.
    "float": ["float64", "float32", "Float64Dtype", "int64", "int32", "Int64Dtype"],
    "string": ["object", "string", "str", "category"],
    "date": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


def schema_expectations(spec: DatasetConfig, columns: list[str]) -> list:
    """The schema phase: exactly ``columns``, each of its type as collected (``dataset.schema``; hashed: text)."""
    import great_expectations.expectations as gxe

    kinds = spec.collected_schema
    exps = [gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True, meta={"rule": "schema"})]
    for col in columns:
        exps.append(
            gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=_TYPES[kinds[col]], meta={"rule": "schema"})
        )
    return exps


def row_count_bounds(cfg: ValidateConfig, reference: dict[str, Any] | None) -> tuple[int, int]:
    """The rows one day may hold: ``validate.rows_per_day``, narrowed by the usual daily volume learnt.

    Args:
        cfg: the ``validate`` section (``rows_per_day``, ``reference_row_margin``).
        reference: the validation reference (:func:`load_validation_reference`), or None.

    Returns:
        ``(lowest, highest)`` rows of a day, both inclusive.
    """
    lo, hi = cfg.rows_per_day
    if reference and "rows_per_day" in reference:
        # The usual daily volume, widened by the margin, within the hard bounds of params.yaml.
        usual = reference["rows_per_day"]
        m = cfg.reference_row_margin
        lo, hi = max(lo, int(usual["p01"] * (1 - m))), min(hi, int(usual["p99"] * (1 + m)) + 1)
    return lo, hi


def value_expectations(
    spec: DatasetConfig,
    cfg: ValidateConfig,
    columns: list[str],
    first_day: dt.date | None,
    last_day: dt.date | None,
    reference: dict[str, Any] | None,
) -> list:
    """The values phase: the rules of ``validate``, plus what the training data taught.

    The row count is not among them: it is counted per day (:func:`row_count_bounds`).

    Args:
        spec: the data set: schema, key and time columns, sensitive columns (no value rule).
        cfg: the ``validate`` section.
        columns: the columns the frame has to have.
        first_day: with ``last_day``, the interval the time column must fall in (None: not checked).
        reference: the validation reference (:func:`load_validation_reference`), or None.

    Returns:
        The expectations, each with its ``params.yaml`` rule in ``meta["rule"]``.
    """
    import great_expectations.expectations as gxe

    present = set(columns) - set(spec.sensitive)
    exps: list = []
    for col in columns:
        if col not in present:
            continue
        allowed = cfg.null_fraction_overrides.get(col, cfg.max_null_fraction)
        if allowed < 1.0:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=1.0 - allowed, meta={"rule": "nulls"}))
    for col, (vmin, vmax) in cfg.ranges.items():
        if col in present:
            exps.append(
                gxe.ExpectColumnValuesToBeBetween(column=col, min_value=vmin, max_value=vmax, meta={"rule": "ranges"})
            )
    for col, values in cfg.categories.items():
        if col in present:
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col,
                    value_set=list(values),
                    mostly=1.0 - cfg.max_unseen_category_fraction,
                    meta={"rule": "categories"},
                )
            )
    for col, seen in ((reference or {}).get("categories") or {}).items():
        if col in present and col not in cfg.categories:
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col,
                    value_set=list(seen),
                    mostly=1.0 - cfg.max_unseen_category_fraction,
                    meta={"rule": "unseen_categories"},
                )
            )
    m = cfg.reference_range_margin
    for col, seen in ((reference or {}).get("numeric") or {}).items():
        if col in present and seen and col not in cfg.ranges:
            # Learnt where params.yaml sets no range: the training data's, widened on each side.
            pad = m * max(seen["max"] - seen["min"], 1e-9)
            exps.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=col,
                    min_value=seen["min"] - pad,
                    max_value=seen["max"] + pad,
                    mostly=1.0 - cfg.max_unseen_category_fraction,
                    meta={"rule": "reference_ranges"},
                )
            )
    keys = [c for c in spec.key_columns if c in present]
    if keys:
        exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=keys, meta={"rule": "duplicates"}))
    if first_day is not None and last_day is not None and spec.time_column in present:
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=spec.time_column,
                min_value=dt.datetime.combine(first_day, dt.time()),
                max_value=dt.datetime.combine(last_day, dt.time.max),
                meta={"rule": "interval"},
            )
        )
    return exps


def load_validation_reference(processed_dir: Path) -> dict[str, Any] | None:
    """The validation reference of the latest training data, if a run has published it.

    Args:
        processed_dir: the published training data (``data/processed``).

    Returns:
        ``reference.json`` (daily volume, categories, numeric ranges), or None before the first training run.
    """
    path = processed_dir / REFERENCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
