"""The prediction service as a real uvicorn process on loopback, following a real MLflow registry.

Two models are trained once with the project's own steps (a short window, one epoch) and
registered in a local SQLite registry; a third version is registered with broken artifacts.
The service (``python -m pipelines.serving``) starts on ``champion`` = v1 with ``challenger`` = v2
as its shadow, and the tests drive it over HTTP: good and bad requests, parity with the batch
pyfunc, a promotion and a ``python -m pipelines rollback`` under a bounded load, a broken version
that must not be swapped in, and the served log with the shadow's scores.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import set_env

from pipelines.tracking import use_tracking

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAY = dt.date(2013, 6, 28)
NAME = "flight_delay"
BASE = {
    "preprocess.training_window_days": 30,
    "preprocess.split.validation_days": 7,
    "preprocess.split.holdout_days": 7,
    "train.epochs": 1,
    "evaluate.baseline.max_iter": 1,
}
SERVE = {
    "watch_interval_seconds": 0.5,
    "shadow_alias": "challenger",
    "max_batch_rows": 200,
    "log_batch_rows": 100,
    "log_flush_seconds": 1,
}
CLIENTS = 3  # requests in flight at once during the swaps
MAX_SWAP_REQUESTS = 3000  # a bound on the load, whatever happens


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """v1 and v2 trained and force-promoted in turn (v2's previous champion is v1), v3 broken."""
    import mlflow

    from pipelines.config import load_params
    from pipelines.runner import RunContext, run_all, run_evaluate, run_register, run_train
    from pipelines.settings import resolve
    from pipelines.steps.preprocess import load_manifest

    root = tmp_path_factory.mktemp("serving")
    params_file = root / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["serve"] = {**raw.get("serve", {}), **SERVE}
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    env = {
        "MLOPS_HOME": str(root / "home"),
        "MLOPS_DATA_DIR": str(root / "data"),
        "MLOPS_VERSIONING": "off",
        "MLOPS_PARAMS": str(params_file),
    }
    restore_env = set_env(env)
    try:
        reason = "serving tests: a known model on purpose"
        first = run_all(RunContext(dag_id="serve", run_id="r1", run_day=DAY, overrides=BASE, force_reason=reason))
        processed = first["preprocess"]
        ctx = RunContext(
            dag_id="serve", run_id="r2", run_day=DAY, overrides={**BASE, "train.seed": 7}, force_reason=reason
        )
        trained = run_train(ctx, processed)
        second = run_register(ctx, processed, trained, run_evaluate(ctx, processed, trained))
        assert (first["register"]["model_version"], second["model_version"]) == ("1", "2")

        uri = resolve().tracking_uri
        client = mlflow.MlflowClient(uri, uri)
        # v3: v1's model with its Keras file overwritten, as a corrupted upload would leave it.
        broken = root / "broken_model"
        with use_tracking(uri):
            shutil.copytree(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1"), broken)
        for keras_file in broken.rglob("*.keras"):
            keras_file.write_bytes(b"not a keras archive")
        v3 = client.create_model_version(NAME, str(broken), run_id=first["register"]["mlflow_run_id"])
        assert str(v3.version) == "3"
        # The service starts on v1 with v2 in the shadow; v2 is promoted during the tests.
        client.set_registered_model_alias(NAME, "champion", "1")
        client.set_registered_model_alias(NAME, "challenger", "2")

        features = list(load_params(params_file).dataset.features.all)
        holdout = pd.read_parquet(load_manifest(Path(processed["processed_dir"]))["splits"]["holdout"]["parquet"])
        rows = holdout[features].head(400).reset_index(drop=True)
        yield {"root": root, "env": env, "uri": uri, "client": client, "rows": rows, "runs": (first, second)}
    finally:
        restore_env()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@pytest.fixture(scope="module")
def server(registry) -> Iterator[Server]:
    port = _free_port()
    log_path = registry["root"] / "server.log"
    env = os.environ | registry["env"] | {"MLOPS_SERVE_PORT": str(port), "MLFLOW_TRACKING_URI": registry["uri"]}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.serving"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    srv = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the service exited ({process.returncode}):\n{srv.log()}"
            try:
                if httpx.get(f"{srv.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"the service was not ready within 180 s:\n{srv.log()}")
        yield srv
    finally:
        srv.stop()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))  # NaN -> null: a missing reading


def _model(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.url}/model", timeout=5).json()


def _wait_for(server: Server, predicate, what: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _model(server)
        if predicate(info):
            return info
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; /model says {info}\n{server.log()}")


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _batch_scores(uri: str, version: str, frame: pd.DataFrame) -> np.ndarray:
    import mlflow

    from pipelines.model.pyfunc import PROBABILITY

    with use_tracking(uri):
        return mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(frame)[PROBABILITY].to_numpy()


# --------------------------------------------------------------------------- requests


def test_ready_and_the_model_it_serves(server: Server, registry) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/ready").json()["model_version"] == "1"
    info = _wait_for(server, lambda m: (m["shadow"] or {}).get("version") == "2", "the shadow v2")
    first = registry["runs"][0]["register"]
    assert (info["name"], info["version"], info["alias"]) == (NAME, "1", "champion")
    assert info["mlflow_run_id"] == first["mlflow_run_id"]
    assert info["dataset_revision"].startswith("not versioned")
    assert info["threshold"] == 0.5 and info["threshold_source"] == "evaluation"
    assert dt.datetime.fromisoformat(info["loaded_at"]).tzinfo is not None
    assert info["registry"]["registry_reachable"] and info["registry"]["alias_checked_seconds_ago"] < 30


def test_one_row_and_a_batch(server: Server, registry) -> None:
    rows = _records(registry["rows"].head(150))
    one = httpx.post(f"{server.url}/predict", json=rows[0], headers={"X-Request-ID": "req-one"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["request_id"] == "req-one" == one.headers["x-request-id"]
    assert body["model_version"] == "1" and len(body["predictions"]) == 1
    batch = httpx.post(f"{server.url}/predict", json=rows).json()
    assert len(batch["predictions"]) == 150 and batch["request_id"] != "req-one"
    for p in batch["predictions"]:
        assert 0 < p["probability"] < 1 and p["delayed"] == (p["probability"] >= batch["threshold"])
    assert batch["predictions"][0]["probability"] == pytest.approx(body["predictions"][0]["probability"], abs=1e-6)


def test_online_scores_equal_the_batch_pyfunc(server: Server, registry) -> None:
    frame = registry["rows"]
    online = []
    for lo in range(0, len(frame), 200):
        response = httpx.post(f"{server.url}/predict", json=_records(frame.iloc[lo : lo + 200]))
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        online += [p["probability"] for p in response.json()["predictions"]]
    batch = _batch_scores(registry["uri"], "1", frame)
    assert frame.isna().any().any(), "the rows include missing readings (sent as null)"
    np.testing.assert_allclose(np.asarray(online), batch, rtol=0, atol=1e-5)


def _bad_bodies(row: dict[str, Any]) -> list[tuple[str, bytes, int, str]]:
    missing = {k: v for k, v in row.items() if k != "distance"}
    nan = json.dumps(row | {"temp": "__X__"}).replace('"__X__"', "NaN")
    inf = json.dumps(row | {"humid": "__X__"}).replace('"__X__"', "Infinity")
    return [
        ("malformed JSON", b'{"month": 6,', 400, "not valid JSON"),
        ("missing field", json.dumps(missing).encode(), 422, "'distance': Field required"),
        ("extra field", json.dumps(row | {"tailnum": "N1"}).encode(), 422, "'tailnum': unknown field"),
        ("wrong type", json.dumps(row | {"hour": "seven"}).encode(), 422, "'hour'"),
        ("NaN", nan.encode(), 422, "'temp': must be a finite number"),
        ("infinity", inf.encode(), 422, "'humid': must be a finite number"),
        ("empty batch", b"[]", 422, "empty"),
        ("over the limit", json.dumps([row] * 201).encode(), 413, "at most 200"),
        ("bad row in a batch", json.dumps([row, row | {"origin": 3}]).encode(), 422, "row 1: 'origin'"),
    ]


def test_each_bad_request_gets_a_4xx_naming_it_and_the_service_keeps_serving(server: Server, registry) -> None:
    row = _records(registry["rows"].head(1))[0]
    before = _metric(server, "serve_requests_total", outcome="bad_request")
    cases = _bad_bodies(row)
    for what, body, status, words in cases:
        response = httpx.post(f"{server.url}/predict", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, (what, response.text)
        assert words in json.dumps(response.json()["detail"]), (what, response.text)
        good = httpx.post(f"{server.url}/predict", json=row)
        assert good.status_code == 200 and good.json()["model_version"] == "1", what
    assert _metric(server, "serve_requests_total", outcome="bad_request") - before == len(cases)
    assert server.process.poll() is None


# --------------------------------------------------------------------------- following the alias


def _load(
    server: Server, rows: list[dict[str, Any]], stop: threading.Event, out: list[tuple[float, float, int, str]]
) -> None:
    """Send single rows one after another until told to stop: (sent, received, status, version) each."""
    with httpx.Client(timeout=30) as http:
        i = 0
        while not stop.is_set() and len(out) < MAX_SWAP_REQUESTS:
            sent = time.monotonic()
            r = http.post(f"{server.url}/predict", json=rows[i % len(rows)])
            out.append((sent, time.monotonic(), r.status_code, r.json().get("model_version", "?")))
            i += 1


def test_a_promotion_and_a_rollback_under_load_drop_nothing(server: Server, registry) -> None:
    client, rows = registry["client"], _records(registry["rows"].head(50))
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(server, rows, stop, results)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        promoted_at = time.monotonic()
        client.set_registered_model_alias(NAME, "champion", "2")
        _wait_for(server, lambda m: m["version"] == "2", "the promotion of v2")
        seen_v2 = time.monotonic()
        time.sleep(1)
        rollback_at = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pipelines", "rollback", "--reason", "serving test: back to v1"],
            cwd=REPO,
            env=os.environ | registry["env"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        _wait_for(server, lambda m: m["version"] == "1", "the rollback to v1")
        seen_v1 = time.monotonic()
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert results
    assert [r for r in results if r[2] != 200] == [], "a request failed during a swap"
    assert {r[3] for r in results} == {"1", "2"}
    # Each answer names a version that was live: v1 before the promotion, v2 once it was seen
    # until the rollback started, v1 once the rollback was seen.
    assert all(v == "1" for sent, got, _, v in results if got < promoted_at)
    assert all(v == "2" for sent, got, _, v in results if seen_v2 < sent and got < rollback_at)
    assert all(v == "1" for sent, got, _, v in results if sent > seen_v1)
    assert _metric(server, "serve_model_swaps_total", alias="champion") == 3  # start, promotion, rollback


def test_a_broken_version_is_not_swapped_in_and_is_counted(server: Server, registry) -> None:
    client, row = registry["client"], _records(registry["rows"].head(1))[0]
    client.set_registered_model_alias(NAME, "champion", "3")
    try:
        info = _wait_for(server, lambda m: "champion" in m["registry"]["rejected"], "v3 to be refused")
        assert info["version"] == "1" and info["registry"]["rejected"]["champion"]["version"] == "3"
        assert _metric(server, "serve_model_load_failures_total", alias="champion", model_version="3") >= 1
        response = httpx.post(f"{server.url}/predict", json=row)
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        alerts = [
            json.loads(line)
            for line in (registry["root"] / "home" / "alerts" / "alerts.jsonl").read_text().splitlines()
        ]
        refused = [a for a in alerts if a["event"] == "serving_model_rejected"]
        assert refused and refused[-1]["details"]["model_version"] == "3" and refused[-1]["details"]["serving"] == "1"
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")
    assert "not swapping in flight_delay v3" in server.log()


# --------------------------------------------------------------------------- what was served


def test_served_rows_and_shadow_scores_are_logged_by_day(server: Server, registry) -> None:
    frame = registry["rows"].head(120)
    tag = "served-log-check"
    response = httpx.post(f"{server.url}/predict", json=_records(frame), headers={"X-Request-ID": tag})
    assert response.status_code == 200
    # uvicorn ends by re-raising the SIGTERM it handled: -15 is its clean exit, after the flush on shutdown.
    assert server.stop() in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()
    day = dt.datetime.now(dt.UTC).date()  # the service dates rows by when it served them
    folder = registry["root"] / "data" / "served"
    days = sorted(p.name for p in folder.iterdir())
    assert f"date={day:%Y-%m-%d}" in days or f"date={day - dt.timedelta(days=1):%Y-%m-%d}" in days
    served = pd.concat([pd.read_parquet(folder / d) for d in days], ignore_index=True)
    mine = served[served["request_id"] == tag].sort_values("row")
    assert len(mine) == 120 and list(mine["row"]) == list(range(120))
    assert mine["model_version"].eq("1").all() and mine["shadow_version"].eq("2").all()
    np.testing.assert_allclose(
        mine["probability"], [p["probability"] for p in response.json()["predictions"]], atol=1e-7
    )
    np.testing.assert_allclose(mine["shadow_probability"], _batch_scores(registry["uri"], "2", frame), atol=1e-5)
    pd.testing.assert_frame_equal(
        mine[list(frame.columns)].reset_index(drop=True), frame.reset_index(drop=True), check_dtype=False
    )
    # Every answered request is in the log: all the requests of this module, good ones only.
    assert served["request_id"].nunique() >= 100
    assert not math.isnan(served["probability"].mean())


# --------------------------------------------------------------------------- before any model


def test_without_a_champion_the_service_is_alive_but_not_ready(tmp_path: Path) -> None:
    """A fresh machine (``make serve`` before ``make pipeline``): it answers, says why it is not ready, and waits."""
    port = _free_port()
    env = os.environ | {
        "MLOPS_HOME": str(tmp_path / "home"),
        "MLOPS_DATA_DIR": str(tmp_path / "data"),
        "MLOPS_SERVE_PORT": str(port),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLOPS_PARAMS", None)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.serving"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    srv = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, srv.log()
            try:
                if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        ready = httpx.get(f"{srv.url}/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == "no model loaded yet"
        row = {
            "month": 6,
            "day": 22,
            "day_of_week": 5,
            "hour": 19,
            "minute": 30,
            "sched_arr_time": 2154,
            "distance": 1182.0,
            "temp": 69.98,
            "dewp": 60.08,
            "humid": 70.81,
            "wind_dir": 150.0,
            "wind_speed": 8.06,
            "wind_gust": None,
            "precip": 0.0,
            "pressure": 1021.5,
            "visib": 10.0,
            "carrier": "9E",
            "origin": "JFK",
            "dest": "MSY",
        }
        answer = httpx.post(f"{srv.url}/predict", json=row)
        assert answer.status_code == 503 and "no model loaded" in answer.text
        info = _model(srv)
        assert info["version"] is None and info["alias"] == "champion"
    finally:
        assert srv.stop() in (0, -signal.SIGTERM), srv.log()
