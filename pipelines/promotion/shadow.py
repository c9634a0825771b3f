"""The shadow period: a challenger that passed the gate waits under ``challenger`` until serving has seen it.

With ``register.min_shadow_requests`` > 0 the register step gives a passing challenger
the alias ``challenger`` instead of ``champion`` (:class:`pipelines.promotion.Decision`'s
``pending``). Serving, with ``serve.shadow_alias: challenger``, scores every request
with it too and writes both scores to the served log (``data/served/date=*/``).
:func:`promote_challenger` reads that log: once it holds ``min_shadow_requests``
requests shadow-scored by the challenger beside the current champion, with decisions
agreeing on at least ``canary.min_agreement`` of their rows (when set), the challenger
becomes champion; with enough requests and less agreement it is refused; with fewer
it keeps waiting. Every outcome is logged, and a promotion or refusal is recorded like
any other move (:func:`pipelines.promotion.record_move`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.config import RegisterConfig
from pipelines.promotion import CHALLENGER, CHAMPION, alias_version, record_move

log = logging.getLogger(__name__)

# The version's tag saying where it stands: "shadow" (waiting), "promoted", "refused".
PENDING_TAG = "promotion.pending"
SHADOW_SINCE_TAG = "promotion.shadow_since"
_COLUMNS = ["request_id", "served_at", "probability", "threshold", "model_version", "shadow_probability"]


@dataclass(frozen=True)
class ShadowEvidence:
    """What the served log says about a shadow version beside one live version."""

    version: str
    champion: str
    requests: int = 0
    rows: int = 0
    agreement: float = float("nan")  # share of rows whose decisions agree at the live version's threshold
    mean_abs_diff: float = float("nan")
    first: str | None = None  # first and last request served (UTC, ISO)
    last: str | None = None

    def line(self) -> str:
        if not self.rows:
            return f"no request shadow-scored by v{self.version} beside champion v{self.champion} yet"
        return (
            f"{self.requests} requests ({self.rows} rows, {self.first} to {self.last}) shadow-scored by "
            f"v{self.version} beside champion v{self.champion}: decisions agree on {self.agreement:.2%}, "
            f"mean absolute score difference {self.mean_abs_diff:.4f}"
        )


def shadow_evidence(served_root: Path, version: str, champion: str, since: dt.date | None = None) -> ShadowEvidence:
    """Read the served log for rows the live ``champion`` answered and ``version`` shadow-scored.

    Args:
        served_root: the served log's folder (``<data>/served``).
        version: the shadow version.
        champion: the live version its scores are compared with.
        since: the first day to read (the day the version started waiting); None: every day.
    """
    import numpy as np
    import pandas as pd

    frames = []
    for folder in sorted(served_root.glob("date=*")):
        if not folder.is_dir() or (since is not None and folder.name.removeprefix("date=") < since.isoformat()):
            continue
        part = pd.read_parquet(folder, columns=[*_COLUMNS, "shadow_version"])
        part = part[
            (part["shadow_version"] == version)
            & (part["model_version"] == champion)
            & part["shadow_probability"].notna()
        ]
        if len(part):
            frames.append(part[_COLUMNS])
    if not frames:
        return ShadowEvidence(version=version, champion=champion)
    rows = pd.concat(frames, ignore_index=True)
    live = rows["probability"].to_numpy(np.float64)
    shadow = rows["shadow_probability"].to_numpy(np.float64)
    threshold = rows["threshold"].to_numpy(np.float64)
    served = pd.to_datetime(rows["served_at"], utc=True)
    return ShadowEvidence(
        version=version,
        champion=champion,
        requests=int(rows["request_id"].nunique()),
        rows=len(rows),
        agreement=float(np.mean((live >= threshold) == (shadow >= threshold))),
        mean_abs_diff=float(np.mean(np.abs(live - shadow))),
        first=served.min().isoformat(timespec="seconds"),
        last=served.max().isoformat(timespec="seconds"),
    )


def shadow_verdict(evidence: ShadowEvidence, cfg: RegisterConfig) -> tuple[str, str]:
    """``promote``, ``wait`` or ``refuse``, and why, from the evidence and ``register``'s bars."""
    need, bar = cfg.min_shadow_requests, cfg.canary.min_agreement
    if evidence.requests < need:
        return "wait", f"{evidence.line()}; {need} requests needed"
    if bar is not None and evidence.agreement < bar:
        return "refuse", f"{evidence.line()}: below the required {bar:.1%}"
    return "promote", f"shadow period passed: {evidence.line()}" + (f" (>= {bar:.1%})" if bar is not None else "")


