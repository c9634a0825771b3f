"""Monitoring: unit tests of the checks, the decision and the alerts, then the real monitoring DAG.

Real data, real Evidently, real MLflow and real Airflow (``dag.test()``); nothing mocked.

The end-to-end part trains a *winter* champion: the training pipeline in process on the 59 days
ending 28 February 2013 (its training split is January; one epoch: its quality is not under
test). It then scores, as the nightly ``batch_predict`` would, three stretches of 2013 and runs
the monitoring DAG on each:

* 1 to 7 March, days like its training data: no retraining;
* 1 to 7 July, high summer: the weather features drift, a training run is created with the reason;
* 3 to 9 July, a second drift two days later: refused by the cooldown;
* 8 to 14 December, performance decay with little feature drift. How it is constructed: December
  weather at New York is January weather again (temperature, dew point, pressure within the
  reference's range), but that week half the flights arrived late (snow and ice on 8, 10 and
  14 December, and knock-on delays) where the champion's January saw a quarter; and the model
  is eleven months old. Its inputs look like its training data, its outcomes do not: only the
  labels, published the next day, show it. The test asserts both halves (drift below the
  threshold, a metric worse than on the holdout by more than its tolerance), so it cannot pass
  on one alone.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import set_env

REPO = Path(__file__).resolve().parents[2]
CHAMPION_DAY = dt.date(2013, 2, 28)
CHAMPION_OVERRIDES = {
    "preprocess.training_window_days": 59,  # January trains; the first half of February validates, the second is the holdout
    "train.epochs": 1,
    "evaluate.baseline.max_iter": 20,
}
FORCE_REASON = "the monitoring tests need a champion; its quality is not under test"
WINTER = [dt.date(2013, 3, d) for d in range(1, 8)]
SUMMER = [dt.date(2013, 7, d) for d in range(1, 10)]
DECEMBER = [dt.date(2013, 12, d) for d in range(8, 15)]


def _params():
    from pipelines.config import load_params

    return load_params(REPO / "params.yaml")


def _days(first: str, last: str) -> list[dt.date]:
    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]


def _rows(days: list[dt.date]) -> pd.DataFrame:
    from pipelines.steps.collect import fetch_day

    spec = _params().dataset
    return pd.concat([fetch_day(spec, d) for d in days], ignore_index=True)


# --------------------------------------------------------------------------- unit: drift on real data


@pytest.fixture(scope="module")
def january_reference() -> pd.DataFrame:
    from pipelines.monitoring.reference import reference_sample

    p = _params().monitor
    return reference_sample(_rows(_days("2013-01-01", "2013-01-31")), p.reference_rows, p.seed)


def test_data_drift_winter_reference_against_summer(january_reference, tmp_path) -> None:
    from pipelines.monitoring.checks import check_data_drift

    params = _params()
    result = check_data_drift(january_reference, _rows(SUMMER[:7]), params.dataset, params.monitor.drift, tmp_path)
    assert result.detected, result.summary()
    assert {"temp", "dewp"} <= set(result.drifted)
    assert result.share >= params.monitor.drift.drift_share
    assert not {"month", "day"} & set(result.columns), "calendar columns are excluded by params.yaml"
    assert result.scores["temp"] > 3, "July is several January standard deviations warmer"
    report = json.loads(Path(result.report_json).read_text())
    assert any("DriftedColumnsCount" in m["metric_name"] for m in report["metrics"])
    assert Path(result.report_html).stat().st_size > 10_000


def test_data_drift_winter_reference_against_winter(january_reference, tmp_path) -> None:
    from pipelines.monitoring.checks import check_data_drift

    params = _params()
    result = check_data_drift(january_reference, _rows(WINTER), params.dataset, params.monitor.drift, tmp_path)
    assert not result.detected, result.summary()
    assert result.share < params.monitor.drift.drift_share
    assert "temp" not in result.drifted


def test_drift_columns_reject_an_unknown_exclusion() -> None:
    from pipelines.config import ConfigError

    # Refused when the params load (their column checks, the one place that looks).
    with pytest.raises(ConfigError, match="monitor.drift.exclude_columns: 'arr_delay'"):
        _params().with_overrides({"monitor.drift.exclude_columns": ["month", "arr_delay"]})


def test_readiness_stays_light_for_the_sensor() -> None:
    import subprocess
    import sys

    # The monitoring DAG's sensor pokes in its own process: no pandas or NumPy there.
    code = (
        "import sys; from pipelines.monitoring.readiness import data_ready, source_run_day; "
        "print(sorted(m for m in ('pandas', 'numpy', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prediction_drift_on_shifted_probabilities(tmp_path) -> None:
    from pipelines.monitoring.checks import check_prediction_drift

    cfg = _params().monitor.prediction_drift
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.beta(2, 6, 5000))  # mean 0.25
    same = check_prediction_drift(reference, pd.Series(rng.beta(2, 6, 3000)), cfg, tmp_path / "same")
    shifted = check_prediction_drift(reference, pd.Series(rng.beta(1, 20, 3000)), cfg, tmp_path / "shifted")
    few = check_prediction_drift(reference, pd.Series(rng.beta(2, 6, cfg.min_rows - 1)), cfg, tmp_path / "few")
    assert not same.detected and shifted.detected
    assert shifted.score > cfg.threshold > same.score
    assert few.status == "insufficient_data" and not few.detected
    assert Path(shifted.report_html).is_file()


def test_worsening_points_the_right_way() -> None:
    from pipelines.monitoring.checks import worsening

    assert worsening("auc", 0.70, 0.62) == pytest.approx(0.08)
    assert worsening("auc", 0.70, 0.75) == pytest.approx(-0.05)
    assert worsening("brier", 0.18, 0.30) == pytest.approx(0.12)
    assert worsening("log_loss", 0.55, 0.50) == pytest.approx(-0.05)


def test_performance_check_compares_with_the_holdout(tmp_path) -> None:
    from pipelines.model.features import LABEL
    from pipelines.model.metrics import binary_metrics
    from pipelines.monitoring.checks import check_performance
    from pipelines.monitoring.reference import PROBABILITY

    cfg = _params().monitor.performance
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.6, 4000)
    y = (rng.uniform(size=4000) < p).astype(int)  # calibrated: its labels follow its probabilities
    good = pd.DataFrame({PROBABILITY: p, LABEL: y})
    stale = pd.DataFrame({PROBABILITY: p * 0.05, LABEL: y})  # same ranking, probabilities far too low
    holdout = {
        k: v for k, v in binary_metrics(y, p, 0.5).items() if k in ("auc", "brier")
    }  # measured on rows like these
    ok = check_performance(good, holdout, good, cfg, 0.5, tmp_path / "ok", days=["2013-03-01"])
    bad = check_performance(stale, holdout, good, cfg, 0.5, tmp_path / "bad", days=["2013-03-01"])
    few = check_performance(good.head(cfg.min_rows - 1), holdout, good, cfg, 0.5, tmp_path / "few")
    assert not ok.detected, ok.summary()
    assert bad.detected and bad.exceeded == ["brier"], bad.summary()
    assert bad.current["auc"] == pytest.approx(ok.current["auc"])  # AUC alone would have missed it
    assert few.status == "insufficient_data" and not few.detected
    assert Path(bad.report_html).is_file() and json.loads(Path(bad.report_json).read_text())["metrics"]


# --------------------------------------------------------------------------- unit: the decision


def _checks(drift: bool = False, prediction: bool = False, performance: bool = False):
    from pipelines.monitoring.checks import DataDrift, Performance, PredictionDrift

    d = DataDrift(
        "ok",
        drift,
        0.18 if drift else 0.06,
        ["temp", "dewp", "dest"] if drift else ["dest"],
        [f"c{i}" for i in range(17)],
        {},
        0.1,
        6000,
        20000,
        report_html="/r/data_drift.html",
        report_uri="runs:/m/reports/data_drift.html",
    )
    p = PredictionDrift(
        "ok",
        prediction,
        1.9 if prediction else 0.1,
        "wasserstein",
        1.0,
        6000,
        20000,
        0.1,
        0.2,
        report_html="/r/prediction_drift.html",
    )
    f = Performance(
        "ok",
        performance,
        6000,
        ["2013-07-01"],
        {"auc": 0.6, "brier": 0.35 if performance else 0.2},
        {"auc": 0.62, "brier": 0.18},
        {"auc": 0.02, "brier": 0.17 if performance else 0.02},
        {"auc": 0.05, "brier": 0.1},
        ["brier"] if performance else [],
        report_html="/r/performance.html",
    )
    return d, p, f


@pytest.mark.parametrize(
    ("drift", "prediction", "performance", "retrain", "triggers"),
    [
        (False, False, False, False, []),
        (True, False, False, True, ["data_drift"]),
        (False, False, True, True, ["performance"]),
        (True, False, True, True, ["data_drift", "performance"]),
        (
            False,
            True,
            False,
            False,
            [],
        ),  # prediction drift is reported, not a reason (monitor.prediction_drift.retrain)
    ],
)
def test_decide_thresholds(drift, prediction, performance, retrain, triggers) -> None:
    from pipelines.steps.monitor import retrain_decision

    cfg = _params().monitor
    decision = retrain_decision(dt.date(2013, 7, 7), *_checks(drift, prediction, performance), cfg, None, 0)
    assert (decision.retrain, decision.triggers) == (retrain, triggers)
    assert decision.blocked_by is None
    if retrain:
        expected = "runs:/m/reports/data_drift.html" if drift else "/r/performance.html"
        assert decision.report == expected
        assert decision.reason.startswith("retraining:")
    else:
        assert decision.report is None and decision.reason.startswith("no retraining")


def test_prediction_drift_is_a_reason_when_configured() -> None:
    from pipelines.steps.monitor import retrain_decision

    cfg = _params().with_overrides({"monitor.prediction_drift.retrain": True}).monitor
    decision = retrain_decision(dt.date(2013, 7, 7), *_checks(prediction=True), cfg, None, 0)
    assert decision.retrain and decision.triggers == ["prediction_drift"]


def test_decide_cooldown_and_active_training_guard() -> None:
    from pipelines.steps.monitor import retrain_decision

    cfg = _params().monitor
    day, checks = dt.date(2013, 7, 9), _checks(drift=True)
    recent = retrain_decision(day, *checks, cfg, last_retraining_day=dt.date(2013, 7, 7), active_training_runs=0)
    assert not recent.retrain and recent.blocked_by == "cooldown" and "2013-07-07" in recent.reason
    assert recent.triggers == ["data_drift"], "what asked is still recorded"
    after = retrain_decision(
        day, *checks, cfg, last_retraining_day=day - dt.timedelta(days=cfg.cooldown_days), active_training_runs=0
    )
    assert after.retrain
    backfill = retrain_decision(
        day, *checks, cfg, last_retraining_day=day + dt.timedelta(days=2), active_training_runs=0
    )
    assert backfill.blocked_by == "cooldown"
    busy = retrain_decision(day, *checks, cfg, last_retraining_day=None, active_training_runs=1)
    assert not busy.retrain and busy.blocked_by == "training_active"
    quiet = retrain_decision(day, *_checks(), cfg, last_retraining_day=day, active_training_runs=3)
    assert not quiet.retrain and quiet.blocked_by is None


def test_training_run_note_fits_airflow() -> None:
    from pipelines.steps.monitor import retrain_decision, training_run_note

    decision = retrain_decision(dt.date(2013, 7, 7), *_checks(drift=True), _params().monitor, None, 0)
    note = training_run_note(decision, ["x" * 5000])
    assert len(note) == 1000 and note.endswith("Report: runs:/m/reports/data_drift.html")


def test_source_run_day_reads_like_the_training_dag() -> None:
    from pipelines.monitoring.readiness import source_run_day

    start = dt.datetime(2013, 6, 28, 3, tzinfo=dt.UTC)
    assert source_run_day({"data_date": "2013-06-20"}, start, start) == dt.date(2013, 6, 20)
    assert source_run_day({}, start, None) == dt.date(2013, 6, 28)
    assert source_run_day(None, None, dt.datetime(2013, 6, 29, tzinfo=dt.UTC)) == dt.date(2013, 6, 29)
    assert source_run_day(None, None, None) is None


def test_monitoring_waits_for_the_training_run_that_brought_the_day() -> None:
    from pipelines.monitoring.readiness import data_ready

    assert data_ready(True, []) == "ready"  # triggered by hand
    assert data_ready(False, []) == "missing"
    assert data_ready(True, ["running"]) == "wait"  # published, but still scoring and registering
    assert data_ready(False, ["running"]) == "wait"  # validation still running
    assert data_ready(True, ["success", "failed"]) == "ready"
    assert data_ready(False, ["failed"]) == "missing"  # quarantined: it will not come


# --------------------------------------------------------------------------- unit: alerts

RECEIVED: list[dict] = []


def remember(alert: dict) -> None:
    """A ``monitor.alerts.callback`` target."""
    RECEIVED.append(alert)


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        _Hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.bodies.clear()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_alert_goes_to_log_file_webhook_and_callback(tmp_path, webhook, caplog) -> None:
    from pipelines.alerts import WEBHOOK_ENV, Alert, notify, read_alerts

    cfg = _params().with_overrides({"monitor.alerts.callback": f"{__name__}:remember"}).monitor.alerts
    alert = Alert(
        "retraining_triggered", "data drift: 3 of 17 features", {"day": "2013-07-07"}, "flights_monitoring", "r1"
    )
    RECEIVED.clear()
    with caplog.at_level("WARNING", logger="pipelines.alerts"):
        sent = notify(alert, cfg, tmp_path, env={WEBHOOK_ENV: webhook})
    assert sent == {"log": "sent", "file": "sent", "webhook": "sent", "callback": "sent"}
    assert "ALERT retraining_triggered" in caplog.text
    assert read_alerts(tmp_path)[-1]["summary"] == "data drift: 3 of 17 features"
    assert _Hook.bodies[-1]["event"] == "retraining_triggered"
    assert _Hook.bodies[-1]["text"].startswith("[retraining_triggered]")
    assert RECEIVED[-1]["details"] == {"day": "2013-07-07"}


def test_a_broken_channel_does_not_fail_the_run(tmp_path) -> None:
    from pipelines.alerts import WEBHOOK_ENV, Alert, notify, read_alerts

    cfg = _params().monitor.alerts
    sent = notify(Alert("run_failed", "boom"), cfg, tmp_path, env={WEBHOOK_ENV: "http://127.0.0.1:9/unreachable"})
    assert sent["file"] == "sent" and sent["webhook"].startswith("failed:")
    assert read_alerts(tmp_path)[0]["event"] == "run_failed"


def test_promotion_refused_alert() -> None:
    from pipelines.alerts import promotion_refused_alert

    promoted = {"model_name": "flight_delay", "model_version": "3", "aliases": ["challenger", "champion"]}
    refused = {**promoted, "aliases": ["challenger"], "decision": "refused: AUC 0.61 below the champion's 0.66"}
    assert promotion_refused_alert(promoted, dag_id="t", run_id="r") is None
    alert = promotion_refused_alert(refused, dag_id="t", run_id="r")
    assert alert.event == "promotion_refused" and "version 3" in alert.summary and "0.66" in alert.summary


def test_failure_callback_writes_an_alert_and_never_raises(tmp_path, monkeypatch) -> None:
    from pipelines.alerts import on_failure_callback, read_alerts

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))

    class _Ti:
        dag_id, run_id, task_id = "flights_training", "manual__x", "train"

    on_failure_callback({"ti": _Ti(), "exception": RuntimeError("out of memory")})
    on_failure_callback({})  # whatever Airflow passes, a callback must not raise
    first = read_alerts(tmp_path)[0]
    assert first["event"] == "run_failed" and "train" in first["summary"] and "out of memory" in first["summary"]


def test_training_run_records_why_monitoring_started_it(tmp_path, monkeypatch) -> None:
    """What the training DAG calls with its params: tags trigger.reason, trigger.report and the run's note."""
    import mlflow

    from pipelines.runner import RunContext, run_record_trigger

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    ctx = RunContext(dag_id="flights_training", run_id="retrain__2013-07-07__m1", run_day=dt.date(2013, 7, 7))
    assert run_record_trigger(ctx, {"data_date": "2013-07-07"}) == {"recorded": False}
    reason, report = "retraining: data drift beyond thresholds on 2013-07-07: ...", "runs:/abc/reports/data_drift.html"
    done = run_record_trigger(ctx, {"trigger_reason": reason, "trigger_report": report})
    uri = ctx.settings.tracking_uri
    tags = mlflow.MlflowClient(uri, uri).get_run(done["mlflow_run_id"]).data.tags
    assert tags["trigger.reason"] == reason and tags["trigger.report"] == report
    assert reason in tags["mlflow.note.content"] and report in tags["mlflow.note.content"]
    assert tags["pipeline.run_key"] == "flights_training/retrain__2013-07-07__m1", "the training run's own MLflow run"


