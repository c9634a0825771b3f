"""The promotion rule (``pipelines.promotion.promotion_decision``) on hand-made evaluations.

The rule is a pure function of an evaluation (the challenger, the baseline and the
current champion scored on one holdout): each case below changes one figure and
checks the verdict and the reason that names it. The registry side (aliases, tags,
the promotion log) is tested against a real MLflow registry in tests/model/test_register.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.config import RegisterConfig
from pipelines.promotion import promotion_decision

CFG = RegisterConfig(champion_min_auc=0.6, max_auc_drop=0.005, max_slice_auc_drop=0.03)


def _scores(auc: float, slices: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    return {
        "overall": {"auc": auc},
        "slices": {name: {value: {"auc": a} for value, a in values.items()} for name, values in (slices or {}).items()},
    }


def _evaluation(
    challenger: float,
    *,
    baseline: float = 0.65,
    champion: float | None = None,
    challenger_slices: dict[str, dict[str, float]] | None = None,
    champion_slices: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    evaluation: dict[str, Any] = {
        "challenger": _scores(challenger, challenger_slices),
        "baseline": _scores(baseline),
    }
    if champion is not None:
        evaluation["champion"] = _scores(champion, champion_slices)
        evaluation["champion_version"] = "3"
    return evaluation


def test_first_model_that_beats_the_baseline_is_promoted() -> None:
    decision = promotion_decision(_evaluation(0.70, baseline=0.65), CFG)
    assert decision.promote and not decision.forced
    assert any("beats the baseline" in r for r in decision.reasons)


def test_first_model_that_does_not_beat_the_baseline_is_refused() -> None:
    decision = promotion_decision(_evaluation(0.64, baseline=0.65), CFG)
    assert not decision.promote
    assert "does not beat the baseline's AUC 0.6500" in decision.summary


def test_below_the_floor_is_refused_even_when_better_than_everything_else() -> None:
    decision = promotion_decision(_evaluation(0.59, baseline=0.55, champion=0.50), CFG)
    assert not decision.promote
    assert "below the floor 0.6" in decision.summary


@pytest.mark.parametrize(
    ("challenger", "promote"),
    [(0.700, True), (0.696, True), (0.6951, True), (0.6949, False), (0.650, False)],
)
def test_champion_drop_is_bounded_by_max_auc_drop(challenger: float, promote: bool) -> None:
    # champion 0.700, max drop 0.005: just above 0.695 passes, just below does not
    decision = promotion_decision(_evaluation(challenger, champion=0.700), CFG)
    assert decision.promote is promote
    if not promote:
        assert "below champion v3 0.7000" in decision.summary


def test_a_slice_that_regresses_past_its_margin_refuses_a_better_model() -> None:
    decision = promotion_decision(
        _evaluation(
            0.72,
            champion=0.70,
            challenger_slices={"origin": {"EWR": 0.66, "JFK": 0.74}},
            champion_slices={"origin": {"EWR": 0.70, "JFK": 0.70}},
        ),
        CFG,
    )
    assert not decision.promote
    assert "origin=EWR 0.700 -> 0.660" in decision.summary
    assert "JFK" not in decision.summary


def test_slices_within_the_margin_or_unknown_to_the_champion_do_not_block() -> None:
    decision = promotion_decision(
        _evaluation(
            0.71,
            champion=0.70,
            challenger_slices={"origin": {"EWR": 0.68, "LGA": 0.40}},  # LGA: the champion has no score for it
            champion_slices={"origin": {"EWR": 0.70}},
        ),
        CFG,
    )
    assert decision.promote
    assert "no slice regresses more than 0.03" in decision.summary


def test_forced_promotion_overrides_the_gate_and_keeps_its_reasons() -> None:
    decision = promotion_decision(
        _evaluation(0.55, champion=0.70), CFG, force_reason="incident 42: roll forward the hotfix model"
    )
    assert decision.promote and decision.forced
    assert decision.reasons[0] == "forced: incident 42: roll forward the hotfix model"
    assert any("below the floor" in r for r in decision.reasons)  # what the gate would have said is recorded
    assert decision.summary.startswith("promoted (forced): ")


def test_thresholds_come_from_the_register_section() -> None:
    evaluation = _evaluation(0.69, champion=0.70)
    assert not promotion_decision(evaluation, CFG).promote
    assert promotion_decision(evaluation, RegisterConfig(max_auc_drop=0.02)).promote


# --------------------------------------------------------------------------- data warnings

WARNINGS = [
    "[values] column 'carrier': expect_column_values_to_be_in_set (unseen_categories, warn): 8 of 740 rows (1.08%) break it"
]


def test_a_model_trained_on_a_batch_with_warnings_is_not_promoted_automatically() -> None:
    decision = promotion_decision(_evaluation(0.72, champion=0.70), CFG, data_warnings=WARNINGS)
    assert not decision.promote
    assert "1 warning(s)" in decision.summary and "column 'carrier'" in decision.summary
    assert "force_promotion" in decision.summary, "the reason says how a person promotes it"


def test_a_forced_promotion_with_a_reason_takes_a_model_trained_on_warnings() -> None:
    decision = promotion_decision(
        _evaluation(0.72, champion=0.70), CFG, "new carrier checked with the data team", WARNINGS
    )
    assert decision.promote and decision.forced
    assert decision.reasons[0] == "forced: new carrier checked with the data team"
    assert any("warning(s)" in r for r in decision.reasons), "the warnings are still recorded"


@pytest.mark.parametrize("warnings", [None, []])
def test_no_warnings_or_no_validation_leaves_the_gate_as_it_was(warnings: list[str] | None) -> None:
    decision = promotion_decision(_evaluation(0.72, champion=0.70), CFG, data_warnings=warnings)
    assert decision.promote
    assert not any("warning" in r for r in decision.reasons)
