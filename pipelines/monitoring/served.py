"""Served traffic: what the prediction service answered, watched like the nightly scores.

The service appends every answered row to ``<data>/served/date=YYYY-MM-DD/part-*.parquet``
(:mod:`pipelines.serving.served_log`): its features, the live version's probability, decision,
version and threshold, the shadow's probability and version, and when it was served (UTC, so
the partitions follow the run's calendar). Over the monitoring window this module

* checks the **data drift** of the served rows against the champion's reference: the same
  check, thresholds and reference as the published rows, beside them in a report of its own
  (``served_data_drift``);
* compares the **shadow** with the live model on the rows both scored: how often their
  decisions agree at the live threshold, and how far the shadow's mean probability moved;
* once the labels of served rows are published, reports the champion's **online performance**
  (:func:`pipelines.model.metrics.binary_metrics`) beside its holdout figures.

None of the three is a reason to retrain: they are reported, logged to the monitoring run in
MLflow and returned by the task. A window without served rows is "no served traffic".
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import DatasetConfig, MonitorConfig
from pipelines.monitoring.reference import Champion
from pipelines.settings import Settings
from pipelines.tracking import Tracking

log = logging.getLogger(__name__)

LIVE, SHADOW = "probability", "shadow_probability"  # the served log's score columns
NO_TRAFFIC = "no served traffic"
_ID = "_served_identity"


# --------------------------------------------------------------------------- reading


def read_served(root: Path, days: Sequence[dt.date]) -> tuple[pd.DataFrame, list[dt.date]]:
    """The served rows of ``days`` (every whole file of each day's folder), and the days without any.

    Only ``part-*.parquet`` files are read: a file being written is still ``.tmp``.
    """
    frames, missing = [], []
    for day in days:
        files = sorted((root / f"date={day.isoformat()}").glob("part-*.parquet"))
        frames += [pd.read_parquet(f) for f in files]
        if not files:
            missing.append(day)
    frames = [f for f in frames if len(f)]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), missing


# --------------------------------------------------------------------------- the shadow


@dataclass(frozen=True)
class ShadowComparison:
    status: str  # "ok" | "no_shadow" (no served row was scored by a shadow)
    rows: int  # served rows both versions scored
    live_versions: list[str]
    shadow_versions: list[str]
    agreement: float | None = None  # share of rows both decide alike, at the live version's threshold
    mean_live: float | None = None
    mean_shadow: float | None = None
    mean_shift: float | None = None  # shadow minus live
    mean_abs_difference: float | None = None
    live_positive_rate: float | None = None
    shadow_positive_rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.status != "ok":
            return "shadow: no served row was scored by a shadow version"
        return (
            f"shadow v{'/'.join(self.shadow_versions)} against live v{'/'.join(self.live_versions)} on "
            f"{self.rows} served rows: decisions agree on {self.agreement:.1%}, mean probability "
            f"{self.mean_shadow:.3f} vs {self.mean_live:.3f} (shift {self.mean_shift:+.3f})"
        )


def compare_shadow(served: pd.DataFrame) -> ShadowComparison:
    """The shadow's scores against the live model's on the served rows both scored.

    A decision is ``probability >= threshold``, with the threshold of the live version that
    answered (the one recorded on each row), for both: they agree when both say the same.
    """
    both = served[served[SHADOW].notna()] if SHADOW in served.columns else served.iloc[:0]
    live_versions = sorted(served["model_version"].dropna().astype(str).unique()) if len(served) else []
    if both.empty:
        return ShadowComparison("no_shadow", 0, live_versions, [])
    live, shadow, threshold = (both[c].to_numpy(dtype="float64") for c in (LIVE, SHADOW, "threshold"))
    live_says, shadow_says = live >= threshold, shadow >= threshold
    return ShadowComparison(
        "ok",
        len(both),
        sorted(both["model_version"].astype(str).unique()),
        sorted(both["shadow_version"].dropna().astype(str).unique()),
        agreement=float(np.mean(live_says == shadow_says)),
        mean_live=float(live.mean()),
        mean_shadow=float(shadow.mean()),
        mean_shift=float(shadow.mean() - live.mean()),
        mean_abs_difference=float(np.abs(shadow - live).mean()),
        live_positive_rate=float(live_says.mean()),
        shadow_positive_rate=float(shadow_says.mean()),
    )


# --------------------------------------------------------------------------- labels and online performance


def identity_columns(served: pd.DataFrame, spec: DatasetConfig) -> tuple[list[str], str]:
    """What identifies a served row among the published ones, and its name for the record.

    The key columns when the served rows carry them all; otherwise the row's time (when it
    has one) and features, as :mod:`pipelines.data.rows` derives a row id. Rows identical on
    those columns are identical to the model: which of them pairs with which label cannot
    change a metric, so each identity keeps one label.
    """
    if spec.key_columns and set(spec.key_columns) <= set(served.columns):
        return list(spec.key_columns), "key columns"
    time = [spec.time_column] if spec.time_column in served.columns else []
    return [*time, *spec.features.all], "time and features" if time else "features"


def _identity(frame: pd.DataFrame, spec: DatasetConfig, columns: Sequence[str]) -> pd.Series:
    """A hash of ``columns``, normalised as types that survive CSV and Parquet (see :mod:`pipelines.data.rows`)."""
    norm = pd.DataFrame(index=frame.index)
    for col in columns:
        if col == spec.time_column:
            norm[col] = pd.to_datetime(frame[col], errors="coerce").astype("datetime64[ns]").astype("int64")
        elif col in spec.features.numeric or spec.schema_.get(col) in ("int", "float"):
            norm[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        else:
            norm[col] = frame[col].astype("string").fillna("\x00<missing>").astype(object)
    return pd.util.hash_pandas_object(norm, index=False)


def label_served(served: pd.DataFrame, raw: pd.DataFrame, spec: DatasetConfig) -> tuple[pd.DataFrame, str]:
    """Served rows joined to their published labels (the label rule applied), and what they were matched on.

    A row served more than once (the same flight asked again) counts once, with its last answer.

    Returns:
        ``probability``, ``shadow_probability``, ``threshold``, the versions and ``label`` of
        the matched rows; and "key columns", "time and features" or "features".
    """
    from pipelines.model.features import LABEL, apply_label_rule

    columns, matched_on = identity_columns(served, spec)
    keep = [LIVE, SHADOW, "threshold", "model_version", "shadow_version"]
    if served.empty or raw.empty:
        return pd.DataFrame(columns=[*keep, LABEL]), matched_on
    served = served.sort_values("served_at", kind="stable").assign(**{_ID: lambda f: _identity(f, spec, columns)})
    served = served.drop_duplicates(_ID, keep="last")
    labelled = apply_label_rule(raw[[*dict.fromkeys([*columns, spec.label.source_column])]], spec.label)
    labelled = labelled.assign(**{_ID: _identity(labelled, spec, columns)}).drop_duplicates(_ID)
    out = served[[_ID, *keep]].merge(labelled[[_ID, LABEL]], on=_ID, how="inner", validate="one_to_one")
    return out.drop(columns=_ID).reset_index(drop=True), matched_on


@dataclass(frozen=True)
class OnlinePerformance:
    status: str  # "ok" | "no_labels" | "insufficient_data"
    version: str  # the champion's: only the rows it answered count
    rows: int  # of its served rows, those matched to a published label
    served_rows: int
    other_version_rows: int  # served rows answered by another version (before a swap, say)
    matched_on: str
    days: list[str]  # the published days searched for labels
    current: dict[str, float] = field(default_factory=dict)  # binary_metrics on the labelled served rows
    holdout: dict[str, float] = field(default_factory=dict)  # the champion's, from its registered version's run
    shadow: dict[str, float] = field(default_factory=dict)  # the shadow's metrics on the same rows it scored
    shadow_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.status == "no_labels":
            return f"online performance: none of the {self.served_rows} rows v{self.version} served has its label yet"
        if self.status != "ok":
            return f"online performance: {self.rows} labelled served rows of v{self.version}, too few to judge"
        parts = [
            f"{m} {self.current[m]:.3f} (holdout {self.holdout[m]:.3f})"
            for m in ("auc", "brier", "log_loss")
            if m in self.current and m in self.holdout
        ]
        return f"online performance of v{self.version} on {self.rows} labelled served rows: " + ", ".join(parts)


def online_performance(
    labelled: pd.DataFrame,
    champion: Champion,
    served_rows: int,
    other_version_rows: int,
    matched_on: str,
    days: Sequence[str],
    cfg: MonitorConfig.Served,
    threshold: float,
) -> OnlinePerformance:
    """The champion's metrics on its labelled served rows, beside its holdout figures.

    Args:
        labelled: :func:`label_served` of the rows the champion answered.
        champion: the version watched, with its holdout metrics.
        served_rows: its served rows in the window, labelled or not.
        other_version_rows: served rows another version answered.
        matched_on: what identified the rows (for the record).
        days: the published days searched for labels.
        cfg: ``monitor.served``: how many labelled rows are needed.
        threshold: the probability threshold of the class metrics when the rows carry none.
    """
    from pipelines.model.features import LABEL
    from pipelines.model.metrics import binary_metrics

    common = dict(
        version=champion.version,
        rows=len(labelled),
        served_rows=served_rows,
        other_version_rows=other_version_rows,
        matched_on=matched_on,
        days=list(days),
    )
    if labelled.empty:
        return OnlinePerformance("no_labels", **common)
    if len(labelled) < cfg.min_labelled_rows:
        return OnlinePerformance("insufficient_data", **common)
    cut = float(labelled["threshold"].dropna().iloc[0]) if labelled["threshold"].notna().any() else threshold
    y = labelled[LABEL].to_numpy()
    current = binary_metrics(y, labelled[LIVE].to_numpy(), cut)
    holdout = {m: float(champion.holdout[m]) for m in current if m in champion.holdout}
    shadowed = labelled[labelled[SHADOW].notna()]
    shadow, shadow_version = {}, None
    if len(shadowed):
        shadow = binary_metrics(shadowed[LABEL].to_numpy(), shadowed[SHADOW].to_numpy(), cut)
        shadow_version = "/".join(sorted(shadowed["shadow_version"].dropna().astype(str).unique()))
    return OnlinePerformance(
        "ok", current=current, holdout=holdout, shadow=shadow, shadow_version=shadow_version, **common
    )


# --------------------------------------------------------------------------- the step


def _drift_summary(drift: Any) -> str:
    if drift.status != "ok":  # the check's own words are about published rows
        return f"data drift: {drift.current_rows} served rows in the window, too few to compare"
    return drift.summary()


def _served_drift(reference: pd.DataFrame, served: pd.DataFrame, spec: DatasetConfig, cfg: MonitorConfig, out: Path):
    """The data-drift check on the served rows, its reports named ``served_data_drift.*`` beside the batch's."""
    from pipelines.monitoring.checks import check_data_drift

    result = check_data_drift(reference, served, spec, cfg.drift, out / "served")
    moved = {}
    for attr in ("report_html", "report_json"):
        path = getattr(result, attr)
        if path:
            target = out / f"served_{Path(path).name}"
            shutil.move(path, target)
            moved[attr] = str(target)
    return replace(result, **moved)


