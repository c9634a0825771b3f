"""Validate: the Great Expectations gate between collected data and everything else.

The suite is built from the feature spec and thresholds in ``params.yaml``.
It runs in two phases:

1. *schema*: the exact column set and each column's type. A schema problem
   makes every other check meaningless, so the batch stops here.
2. *values*: null rates, ranges, allowed categories, duplicate keys, the row
   count and the dates of the run's interval.

A batch that passes is published from the run's staging folder into
``data/raw``; one that fails is moved to ``data/quarantine/<run>`` with its
report, never deleted, and the published data stays as it was.
Every validation leaves its result as JSON and as Great Expectations data docs
(HTML) in the report folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.collect import PART_FILE, partition_dir, read_partitions
from pipelines.config import DatasetConfig, Params, ValidateConfig
from pipelines.lazy import lazy
from pipelines.preprocess import REFERENCE_FILE

# Imported on first use: tasks import this module for its names only (pipelines/lazy.py).
pd = lazy("pandas")

log = logging.getLogger(__name__)

# pandas dtypes accepted for each kind of column in ``dataset.schema``.
_TYPES: dict[str, list[str]] = {
    "int": ["int64", "int32", "int16", "int8", "Int64", "Int32"],
    # Integers are fine where floats are expected: a CSV column of whole numbers reads as int.
    "float": ["float64", "float32", "Float64", "int64", "int32", "Int64"],
    "string": ["object", "string", "str", "category"],
    "date": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


class ValidationFailed(RuntimeError):
    """A batch failed the gate; the message lists each failed rule."""

    def __init__(self, message: str, report: ValidationReport):
        super().__init__(message)
        self.report = report

    def __reduce__(self):
        # With its report, so it crosses from the step worker's process to the task intact.
        return (type(self), (str(self), self.report))


@dataclass
class Finding:
    phase: str  # "schema" or "values"
    rule: str  # the expectation type
    column: str | None
    detail: str
    check: str = "schema"  # the params.yaml rule: schema, nulls, ranges, categories, ...
    severity: str = "stop"  # "stop" or "warn"

    def line(self) -> str:
        where = f"column '{self.column}'" if self.column else "table"
        return f"[{self.phase}] {where}: {self.rule} ({self.check}, {self.severity}): {self.detail}"


@dataclass
class ValidationReport:
    rows: int
    findings: list[Finding] = field(default_factory=list)
    result_json: str = ""
    data_docs: str = ""
    evaluated: int = 0

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "stop"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warn"]

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.success:
            head = f"passed: {self.evaluated} expectations on {self.rows} rows"
            if self.warnings:
                head += f", {len(self.warnings)} warning(s)"
        else:
            head = f"failed: {len(self.failures)} of {self.evaluated} expectations on {self.rows} rows"
        lines = [head, *("  - " + f.line() for f in self.failures), *("  - " + f.line() for f in self.warnings)]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "rows": self.rows,
            "evaluated": self.evaluated,
            "failures": [f.line() for f in self.failures],
            "warnings": [f.line() for f in self.warnings],
            "result_json": self.result_json,
            "data_docs": self.data_docs,
        }


# --------------------------------------------------------------------------- suites


def _schema_expectations(spec: DatasetConfig, columns: list[str]) -> list:
    import great_expectations.expectations as gxe

    exps = [gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True, meta={"rule": "schema"})]
    for col in columns:
        exps.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=col, type_list=_TYPES[spec.schema_[col]], meta={"rule": "schema"}
            )
        )
    return exps


def _value_expectations(
    spec: DatasetConfig,
    cfg: ValidateConfig,
    columns: list[str],
    n_days: int,
    first_day: dt.date | None,
    last_day: dt.date | None,
    reference: dict[str, Any] | None,
) -> list:
    """Value rules from params.yaml, plus what the training data taught (``reference``)."""
    import great_expectations.expectations as gxe

    present = set(columns)
    exps: list = []
    lo, hi = cfg.rows_per_day
    if reference and "rows_per_day" in reference:
        # The usual daily volume, widened by the margin, within the hard bounds of params.yaml.
        usual = reference["rows_per_day"]
        m = cfg.reference_row_margin
        lo, hi = max(lo, int(usual["p01"] * (1 - m))), min(hi, int(usual["p99"] * (1 + m)) + 1)
    exps.append(
        gxe.ExpectTableRowCountToBeBetween(min_value=lo * n_days, max_value=hi * n_days, meta={"rule": "row_count"})
    )
    for col in columns:
        allowed = cfg.null_fraction_overrides.get(col, cfg.max_null_fraction)
        if allowed < 1.0:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=1.0 - allowed, meta={"rule": "nulls"}))
    for col, (vmin, vmax) in cfg.ranges.items():
        if col in present:
            exps.append(
                gxe.ExpectColumnValuesToBeBetween(column=col, min_value=vmin, max_value=vmax, meta={"rule": "ranges"})
            )
    for col, values in cfg.categories.items():
        if col in present:
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col,
                    value_set=list(values),
                    mostly=1.0 - cfg.max_unseen_category_fraction,
                    meta={"rule": "categories"},
                )
            )
    for col, seen in ((reference or {}).get("categories") or {}).items():
        if col in present and col not in cfg.categories:
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col,
                    value_set=list(seen),
                    mostly=1.0 - cfg.max_unseen_category_fraction,
                    meta={"rule": "unseen_categories"},
                )
            )
    m = cfg.reference_range_margin
    for col, seen in ((reference or {}).get("numeric") or {}).items():
        if col in present and seen and col not in cfg.ranges:
            # Learnt where params.yaml sets no range: the training data's, widened on each side.
            pad = m * max(seen["max"] - seen["min"], 1e-9)
            exps.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=col,
                    min_value=seen["min"] - pad,
                    max_value=seen["max"] + pad,
                    mostly=1.0 - cfg.max_unseen_category_fraction,
                    meta={"rule": "reference_ranges"},
                )
            )
    keys = [c for c in spec.key_columns if c in present]
    if keys:
        exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=keys, meta={"rule": "duplicates"}))
    if first_day is not None and last_day is not None and spec.time_column in present:
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=spec.time_column,
                min_value=dt.datetime.combine(first_day, dt.time()),
                max_value=dt.datetime.combine(last_day, dt.time.max),
                meta={"rule": "interval"},
            )
        )
    return exps


# --------------------------------------------------------------------------- running


def _describe_failure(result: Any) -> str:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "column")}
    res = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        return f"could not be evaluated: {result.exception_info.get('exception_message')}"
    if cfg.type == "expect_table_columns_to_match_set" and isinstance(res.get("observed_value"), list):
        expected, observed = set(kwargs.get("column_set") or []), set(res["observed_value"])
        return (
            f"missing columns {sorted(expected - observed)}, unexpected columns {sorted(observed - expected)}"
        )
    parts = []
    rule = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "value_set")
    if "value_set" in kwargs:
        rule = (rule + ", " if rule else "") + f"allowed={kwargs['value_set']}"
    parts.append(f"expected {rule}" if rule else "failed")
    if "unexpected_count" in res:
        pct = res.get("unexpected_percent") or 0.0
        parts.append(f"{res['unexpected_count']} of {res.get('element_count')} rows ({pct:.2f}%) break it")
        sample = res.get("partial_unexpected_list") or []
        if sample:
            parts.append(f"e.g. {[_short(v) for v in sample[:5]]}")
    elif "observed_value" in res:
        parts.append(f"observed {_short(res['observed_value'])}")
    return "; ".join(parts)


def _short(v: Any) -> Any:
    if isinstance(v, list) and len(v) > 12:
        return v[:12] + ["..."]
    if isinstance(v, float) and v != v:
        return "NaN"
    return v


def _run_suite(frame: pd.DataFrame, name: str, expectations: list, report_dir: Path) -> tuple[bool, list, dict]:
    import great_expectations as gx

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    docs_dir = report_dir / "data_docs"
    ctx.add_data_docs_site(
        site_name="pipeline",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = ctx.data_sources.add_pandas("pipeline").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["pipeline"])],
            result_format={"result_format": "SUMMARY"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    results = [r for run in result.run_results.values() for r in run.results]
    return bool(result.success), results, result.describe_dict()


def validate_frame(
    frame: pd.DataFrame,
    spec: DatasetConfig,
    cfg: ValidateConfig,
    report_dir: Path,
    *,
    n_days: int = 1,
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
    schema_only: bool = False,
    columns: list[str] | None = None,
    reference: dict[str, Any] | None = None,
) -> ValidationReport:
    """Run the suite on a frame; write the JSON result and data docs to ``report_dir``.

    Args:
        columns: the columns the frame must have (default: the whole ``dataset.schema``);
            batch prediction passes the key and feature columns.
        reference: statistics learnt from the training data (``reference.json``).
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    columns = list(columns or spec.schema_)
    phases = [("schema", _schema_expectations(spec, columns))]
    if not schema_only:
        phases.append(("values", _value_expectations(spec, cfg, columns, n_days, first_day, last_day, reference)))
    findings: list[Finding] = []
    described: dict[str, Any] = {}
    evaluated = 0
    for phase, expectations in phases:
        ok, results, desc = _run_suite(frame, f"{spec.name}_{phase}", expectations, report_dir)
        described[phase] = desc
        evaluated += len(results)
        for r in results:
            exp = r.expectation_config
            column = exp.kwargs.get("column")
            if column is not None and column not in frame.columns:
                continue  # already reported by the column-set check
            if not r.success:
                check = (exp.meta or {}).get("rule", phase)
                severity = "stop" if check == "schema" else cfg.severity.get(check, "stop")
                findings.append(Finding(phase, exp.type, column, _describe_failure(r), check, severity))
        if not ok and phase == "schema":
            break  # a schema failure makes the value checks meaningless
    result_json = report_dir / "validation.json"
    result_json.write_text(json.dumps(described, indent=1, default=str), encoding="utf-8")
    (report_dir / "findings.json").write_text(json.dumps([f.__dict__ for f in findings], indent=1), encoding="utf-8")
    return ValidationReport(
        rows=len(frame),
        findings=findings,
        result_json=str(result_json),
        data_docs=str(report_dir / "data_docs" / "index.html"),
        evaluated=evaluated,
    )


