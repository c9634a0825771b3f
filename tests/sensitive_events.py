"""The synthetic events (:mod:`synthetic_events`) with two sensitive columns: an e-mail address, hashed, and a phone
number, dropped (``dataset.sensitive``), and helpers to look for their clear text anywhere in what a run wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from synthetic_events import events_params

SALT_ENV = "TEST_EVENTS_SALT"
SALT = "salt-for-the-sensitive-events-test"
# Every clear-text value matches one of these; a digest (64 hex digits) matches neither.
CLEAR_TEXT = re.compile(rb"@example\.org|\+44 7700 9\d{5}")


def email(i: int) -> str:
    return f"customer{i:04d}@example.org"


def phone(i: int) -> str:
    return f"+44 7700 9{i % 100000:05d}"


def add_sensitive_columns(events_dir: Path) -> list[str]:
    """Add ``email`` and ``phone`` to every daily CSV file under ``events_dir``; returns the e-mails written."""
    written: list[str] = []
    for path in sorted(events_dir.glob("*.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        ids = range(len(written), len(written) + len(frame))
        frame["email"] = [email(i) for i in ids]
        frame["phone"] = [phone(i) for i in ids]
        written += frame["email"].tolist()
        frame.to_csv(path, index=False)
    return written


def sensitive_params(root: Path, **kwargs: object) -> dict:
    """:func:`synthetic_events.events_params` with the two columns in the schema and ``dataset.sensitive``."""
    params = events_params(root, **kwargs)
    params["dataset"]["schema"].update({"email": "string", "phone": "string"})
    params["dataset"]["sensitive"] = {"email": "hash", "phone": "drop"}
    params["dataset"]["sensitive_salt_env"] = SALT_ENV
    return params


def clear_text_in(root: Path) -> list[str]:
    """Files under ``root`` holding a clear-text e-mail, phone number or the salt: Parquet read, the rest as bytes."""
    import pyarrow.parquet as pq

    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            text = "\n".join(str(v) for col in table.columns for v in col.to_pylist()).encode()
        else:
            text = path.read_bytes()
        if CLEAR_TEXT.search(text) or SALT.encode() in text:
            found.append(str(path.relative_to(root)))
    return found