def promote_challenger(
    client: Any,
    cfg: RegisterConfig,
    served_root: Path,
    log_dir: Path,
    *,
    force_reason: str | None = None,
    user: str | None = None,
    run: str = "cli",
) -> dict[str, Any]:
    """Promote the challenger waiting in shadow when the served log says it may, else keep it waiting.

    Args:
        client: an MLflow client of the registry.
        cfg: the ``register`` section: model name, ``min_shadow_requests``, ``canary.min_agreement``.
        served_root: the served log's folder (``<data>/served``).
        log_dir: where the promotion log lives.
        force_reason: promote it now whatever the served log says, for this stated reason.
        user: who forces it (recorded with the reason).
        run: what asked (``cli``, or the DAG and run ids).

    Returns:
        ``action`` (``promote``, ``force-promote``, ``wait``, ``refuse`` or ``none``), the version,
        the champion before, the reason and the evidence's figures.
    """
    name = cfg.model_name
    version = alias_version(client, name, CHALLENGER)
    champion = alias_version(client, name, CHAMPION)
    base = {"model_name": name, "version": version, "previous_champion": champion}
    tags = client.get_model_version(name, version).tags if version else {}
    if version is None or tags.get(PENDING_TAG) != "shadow":
        state = "no challenger" if version is None else f"v{version} is not waiting in shadow"
        log.info("promote-challenger: nothing to do (%s)", state)
        return {**base, "action": "none", "reason": state}
    since_tag = tags.get(SHADOW_SINCE_TAG)
    since = dt.date.fromisoformat(since_tag[:10]) if since_tag else None
    evidence = (
        shadow_evidence(served_root, version, champion, since)
        if champion is not None
        else ShadowEvidence(version=version, champion="none")
    )
    if force_reason:
        from pipelines.promotion import acting_user

        user = acting_user(user)
        action, reason = "force-promote", f"forced by {user}: {force_reason}; {evidence.line()}"
        client.set_model_version_tag(name, version, "promotion.forced_by", user)
    elif champion is None:  # the champion was removed meanwhile: nothing to shadow beside
        action, reason = "promote", "no champion to shadow beside: promoted"
    elif cfg.min_shadow_requests == 0:
        action, reason = "promote", f"the shadow period is off (register.min_shadow_requests: 0); {evidence.line()}"
    else:
        action, reason = shadow_verdict(evidence, cfg)
    result = {**base, "action": action, "reason": reason, "evidence": asdict(evidence)}
    if action == "wait":
        log.info("challenger v%s keeps waiting in shadow: %s", version, reason)
        return result
    for key, value in (
        ("shadow.requests", evidence.requests),
        ("shadow.rows", evidence.rows),
        ("shadow.agreement", f"{evidence.agreement:.6f}"),
        ("shadow.mean_abs_diff", f"{evidence.mean_abs_diff:.6f}"),
    ):
        client.set_model_version_tag(name, version, key, str(value))
    metrics = {"auc": float(tags.get("metrics.holdout_auc", "nan"))}
    if action == "refuse":
        client.set_model_version_tag(name, version, PENDING_TAG, "refused")
        client.set_model_version_tag(name, version, "promotion.decision", f"refused after shadow: {reason}"[:5000])
        record_move(
            client,
            name,
            version,
            action="refuse",
            previous=champion,
            reason=reason,
            run=run,
            metrics=metrics,
            log_dir=log_dir,
        )
        log.warning("challenger v%s refused after its shadow period: %s", version, reason)
        return result
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, PENDING_TAG, "promoted")
    client.set_model_version_tag(name, version, "promotion.previous_champion", champion or "none")
    client.set_model_version_tag(name, version, "promotion.forced", str(action == "force-promote").lower())
    client.set_model_version_tag(name, version, "promotion.decision", f"promoted after shadow: {reason}"[:5000])
    record_move(
        client,
        name,
        version,
        action=action,
        previous=champion,
        reason=reason,
        run=run,
        metrics=metrics,
        log_dir=log_dir,
    )
    log.info("challenger v%s promoted to champion (was v%s): %s", version, champion, reason)
    return result
