"""Batch prediction hands the model the dtypes its MLflow signature names (real MLflow schema enforcement)."""

from __future__ import annotations

import pandas as pd
import pytest


def test_nullable_ints_read_from_files_meet_the_signature() -> None:
    from mlflow.models import infer_signature
    from mlflow.models.utils import _enforce_schema

    from pipelines.steps.predict import as_signature

    # Training read "visits" back from Parquet with gaps (float64, double); "hour" had none (long).
    schema = infer_signature(pd.DataFrame({"visits": [1.0, float("nan")], "hour": [1, 2], "site": ["a", "b"]})).inputs
    # A files source types int columns as nullable Int64 on every day.
    day = pd.DataFrame(
        {"visits": pd.array([3, None], dtype="Int64"), "hour": pd.array([5, 6], dtype="Int64"), "site": ["a", "c"]}
    )
    with pytest.raises(Exception, match="visits"):
        _enforce_schema(day, schema)  # what MLflow does with the rows as read

    typed = _enforce_schema(as_signature(day, schema), schema)

    assert typed.dtypes.astype(str).to_dict() == {"visits": "float64", "hour": "int64", "site": "object"}
    assert typed["visits"].isna().tolist() == [False, True]
    assert as_signature(day, None) is day  # a model logged without a signature takes the rows as they are
