"""Row identity: what joins a scored row to the same row once its label is published.

A data set with a natural key (``dataset.key_columns``) is joined on it. One without
(sparse event data often has none) gets a row id, derived the same way wherever a row
is seen: a hash of the row's time and feature values, as types that survive a trip
through CSV or Parquet, and its occurrence among identical rows of the day. Batch
prediction writes it beside each probability; monitoring derives it again from the
published rows. Rows that share an id's hash are identical to the model, so which of
them pairs with which label cannot change a metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.config import DatasetConfig

if TYPE_CHECKING:
    import pandas as pd

ROW_ID = "row_id"


def row_keys(spec: DatasetConfig) -> list[str]:
    """The columns that identify a row: the key columns, or the derived row id when there are none."""
    return list(spec.key_columns) or [ROW_ID]


def row_ids(frame: pd.DataFrame, spec: DatasetConfig) -> pd.Series:
    """Each row's id: ``<hash of its time and features>-<occurrence>``, in the frame's order.

    Args:
        frame: rows with the time column and every feature (other columns are ignored).
        spec: the time column and the features.

    Returns:
        A string per row, indexed like ``frame``; the same for the same rows in the same order.
    """
    import pandas as pd

    numeric, categorical = spec.features.numeric, spec.features.categorical
    norm = pd.DataFrame(index=frame.index)
    # Nanoseconds: a date read back from Parquet or parsed from CSV hashes alike.
    norm[spec.time_column] = (
        pd.to_datetime(frame[spec.time_column], errors="coerce").astype("datetime64[ns]").astype("int64")
    )
    for col in numeric:  # int, nullable Int64 or float: one float64 (NaN for missing)
        norm[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in categorical:
        norm[col] = frame[col].astype("string").fillna("\x00<missing>").astype(object)
    hashed = pd.util.hash_pandas_object(norm, index=False)
    if hashed.empty:  # a day without rows: no ids (the string arithmetic below needs a row to infer from)
        return pd.Series([], index=frame.index, dtype=object)
    occurrence = hashed.groupby(hashed.to_numpy()).cumcount()
    return hashed.map("{:016x}".format) + "-" + occurrence.astype(str)