def test_refused_promotion_alerts_through_the_run_step(tmp_path, monkeypatch) -> None:
    from pipelines.alerts import read_alerts
    from pipelines.runner import RunContext, run_alert_promotion

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    ctx = RunContext(dag_id="flights_training", run_id="r7", run_day=dt.date(2013, 6, 28))
    registered = {"model_name": "flight_delay", "model_version": "7", "aliases": ["challenger"], "decision": "refused"}
    assert run_alert_promotion(ctx, registered)["alerted"]
    assert not run_alert_promotion(ctx, {**registered, "aliases": ["challenger", "champion"]})["alerted"]
    [alert] = read_alerts(tmp_path)
    assert alert["event"] == "promotion_refused" and alert["run_id"] == "r7"


# --------------------------------------------------------------------------- end to end


def _publish(days: list[dt.date]) -> None:
    """Publish days to data/raw as collect + validate would (the gate itself is tested elsewhere)."""
    from pipelines.data.partitions import partition_path, write_partition
    from pipelines.settings import resolve
    from pipelines.steps.collect import fetch_day

    spec, raw = _params().dataset, resolve().raw_dir
    for d in days:
        write_partition(fetch_day(spec, d), partition_path(raw, d), spec.key_columns)


def _score(days: list[dt.date]) -> None:
    """Score each day with the champion, as the nightly batch_predict of the day before does."""
    from pipelines.runner import RunContext, run_batch_predict

    for d in days:
        run_batch_predict(RunContext(dag_id="flights_training", run_id=f"score_{d}", run_day=d - dt.timedelta(days=1)))


