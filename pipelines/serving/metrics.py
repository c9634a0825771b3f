"""The service's Prometheus metrics, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Single rows take about a millisecond, a 1,000-row batch ten or so: fine buckets below 25 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Requests and latency by outcome and model version, swaps, failed loads, registry staleness."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "serve_requests",
            "Prediction requests, by outcome (ok, bad_request, unavailable, error, non_finite) and model version",
            ["outcome", "model_version"],
            registry=r,
        )
        self.rows = Counter("serve_rows", "Rows scored by the live model", ["model_version"], registry=r)
        self.latency = Histogram(
            "serve_request_seconds",
            "Time to answer POST /predict, by outcome and model version",
            ["outcome", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.swaps = Counter("serve_model_swaps", "Versions swapped in, by alias", ["alias"], registry=r)
        self.failed_loads = Counter(
            "serve_model_load_failures",
            "Versions that failed to load or to pass their checks (not swapped in)",
            ["alias", "model_version"],
            registry=r,
        )
        self.alias_check_failures = Counter(
            "serve_alias_check_failures",
            "Registry reads of the aliases that failed (the service kept serving)",
            registry=r,
        )
        self.alias_check_age = Gauge(
            "serve_alias_check_age_seconds", "Seconds since the aliases were last read from the registry", registry=r
        )
        self.live_version = Gauge(
            "serve_model_live",
            "1 for the version that answers under each alias",
            ["alias", "model_version"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "serve_shadow_rows", "Rows scored by the shadow version", ["model_version"], registry=r
        )
        self.dropped = Counter(
            "serve_log_dropped_requests",
            "Requests not logged (or shadow-scored) because the queue was full",
            registry=r,
        )
        self.logged_rows = Counter("serve_log_rows", "Rows written to the served log", registry=r)

    def watch_age(self, last_checked: Callable[[], float | None]) -> None:
        """Report the age of the last successful alias check, read when scraped."""

        def age() -> float:
            at = last_checked()
            return float("inf") if at is None else time.monotonic() - at

        self.alias_check_age.set_function(age)

    def set_live(self, alias: str, old: str | None, new: str) -> None:
        if old is not None:
            self.live_version.remove(alias, old)
        self.live_version.labels(alias, new).set(1)
