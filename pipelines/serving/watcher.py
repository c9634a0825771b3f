"""Following the registry: the versions under ``serve.alias`` (and ``serve.shadow_alias``), swapped as they move.

A background thread reads the aliases every ``serve.watch_interval_seconds``.
When one points to a new version (a promotion, or ``python -m pipelines
rollback``), the new version is loaded and checked beside the one serving
(:func:`pipelines.serving.versions.load_version`) and then swapped in by one
reference assignment: a request holds the :class:`ServedModel` it started
with, so requests in flight finish on the old version and later ones get the
new. A version that fails is never swapped in: the old one keeps serving, and
the failure is counted, logged and alerted (once per version). A registry that
cannot be reached changes nothing but the staleness the service reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pipelines.config import FeatureSpec
from pipelines.serving.metrics import ServiceMetrics
from pipelines.serving.versions import ServedModel, VersionRejected, load_version, prepare_runtime

log = logging.getLogger(__name__)

Alerter = Callable[[str, dict[str, Any]], None]

# A refused version is tried again after this many watch intervals (a registry or artifact store that
# failed mid-load may be back), counted again, but alerted only once.
RETRY_INTERVALS = 10


class Slot:
    """One alias followed: the version serving under it, and the version last refused."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.model: ServedModel | None = None
        self.rejected: str | None = None  # the version last refused, retried only after RETRY_INTERVALS checks
        self.rejection: str | None = None
        self.rejected_at = 0.0


class ModelWatcher:
    """Keeps the live (and shadow) version in step with the registry's aliases."""

    def __init__(
        self,
        client: Any,
        name: str,
        alias: str,
        shadow_alias: str | None,
        interval: float,
        features: FeatureSpec,
        default_threshold: float,
        metrics: ServiceMetrics,
        alert: Alerter,
    ) -> None:
        """
        Args:
            client: an ``mlflow.MlflowClient`` of the registry.
            name: the registered model.
            alias, shadow_alias: the aliases that answer and that shadow (None: no shadow).
            interval: seconds between two reads of the aliases.
            features: the features requests carry.
            default_threshold: ``evaluate.threshold``, for versions without a recorded one.
            alert: called with a summary and details when a version is refused.
        """
        self.client, self.name, self.interval = client, name, interval
        self.features, self.default_threshold = features, default_threshold
        self.metrics, self.alert = metrics, alert
        self.live = Slot(alias)
        self.shadow = Slot(shadow_alias) if shadow_alias else None
        self.last_checked: float | None = None  # time.monotonic() of the last successful read
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.watch_age(lambda: self.last_checked)

    # ------------------------------------------------------------------ what requests read

    @property
    def model(self) -> ServedModel | None:
        """The version answering now (one attribute read: the swap is atomic)."""
        return self.live.model

    @property
    def shadow_model(self) -> ServedModel | None:
        return self.shadow.model if self.shadow else None

    def status(self) -> dict[str, Any]:
        """The registry side of ``GET /model``: staleness and refused versions."""
        age = None if self.last_checked is None else round(time.monotonic() - self.last_checked, 3)
        return {
            "registry_reachable": self.last_error is None and self.last_checked is not None,
            "alias_checked_seconds_ago": age,
            "watch_interval_seconds": self.interval,
            "last_error": self.last_error,
            "rejected": {
                s.alias: {"version": s.rejected, "reason": s.rejection}
                for s in (self.live, self.shadow)
                if s is not None and s.rejected
            },
        }

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        prepare_runtime()
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self.interval)

    def check_once(self) -> None:
        """Read the aliases once; load, check and swap in any version that moved under one."""
        try:
            targets = [(slot, self._alias_version(slot.alias)) for slot in (self.live, self.shadow) if slot]
        except Exception as err:
            self.metrics.alias_check_failures.inc()
            if self.last_error is None:
                log.warning("registry unreachable, serving what is loaded: %s: %s", type(err).__name__, err)
            self.last_error = f"{type(err).__name__}: {err}"
            return
        if self.last_error is not None:
            log.info("registry reachable again")
        self.last_error = None
        self.last_checked = time.monotonic()
        for slot, version in targets:
            if version is not None:
                self._follow(slot, version)

    def _alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(err).lower():
                return None  # the alias is not set (yet): nothing to follow
            raise

    def _follow(self, slot: Slot, version: str) -> None:
        current = slot.model.version if slot.model else None
        if version == current:
            return
        retry = time.monotonic() - slot.rejected_at >= RETRY_INTERVALS * self.interval
        if version == slot.rejected and not retry:
            return
        first_failure = version != slot.rejected
        log.info("%s moved to %s v%s (serving %s): loading it", slot.alias, self.name, version, current or "nothing")
        try:
            loaded = load_version(self.client, self.name, version, slot.alias, self.features, self.default_threshold)
        except VersionRejected as err:
            slot.rejected, slot.rejection, slot.rejected_at = version, str(err), time.monotonic()
            self.metrics.failed_loads.labels(slot.alias, version).inc()
            log.error("not swapping in %s v%s (%s): %s", self.name, version, slot.alias, err)
            if not first_failure:
                return
            self.alert(
                f"{self.name} v{version} ({slot.alias}) was not loaded for serving; "
                f"{'v' + current if current else 'nothing'} keeps serving: {err}",
                {
                    "model_name": self.name,
                    "model_version": version,
                    "alias": slot.alias,
                    "serving": current,
                    "error": str(err),
                },
            )
            return
        slot.model = loaded  # the swap: one reference, read once per request
        slot.rejected = slot.rejection = None
        self.metrics.swaps.labels(slot.alias).inc()
        self.metrics.set_live(slot.alias, current, version)
        log.info("%s now serves %s v%s (was %s)", slot.alias, self.name, version, current or "nothing")
