"""Validate: the Great Expectations gate between collected data and everything else.

The suite (:mod:`pipelines.validation.suite`) is built from the feature spec and
thresholds in ``params.yaml`` and runs in two phases: the *schema* (a problem there
stops the batch) and the *values*.

A batch that passes is published from the run's staging folder into
``data/raw``; one that fails is moved to ``data/quarantine/<run>`` with its
report, never deleted, and the published data stays as it was.
Every validation leaves its result as JSON and as Great Expectations data docs
(HTML) in the report folder.

The row count is a rule of each day: every day of the batch, a day without rows
included, is counted here (from the staged partitions' footers) against the bounds
of a day, and the outcome, naming each day outside them, joins the suite's results.

A long batch (a first run, a backfill) is validated in groups of whole days of
at most ``validate.chunk_rows`` rows, one group in memory at a time. The groups'
results add up to those of the whole batch (:mod:`pipelines.validation.results`;
duplicate keys are looked for across groups here), so the verdict and the messages
are those of a single pass; only the interval rule is stricter, holding each group
to its own days. Each group leaves its own result and data docs in ``part-NNN/`` of
the report folder, under a result and an index that cover the batch.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.config import DatasetConfig, ValidateConfig
from pipelines.data.partitions import PART_FILE, partition_dir, partition_rows, partitions_schema, read_partitions
from pipelines.errors import ValidationFailed
from pipelines.validation.checkpoint import docs_index, run_suite
from pipelines.validation.results import (
    PARTIAL,
    UNIQUE,
    Outcome,
    ValidationReport,
    counted,
    described,
    merge_into,
)
from pipelines.validation.rows import describe_into, row_count, rows_per_day
from pipelines.validation.suite import schema_expectations, value_expectations

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


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
    day_rows: dict[dt.date, int] | None = None,
) -> ValidationReport:
    """Run the suite on a frame; write the JSON result and data docs to ``report_dir``.

    Args:
        frame: the rows to validate.
        spec: the data set: schema, key and time columns.
        cfg: the ``validate`` section.
        report_dir: where ``validation.json``, ``findings.json`` and the data docs go.
        n_days: days the frame holds, when neither ``day_rows`` nor the interval says which.
        first_day: with ``last_day``, the interval the time column must fall in.
        schema_only: check the columns and their types only.
        columns: the columns the frame must have (default: ``dataset.schema`` as collected:
            without dropped sensitive columns); batch prediction passes the key and feature columns.
        reference: the validation reference (:func:`pipelines.validation.suite.load_validation_reference`).
        day_rows: each day of the batch and its rows (a day without rows too), against the
            row-count bounds of a day; default: counted from the time column (:func:`rows_per_day`).

    Returns:
        The report: findings, paths of the result and data docs, every expectation's outcome.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    columns = list(columns or spec.collected_schema)
    phases = [("schema", schema_expectations(spec, columns))]
    if not schema_only:
        phases.append(("values", value_expectations(spec, cfg, columns, first_day, last_day, reference)))
    outcomes: list[Outcome] = []
    phase_results: dict[str, Any] = {}
    evaluated = 0
    for phase, expectations in phases:
        ok, results, desc = run_suite(frame, f"{spec.name}_{phase}", expectations, report_dir)
        phase_results[phase] = desc
        evaluated += len(results)
        for r in results:
            column = r.expectation_config.kwargs.get("column")
            if column is not None and column not in frame.columns:
                continue  # already reported by the column-set check
            outcomes.append(Outcome.of(r, phase))
        if not ok and phase == "schema":
            break  # a schema failure makes the value checks meaningless
        if phase == "values":
            counted_days = day_rows if day_rows is not None else rows_per_day(frame, spec, n_days, first_day, last_day)
            per_day = row_count(counted_days, cfg, reference, n_days)
            outcomes.append(per_day)
            describe_into(desc, per_day)
            evaluated += 1
    findings = [o.finding(cfg) for o in outcomes if not o.success]
    result_json = report_dir / "validation.json"
    result_json.write_text(json.dumps(phase_results, indent=1, default=str), encoding="utf-8")
    (report_dir / "findings.json").write_text(json.dumps([f.__dict__ for f in findings], indent=1), encoding="utf-8")
    return ValidationReport(
        rows=len(frame),
        findings=findings,
        result_json=str(result_json),
        data_docs=str(report_dir / "data_docs" / "index.html"),
        evaluated=evaluated,
        outcomes=outcomes,
    )


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class _Group:
    """Consecutive staged days validated together."""

    index: int
    days: list[dt.date]
    paths: list[Path]
    day_rows: list[int]  # each day's rows, from the partition footers
    schema: pa.Schema  # what its partitions are read as

    @property
    def rows(self) -> int:
        return sum(self.day_rows)

    @property
    def part(self) -> str:
        return f"part-{self.index:03d}"

    def read(self) -> pd.DataFrame:
        return read_partitions(self.paths, schema=self.schema)