def served_traffic_step(
    dataset: DatasetConfig,
    cfg: MonitorConfig,
    threshold: float,
    run_day: dt.date,
    champion: Champion,
    settings: Settings,
    out_dir: Path,
    tracking: Tracking,
) -> dict[str, Any]:
    """Drift, shadow agreement and online performance of the served rows of the window ending on ``run_day``.

    Args:
        dataset: the features, the key columns and the label rule.
        cfg: the ``monitor`` section: window, drift thresholds, ``served``, experiment.
        threshold: the class metrics' threshold for rows without one (``evaluate.threshold``).
        run_day: the monitored day, in the run's calendar (the served partitions' calendar).
        champion: the version watched.
        settings: where the served log and the published data are.
        out_dir: where the reports go.
        tracking: the monitoring run's MLflow identity.

    Returns:
        ``status`` ("ok" or "no_served_traffic"), ``rows``, ``days``, and the ``drift``,
        ``shadow`` and ``online`` results, with ``report`` (``served.json`` in MLflow).
    """
    from pipelines.data.partitions import read_days
    from pipelines.monitoring.reference import load_champion_reference
    from pipelines.monitoring.runlog import log_check, log_json, log_numbers
    from pipelines.serving.served_log import served_dir
    from pipelines.steps.collect import source_date
    from pipelines.steps.monitor import window

    days = window(run_day, cfg.window_days)
    served, missing = read_served(served_dir(settings.data_dir), days)
    span = f"{days[0].isoformat()}..{days[-1].isoformat()}"
    if served.empty:
        log.info("%s in %s (%s)", NO_TRAFFIC, span, served_dir(settings.data_dir))
        log_numbers(tracking, cfg.experiment, "served", {"rows": 0}, {"served.status": "no_served_traffic"})
        return {"status": "no_served_traffic", "summary": f"{NO_TRAFFIC} in {span}", "rows": 0, "days": []}

    reference = load_champion_reference(champion, settings.tracking_uri, out_dir / "reference")
    drift = _served_drift(reference, served, dataset, cfg, out_dir)
    drift_uri = log_check(
        tracking,
        cfg.experiment,
        "served_data_drift",
        drift,
        {"share": drift.share, "drifted": len(drift.drifted), "rows": drift.current_rows},
    )
    shadow = compare_shadow(served)
    log_numbers(tracking, cfg.experiment, "shadow", {k: v for k, v in shadow.as_dict().items() if k != "status"})

    mine = served["model_version"].astype(str) == champion.version
    label_days = window(source_date(dataset, run_day), cfg.window_days)
    raw, raw_missing = read_days(settings.raw_dir, label_days)
    labelled, matched_on = label_served(served[mine], raw, dataset)
    online = online_performance(
        labelled,
        champion,
        int(mine.sum()),
        int((~mine).sum()),
        matched_on,
        [d.isoformat() for d in label_days if d not in raw_missing],
        cfg.served,
        threshold,
    )
    log_numbers(
        tracking,
        cfg.experiment,
        "online",
        {"rows": online.rows, **online.current, **{f"holdout.{k}": v for k, v in online.holdout.items()}},
    )
    for line in (_drift_summary(drift), shadow.summary(), online.summary()):
        log.info("served traffic: %s", line)
    result: dict[str, Any] = {
        "status": "ok",
        "rows": len(served),
        "days": [d.isoformat() for d in days if d not in missing],
        "drift": {**replace(drift, report_uri=drift_uri).as_dict(), "summary": _drift_summary(drift)},
        "shadow": {**shadow.as_dict(), "summary": shadow.summary()},
        "online": {**online.as_dict(), "summary": online.summary()},
    }
    result["summary"] = "; ".join(result[k]["summary"] for k in ("drift", "shadow", "online"))
    result["report"] = log_json(tracking, cfg.experiment, out_dir / "served.json", result)
    return result


def summaries(result: Mapping[str, Any]) -> list[str]:
    """The lines a reader wants from :func:`served_traffic_step`'s result (the CLI prints them)."""
    if result["status"] != "ok":
        return [f"served traffic: {result['summary']}"]
    return [f"served {k}: {result[k]['summary']}" for k in ("drift", "shadow", "online")]
