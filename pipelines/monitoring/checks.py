"""Monitoring's checks, each an Evidently 0.7 report written as HTML and JSON.

* :func:`check_data_drift`: every watched feature of the recent window against the
  champion's reference (its training sample);
* :func:`check_prediction_drift`: the champion's probabilities on the window against
  its probabilities on the reference;
* :func:`check_performance`: its metrics on the labelled days it scored against its
  metrics on the holdout when it was evaluated.

Each returns a small frozen result (:class:`CheckResult`) that travels as a dict
between tasks (:func:`check_from_dict` reads it back). Evidently is imported where
a report is made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import ConfigError, DatasetConfig, MonitorConfig
from pipelines.errors import MonitorError
from pipelines.monitoring.reference import PROBABILITY

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "precision": True, "recall": True, "log_loss": False, "brier": False}


# --------------------------------------------------------------------------- reports


def _save_report(snapshot: Any, out_dir: Path, name: str) -> tuple[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    html, json_path = out_dir / f"{name}.html", out_dir / f"{name}.json"
    snapshot.save_html(str(html))
    json_path.write_text(snapshot.json(), encoding="utf-8")
    return str(html), str(json_path)


def _column_tests(snapshot_dict: Mapping[str, Any]) -> dict[str, bool]:
    """Column -> drift detected, from the per-column tests of an Evidently drift report."""
    out = {}
    for test in snapshot_dict.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift") and "column" in params:
            out[params["column"]] = test["status"] == "FAIL"
    return out


def _column_scores(snapshot_dict: Mapping[str, Any]) -> dict[str, float]:
    return {
        m["config"]["column"]: float(m["value"])
        for m in snapshot_dict.get("metrics", [])
        if m["config"].get("type", "").endswith("ValueDrift")
    }


def drift_columns(spec: DatasetConfig, cfg: MonitorConfig.Drift) -> tuple[list[str], list[str]]:
    """The numeric and categorical features whose drift counts.

    An exclusion that names no feature is refused when the params load
    (:func:`pipelines.config.column_problems`).

    Raises:
        ConfigError: ``monitor.drift.exclude_columns`` leaves no feature to watch.
    """
    # Sensitive columns are never features (checked at load); left out here too, as a report would print values.
    skip = set(cfg.exclude_columns) | set(spec.sensitive)
    numeric = [c for c in spec.features.numeric if c not in skip]
    categorical = [c for c in spec.features.categorical if c not in skip]
    if not numeric + categorical:
        raise ConfigError("monitor.drift.exclude_columns leaves no feature to watch")
    return numeric, categorical


# Evidently's distances whose sampling spread between two samples of one distribution is known
# in closed form (see drift_thresholds); the others, and the tests (p-values), are left as set.
_NUMERIC_SPREAD = {"wasserstein"}
_CATEGORICAL_SPREAD = {"jensenshannon", "hellinger"}


def drift_thresholds(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    cfg: MonitorConfig.Drift,
) -> dict[str, float]:
    """Each watched column's drift threshold, widened for the sample's size.

    Two samples of one distribution are some distance apart by chance alone, and the
    smaller they are, the further. With ``n_eff = n * m / (n + m)`` (``n`` current, ``m``
    reference rows):

    * the Wasserstein distance in reference standard deviations is about ``1 / sqrt(n_eff)``
      (about ``sqrt(2 / pi) / sqrt(n_eff)`` for a normal column);
    * the squared Jensen-Shannon and Hellinger distances over ``k`` categories are
      asymptotically chi-square with ``k - 1`` degrees of freedom over ``8 * n_eff``.

    The threshold is the configured one plus what chance alone reaches with the tail
    probability of ``small_sample_z`` normal standard deviations (3: about 1 in 740):
    ``z / sqrt(n_eff)`` for Wasserstein, ``sqrt(chi2.ppf(Phi(z), k - 1) / (8 * n_eff))`` for
    the categorical distances. At a week of flights (thousands of rows) the thresholds move
    by a few hundredths; at 26 rows noise no longer looks like drift. Other distances and
    the statistical tests (whose p-values already account for the sample's size) keep theirs.

    Args:
        reference: the champion's reference.
        current: the window's rows.
        numeric: the numeric columns watched.
        categorical: the categorical columns watched.
        cfg: the ``monitor.drift`` section: methods, thresholds, ``small_sample_z``.

    Returns:
        Column -> the threshold its drift test uses.
    """
    n, m = len(current), len(reference)
    n_eff = n * m / (n + m) if n and m else 1.0
    out = {}
    for col in numeric:
        spread = 1.0 / np.sqrt(n_eff) if cfg.num_method in _NUMERIC_SPREAD else 0.0
        out[col] = float(cfg.num_threshold + cfg.small_sample_z * spread)
    for col in categorical:
        chance = 0.0
        if cfg.cat_method in _CATEGORICAL_SPREAD and cfg.small_sample_z > 0:
            from scipy import stats

            values = pd.concat([reference[col], current[col]], ignore_index=True).astype("string")
            k = max(int(values.nunique(dropna=False)), 2)
            chance = float(np.sqrt(stats.chi2.ppf(stats.norm.cdf(cfg.small_sample_z), k - 1) / (8 * n_eff)))
        out[col] = float(cfg.cat_threshold + chance)
    return out


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What every check returns besides its figures: where its Evidently report is."""

    report_html: str | None = None
    report_json: str | None = None
    report_uri: str | None = None  # the MLflow artifact, once logged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        raise NotImplementedError


def _with_report(result: CheckResult, snapshot: Any, out_dir: Path, name: str) -> CheckResult:
    """Save the check's Evidently report (HTML and JSON) beside its result, and log both."""
    html, json_path = _save_report(snapshot, out_dir, name)
    result = replace(result, report_html=html, report_json=json_path)
    log.info("%s; report: %s (JSON %s)", result.summary(), html, json_path)
    return result


@dataclass(frozen=True)
class DataDrift(CheckResult):
    status: str  # "ok" | "no_data" | "insufficient_data"
    detected: bool
    share: float
    drifted: list[str]
    columns: list[str]
    scores: dict[str, float]
    threshold: float
    current_rows: int
    reference_rows: int
    thresholds: dict[str, float] = field(default_factory=dict)  # per column, widened for the sample's size

    def summary(self) -> str:
        if self.status == "no_data":
            return "data drift: no published rows in the window"
        if self.status != "ok":
            return f"data drift: {self.current_rows} published rows in the window, too few to compare"
        cols = f": {', '.join(self.drifted)}" if self.drifted else ""
        return (
            f"data drift: {len(self.drifted)} of {len(self.columns)} features drifted "
            f"({self.share:.0%} {'>=' if self.detected else '<'} {self.threshold:.0%}){cols}"
        )


def check_data_drift(
    reference: pd.DataFrame, current: pd.DataFrame, spec: DatasetConfig, cfg: MonitorConfig.Drift, out_dir: Path
) -> DataDrift:
    """Evidently's ``DataDriftPreset`` over the watched features; drift when their drifted share reaches ``drift_share``.

    Below ``min_rows`` rows the check reports ``insufficient_data`` and asks for nothing; above,
    each column's threshold is widened for the sample's size (:func:`drift_thresholds`).

    Args:
        reference: the champion's reference (its training sample).
        current: the published rows of the recent window.
        spec: the features.
        cfg: the ``monitor.drift`` section.
        out_dir: where ``data_drift.html`` and ``data_drift.json`` go.

    Returns:
        The result, with the report's paths when the check ran.
    """
    numeric, categorical = drift_columns(spec, cfg)
    columns = numeric + categorical
    if current.empty:
        return DataDrift("no_data", False, 0.0, [], columns, {}, cfg.drift_share, 0, len(reference))
    if len(current) < cfg.min_rows:
        result = DataDrift(
            "insufficient_data", False, 0.0, [], columns, {}, cfg.drift_share, len(current), len(reference)
        )
        log.info("%s (monitor.drift.min_rows %d)", result.summary(), cfg.min_rows)
        return result
    thresholds = drift_thresholds(reference, current, numeric, categorical, cfg)
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    def dataset(frame: pd.DataFrame):
        frame = frame[columns].copy()
        for col in numeric:  # Evidently fails on pandas' nullable Int64 (ints read from files)
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        for col in categorical:  # one dtype on both sides, missing values kept as such
            frame[col] = frame[col].astype("string").astype(object)
        return Dataset.from_pandas(frame, data_definition=definition)

    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                num_method=cfg.num_method,
                num_threshold=cfg.num_threshold,
                cat_method=cfg.cat_method,
                cat_threshold=cfg.cat_threshold,
                drift_share=cfg.drift_share,
                per_column_threshold=thresholds,
            )
        ],
        include_tests=True,
    )
    snapshot = report.run(current_data=dataset(current), reference_data=dataset(reference))
    d = snapshot.dict()
    flags = _column_tests(d)
    drifted = [c for c in columns if flags.get(c)]
    share = len(drifted) / len(columns)
    result = DataDrift(
        "ok",
        share >= cfg.drift_share,
        share,
        drifted,
        columns,
        _column_scores(d),
        cfg.drift_share,
        len(current),
        len(reference),
        thresholds,
    )
    return _with_report(result, snapshot, out_dir, "data_drift")


