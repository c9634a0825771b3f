"""The gate on a data set without a natural key: identical events are not duplicates.

With ``dataset.key_columns: []`` there is no key to be unique, so the duplicates rule
is left out rather than applied to nothing; two events with the same values pass, as
they are in a sparse event feed. A real Great Expectations run.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import datetime as dt

import pandas as pd

from pipelines.config import DatasetConfig, ValidateConfig
from pipelines.steps.validate import validate_frame

SPEC = DatasetConfig.model_validate(
    {
        "name": "events",
        "source": {"kind": "files", "path_template": "landing/{date:%Y-%m-%d}.csv", "format": "csv"},
        "time_column": "day",
        "features": {"numeric": ["size"], "categorical": ["site"]},
        "label": {"source_column": "outcome", "threshold": 0.5},
        "schema": {"day": "date", "size": "float", "site": "string", "outcome": "float"},
    }
)
DAY = dt.date(2024, 3, 5)


def test_identical_events_pass_a_gate_without_a_key(tmp_path) -> None:
    assert SPEC.key_columns == (), "no key is the default"
    frame = pd.DataFrame(
        {"day": [pd.Timestamp(DAY)] * 3, "size": [1.0, 1.0, 2.0], "site": ["a", "a", "b"], "outcome": [1.0, 0.0, 0.0]}
    )
    cfg = ValidateConfig(rows_per_day=(0, 100))
    report = validate_frame(pd.concat([frame, frame.iloc[[0]]]), SPEC, cfg, tmp_path, first_day=DAY, last_day=DAY)
    assert report.success, report.summary()
    assert not any(o.check == "duplicates" for o in report.outcomes)
