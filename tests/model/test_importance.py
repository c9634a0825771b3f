"""Model tests of the permutation importance every evaluation computes (``test_network``'s three weeks).

The holdout (19-21 June) holds one month only, so shuffling ``month`` changes no input
and cannot lower the AUC: it must come out exactly 0 and be flagged as not helping,
while the hour of departure, which the model leans on, must not be. The importances go
to ``evaluation.json``, the MLflow run (metrics and a table) and a WARNING line.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from test_network import Trained, params, processed, trained  # noqa: F401 (module fixtures)

NAME = "flight_delay_importance"


@pytest.fixture(scope="module")
def evaluated(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    from pipelines.steps.evaluate import evaluate
    from pipelines.tracking import Tracking

    root = tmp_path_factory.mktemp("importance")
    p = trained.params.with_overrides(
        {
            "evaluate.baseline.max_iter": 1,
            "register.model_name": NAME,
            "evaluate.importance.repeats": 2,
            "evaluate.importance.max_rows": 2000,
            "evaluate.importance.min_drop": 0.001,
        }
    )
    tracking = Tracking(f"sqlite:///{root / 'mlflow.db'}", "importance", root / "artifacts", "test/importance")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("pipelines.steps.evaluate").addHandler(handler)
    try:
        result = evaluate(
            p.dataset,
            p.preprocess,
            p.train,
            p.evaluate,
            p.registration,
            trained.processed,
            trained.saved,
            root / "evaluation",
            tracking,
        )
    finally:
        logging.getLogger("pipelines.steps.evaluate").removeHandler(handler)
    return {"result": result, "tracking": tracking, "records": records, "params": p}


def test_every_feature_gets_its_permutation_importance(evaluated: dict[str, Any], trained: Trained) -> None:  # noqa: F811
    full = json.loads(Path(evaluated["result"]["evaluation_path"]).read_text())
    imp = full["feature_importance"]
    assert set(imp["features"]) == set(trained.params.dataset.features.all)
    assert imp["rows"] == 2000 < trained.manifest["splits"]["holdout"]["rows"]  # the cap
    assert imp["repeats"] == 2 and imp["scoring"] == "roc_auc"
    assert imp["baseline"] == pytest.approx(full["challenger"]["overall"]["auc"], abs=0.03)  # a sample of the same
    means = [v["mean"] for v in imp["features"].values()]
    assert means == sorted(means, reverse=True)
    assert imp["features"]["month"] == {"mean": 0.0, "std": 0.0}
    assert imp["features"]["hour"]["mean"] > 0.01


def test_features_that_do_not_help_are_flagged_and_warned(evaluated: dict[str, Any]) -> None:
    result = evaluated["result"]
    assert "month" in result["unhelpful_features"] and "hour" not in result["unhelpful_features"]
    warnings = [r.getMessage() for r in evaluated["records"] if r.levelno == logging.WARNING]
    assert any(
        w.startswith("feature not helping: month: shuffling it lowers the holdout AUC by 0.0000") for w in warnings
    )
    assert not any(w.startswith("feature not helping: hour:") for w in warnings)


def test_importances_go_to_the_mlflow_run_as_metrics_and_a_table(evaluated: dict[str, Any]) -> None:
    import mlflow

    tracking = evaluated["tracking"]
    client = mlflow.MlflowClient(tracking.tracking_uri)
    run = client.get_run(evaluated["result"]["mlflow_run_id"])
    assert run.data.metrics["importance_month"] == 0.0
    assert run.data.metrics["importance_hour"] > 0.01
    assert "month" in run.data.tags["evaluation.unhelpful_features"].split(", ")
    table_path = client.download_artifacts(
        run.info.run_id, "evaluation/feature_importance.json", str(Path(tracking.artifact_root).parent / "dl")
    )
    table = json.loads(Path(table_path).read_text())
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    by_name = {r["feature"]: r for r in rows}
    assert by_name["month"]["helps"] is False and by_name["hour"]["helps"] is True
    assert by_name["hour"]["rank"] < by_name["month"]["rank"]


def test_the_model_card_section_lists_them(evaluated: dict[str, Any]) -> None:
    from pipelines.model.importance import card_lines

    full = json.loads(Path(evaluated["result"]["evaluation_path"]).read_text())
    text = "\n".join(card_lines(full))
    assert "## Feature importance" in text and "| month | 0.0000 | 0.0000 |" in text
    assert "- Not helping: month: shuffling it lowers the holdout AUC by 0.0000" in text
    assert card_lines({}) == []
