"""Sensitive columns (``dataset.sensitive``): dropped or hashed as each day is fetched.

Collect applies :func:`protect` to every day it fetches, whatever the source, before
the day is staged: nothing in the run's folder, ``data/raw``, the DVC remote, the
validation reports or the predictions ever holds a clear-text value. A ``drop``
column is removed; a ``hash`` column becomes the salted SHA-256 digest of each
value's text (64 hex digits; missing stays missing), so rows can still be joined or
counted by it without revealing it. The salt comes from the environment variable
named by ``dataset.sensitive_salt_env``, never from ``params.yaml``: the same salt
gives the same digests from day to day, and without it a digest cannot be reversed
by hashing guesses.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from pipelines.config import DatasetConfig
from pipelines.errors import CollectError

if TYPE_CHECKING:
    import pandas as pd

# Shorter salts can be guessed along with the values.
MIN_SALT_CHARS = 16
WITHHELD = "<withheld: dataset.sensitive>"


def hashed_columns(spec: DatasetConfig) -> list[str]:
    """The columns ``dataset.sensitive`` hashes."""
    return [c for c, how in spec.sensitive.items() if how == "hash"]


def salt(spec: DatasetConfig) -> bytes | None:
    """The salt of the hashed columns, from the environment; None when no column is hashed.

    Raises:
        CollectError: a column is hashed and the variable is unset or shorter than ``MIN_SALT_CHARS``.
    """
    if not hashed_columns(spec):
        return None
    value = os.environ.get(spec.sensitive_salt_env, "")
    if len(value) < MIN_SALT_CHARS:
        state = "is not set" if not value else f"holds fewer than {MIN_SALT_CHARS} characters"
        raise CollectError(
            f"dataset.sensitive hashes {hashed_columns(spec)}, but the environment variable "
            f"{spec.sensitive_salt_env} (dataset.sensitive_salt_env) {state}: set it to a secret of at least "
            f"{MIN_SALT_CHARS} characters, the same on every run (never in params.yaml)"
        )
    return value.encode("utf-8")


def digests(values: pd.Series, salt_bytes: bytes) -> pd.Series:
    """Each value's salted SHA-256 as 64 hex digits, missing values kept missing (object dtype)."""
    import pandas as pd

    text = values.astype("string")
    out = pd.Series([None] * len(values), index=values.index, dtype=object)
    present = text.notna().to_numpy()
    out[present] = [hashlib.sha256(salt_bytes + v.encode("utf-8")).hexdigest() for v in text[present]]
    return out


def protect(frame: pd.DataFrame, spec: DatasetConfig) -> pd.DataFrame:
    """The day's rows with ``dataset.sensitive`` applied: dropped columns gone, hashed ones digests.

    Args:
        frame: the day's rows as fetched.
        spec: the data set: its sensitive columns and the salt's variable.

    Returns:
        The rows, safe to stage and publish (``frame`` itself when nothing is sensitive).

    Raises:
        CollectError: a column is hashed and the salt is missing (see :func:`salt`).
    """
    if not spec.sensitive:
        return frame
    key = salt(spec)
    dropped = [c for c, how in spec.sensitive.items() if how == "drop" and c in frame.columns]
    frame = frame.drop(columns=dropped)
    for col in hashed_columns(spec):
        if col in frame.columns:
            frame[col] = digests(frame[col], key)
    return frame