def _serve(days: list[dt.date], champion_version: str) -> None:
    """What the prediction service would have logged had it answered every scored flight of ``days``.

    The champion's probabilities are its batch scores of those flights (online scores equal them:
    tests/e2e/test_serving.py); a shadow scores the first half of each day a little lower.
    """
    from pipelines.data.partitions import read_days
    from pipelines.serving.served_log import Served, ServedLog
    from pipelines.serving.versions import ServedModel
    from pipelines.settings import resolve

    params, settings = _params(), resolve()
    spec = params.dataset

    def version(v: str) -> ServedModel:
        return ServedModel("flight_delay", v, "champion", None, None, 0.5, "params", spec.features, "", 0.0, len)

    log = ServedLog(settings.data_dir / "served", {c: spec.schema_[c] for c in spec.features.all})
    for d in days:
        raw, _ = read_days(settings.raw_dir, [d])
        scored, _ = read_days(settings.predictions_dir, [d])
        rows = raw.merge(scored[[*spec.key_columns, params.predict.probability_column]], on=list(spec.key_columns))
        p = rows[params.predict.probability_column].to_numpy(dtype="float64")
        features = rows[list(spec.features.all)].astype(object)
        records = features.where(features.notna(), None).to_dict("records")
        half = len(records) // 2
        at = dt.datetime(d.year, d.month, d.day, 9, tzinfo=dt.UTC)
        live = version(champion_version)
        log.append(Served(f"{d}-a", at, records[:half], p[:half], live), version("shadow"), p[:half] * 0.8)
        log.append(Served(f"{d}-b", at, records[half:], p[half:], live), None, None)
    log.flush()


