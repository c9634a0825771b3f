"""The champion's age: read from its registered version's lineage, reported every run, alerted past the limit.

A real MLflow registry (SQLite) holds a version tagged as registration tags it; no model is trained.
"""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.monitoring.reference import Champion


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registered version whose data ends on 28 February 2013, and one registered without the tag."""
    import mlflow

    from pipelines.settings import resolve

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "data"))
    uri = resolve().tracking_uri
    client = mlflow.MlflowClient(uri, uri)
    run = client.create_run(client.create_experiment("models", artifact_location=(tmp_path / "mlruns").as_uri()))
    client.create_registered_model("flight_delay")
    dated = client.create_model_version("flight_delay", str(tmp_path / "model"), run.info.run_id)
    client.set_model_version_tag("flight_delay", dated.version, "lineage.window_end", "2013-02-28")
    undated = client.create_model_version("flight_delay", str(tmp_path / "model"), run.info.run_id)
    return {
        "uri": uri,
        "home": tmp_path / "home",
        "dated": Champion("flight_delay", str(dated.version), run.info.run_id, None, {}),
        "undated": Champion("flight_delay", str(undated.version), run.info.run_id, None, {}),
    }


def _check(day: dt.date, champion: Champion, **overrides):
    from pipelines.runner import RunContext, run_check_staleness

    ctx = RunContext(dag_id="flights_monitoring", run_id=f"m_{day}", run_day=day, overrides=overrides)
    return run_check_staleness(ctx, champion.as_dict())


def test_age_is_reported_every_run_and_alerted_past_the_limit(registry) -> None:
    import mlflow

    from pipelines.alerts import read_alerts

    fresh = _check(dt.date(2013, 3, 7), registry["dated"])
    assert fresh["status"] == "ok" and fresh["age_days"] == 7 and fresh["trained_until"] == "2013-02-28"
    assert not fresh["detected"] and fresh["alerts"] == {}
    assert "7 days before 2013-03-07" in fresh["summary"]
    assert read_alerts(registry["home"]) == []

    stale = _check(dt.date(2013, 7, 7), registry["dated"])
    assert stale["detected"] and stale["age_days"] == 129 and stale["max_age_days"] == 21
    assert stale["alerts"]["file"] == "sent"
    [alert] = read_alerts(registry["home"])
    assert alert["event"] == "model_stale" and "129 days old on 2013-07-07" in alert["summary"]
    assert alert["dag_id"] == "flights_monitoring" and alert["run_id"] == "m_2013-07-07"

    # The limit is monitor.max_model_age_days; the age is on the monitoring run in MLflow.
    assert not _check(dt.date(2013, 7, 7), registry["dated"], **{"monitor.max_model_age_days": 200})["detected"]
    client = mlflow.MlflowClient(registry["uri"], registry["uri"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("flight_delay_monitoring").experiment_id],
        filter_string="tags.`pipeline.run_key` = 'flights_monitoring/m_2013-07-07'",
    )
    assert run.data.metrics["staleness.age_days"] == 129 and run.data.tags["staleness.detected"] == "false"


def test_a_version_without_lineage_is_unknown_not_alerted(registry) -> None:
    from pipelines.alerts import read_alerts

    result = _check(dt.date(2013, 7, 7), registry["undated"])
    assert result["status"] == "unknown" and result["age_days"] is None and not result["detected"]
    assert "lineage.window_end" in result["summary"]
    assert read_alerts(registry["home"]) == []


def test_the_age_counts_in_the_sources_calendar() -> None:
    from pipelines.monitoring.staleness import model_age

    champion = Champion("m", "1", "r", None, {})
    result = model_age(champion, dt.date(2013, 2, 28), dt.date(2013, 3, 30), 30)
    assert result.age_days == 30 and not result.detected, "the limit itself is not stale"
    assert model_age(champion, dt.date(2013, 2, 28), dt.date(2013, 3, 31), 30).detected
