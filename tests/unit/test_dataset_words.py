"""Names and texts that depend on the data set come from ``params.yaml``, not from the code.

The model card, the prediction files' columns and the log lines speak of flights
because the flights' ``params.yaml`` says so; another table's params give its own words,
and leaving them out gives generic ones, never a flight.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import DatasetConfig, PredictConfig, load_params
from pipelines.promotion import Decision, model_card

REPO = Path(__file__).resolve().parents[2]
EVENTS = {
    "name": "events",
    "source": {"kind": "files", "path_template": "landing/{date:%Y-%m-%d}.csv", "format": "csv"},
    "time_column": "day",
    "features": {"numeric": ["size"], "categorical": ["site"]},
    "label": {"source_column": "outcome", "threshold": 0.5},
    "schema": {"day": "date", "size": "float", "site": "string", "outcome": "float"},
}
FLIGHT_WORDS = ("flight", "nyc", "15 minutes", "departure", "passenger", "delay")


def _metrics(auc: float) -> dict[str, float]:
    return {"auc": auc, "log_loss": 0.5, "brier": 0.2, "accuracy": 0.7, "precision": 0.6, "recall": 0.5}


EVALUATION = {
    "challenger": {"overall": _metrics(0.71), "slices": {"site": {"a": {**_metrics(0.7), "rows": 300}}}},
    "baseline": {"overall": _metrics(0.65), "slices": {}},
}


def _card(spec: DatasetConfig) -> str:
    return model_card(
        "m",
        "1",
        EVALUATION,
        Decision(True, ["AUC 0.71 meets the floor 0.6"]),
        {"run_id": "r"},
        {"numeric": list(spec.features.numeric), "categorical": list(spec.features.categorical)},
        "outcome gt 0.5, missing counts as positive",
        spec,
    )


def test_a_card_without_the_data_sets_words_is_generic() -> None:
    card = _card(DatasetConfig.model_validate(EVENTS)).lower()
    assert not [w for w in FLIGHT_WORDS if w in card], card
    assert "each row of the data set events" in card and "positive outcome" in card


def test_a_card_says_what_the_data_set_says() -> None:
    spec = DatasetConfig.model_validate(
        {
            **EVENTS,
            "description": "Scores each support ticket with the probability that it escalates.",
            "entity": "ticket",
            "limitations": ["Only tickets in English."],
            "label": {**EVENTS["label"], "name": "escalation", "description": "Reopened tickets count once."},
        }
    )
    card = _card(spec)
    assert "Scores each support ticket with the probability that it escalates." in card
    assert "Escalation: outcome gt 0.5" in card and "Reopened tickets count once." in card
    assert "- Only tickets in English." in card
    assert not [w for w in FLIGHT_WORDS if w in card.lower()], card
    assert spec.entities == "tickets"


def test_the_flights_card_keeps_its_words() -> None:
    spec = load_params(REPO / "params.yaml").dataset
    card = _card(spec)
    assert "Scores scheduled flights the day before departure" in card
    assert "- Trained on the NYC departures of one year (2013 replay)" in card
    assert "counts as late" in card


def test_prediction_columns_are_generic_unless_params_name_them() -> None:
    assert (PredictConfig().probability_column, PredictConfig().decision_column) == ("probability", "prediction")
    flights = load_params(REPO / "params.yaml").predict
    assert (flights.probability_column, flights.decision_column) == ("delay_probability", "predicted_delayed")


def test_monitoring_reads_the_probability_under_the_configured_name(tmp_path) -> None:
    from pipelines.data.partitions import partition_path, write_partition
    from pipelines.monitoring.reference import PROBABILITY, Champion
    from pipelines.steps.monitor import MonitorError, read_scored

    day = dt.date(2024, 3, 5)
    scored = pd.DataFrame(
        {"day": [pd.Timestamp(day)] * 2, "escalation_p": [0.2, 0.9], "model_name": "m", "model_version": "3"}
    )
    write_partition(scored, partition_path(tmp_path, day), ())
    champion = Champion("m", "3", "run", None, {})
    frame, missing = read_scored(tmp_path, [day], champion, "escalation_p")
    assert frame[PROBABILITY].tolist() == [0.2, 0.9] and missing == []
    with pytest.raises(MonitorError, match=r"predict\.probability_column"):
        read_scored(tmp_path, [day], champion, "probability")
