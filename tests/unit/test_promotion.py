"""The promotion rule (``pipelines.promotion.promotion_decision``) on hand-made evaluations.

The rule is a pure function of an evaluation (the challenger, the baseline and the
current champion scored on one holdout): each case below changes one figure and
checks the verdict and the reason that names it. The registry side (aliases, tags,
the promotion log) is tested against a real MLflow registry in tests/model/test_register.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines.config import RegisterConfig
from pipelines.promotion import acting_user, promotion_decision
from pipelines.promotion.canary import Canary, compare_scores

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


# --------------------------------------------------------------------------- batch canary


def _canary(agreement: float, rows: int = 900) -> Canary:
    return Canary(
        ran=True,
        day="2013-06-29",
        source="next day",
        rows=rows,
        agreement=agreement,
        mean_abs_diff=0.0123,
        threshold=0.5,
        champion_version="3",
        challenger_version="4",
    )


CANARY = RegisterConfig(canary={"min_agreement": 0.95})


def test_the_canary_is_off_by_default_and_says_nothing() -> None:
    assert RegisterConfig().canary.min_agreement is None
    decision = promotion_decision(_evaluation(0.72, champion=0.70), CFG, canary=_canary(0.10))
    assert decision.promote
    assert not any("canary" in r for r in decision.reasons)


def test_a_canary_below_the_agreement_bar_refuses_and_names_its_figures() -> None:
    decision = promotion_decision(_evaluation(0.72, champion=0.70), CANARY, canary=_canary(0.9123))
    assert not decision.promote
    assert "canary on 2013-06-29" in decision.summary
    assert "91.23% of 900 rows" in decision.summary and "champion v3" in decision.summary
    assert "mean absolute score difference 0.0123" in decision.summary
    assert "below the required 95.0%" in decision.summary


def test_a_canary_at_the_bar_passes_with_its_figures_recorded() -> None:
    decision = promotion_decision(_evaluation(0.72, champion=0.70), CANARY, canary=_canary(0.95))
    assert decision.promote
    assert any(r.startswith("canary on 2013-06-29") and "(>= 95.0%)" in r for r in decision.reasons)


def test_the_canary_is_not_applicable_without_a_champion() -> None:
    decision = promotion_decision(_evaluation(0.70, baseline=0.65), CANARY, canary=None)
    assert decision.promote
    assert "canary not applicable: no champion to compare with" in decision.summary


def test_a_required_canary_that_could_not_run_refuses() -> None:
    failed = Canary(ran=False, note="canary: no day after 2013-12-31 in the source, and no collected day ...")
    decision = promotion_decision(_evaluation(0.72, champion=0.70), CANARY, canary=failed)
    assert not decision.promote
    assert "canary could not compare the models (canary: no day after 2013-12-31" in decision.summary


def test_a_canary_with_nothing_to_compare_is_not_applicable_rather_than_failed() -> None:
    same = Canary(ran=False, applicable=False, note="v3 is the champion")
    decision = promotion_decision(_evaluation(0.72, champion=0.70), CANARY, canary=same)
    assert decision.promote
    assert "canary not applicable: v3 is the champion" in decision.summary


def test_compare_scores_agreement_and_mean_absolute_difference() -> None:
    agreement, diff = compare_scores(np.array([0.1, 0.6, 0.5, 0.9]), np.array([0.2, 0.4, 0.5, 0.7]), 0.5)
    assert agreement == pytest.approx(0.75)  # 0.6 vs 0.4 disagree; 0.5 vs 0.5 both at the threshold agree
    assert diff == pytest.approx((0.1 + 0.2 + 0.0 + 0.2) / 4)
    with pytest.raises(ValueError, match="one non-zero length"):
        compare_scores(np.array([0.1]), np.array([0.1, 0.2]), 0.5)


# --------------------------------------------------------------------------- shadow period and who forced

SHADOW = RegisterConfig(min_shadow_requests=500, canary={"min_agreement": 0.95})


def test_a_passing_challenger_waits_in_shadow_when_the_period_is_on() -> None:
    decision = promotion_decision(_evaluation(0.72, champion=0.70), SHADOW, canary=_canary(0.97))
    assert decision.pending and not decision.promote
    assert decision.summary.startswith("passed the gate, waits in shadow: ")
    assert "shadow-scored 500 requests" in decision.summary and "at least 95.0%" in decision.summary


@pytest.mark.parametrize(
    ("evaluation", "canary", "force", "promote"),
    [
        (_evaluation(0.70, baseline=0.65), None, None, True),  # first model: nothing to shadow beside
        (_evaluation(0.60, champion=0.70), _canary(0.97), None, False),  # refused: nothing to wait for
        (_evaluation(0.60, champion=0.70), _canary(0.50), "hotfix for incident 7", True),  # forced: at once
    ],
)
def test_first_refused_and_forced_models_skip_the_shadow_period(evaluation, canary, force, promote) -> None:
    decision = promotion_decision(evaluation, SHADOW, force_reason=force, canary=canary)
    assert not decision.pending and decision.promote is promote


def test_a_forced_promotion_names_who_forced_it() -> None:
    decision = promotion_decision(
        _evaluation(0.55, champion=0.70), CFG, force_reason="incident 42: hotfix model", forced_by="alice"
    )
    assert decision.forced_by == "alice"
    assert decision.reasons[0] == "forced by alice: incident 42: hotfix model"


def test_the_acting_user_is_the_given_one_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_USER", "oncall-bob")
    assert acting_user("alice") == "alice"
    assert acting_user(None) == "oncall-bob"