@dataclass(frozen=True)
class PredictionDrift(CheckResult):
    status: str  # "ok" | "insufficient_data"
    detected: bool
    score: float | None
    method: str
    threshold: float
    current_rows: int
    reference_rows: int
    current_mean: float | None
    reference_mean: float | None

    def summary(self) -> str:
        if self.status != "ok":
            return f"prediction drift: {self.current_rows} scored rows in the window, too few to compare"
        return (
            f"prediction drift {'detected' if self.detected else 'not detected'}: {self.method} {self.score:.3f}, "
            f"threshold {self.threshold} (mean probability {self.current_mean:.3f} vs {self.reference_mean:.3f} "
            "on the reference)"
        )


def check_prediction_drift(
    reference_proba: pd.Series, current_proba: pd.Series, cfg: MonitorConfig.PredictionDrift, out_dir: Path
) -> PredictionDrift:
    """Evidently's ``ValueDrift`` of the champion's probabilities, recent window against its reference."""
    n_cur, n_ref = len(current_proba), len(reference_proba)
    if n_cur < cfg.min_rows:
        return PredictionDrift("insufficient_data", False, None, cfg.method, cfg.threshold, n_cur, n_ref, None, None)
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(numerical_columns=[PROBABILITY])

    def dataset(values: pd.Series):
        return Dataset.from_pandas(
            pd.DataFrame({PROBABILITY: values.to_numpy(dtype="float64")}), data_definition=definition
        )

    report = Report([ValueDrift(column=PROBABILITY, method=cfg.method, threshold=cfg.threshold)], include_tests=True)
    snapshot = report.run(current_data=dataset(current_proba), reference_data=dataset(reference_proba))
    d = snapshot.dict()
    score = _column_scores(d)[PROBABILITY]
    detected = _column_tests(d)[PROBABILITY]
    result = PredictionDrift(
        "ok",
        detected,
        score,
        cfg.method,
        cfg.threshold,
        n_cur,
        n_ref,
        float(current_proba.mean()),
        float(reference_proba.mean()),
    )
    return _with_report(result, snapshot, out_dir, "prediction_drift")


