"""Model tests of ``python -m pipelines explain`` on a real small model (``test_network``'s three weeks).

The model is registered as the champion of a throw-away registry. One holdout row is
explained in-process and through the command (found by its key in the collected day):
the preprocessing outputs are what the model's layers compute (scaled values from the
training statistics, the carrier's vocabulary entry, the bucket holding the value, a
cross's parts), the logit's parts sum to the model's logit, and the probability is the
sigmoid of that logit and what batch scoring gives the same row.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime as dt
import json
import math
import subprocess
import sys
from typing import Any

import pandas as pd
import pytest
from model_registry import register_keras_model
from test_network import REPO, Trained, params, processed, trained  # noqa: F401 (module fixtures)

from pipelines.config import ConfigError
from pipelines.data.partitions import partition_path, write_partition

NAME = "flight_delay"
DAY = dt.date(2013, 6, 21)  # the fixture's last holdout day


@pytest.fixture(scope="module")
def registry(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    root = tmp_path_factory.mktemp("explain-registry")
    found = register_keras_model(trained.saved, trained.params.dataset.features, root, NAME)
    holdout = trained.split("holdout")
    day = holdout.loc[holdout[trained.params.dataset.time_column] == pd.Timestamp(DAY)]
    raw = root / "data" / "raw"
    write_partition(day.drop(columns=["label"]), partition_path(raw, DAY), trained.params.dataset.key_columns)
    # A row with a missing weather reading, a bucketed value and a known carrier.
    row = day.loc[day["wind_gust"].isna() & day["carrier"].eq("UA")].iloc[0]
    return {**found, "root": root, "raw": raw, "row": row}


def _row(registry: dict[str, Any], trained: Trained) -> dict[str, Any]:  # noqa: F811
    row = registry["row"][list(trained.params.dataset.features.all)]
    return json.loads(row.to_json())


def _check(ex: dict[str, Any], trained: Trained, registry: dict[str, Any]) -> None:  # noqa: F811
    import mlflow

    from pipelines.model.pyfunc import PROBABILITY
    from pipelines.tracking import use_tracking

    row, stats = registry["row"], trained.stats["numeric"]
    numeric = {c["name"]: c["value"] for c in ex["numeric"]}
    expected = (row["distance"] - stats["distance"]["mean"]) / stats["distance"]["std"]
    assert numeric["scaled distance"] == pytest.approx(expected, rel=1e-5)
    assert numeric["missing wind_gust"] == 1.0 and ex["raw"]["wind_gust"] is None
    ids = {c["name"]: c for c in ex["ids"]}
    assert ids["carrier"]["label"] == "UA" and ids["carrier"]["kind"] == "category"
    lo, hi = ids["distance_bucket"]["label"]
    assert (lo is None or lo <= row["distance"]) and (hi is None or row["distance"] < hi)
    assert ids["wind_gust_bucket"] == {**ids["wind_gust_bucket"], "id": 0, "label": "(missing)"}
    cross = ids["carrier x origin"]
    assert cross["kind"] == "cross" and cross["parts"] == [ids["carrier"]["id"], ids["origin"]["id"]]
    assert cross["id"] == ids["carrier"]["id"] * (len(trained.stats["vocabulary"]["origin"]) + 1) + ids["origin"]["id"]

    logit = ex["logit"]
    wide = logit["wide"]
    assert len(wide["terms"]) == len(ex["numeric"]) + len(ex["ids"])
    parts = wide["bias"] + sum(t["contribution"] for t in wide["terms"]) + logit["deep"]
    assert parts == pytest.approx(logit["total"], abs=1e-4)
    assert sum(wide["by_feature"].values()) + wide["bias"] == pytest.approx(wide["total"], abs=1e-5)
    assert ex["probability"] == pytest.approx(1 / (1 + math.exp(-logit["total"])), abs=1e-6)

    with use_tracking(registry["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{registry['version']}")
    frame = pd.DataFrame([registry["row"][list(trained.params.dataset.features.all)]])
    batch = float(model.predict(frame)[PROBABILITY].iloc[0])
    assert ex["probability"] == pytest.approx(batch, abs=1e-6)


def test_explain_shows_each_stage_and_its_parts_add_up(registry: dict[str, Any], trained: Trained) -> None:  # noqa: F811
    from pipelines.model.explain import explain, format_explanation

    ex = explain(
        trained.params.dataset,
        NAME,
        registry["uri"],
        registry["raw"],
        row=json.dumps(_row(registry, trained)),
    )
    assert ex["model"] == {"name": NAME, "version": registry["version"]}
    _check(ex, trained, registry)
    text = format_explanation(ex)
    for heading in ("1. raw values", "2. preprocessing", "3. logit = wide + deep", "4. probability"):
        assert heading in text
    assert f"= {ex['probability']:.6f}" in text


def test_explain_command_finds_the_row_by_key_and_prints_json(
    registry: dict[str, Any],
    trained: Trained,  # noqa: F811
) -> None:
    row = registry["row"]
    keys = [f"--key={k}={row[k]}" for k in ("carrier", "flight", "origin", "sched_dep_time")]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry["uri"],
        "MLOPS_DATA_DIR": str(registry["root"] / "data"),
        "MLOPS_HOME": str(registry["root"] / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "explain", *keys, "--date", DAY.isoformat(), "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ex = json.loads(done.stdout)
    assert ex["model"]["version"] == registry["version"]  # the champion, by default
    assert ex["raw"]["carrier"] == row["carrier"] and ex["raw"]["distance"] == row["distance"]
    _check(ex, trained, registry)

    ambiguous = subprocess.run(
        [sys.executable, "-m", "pipelines", "explain", "--key", "carrier=UA", "--date", DAY.isoformat()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ambiguous.returncode == 2
    assert "rows of 2013-06-21 match carrier=UA, not one; name more of the key columns" in ambiguous.stderr


def test_explain_refuses_an_unknown_version_and_a_key_without_its_day(
    registry: dict[str, Any],
    trained: Trained,  # noqa: F811
) -> None:
    from pipelines.model.explain import explain

    with pytest.raises(ConfigError, match=f"{NAME} has no version 99"):
        explain(trained.params.dataset, NAME, registry["uri"], registry["raw"], row="{}", version="99")
    with pytest.raises(ConfigError, match="--key needs --date"):
        explain(trained.params.dataset, NAME, registry["uri"], registry["raw"], keys={"carrier": "UA"})
    with pytest.raises(ConfigError, match="the row lacks feature columns"):
        explain(trained.params.dataset, NAME, registry["uri"], registry["raw"], row='{"carrier": "UA"}')
