"""Served logs for the shadow-period tests, written by the real served log (``pipelines.serving.served_log``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipelines.config import FeatureSpec
from pipelines.serving.served_log import Served, ServedLog
from pipelines.serving.versions import ServedModel

FEATURES = FeatureSpec(numeric=("distance",), categorical=("origin",))
SCHEMA = {"distance": "float", "origin": "string"}


def served_version(version: str, threshold: float = 0.5) -> ServedModel:
    """A version record; the served log reads its version and threshold, never its scoring function."""
    return ServedModel(
        name="flight_delay",
        version=version,
        alias="champion",
        run_id=None,
        dataset_revision=None,
        threshold=threshold,
        threshold_source="params",
        features=FEATURES,
        loaded_at="2026-01-01T00:00:00+00:00",
        load_seconds=0.0,
        _score=lambda inputs: np.zeros(1),
    )


def write_served(
    root: Path,
    requests: Iterable[tuple[str, dt.datetime, str, str | None, Sequence[tuple[float, float]]]],
) -> None:
    """Append requests to the served log under ``root`` (``<data>/served``) and flush it.

    Each request: its id, when it was served, the live version, the shadow version (or None), and
    one (live probability, shadow probability) pair per row.
    """
    log = ServedLog(root, SCHEMA)
    for request, when, live, shadow, pairs in requests:
        rows = [{"distance": 100.0 + i, "origin": "JFK"} for i in range(len(pairs))]
        live_p = np.array([p[0] for p in pairs], dtype=np.float32)
        shadow_p = np.array([p[1] for p in pairs], dtype=np.float32) if shadow else None
        log.append(
            Served(request, when, rows, live_p, served_version(live)),
            served_version(shadow) if shadow else None,
            shadow_p,
        )
    log.flush()
