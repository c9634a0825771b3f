"""Unit tests of the served log and of the watcher's staleness, without a model or a server.

The served log must write what it is given to the partition of the day it was served, with the
same column types in every file (a day read back with pandas is one frame); the watcher must
keep what it has, and say so, when the registry cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from pipelines.config import FeatureSpec, Params, load_params
from pipelines.serving.metrics import ServiceMetrics
from pipelines.serving.schema import RowParser
from pipelines.serving.served_log import Served, ServedLog
from pipelines.serving.versions import ServedModel
from pipelines.serving.watcher import ModelWatcher

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE)


def _version(version: str, features: FeatureSpec) -> ServedModel:
    """A version record; its scoring function is never called by the log."""
    return ServedModel(
        name="flight_delay",
        version=version,
        alias="champion",
        run_id=None,
        dataset_revision=None,
        threshold=0.5,
        threshold_source="params",
        features=features,
        loaded_at="2026-01-01T00:00:00+00:00",
        load_seconds=0.0,
        _score=lambda inputs: np.zeros(1),
    )


def _rows(params: Params, n: int, gust: float | None) -> list[dict]:
    kinds = {"int": 6, "float": 21.5, "string": "JFK"}
    row = {c: kinds[params.dataset.schema_[c]] for c in params.dataset.features.all} | {"wind_gust": gust}
    return [dict(row, minute=i) for i in range(n)]


def test_rows_go_to_the_partition_of_their_day_with_the_same_types(params: Params, tmp_path: Path) -> None:
    features = params.dataset.features
    schema = {c: params.dataset.schema_[c] for c in features.all}
    served = ServedLog(tmp_path / "served", schema)
    live, shadow = _version("3", features), _version("4", features)
    late = dt.datetime(2026, 3, 1, 23, 59, 59, tzinfo=dt.UTC)
    early = dt.datetime(2026, 3, 2, 0, 0, 1, tzinfo=dt.UTC)
    # A missing reading in every row of one request (all None) and in none of another.
    served.append(Served("a", late, _rows(params, 2, None), np.array([0.2, 0.7], dtype=np.float32), live), None, None)
    served.append(
        Served("b", early, _rows(params, 3, 12.0), np.array([0.5, 0.1, 0.9], dtype=np.float32), live),
        shadow,
        np.array([0.4, 0.2, 0.8], dtype=np.float32),
    )
    assert served.buffered == 5
    paths = served.flush()
    assert served.buffered == 0 and served.flush() == []
    assert sorted(p.parent.name for p in paths) == ["date=2026-03-01", "date=2026-03-02"]

    first = pd.read_parquet(tmp_path / "served" / "date=2026-03-01")
    second = pd.read_parquet(tmp_path / "served" / "date=2026-03-02")
    assert first.dtypes.to_dict() == second.dtypes.to_dict(), "every file has the same column types"
    assert first["wind_gust"].isna().all() and first["wind_gust"].dtype == np.float64
    assert list(first["request_id"]) == ["a", "a"] and list(first["row"]) == [0, 1]
    assert list(first["delayed"]) == [False, True] and first["shadow_probability"].isna().all()
    assert list(second["shadow_version"]) == ["4"] * 3 and list(second["model_version"]) == ["3"] * 3
    np.testing.assert_allclose(second["shadow_probability"], [0.4, 0.2, 0.8], atol=1e-7)
    assert list(second["minute"]) == [0, 1, 2] and second["served_at"].dt.tz is not None


def test_an_unreachable_registry_keeps_what_is_served_and_reports_it(params: Params, monkeypatch) -> None:
    import mlflow

    # Nothing listens on this port; no retries, so the check fails at once.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = "http://127.0.0.1:9"
    metrics = ServiceMetrics()
    alerts: list[str] = []
    watcher = ModelWatcher(
        mlflow.MlflowClient(uri, uri),
        "flight_delay",
        "champion",
        None,
        1.0,
        params.dataset.features,
        0.5,
        metrics,
        lambda summary, details: alerts.append(summary),
    )
    serving = _version("7", params.dataset.features)
    watcher.live.model = serving
    watcher.check_once()
    status = watcher.status()
    assert watcher.model is serving, "the loaded version keeps serving"
    assert not status["registry_reachable"] and status["last_error"] and status["alias_checked_seconds_ago"] is None
    text = generate_latest(metrics.registry).decode()
    assert "serve_alias_check_failures_total 1.0" in text and "serve_alias_check_age_seconds +Inf" in text
    assert alerts == [], "an unreachable registry is staleness, not a refused version"


def test_rows_from_the_request_path_are_logged_as_the_same_rows_given_as_dicts(params: Params, tmp_path: Path) -> None:
    """The service hands the log columns (``Rows``); callers may hand it dicts: the files are the same."""
    features = params.dataset.features
    schema = {c: params.dataset.schema_[c] for c in features.all}
    parser = RowParser(params.dataset, 10)
    dicts = _rows(params, 3, None) + _rows(params, 2, 7.5)
    columns, _ = parser.parse_rows(json.dumps(dicts).encode())
    at = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    live, shadow = _version("3", features), _version("4", features)
    scores, theirs = np.linspace(0.1, 0.9, 5, dtype=np.float32), np.linspace(0.2, 0.6, 5, dtype=np.float32)
    frames = []
    for name, rows in (("columns", columns), ("dicts", dicts)):
        log = ServedLog(tmp_path / name, schema)
        log.append(Served("a", at, rows, scores, live), shadow, theirs)
        log.flush()
        frames.append(pd.read_parquet(tmp_path / name / "date=2026-03-01"))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert frames[0]["wind_gust"].isna().sum() == 3 and list(frames[0]["shadow_version"]) == ["4"] * 5
