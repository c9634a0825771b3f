"""The shadow period's reading of the served log (``pipelines.promotion.shadow``), on logs the real served log wrote.

Which rows count (the shadow version's, beside the live champion, on or after the day it started
waiting), how requests and agreement are counted, and the verdict each figure leads to. The
registry side (aliases, tags, the promotion log, the CLI) is in tests/model/test_shadow_promotion.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from shadow_helpers import write_served

from pipelines.config import RegisterConfig
from pipelines.promotion.shadow import ShadowEvidence, shadow_evidence, shadow_verdict

DAY = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    write_served(
        tmp_path / "served",
        [
            # v5 shadows champion v3: three requests, four rows, one decision differs (0.6 vs 0.4).
            ("a", DAY, "3", "5", [(0.2, 0.3), (0.6, 0.4)]),
            ("b", DAY + dt.timedelta(hours=1), "3", "5", [(0.7, 0.8)]),
            ("c", DAY + dt.timedelta(days=1), "3", "5", [(0.1, 0.1)]),
            # Not counted: another shadow, no shadow, v5 beside another live version, a day before v5 waited.
            ("d", DAY, "3", "4", [(0.2, 0.9)]),
            ("e", DAY, "3", None, [(0.2, 0.0)]),
            ("f", DAY, "2", "5", [(0.9, 0.1)]),
            ("g", DAY - dt.timedelta(days=3), "3", "5", [(0.9, 0.1)]),
        ],
    )
    return tmp_path / "served"


def test_only_the_versions_rows_beside_the_champion_since_it_waited_count(served: Path) -> None:
    evidence = shadow_evidence(served, "5", "3", since=DAY.date())
    assert (evidence.requests, evidence.rows) == (3, 4)
    assert evidence.agreement == pytest.approx(0.75)
    assert evidence.mean_abs_diff == pytest.approx((0.1 + 0.2 + 0.1 + 0.0) / 4, abs=1e-6)
    assert evidence.first == "2026-03-02T12:00:00+00:00" and evidence.last == "2026-03-03T12:00:00+00:00"
    assert "3 requests (4 rows" in evidence.line() and "decisions agree on 75.00%" in evidence.line()
    assert shadow_evidence(served, "5", "3").requests == 4, "without a start day every day is read"


def test_no_served_log_is_no_evidence(tmp_path: Path) -> None:
    evidence = shadow_evidence(tmp_path / "served", "5", "3")
    assert evidence.requests == 0
    assert evidence.line() == "no request shadow-scored by v5 beside champion v3 yet"


@pytest.mark.parametrize(
    ("requests", "agreement", "bar", "verdict", "words"),
    [
        (2, 1.0, 0.9, "wait", "3 requests needed"),
        (3, 0.95, 0.9, "promote", "shadow period passed"),
        (3, 0.85, 0.9, "refuse", "below the required 90.0%"),
        (3, 0.10, None, "promote", "shadow period passed"),  # no canary bar: the count alone
    ],
)
def test_the_verdict_needs_the_requests_then_the_agreement(requests, agreement, bar, verdict, words) -> None:
    cfg = RegisterConfig(min_shadow_requests=3, canary={"min_agreement": bar})
    evidence = ShadowEvidence("5", "3", requests=requests, rows=requests, agreement=agreement, mean_abs_diff=0.01)
    got, reason = shadow_verdict(evidence, cfg)
    assert got == verdict and words in reason