def load_reference(processed_dir: Path) -> dict[str, Any] | None:
    """Reference statistics of the latest training data, if a run has published them."""
    path = processed_dir / REFERENCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --------------------------------------------------------------------------- the step


def _read_staged(staging_dir: Path, days: list[dt.date]) -> pd.DataFrame:
    return read_partitions([partition_dir(staging_dir, d) / PART_FILE for d in days])


def publish(staging_dir: Path, days: list[dt.date], raw_dir: Path) -> list[str]:
    """Move validated partitions into the published data, one atomic replace each."""
    out = []
    for d in days:
        src = partition_dir(staging_dir, d) / PART_FILE
        dst = partition_dir(raw_dir, d) / PART_FILE
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".incoming")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        out.append(str(dst))
    return out


def quarantine(staging_dir: Path, report_dir: Path, target: Path) -> Path:
    """Keep a rejected batch and its report side by side; never overwrite an earlier one."""
    target.mkdir(parents=True, exist_ok=True)
    n = 0
    while (dest := target / f"attempt-{n}").exists():
        n += 1
    shutil.copytree(staging_dir, dest / "batch")
    shutil.copytree(report_dir, dest / "report")
    return dest


def validate_batch(
    params: Params,
    staging_dir: Path,
    days: list[str],
    raw_dir: Path,
    report_dir: Path,
    quarantine_dir: Path,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Gate the staged days: publish them to ``raw_dir``, or quarantine them and raise.

    Findings whose rule has severity ``warn`` let the batch through; they are
    written beside each published partition (``validation.json``), where the
    monitoring step reads them, and returned for the MLflow run.

    Raises:
        ValidationFailed: with one line per failed rule; the batch is in ``quarantine_dir``.
    """
    parsed = sorted(dt.date.fromisoformat(d) for d in days)
    frame = _read_staged(staging_dir, parsed)
    report = validate_frame(
        frame,
        params.dataset,
        params.validate_,
        report_dir,
        n_days=len(parsed),
        first_day=parsed[0],
        last_day=parsed[-1],
        reference=reference,
    )
    log.info("validation %s", report.summary())
    log.info("data docs: %s", report.data_docs)
    if not report.success:
        where = quarantine(staging_dir, report_dir, quarantine_dir)
        message = f"{report.summary()}\nthe batch and its report are quarantined in {where}"
        raise ValidationFailed(message, report)
    published = publish(staging_dir, parsed, raw_dir)
    summary = json.dumps({"warnings": [f.line() for f in report.warnings], "report": report.result_json}, indent=1)
    for d in parsed:
        (partition_dir(raw_dir, d) / "validation.json").write_text(summary, encoding="utf-8")
    return {**report.as_dict(), "published": len(published)}


def release(params: Params, attempt_dir: Path, raw_dir: Path, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish a quarantined batch after a fix: it goes through the whole gate again.

    Fix the Parquet partitions under ``<attempt>/batch/`` in place (or replace
    them), then release the attempt. A batch that still fails stays where it
    is, with a new report beside the first.

    Raises:
        ValueError: the attempt holds no staged partition (an unreadable source file:
            fix it at the source and re-run the DAG for that date instead).
        ValidationFailed: the batch still breaks a rule.
    """
    staging = attempt_dir / "batch"
    days = sorted(p.name.removeprefix("date=") for p in staging.glob("date=*") if (p / PART_FILE).is_file())
    if not days:
        raise ValueError(
            f"{attempt_dir} holds no staged partition: fix the source and re-run the DAG for that date"
        )
    n = 0
    while (report_dir := attempt_dir / f"release-{n}").exists():
        n += 1
    result = validate_batch(
        params, staging, days, raw_dir, report_dir, attempt_dir / f"release-{n}-rejected", reference=reference
    )
    (attempt_dir / "RELEASED").write_text(json.dumps({"days": days, "report": str(report_dir)}), encoding="utf-8")
    log.info("released %s: %d day(s) published to %s", attempt_dir, len(days), raw_dir)
    return result