@dataclass(frozen=True)
class Performance(CheckResult):
    status: str  # "ok" | "insufficient_data"
    detected: bool
    rows: int
    days: list[str]
    current: dict[str, float]
    holdout: dict[str, float]
    worsening: dict[str, float]  # metric -> how much worse than on the holdout (negative: better)
    limits: dict[str, float]
    exceeded: list[str]

    def summary(self) -> str:
        if self.status != "ok":
            return f"performance: {self.rows} labelled scored rows in the window, too few to judge"
        parts = [
            f"{m} {self.current[m]:.3f} vs {self.holdout[m]:.3f} on the holdout "
            f"({'worse' if self.worsening[m] > 0 else 'better'} by {abs(self.worsening[m]):.3f}"
            f"{' > ' if m in self.exceeded else ' <= '}{self.limits[m]})"
            for m in self.limits
        ]
        span = f"{self.days[0]}..{self.days[-1]}" if self.days else "no day"
        return f"performance on {self.rows} labelled rows of {span}: " + "; ".join(parts)


def worsening(metric: str, holdout: float, current: float) -> float:
    """How much worse ``current`` is than ``holdout`` (positive: worse), whichever way the metric points."""
    return holdout - current if HIGHER_IS_BETTER[metric] else current - holdout


def check_performance(
    labelled: pd.DataFrame,
    holdout: Mapping[str, float],
    reference: pd.DataFrame,
    cfg: MonitorConfig.Performance,
    threshold: float,
    out_dir: Path,
    days: Sequence[str] = (),
) -> Performance:
    """The champion's metrics on labelled scored rows against its holdout metrics.

    The metrics are :func:`pipelines.model.metrics.binary_metrics`, the ones its
    holdout metrics were computed with. The Evidently report shows the same
    rows against the reference (its training sample) for a reader.

    Args:
        labelled: ``probability`` and ``label`` of the scored rows whose labels are in.
        holdout: the champion's holdout metrics (``auc``, ``brier``, ...).
        threshold: the probability threshold of the class metrics (``evaluate.threshold``).
        days: the days the rows come from (ISO dates), for the record.
    """
    from pipelines.model.features import LABEL
    from pipelines.model.metrics import binary_metrics

    limits = dict(cfg.max_worsening)
    missing = [m for m in limits if m not in holdout]
    if missing:
        raise MonitorError(f"the champion has no holdout metric {missing}: cannot compare performance")
    days = sorted(days)
    ref_values = {m: float(holdout[m]) for m in limits}
    if len(labelled) < cfg.min_rows:
        return Performance("insufficient_data", False, len(labelled), days, {}, ref_values, {}, limits, [])
    current = binary_metrics(labelled[LABEL].to_numpy(), labelled[PROBABILITY].to_numpy(), threshold)
    worse = {m: worsening(m, ref_values[m], current[m]) for m in limits}
    exceeded = [m for m in limits if np.isfinite(worse[m]) and worse[m] > limits[m]]

    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    definition = DataDefinition(
        classification=[BinaryClassification(target=LABEL, prediction_probas=PROBABILITY, pos_label=1)]
    )

    def dataset(frame: pd.DataFrame):
        frame = pd.DataFrame({LABEL: frame[LABEL].astype("int64"), PROBABILITY: frame[PROBABILITY].astype("float64")})
        return Dataset.from_pandas(frame, data_definition=definition)

    snapshot = Report([ClassificationPreset(probas_threshold=threshold)]).run(
        current_data=dataset(labelled), reference_data=dataset(reference)
    )
    result = Performance(
        "ok",
        bool(exceeded),
        len(labelled),
        days,
        {m: float(current[m]) for m in limits},
        ref_values,
        worse,
        limits,
        exceeded,
    )
    return _with_report(result, snapshot, out_dir, "performance")


def check_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """A check result back from its dict (an XCom), ignoring keys it does not have."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
