"""Monitoring of served traffic: the served log's rows checked for drift, the shadow against the live
model, and online performance once labels are published.

Real flights of 2013, a real served log (written by the service's own ``ServedLog``), real MLflow
(the champion's reference logged as an artifact, as registration does) and real Evidently.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
DAYS = [dt.date(2013, 3, d) for d in (1, 2, 3)]
MONITORED = DAYS[-1]


def _params():
    from pipelines.config import load_params

    return load_params(REPO / "params.yaml").with_overrides({"monitor.window_days": 3})


def _version(version: str):
    from pipelines.serving.versions import ServedModel

    return ServedModel(
        name="flight_delay",
        version=version,
        alias="champion",
        run_id=None,
        dataset_revision=None,
        threshold=0.5,
        threshold_source="params",
        features=_params().dataset.features,
        loaded_at="2013-03-01T00:00:00+00:00",
        load_seconds=0.0,
        _score=lambda inputs: np.zeros(1),  # never called: the log is handed its scores
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Published days with labels, what the service answered on them, and a champion with its reference."""
    import mlflow

    from pipelines.data.partitions import partition_path, write_partition
    from pipelines.model.features import LABEL, apply_label_rule
    from pipelines.monitoring.reference import Champion
    from pipelines.monitoring.served import _identity
    from pipelines.serving.served_log import Served, ServedLog
    from pipelines.settings import resolve
    from pipelines.steps.collect import fetch_day

    root = tmp_path_factory.mktemp("served")
    env = {"MLOPS_HOME": str(root / "home"), "MLOPS_DATA_DIR": str(root / "data"), "MLOPS_VERSIONING": "off"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    settings = resolve()
    spec = _params().dataset
    features = list(spec.features.all)
    rng = np.random.default_rng(7)

    # The champion's reference: January, as its training sample would be.
    january = pd.concat([fetch_day(spec, dt.date(2013, 1, d)) for d in range(2, 12)], ignore_index=True)
    january["probability"] = rng.uniform(0, 1, len(january))
    ref_path = root / "reference.parquet"
    january.to_parquet(ref_path, index=False)
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    exp = client.create_experiment("models", artifact_location=(root / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(ref_path), "monitoring")
    holdout = {"auc": 0.71, "brier": 0.17, "log_loss": 0.52}
    champion = Champion("flight_delay", "3", run_id, f"runs:/{run_id}/monitoring/reference.parquet", holdout)

    # Published days; the service answered every flight of them whose features are unique
    # (identical rows are one to the model: which label pairs with which cannot be told).
    log = ServedLog(settings.data_dir / "served", {c: spec.schema_[c] for c in features})
    live, shadow, old = _version("3"), _version("4"), _version("2")
    expected = []
    for day in DAYS:
        raw = fetch_day(spec, day)
        write_partition(raw, partition_path(settings.raw_dir, day), spec.key_columns)
        labelled = apply_label_rule(raw, spec.label)
        unique = labelled[~_identity(labelled, spec, features).duplicated(keep=False)].reset_index(drop=True)
        # A live model that knows something: late flights score higher.
        p = np.clip(0.25 + 0.35 * unique[LABEL].to_numpy() + rng.normal(0, 0.2, len(unique)), 0.01, 0.99)
        s = np.clip(p + 0.1, 0.01, 0.99)  # the shadow says "late" more often
        rows = unique[features].astype(object).where(unique[features].notna(), None).to_dict("records")
        at = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
        half = len(rows) // 2
        log.append(Served(f"{day}-a", at, rows[:half], p[:half], live), shadow, s[:half])
        log.append(Served(f"{day}-b", at, rows[half:], p[half:], live), None, None)  # before the shadow
        # The first rows asked again, later (the answer counts once), and a few by the old version.
        log.append(Served(f"{day}-c", at + dt.timedelta(hours=1), rows[:5], p[:5], live), shadow, s[:5])
        log.append(Served(f"{day}-d", at - dt.timedelta(hours=1), rows[-3:], p[-3:], old), None, None)
        expected.append(pd.DataFrame({"p": p, "s": s, LABEL: unique[LABEL], "shadowed": np.arange(len(p)) < half}))
        log.flush()
    (settings.data_dir / "served" / f"date={DAYS[0]}" / "part-x.tmp").write_bytes(b"half a file")  # being written
    try:
        yield {"settings": settings, "champion": champion, "expected": pd.concat(expected, ignore_index=True)}
    finally:
        mp.undo()


def _ctx(run_id: str, day: dt.date = MONITORED):
    from pipelines.runner import RunContext

    return RunContext(dag_id="flights_monitoring", run_id=run_id, run_day=day, overrides={"monitor.window_days": 3})


def test_served_rows_are_checked_for_drift_shadow_and_online_performance(world) -> None:
    import mlflow

    from pipelines.model.features import LABEL
    from pipelines.model.metrics import binary_metrics
    from pipelines.runner import run_check_served

    result = run_check_served(_ctx("m1"), world["champion"].as_dict())
    exp = world["expected"]
    assert result["status"] == "ok" and result["days"] == [d.isoformat() for d in DAYS]
    assert result["rows"] == len(exp) + 3 * (5 + 3), "every served row, repeats and the old version's included"

    # Drift: March rows against a January reference, the same check as the published rows'.
    drift = result["drift"]
    assert drift["status"] == "ok" and drift["current_rows"] == result["rows"]
    assert drift["report_html"].endswith("served_data_drift.html") and Path(drift["report_html"]).is_file()
    assert drift["report_uri"].endswith("reports/served_data_drift.html")

    # The shadow against the live model, on the rows both scored (the repeats included).
    shadow = result["shadow"]
    assert shadow["status"] == "ok" and shadow["shadow_versions"] == ["4"] and shadow["live_versions"] == ["3"]
    assert shadow["rows"] == exp["shadowed"].sum() + 3 * 5
    assert 0.5 < shadow["agreement"] < 1, "the shadow says late more often: decisions differ on some rows"
    assert shadow["mean_shift"] == pytest.approx(0.1, abs=0.02)

    # Online performance: the champion's rows (each once), matched to their published labels.
    online = result["online"]
    assert online["status"] == "ok" and online["matched_on"] == "features"
    assert online["rows"] == len(exp) and online["other_version_rows"] == 9
    truth = binary_metrics(exp[LABEL].to_numpy(), exp["p"].to_numpy(), 0.5)
    assert online["current"]["auc"] == pytest.approx(truth["auc"]) and online["current"]["auc"] > 0.8
    assert online["current"]["brier"] == pytest.approx(truth["brier"])
    assert online["holdout"] == {"auc": 0.71, "brier": 0.17, "log_loss": 0.52}, "beside its holdout figures"
    assert online["shadow_version"] == "4" and online["shadow"]["rows"] == exp["shadowed"].sum()

    # All of it on the monitoring run in MLflow, and in served.json.
    settings = world["settings"]
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    run_id = drift["report_uri"].split("/")[1]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["shadow.agreement"] == pytest.approx(shadow["agreement"])
    assert metrics["shadow.mean_shift"] == pytest.approx(shadow["mean_shift"])
    assert metrics["online.auc"] == pytest.approx(online["current"]["auc"])
    assert metrics["online.holdout.auc"] == pytest.approx(0.71)
    assert metrics["served_data_drift.share"] == pytest.approx(drift["share"])
    logged = {Path(f.path).name for f in client.list_artifacts(run_id, "reports")}
    assert {"served_data_drift.html", "served_data_drift.json", "served.json"} <= logged
    assert json.loads(Path(settings.run_dir("flights_monitoring", "m1"), "monitor", "served.json").read_text())


def test_labels_not_yet_published_and_no_traffic(world) -> None:
    from pipelines.runner import run_check_served

    # A week later: the window holds no served row at all.
    quiet = run_check_served(_ctx("m2", MONITORED + dt.timedelta(days=7)), world["champion"].as_dict())
    assert quiet["status"] == "no_served_traffic" and quiet["summary"].startswith("no served traffic")

    # Served rows whose days are not published yet: no labels, reported as such.
    raw = world["settings"].raw_dir
    hidden = [p.rename(p.with_name(p.name + ".hidden")) for p in raw.glob("date=*/*.parquet")]
    try:
        waiting = run_check_served(_ctx("m3"), world["champion"].as_dict())
    finally:
        for p in hidden:
            p.rename(p.with_name(p.name.removesuffix(".hidden")))
    assert waiting["status"] == "ok" and waiting["online"]["status"] == "no_labels"
    assert "has its label yet" in waiting["online"]["summary"]


def test_served_rows_carrying_the_keys_are_joined_on_them(world) -> None:
    from pipelines.model.features import LABEL
    from pipelines.monitoring.served import label_served
    from pipelines.steps.collect import fetch_day

    spec = _params().dataset
    raw = fetch_day(spec, DAYS[0])
    served = (
        raw[list(dict.fromkeys([*spec.key_columns, *spec.features.all]))]
        .head(50)
        .assign(probability=0.3, shadow_probability=np.nan, threshold=0.5, model_version="3", shadow_version=None)
    )
    served["served_at"] = pd.Timestamp("2013-03-01T12:00Z")
    labelled, matched_on = label_served(served, raw, spec)
    assert matched_on == "key columns" and len(labelled) == 50
    assert labelled[LABEL].tolist() == (raw["arr_delay"].head(50).fillna(99) > 15).astype(int).tolist()