def _training_runs() -> list[dict]:
    """The training runs monitoring created so far: id, conf, note, state."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        runs = s.query(DagRun).filter(DagRun.dag_id == "flights_training", DagRun.run_id.like("retrain__%"))
        return [{"run_id": r.run_id, "conf": dict(r.conf or {}), "note": r.note, "state": str(r.state)} for r in runs]


def _last_retraining() -> dict | None:
    from airflow.models.asset import AssetModel
    from airflow.models.asset_state_store import AssetStateStoreModel
    from airflow.utils.session import create_session

    from pipelines.assets import LAST_RETRAINING_KEY, RETRAINING_REQUESTED

    with create_session() as s:
        row = (
            s.query(AssetStateStoreModel)
            .join(AssetModel, AssetModel.id == AssetStateStoreModel.asset_id)
            .filter(AssetModel.name == RETRAINING_REQUESTED.name, AssetStateStoreModel.key == LAST_RETRAINING_KEY)
            .one_or_none()
        )
        return json.loads(row.value) if row is not None else None


def _forget_monitoring_state() -> None:
    """Leave the shared Airflow database as other tests expect it: no retraining runs, no cooldown."""
    from airflow.models.asset import AssetModel
    from airflow.models.asset_state_store import AssetStateStoreModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from pipelines.assets import RETRAINING_REQUESTED

    with create_session() as s:
        for run in s.query(DagRun).filter(DagRun.dag_id == "flights_training", DagRun.run_id.like("retrain__%")):
            s.delete(run)
        asset = s.query(AssetModel).filter(AssetModel.name == RETRAINING_REQUESTED.name).one_or_none()
        if asset is not None:
            s.query(AssetStateStoreModel).filter(AssetStateStoreModel.asset_id == asset.id).delete()


def _finish_training_runs() -> None:
    """The created training runs never start here (no scheduler): mark them done, as if they had run."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as s:
        for run in s.query(DagRun).filter(DagRun.dag_id == "flights_training", DagRun.run_id.like("retrain__%")):
            run.state = DagRunState.SUCCESS


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory, airflow_db):
    """A winter champion, its scored days, and the monitoring DAG run on each scenario, in order."""
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.runner import RunContext, run_all
    from pipelines.settings import resolve

    root = tmp_path_factory.mktemp("monitoring")
    env = {"MLOPS_HOME": str(root / "home"), "MLOPS_DATA_DIR": str(root / "data"), "MLOPS_VERSIONING": "off"}
    restore_env = set_env(env)
    _forget_monitoring_state()
    try:
        dag = DagBag(dag_folder=str(REPO / "dags")).dags["flights_monitoring"]

        def monitor(day: str):
            return dag.test(run_conf={"monitor_date": day})

        _publish([WINTER[-1]])
        out = {"no_champion": monitor(WINTER[-1].isoformat())}

        trained = run_all(
            RunContext(
                dag_id="flights_training",
                run_id="winter_champion",
                run_day=CHAMPION_DAY,
                overrides=CHAMPION_OVERRIDES,
                force_reason=FORCE_REASON,
            )
        )
        _publish(WINTER + SUMMER + DECEMBER)
        _score([d for d in WINTER + SUMMER + DECEMBER if d != WINTER[0]])  # run_all scored 1 March

        out["summer"] = monitor("2013-07-07")
        out["summer_runs"] = _training_runs()
        out["summer_state"] = _last_retraining()
        _serve(WINTER, trained["register"]["model_version"])  # the service answered that week's flights
        out["winter"] = monitor("2013-03-07")
        out["winter_runs"] = _training_runs()
        _finish_training_runs()
        out["cooldown"] = monitor("2013-07-09")
        out["cooldown_runs"] = _training_runs()
        _finish_training_runs()
        out["december"] = monitor("2013-12-14")
        out["december_runs"] = _training_runs()
        yield {"trained": trained, "settings": resolve(), **out}
    finally:
        _forget_monitoring_state()
        restore_env()


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def _xcom(run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = (
            s.query(XComModel)
            .filter(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
            .one()
        )
        value = row.value
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.e2e
def test_a_run_without_champion_fails_and_alerts(monitoring) -> None:
    from pipelines.alerts import read_alerts

    run = monitoring["no_champion"]
    assert run.state == "failed"
    assert _states(run)["resolve_champion"] == "failed"
    failed = [a for a in read_alerts(monitoring["settings"].home) if a["event"] == "run_failed"]
    assert failed and failed[0]["dag_id"] == "flights_monitoring" and failed[0]["run_id"] == run.run_id


@pytest.mark.e2e
def test_champion_carries_its_reference(monitoring) -> None:
    import mlflow

    from pipelines.monitoring.reference import (
        PROBABILITY,
        REFERENCE_URI_TAG,
        Champion,
        load_champion_reference,
        resolve_champion,
    )

    settings = monitoring["settings"]
    champion = resolve_champion(settings.tracking_uri, "flight_delay")
    assert champion.version == monitoring["trained"]["register"]["model_version"]
    assert champion.reference_uri.startswith(f"runs:/{champion.run_id}/")
    reference = load_champion_reference(champion, settings.tracking_uri, settings.home / "ref-check")
    spec = _params().dataset
    assert len(reference) == min(20_000, monitoring["trained"]["preprocess"]["rows"]["train"])
    assert set(spec.features.all) | {"label", PROBABILITY} <= set(reference.columns)
    assert pd.to_datetime(reference[spec.time_column]).max() < pd.Timestamp("2013-02-01"), (
        "January only: its training split"
    )
    # Its probabilities are the served model's: score a few rows through the registry.
    from pipelines.tracking import use_tracking

    with use_tracking(settings.tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/flight_delay/{champion.version}")
    served = model.predict(reference[list(spec.features.all)].head(200))[PROBABILITY].to_numpy()
    np.testing.assert_allclose(served, reference[PROBABILITY].head(200).to_numpy(), atol=1e-5)
    assert Champion.from_dict(champion.as_dict()) == champion
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    assert client.get_model_version("flight_delay", champion.version).tags[REFERENCE_URI_TAG] == champion.reference_uri


@pytest.mark.e2e
def test_summer_drift_creates_a_training_run_with_the_reason(monitoring) -> None:
    from pipelines.alerts import read_alerts

    run, settings = monitoring["summer"], monitoring["settings"]
    assert run.state == "success", _states(run)
    assert _states(run)["trigger_training"] == "success" and _states(run)["record_retraining"] == "success"
    decision = _xcom(run, "decide")
    assert decision["retrain"] and "data_drift" in decision["triggers"], decision["reason"]
    drift = _xcom(run, "check_data_drift")
    assert {"temp", "dewp"} <= set(drift["drifted"])

    [created] = monitoring["summer_runs"]
    conf = created["conf"]
    assert created["run_id"] == f"retrain__2013-07-07__{run.run_id}"
    assert created["state"] == "queued"
    assert conf["data_date"] == "2013-07-07"
    assert conf["trigger_reason"] == decision["reason"] and "data drift" in conf["trigger_reason"]
    assert conf["trigger_report"].startswith("runs:/") and conf["trigger_report"].endswith("data_drift.html")
    assert created["note"] == decision["note"] and len(decision["note"]) <= 1000
    assert "data drift:" in created["note"]
    assert created["note"].endswith(conf["trigger_report"])

    # Reports kept per run and in MLflow; the cooldown's record; the alert.
    reports = settings.run_dir("flights_monitoring", run.run_id) / "monitor"
    for name in ("data_drift", "prediction_drift", "performance"):
        assert (reports / f"{name}.html").is_file() and json.loads((reports / f"{name}.json").read_text())
    assert Path(decision["report_path"]) == reports / "data_drift.html"
    import mlflow

    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    monitoring_run_id = conf["trigger_report"].split("/")[1]
    logged = {Path(f.path).name for f in client.list_artifacts(monitoring_run_id, "reports")}
    assert {"data_drift.html", "data_drift.json", "performance.html", "decision.json"} <= logged
    assert client.get_run(monitoring_run_id).data.tags["decision.retrain"] == "true"
    assert monitoring["summer_state"]["day"] == "2013-07-07"
    assert monitoring["summer_state"]["training_run_id"] == created["run_id"]
    triggered = [a for a in read_alerts(settings.home) if a["event"] == "retraining_triggered"]
    assert triggered[0]["details"]["training_run_id"] == created["run_id"]


@pytest.mark.e2e
def test_days_like_the_training_data_do_not_retrain(monitoring) -> None:
    run = monitoring["winter"]
    assert run.state == "success", _states(run)
    decision = _xcom(run, "decide")
    assert not decision["retrain"] and decision["triggers"] == [], decision["reason"]
    assert _states(run)["trigger_training"] == "skipped"
    assert len(monitoring["winter_runs"]) == 1, "no training run beyond the summer one"
    performance = _xcom(run, "check_performance")
    assert performance["status"] == "ok" and performance["rows"] >= 6000, "the champion's own scores, labelled"


@pytest.mark.e2e
def test_served_traffic_is_watched_beside_the_batch_scores(monitoring) -> None:
    run = monitoring["winter"]
    served, performance = _xcom(run, "check_served"), _xcom(run, "check_performance")
    assert served["status"] == "ok" and served["days"] == [d.isoformat() for d in WINTER]
    assert served["drift"]["status"] == "ok" and not served["drift"]["detected"], served["drift"]["summary"]
    assert Path(served["drift"]["report_html"]).name == "served_data_drift.html"
    shadow = served["shadow"]
    assert shadow["status"] == "ok" and shadow["rows"] < served["rows"] and shadow["shadow_versions"] == ["shadow"]
    assert shadow["mean_shift"] < 0 and 0.5 < shadow["agreement"] <= 1
    # Online: the same flights and scores as the batch performance check, matched on their features.
    online = served["online"]
    assert online["status"] == "ok" and online["matched_on"] == "features"
    assert online["rows"] == pytest.approx(performance["rows"], rel=0.01)
    assert online["current"]["auc"] == pytest.approx(performance["current"]["auc"], abs=0.005)
    assert online["holdout"]["auc"] == pytest.approx(performance["holdout"]["auc"])
    # The champion is a week old; the fixture's training runs measured their steps in place (dag.test()
    # uses no step worker), so compute has earlier runs to compare the newest with.
    staleness = _xcom(run, "check_staleness")
    assert staleness["age_days"] == 7 and not staleness["detected"]
    assert _xcom(run, "check_compute")["status"] == "ok"
    # No traffic in July: said so, and nothing fails.
    assert _xcom(monitoring["summer"], "check_served")["status"] == "no_served_traffic"


@pytest.mark.e2e
def test_an_old_champion_alerts_as_stale(monitoring) -> None:
    from pipelines.alerts import read_alerts

    run = monitoring["december"]
    staleness = _xcom(run, "check_staleness")
    assert staleness["detected"] and staleness["age_days"] == (dt.date(2013, 12, 14) - CHAMPION_DAY).days
    stale = [a for a in read_alerts(monitoring["settings"].home) if a["event"] == "model_stale"]
    assert any(a["run_id"] == run.run_id for a in stale)


@pytest.mark.e2e
def test_second_drift_within_the_cooldown_does_not_retrain(monitoring) -> None:
    run = monitoring["cooldown"]
    assert run.state == "success", _states(run)
    decision = _xcom(run, "decide")
    assert "data_drift" in decision["triggers"], "the drift is still there"
    assert not decision["retrain"] and decision["blocked_by"] == "cooldown", decision["reason"]
    assert _states(run)["trigger_training"] == "skipped"
    assert [r["run_id"] for r in monitoring["cooldown_runs"]] == [r["run_id"] for r in monitoring["summer_runs"]]


@pytest.mark.e2e
def test_performance_decay_retrains_without_feature_drift(monitoring) -> None:
    run = monitoring["december"]
    assert run.state == "success", _states(run)
    drift, performance = _xcom(run, "check_data_drift"), _xcom(run, "check_performance")
    decision = _xcom(run, "decide")
    assert not drift["detected"] and drift["share"] < _params().monitor.drift.drift_share, drift["drifted"]
    assert performance["detected"], performance
    assert performance["days"] == [d.isoformat() for d in DECEMBER]
    assert decision["retrain"] and decision["triggers"] == ["performance"], decision["reason"]
    created = [r for r in monitoring["december_runs"] if r["run_id"].startswith("retrain__2013-12-14")]
    assert len(created) == 1
    assert "performance" in created[0]["conf"]["trigger_reason"]
    assert created[0]["conf"]["trigger_report"].endswith("performance.html")
