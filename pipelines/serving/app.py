"""The HTTP service: ``POST /predict``, ``GET /health``, ``/ready``, ``/model`` and ``/metrics``.

:func:`create_app` wires the pieces: the request schema from the feature spec
(:mod:`pipelines.serving.schema`), the versions that follow the registry
(:mod:`pipelines.serving.watcher`) and the served log with shadow scoring
(:mod:`pipelines.serving.served_log`). A request reads the live version
once, so a swap never splits a request between two versions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipelines.config import Params
from pipelines.serving.metrics import ServiceMetrics
from pipelines.serving.schema import PredictResponse, RequestError, RowParser, Rows
from pipelines.serving.served_log import Recorder, Served, ServedLog, served_dir
from pipelines.serving.versions import ServedModel
from pipelines.serving.watcher import ModelWatcher
from pipelines.settings import Settings

log = logging.getLogger(__name__)

ALERT_EVENT = "serving_model_rejected"


def _alert(summary: str, details: dict[str, Any]) -> None:
    from pipelines.alerts import send

    send(ALERT_EVENT, summary, details)


class Batcher:
    """Scores the rows of requests that arrive together in one call of the model.

    Scoring blocks the event loop; requests that came in meanwhile are parsed in the next
    turn of the loop and wait here together, so the next call scores all of them: one graph
    call costs about the same for 1 row as for 100, so throughput grows with load while a
    request that arrives alone is scored alone, at once. Each request is scored by the
    version it read when it started (a swap in between makes two groups).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[ServedModel, Rows, asyncio.Future[np.ndarray]]] = []
        self._scheduled = False

    async def score(self, model: ServedModel, rows: Rows) -> np.ndarray:
        """Probabilities of ``rows`` by ``model``, scored with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((model, rows, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._run)
        return await future

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        groups: dict[int, list[tuple[ServedModel, Rows, asyncio.Future[np.ndarray]]]] = {}
        for item in pending:
            groups.setdefault(id(item[0]), []).append(item)
        for group in groups.values():
            try:
                scores = group[0][0].score_rows(Rows.concat([rows for _, rows, _ in group]))
            except Exception as err:
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for _, rows, future in group:
                if not future.done():  # a client that went away cancels its request
                    future.set_result(scores[start : start + len(rows)])
                start += len(rows)


def create_app(params: Params, settings: Settings) -> FastAPI:
    """The service for these params and this environment (registry, data folder).

    The watcher and the served log start with the app (uvicorn's lifespan) and stop with it;
    the served log is flushed on shutdown.
    """
    import mlflow

    cfg = params.serve
    metrics = ServiceMetrics()
    parser = RowParser(params.dataset, cfg.max_batch_rows)
    client = mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)
    watcher = ModelWatcher(
        client,
        params.registration.model_name,
        cfg.alias,
        cfg.shadow_alias,
        cfg.watch_interval_seconds,
        params.dataset.features,
        params.evaluate.threshold,
        metrics,
        _alert,
    )
    recorder = Recorder(
        ServedLog(served_dir(settings.data_dir), {c: params.dataset.schema_[c] for c in params.dataset.features.all}),
        lambda: watcher.shadow_model,
        metrics,
        cfg.log_batch_rows,
        cfg.log_flush_seconds,
        cfg.queue_requests,
    )

    batcher = Batcher()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # pyfunc.load_model resolves models:/ URIs through MLflow's global URIs: this process serves one registry.
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.tracking_uri)
        recorder.start()
        watcher.start()
        log.info("serving %s@%s (shadow: %s)", params.registration.model_name, cfg.alias, cfg.shadow_alias or "none")
        try:
            yield
        finally:
            watcher.stop()
            recorder.stop()

    app = FastAPI(
        title="Flight delay predictions",
        description="Scores flights with the registered model version under the followed alias.",
        lifespan=lifespan,
    )
    app.state.watcher, app.state.metrics, app.state.recorder = watcher, metrics, recorder

    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: Request) -> Response:
        """Score one row (a JSON object) or a list of rows of raw feature columns."""
        started = time.perf_counter()
        model = watcher.model  # read once: a swap during this request does not touch it
        version = model.version if model else "none"
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        headers = {"X-Request-ID": request_id}
        outcome = "ok"
        try:
            try:
                rows, _ = parser.parse_rows(await request.body())
            except RequestError as err:
                outcome = "bad_request"
                return JSONResponse({"request_id": request_id, "detail": err.problems}, err.status, headers)
            if model is None:
                outcome = "unavailable"
                return JSONResponse(
                    {"request_id": request_id, "detail": [{"field": None, "message": "no model loaded yet"}]},
                    503,
                    headers,
                )
            try:
                proba = await batcher.score(model, rows)
            except Exception as err:
                outcome = "error"
                log.exception("request %s failed on v%s", request_id, version)
                return JSONResponse(
                    {
                        "request_id": request_id,
                        "detail": [{"field": None, "message": f"scoring failed: {type(err).__name__}"}],
                    },
                    500,
                    headers,
                )
            bad = int(np.count_nonzero(~np.isfinite(proba)))
            if bad:  # a NaN compares False with the threshold: it would answer a confident "no"
                outcome = "non_finite"
                log.error("request %s: v%s returned %d non-finite score(s) of %d", request_id, version, bad, len(rows))
                message = f"{model.name} v{version} returned {bad} non-finite score(s) of {len(rows)}: not answered"
                return JSONResponse(
                    {"request_id": request_id, "detail": [{"field": None, "message": message}]}, 500, headers
                )
            metrics.rows.labels(version).inc(len(rows))
            recorder.submit(Served(request_id, dt.datetime.now(dt.UTC), rows, proba, model))
            values = proba.tolist()
            body = {
                "request_id": request_id,
                "model_name": model.name,
                "model_version": version,
                "threshold": model.threshold,
                "predictions": [{"probability": p, "delayed": p >= model.threshold} for p in values],
            }
            # msgspec: a 1,000-row answer in 0.05 ms instead of the standard encoder's 1 ms.
            return Response(msgspec.json.encode(body), headers=headers, media_type="application/json")
        finally:
            metrics.requests.labels(outcome, version).inc()
            metrics.latency.labels(outcome, version).observe(time.perf_counter() - started)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        """200 once a model version is loaded, 503 before."""
        model = watcher.model
        if model is None:
            return JSONResponse({"ready": False, "reason": "no model loaded yet", **watcher.status()}, 503)
        return JSONResponse({"ready": True, "model_version": model.version})

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        """The live version (name, version, alias, MLflow run, dataset revision, loaded at), the shadow, staleness."""
        live, shadow = watcher.model, watcher.shadow_model
        return {
            **(
                live.describe()
                if live
                else {"name": params.registration.model_name, "version": None, "alias": cfg.alias}
            ),
            "shadow": shadow.describe() if shadow else None,
            "shadow_alias": cfg.shadow_alias,
            "registry": watcher.status(),
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
