"""Sensitive columns through a real collect and validation gate: no clear text in anything written.

The synthetic events feed with an e-mail address (``hash``) and a phone number (``drop``),
collected from its CSV files and gated by Great Expectations: the staged and published
partitions, the reports and data docs, a quarantined batch and a refused file's error
hold digests at most, never a clear-text value or the salt.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import datetime as dt
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from sensitive_events import SALT, SALT_ENV, add_sensitive_columns, clear_text_in, sensitive_params
from synthetic_events import FIRST_DAY, write_events

from pipelines.config import Params, parse_params
from pipelines.data.partitions import partition_path, read_partitions
from pipelines.data.privacy import WITHHELD
from pipelines.errors import CollectError
from pipelines.steps.collect import collect
from pipelines.steps.validate import ValidationFailed, validate_batch

DAYS = 12
LAST = FIRST_DAY + dt.timedelta(days=DAYS - 1)


@pytest.fixture
def feed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Params, list[str]]:
    write_events(tmp_path, days=DAYS)
    emails = add_sensitive_columns(tmp_path / "events")
    monkeypatch.setenv(SALT_ENV, SALT)
    return parse_params(sensitive_params(tmp_path)), emails


def _collect_and_gate(params: Params, root: Path) -> dict | ValidationFailed:
    staged = collect(params.dataset, LAST, root / "staging", root / "raw", window_days=DAYS)
    try:
        return validate_batch(
            params.dataset,
            params.validation,
            root / "staging",
            staged.days,
            root / "raw",
            root / "report",
            root / "quarantine",
        )
    except ValidationFailed as err:
        return err


def test_published_days_and_reports_hold_digests_never_clear_text(feed, tmp_path: Path) -> None:
    params, emails = feed
    result = _collect_and_gate(params, tmp_path)
    assert isinstance(result, dict) and result["success"], result
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(DAYS)]
    raw = read_partitions([partition_path(tmp_path / "raw", d) for d in days])
    assert "phone" not in raw.columns, "a dropped column is never staged"
    expected = {hashlib.sha256((SALT + e).encode()).hexdigest() for e in emails}
    assert len(raw) == len(emails) and set(raw["email"]) == expected
    for out in ("staging", "raw", "report"):
        assert clear_text_in(tmp_path / out) == [], out
    # The hashed column is typed as text; no value rule reads it.
    saved = json.loads(Path(result["result_json"]).read_text(encoding="utf-8"))
    ruled = {
        (phase, e["kwargs"].get("column"))
        for phase, described in saved.items()
        for run in described["validation_results"]
        for e in run["expectations"]
    }
    assert ("schema", "email") in ruled and ("values", "email") not in ruled
    assert not any(column == "phone" for _, column in ruled)


def test_a_quarantined_batch_and_its_data_docs_hold_no_clear_text(feed, tmp_path: Path) -> None:
    params, _ = feed
    # A value rule breaks: the data docs list unexpected values, the batch goes to quarantine.
    path = sorted((tmp_path / "events").glob("*.csv"))[-1]
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "amount"] = "-5"
    frame.to_csv(path, index=False)
    err = _collect_and_gate(params, tmp_path)
    assert isinstance(err, ValidationFailed), err
    assert "column 'amount'" in str(err)
    kept = tmp_path / "quarantine" / "attempt-0"
    assert list(kept.glob("report/data_docs/**/*.html")), "the data docs were written"
    assert clear_text_in(tmp_path / "quarantine") == []
    assert clear_text_in(tmp_path / "staging") == []
    assert not (tmp_path / "raw").exists()


def test_a_refused_file_is_neither_quoted_nor_copied(feed, tmp_path: Path) -> None:
    params, emails = feed
    path = sorted((tmp_path / "events").glob("*.csv"))[-1]
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"01/01/2024,north,10,1,1,1,,0,{emails[0]},+44 7700 900000,extra\n")  # a field too many
    with pytest.raises(CollectError) as err:
        collect(params.dataset, LAST, tmp_path / "staging", tmp_path / "raw", quarantine_dir=tmp_path / "quarantine")
    assert WITHHELD in str(err.value) and emails[0] not in str(err.value)
    assert not list((tmp_path / "quarantine").glob("attempt-0/batch/*")), "the source file is not copied"
    assert str(path) in (tmp_path / "quarantine" / "attempt-0" / "report" / "error.txt").read_text(encoding="utf-8")
    assert clear_text_in(tmp_path / "quarantine") == []


def test_without_the_salt_nothing_is_staged(feed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params, _ = feed
    monkeypatch.delenv(SALT_ENV)
    with pytest.raises(CollectError, match=f"{SALT_ENV} .*is not set"):
        collect(params.dataset, LAST, tmp_path / "staging", tmp_path / "raw")
    assert not list((tmp_path / "staging").glob("date=*/*.parquet"))
