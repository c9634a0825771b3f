"""Every feature group ``params.yaml`` configures has a scoring-time cost figure in the committed benchmark results.

``benchmarks/feature_cost.py`` measures each group's latency per 1,000 rows and memory
(``benchmarks/results/feature_cost.json``); a group switched on in ``params.yaml`` without a
figure there means the benchmark was not re-run after the change.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.feature_cost import RESULT_JSON, configured_groups, missing_figures
from pipelines.config import load_params

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")


def test_every_configured_feature_group_has_a_cost_figure() -> None:
    results = json.loads(RESULT_JSON.read_text(encoding="utf-8"))
    assert missing_figures(PARAMS, results) == [], "re-run: .venv/bin/python -m benchmarks.feature_cost"
    assert set(configured_groups(PARAMS)) >= {"numeric", "categories", "buckets", "crosses"}


def test_a_group_switched_on_without_a_figure_is_reported() -> None:
    results = json.loads(RESULT_JSON.read_text(encoding="utf-8"))
    without_crosses = {**results, "groups": {k: v for k, v in results["groups"].items() if k != "crosses"}}
    assert missing_figures(PARAMS, without_crosses) == ["crosses"]
    assert "crosses" not in configured_groups(PARAMS.with_overrides({"train.crosses": []}))
    assert missing_figures(PARAMS.with_overrides({"train.crosses": []}), without_crosses) == []
    no_memory = {**results, "groups": {**results["groups"], "buckets": {"ms_per_1000_rows": 1.0}}}
    assert missing_figures(PARAMS, no_memory) == ["buckets"]