def _day_groups(days: list[dt.date], paths: list[Path], chunk_rows: int) -> list[_Group]:
    """The days in runs of at most ``chunk_rows`` rows (at least one day each), from the Parquet footers.

    A group is read with the whole batch's types (a day whose column is all missing
    reads like the others). A day whose columns differ from the day before (one
    missing, one added, another type) starts a group of its own: the group's schema
    check then names the difference, as it would for the whole batch.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = partition_rows(paths)
    schemas = [pq.read_schema(p) for p in paths]
    try:
        shared: pa.Schema | None = partitions_schema(paths)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        shared = None  # days disagree on a column's type: the type check of that day's group says so
    # Each column's type in the batch, for a group where it is all missing.
    known: dict[str, pa.DataType] = {}
    for f in shared if shared is not None else (f for schema in schemas for f in schema):
        if not pa.types.is_null(f.type):
            known.setdefault(f.name, f.type)

    def fits(types: dict[str, Any], names: set[str], schema: pa.Schema) -> bool:
        return set(schema.names) == names and all(
            pa.types.is_null(f.type) or types.get(f.name, f.type) == f.type for f in schema
        )

    def group_schema(members: list[pa.Schema]) -> pa.Schema:
        if shared is not None and set(members[0].names) == set(shared.names):
            return shared  # the usual case: every day has every column
        own = pa.unify_schemas(members, promote_options="default")
        fields = [pa.field(f.name, known[f.name]) if pa.types.is_null(f.type) and f.name in known else f for f in own]
        return pa.schema(fields, metadata=own.metadata)

    bounds: list[tuple[int, int]] = []
    start, total, types = 0, 0, {}
    for i, (n, schema) in enumerate(zip(rows, schemas, strict=True)):
        if i > start and (total + n > chunk_rows or not fits(types, set(schemas[start].names), schema)):
            bounds.append((start, i))
            start, total, types = i, 0, {}
        total += n
        types.update({f.name: f.type for f in schema if not pa.types.is_null(f.type)})
    bounds.append((start, len(paths)))
    return [_Group(k, days[a:b], paths[a:b], rows[a:b], group_schema(schemas[a:b])) for k, (a, b) in enumerate(bounds)]


def _key_hashes(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, Any]:
    """The key columns of the rows the uniqueness rule considers, and a 64-bit hash of each."""
    sub = frame[keys]
    # Like Great Expectations, skip a row whose keys are all missing.
    sub = sub[sub.notna().any(axis=1).to_numpy()]
    return sub, pd.util.hash_pandas_object(sub, index=False).to_numpy()


def _keys_across_groups(outcomes: list[Outcome], groups: list[_Group], keys: list[str], hashes: list) -> None:
    """Count the rows whose key is also in another group into the uniqueness rule's outcome.

    Each group's suite only sees its own rows. Repeated hashes are candidates; the
    keys themselves, read again from the groups that hold a candidate, decide.
    """
    unique = next((o for o in outcomes if o.rule == UNIQUE and o.error is None), None)
    if unique is None or "unexpected_count" not in unique.result:
        return
    values = np.sort(np.concatenate(hashes))
    repeated = np.unique(values[1:][values[1:] == values[:-1]])
    if not len(repeated):
        return  # distinct hashes: distinct keys
    candidates = []
    for group, h in zip(groups, hashes, strict=True):
        hit = np.isin(h, repeated)
        if hit.any():
            frame = group.read()
            sub, _ = _key_hashes(frame, keys)
            del frame
            candidates.append(sub[hit])
    found = pd.concat(candidates, ignore_index=True)
    duplicated = found[found.duplicated(keep=False)]
    res = unique.result
    unique.success, unique.result = counted(
        unique.kwargs,
        res["element_count"],
        len(duplicated),
        res.get("missing_count"),
        duplicated.head(PARTIAL).to_dict("records"),
    )


def _validate_groups(
    spec: DatasetConfig,
    cfg: ValidateConfig,
    groups: list[_Group],
    report_dir: Path,
    reference: dict[str, Any] | None,
) -> ValidationReport:
    """Validate the groups one at a time, each into ``report_dir/part-NNN``; one report for the batch."""
    keys = [c for c in spec.key_columns if c in spec.schema_]
    # With the time column in the key, groups of whole days cannot share a key (the interval rule
    # holds each group to its days); without it, the groups' keys are compared here.
    across = bool(keys) and spec.time_column not in keys
    for stale in report_dir.glob("part-*"):
        shutil.rmtree(stale)  # an earlier attempt of this run, in other groups
    merged: dict[tuple, Outcome] = {}
    hashes: list = []
    parts: list[dict[str, Any]] = []
    evaluated, stopped = 0, False
    for group in groups:
        frame = group.read()
        part = validate_frame(
            frame,
            spec,
            cfg,
            report_dir / group.part,
            n_days=len(group.days),
            first_day=group.days[0],
            last_day=group.days[-1],
            reference=reference,
            day_rows=dict(zip(group.days, group.day_rows, strict=True)),
        )
        outcomes, stopped = part.outcomes, part.schema_stopped
        if across and not stopped:
            hashes.append(_key_hashes(frame, keys)[1])
        del frame
        gc.collect()  # the suite's objects hold the frame in reference cycles: free it before the next read
        verdict = "passed" if part.success else "failed"
        log.info("%s: %s to %s, %d rows, %s", group.part, group.days[0], group.days[-1], group.rows, verdict)
        parts.append(
            {
                "part": group.part,
                "first_day": group.days[0].isoformat(),
                "last_day": group.days[-1].isoformat(),
                "n_days": len(group.days),
                "rows": group.rows,
                "success": part.success,
                "result_json": part.result_json,
                "data_docs": part.data_docs,
            }
        )
        evaluated = part.evaluated
        merge_into(merged, outcomes)
        if stopped:
            log.info("schema failure in %s: the remaining groups are not validated", group.part)
            break
    outcomes = list(merged.values())
    if stopped:
        outcomes = [o for o in outcomes if o.phase == "schema"]  # as a single pass: no value checks
    elif across:
        _keys_across_groups(outcomes, groups, keys, hashes)
    findings = [o.finding(cfg) for o in outcomes if not o.success]
    result_json = report_dir / "validation.json"
    result_json.write_text(json.dumps(described(outcomes), indent=1, default=str), encoding="utf-8")
    (report_dir / "findings.json").write_text(json.dumps([f.__dict__ for f in findings], indent=1), encoding="utf-8")
    (report_dir / "groups.json").write_text(json.dumps(parts, indent=1), encoding="utf-8")
    report = ValidationReport(
        rows=sum(g.rows for g in groups), findings=findings, result_json=str(result_json), evaluated=evaluated
    )
    report.data_docs = str(docs_index(report_dir, parts, report))
    return report


def log_report(report: ValidationReport, what: str = "validation") -> None:
    """Log a verdict: the head line at INFO, each warning at WARNING (and the verdict at ERROR when it stops).

    A warning inside an INFO line of a passing batch goes unseen: each gets a line of its own at
    WARNING level, which the task log, log alerts and ``grep WARNING`` all show.
    """
    if report.success:
        head = report.summary().splitlines()[0]
        log.info("%s %s; data docs: %s", what, head, report.data_docs)
    else:
        log.error("%s %s\ndata docs: %s", what, report.summary(), report.data_docs)
    for f in report.warnings:
        log.warning("%s warning: %s", what, f.line())


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
    dataset: DatasetConfig,
    cfg: ValidateConfig,
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

    More days than ``validate.chunk_rows`` rows are validated in groups of whole
    days, one in memory at a time, with the verdict and messages of a single pass.
    Each group's result and data docs are in ``report_dir/part-NNN/``; the report's
    ``validation.json``, ``findings.json`` and ``data_docs/index.html`` cover the batch,
    and ``groups.json`` lists the groups.

    Args:
        dataset: the data set: schema, key and time columns.
        cfg: the ``validate`` section: rules, severities, group size.
        staging_dir: the run's staged partitions.
        days: the staged days to gate (ISO dates).
        raw_dir: the published partitions, where a passing batch goes.
        report_dir: where the results and data docs go.
        quarantine_dir: where a failing batch is kept with its report.
        reference: the validation reference (:func:`pipelines.validation.suite.load_validation_reference`).

    Returns:
        The report as a dict, with ``published``: the partitions published.

    Raises:
        ValidationFailed: with one line per failed rule; the batch is in ``quarantine_dir``.
    """
    if not days:
        raise ValueError("validate_batch needs at least one staged day")
    parsed = sorted(dt.date.fromisoformat(d) for d in days)
    paths = [partition_dir(staging_dir, d) / PART_FILE for d in parsed]
    groups = _day_groups(parsed, paths, cfg.chunk_rows)
    if len(groups) == 1:
        report = validate_frame(
            groups[0].read(),
            dataset,
            cfg,
            report_dir,
            n_days=len(parsed),
            first_day=parsed[0],
            last_day=parsed[-1],
            reference=reference,
            day_rows=dict(zip(groups[0].days, groups[0].day_rows, strict=True)),
        )
    else:
        report = _validate_groups(dataset, cfg, groups, report_dir, reference)
    log_report(report)
    if not report.success:
        where = quarantine(staging_dir, report_dir, quarantine_dir)
        message = f"{report.summary()}\nthe batch and its report are quarantined in {where}"
        raise ValidationFailed(message, report)
    published = publish(staging_dir, parsed, raw_dir)
    summary = json.dumps({"warnings": [f.line() for f in report.warnings], "report": report.result_json}, indent=1)
    for d in parsed:
        (partition_dir(raw_dir, d) / "validation.json").write_text(summary, encoding="utf-8")
    return {**report.as_dict(), "published": len(published)}


def release(
    dataset: DatasetConfig,
    cfg: ValidateConfig,
    attempt_dir: Path,
    raw_dir: Path,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
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
        raise ValueError(f"{attempt_dir} holds no staged partition: fix the source and re-run the DAG for that date")
    n = 0
    while (report_dir := attempt_dir / f"release-{n}").exists():
        n += 1
    result = validate_batch(
        dataset, cfg, staging, days, raw_dir, report_dir, attempt_dir / f"release-{n}-rejected", reference=reference
    )
    (attempt_dir / "RELEASED").write_text(json.dumps({"days": days, "report": str(report_dir)}), encoding="utf-8")
    log.info("released %s: %d day(s) published to %s", attempt_dir, len(days), raw_dir)
    return result
