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

A long batch (a first run, a backfill) is validated in groups of whole days of
at most ``validate.chunk_rows`` rows, one group in memory at a time. The groups'
results add up to those of the whole batch (counts are summed, the ``mostly``
shares and the row-count bounds applied to the sums, duplicate keys looked for
across groups), so the verdict and the messages are those of a single pass; only
the interval rule is stricter, holding each group to its own days. Each group
leaves its own result and data docs in ``part-NNN/`` of the report folder, under
a result and an index that cover the batch.
"""

from __future__ import annotations

import datetime as dt
import gc
import html
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.config import DatasetConfig, Params, ValidateConfig
from pipelines.data.partitions import PART_FILE, partition_dir, partition_rows, partitions_schema, read_partitions
from pipelines.errors import ValidationFailed
from pipelines.steps.preprocess import REFERENCE_FILE

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# pandas dtypes accepted for each kind of column in ``dataset.schema``.
_TYPES: dict[str, list[str]] = {
    "int": ["int64", "int32", "int16", "int8", "Int64", "Int32"],
    # Integers are fine where floats are expected: a CSV column of whole numbers reads as int.
    "float": ["float64", "float32", "Float64", "int64", "int32", "Int64"],
    "string": ["object", "string", "str", "category"],
    "date": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


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
    # Every evaluated expectation's outcome, failed or not: what the groups of a long batch add up.
    outcomes: list[_Outcome] = field(default_factory=list, repr=False)

    @property
    def schema_stopped(self) -> bool:
        """The schema phase failed, so the value checks did not run."""
        return any(o.phase == "schema" and not o.success for o in self.outcomes)

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


# The unexpected values a result keeps: the SUMMARY result format's partial list.
_PARTIAL = 20
_ROW_COUNT = "expect_table_row_count_to_be_between"
_UNIQUE = "expect_compound_columns_to_be_unique"


@dataclass
class _Outcome:
    """One expectation's result, in a form that adds up over the groups of a batch."""

    phase: str
    rule: str  # the expectation type
    column: str | None
    check: str  # the params.yaml rule
    kwargs: dict[str, Any]
    success: bool
    result: dict[str, Any]
    error: str | None = None  # why it could not be evaluated

    @classmethod
    def of(cls, result: Any, phase: str) -> _Outcome:
        exp = result.expectation_config
        info = result.exception_info or {}
        return cls(
            phase=phase,
            rule=exp.type,
            column=exp.kwargs.get("column"),
            check=(exp.meta or {}).get("rule", phase),
            kwargs=dict(exp.kwargs),
            success=bool(result.success),
            result=dict(result.result or {}),
            error=str(info.get("exception_message")) if info.get("raised_exception") else None,
        )

    def finding(self, cfg: ValidateConfig) -> Finding:
        severity = "stop" if self.check == "schema" else cfg.severity.get(self.check, "stop")
        return Finding(self.phase, self.rule, self.column, _describe(self), self.check, severity)

    def as_dict(self) -> dict[str, Any]:
        """As Great Expectations describes an expectation's result."""
        out = {"expectation_type": self.rule, "success": self.success, "kwargs": self.kwargs, "result": self.result}
        if self.error is not None:
            out["exception_message"] = self.error
        return out


def _describe(outcome: _Outcome) -> str:
    kwargs = {k: v for k, v in outcome.kwargs.items() if k not in ("batch_id", "column")}
    res = outcome.result
    if outcome.error is not None:
        return f"could not be evaluated: {outcome.error}"
    if outcome.rule == "expect_table_columns_to_match_set" and isinstance(res.get("observed_value"), list):
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


def _counted(
    kwargs: dict[str, Any], element: int, unexpected: int, missing: int | None, sample: list
) -> tuple[bool, dict[str, Any]]:
    """Success and result of a row-by-row expectation from its counts, as Great Expectations decides.

    ``missing`` rows (nulls, for most rules) are not considered; ``mostly`` is the share
    of the considered rows that must pass (all of them by default).
    """
    considered = element - (missing or 0)
    mostly = kwargs.get("mostly")
    share = 1.0 if mostly is None else mostly
    success = element == 0 or considered == 0 or (considered - unexpected) / considered >= share
    result: dict[str, Any] = {
        "element_count": element,
        "unexpected_count": unexpected,
        "unexpected_percent": unexpected / considered * 100 if considered else None,
        "partial_unexpected_list": sample[:_PARTIAL],
    }
    if missing is not None:
        result["missing_count"] = missing
    return bool(success), result


def _bound(a: Any, b: Any, pick: Any) -> Any:
    try:
        return pick(a, b)
    except TypeError:  # None, or values that do not compare
        return a


def _merge(a: _Outcome, b: _Outcome) -> _Outcome:
    """The result of an expectation over two groups of days, from each group's result."""
    if a.error is not None or b.error is not None:
        return a if a.error is not None else b
    ra, rb = a.result, b.result
    kwargs = dict(a.kwargs)
    if a.rule == _ROW_COUNT:
        # Each group is held to its own days' bounds: the batch, to their sum.
        for k in ("min_value", "max_value"):
            if a.kwargs.get(k) is not None and b.kwargs.get(k) is not None:
                kwargs[k] = a.kwargs[k] + b.kwargs[k]
        rows = ra["observed_value"] + rb["observed_value"]
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        success = (lo is None or rows >= lo) and (hi is None or rows <= hi)
        return replace(a, kwargs=kwargs, success=success, result={"observed_value": rows})
    if "unexpected_count" in ra and "unexpected_count" in rb:
        # The interval rule bounds each group by its own days: the batch, by the widest.
        kwargs["min_value"] = _bound(a.kwargs.get("min_value"), b.kwargs.get("min_value"), min)
        kwargs["max_value"] = _bound(a.kwargs.get("max_value"), b.kwargs.get("max_value"), max)
        kwargs = {k: v for k, v in kwargs.items() if k in a.kwargs}
        has_missing = "missing_count" in ra or "missing_count" in rb
        success, result = _counted(
            kwargs,
            ra["element_count"] + rb["element_count"],
            ra["unexpected_count"] + rb["unexpected_count"],
            ra.get("missing_count", 0) + rb.get("missing_count", 0) if has_missing else None,
            (ra.get("partial_unexpected_list") or []) + (rb.get("partial_unexpected_list") or []),
        )
        return replace(a, kwargs=kwargs, success=success, result=result)
    # Anything else (a column's type, the column set): failed where any group failed, as it did first.
    return a if not a.success or b.success else b


def _merge_into(merged: dict[tuple, _Outcome], outcomes: list[_Outcome]) -> None:
    seen: Counter = Counter()
    for o in outcomes:
        base = (o.phase, o.rule, o.column, o.check)
        key = (*base, seen[base])
        seen[base] += 1
        merged[key] = _merge(merged[key], o) if key in merged else o


def _described(outcomes: list[_Outcome]) -> dict[str, Any]:
    """Outcomes shaped like a checkpoint's ``describe_dict``, one entry per phase."""
    out: dict[str, Any] = {}
    for phase in ("schema", "values"):
        mine = [o for o in outcomes if o.phase == phase]
        if not mine:
            continue
        ok = sum(o.success for o in mine)
        stats = {
            "evaluated_expectations": len(mine),
            "successful_expectations": ok,
            "unsuccessful_expectations": len(mine) - ok,
        }
        out[phase] = {
            "success": ok == len(mine),
            "statistics": stats,
            "validation_results": [
                {"success": ok == len(mine), "statistics": stats, "expectations": [o.as_dict() for o in mine]}
            ],
        }
    return out


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
    outcomes: list[_Outcome] = []
    described: dict[str, Any] = {}
    evaluated = 0
    for phase, expectations in phases:
        ok, results, desc = _run_suite(frame, f"{spec.name}_{phase}", expectations, report_dir)
        described[phase] = desc
        evaluated += len(results)
        for r in results:
            column = r.expectation_config.kwargs.get("column")
            if column is not None and column not in frame.columns:
                continue  # already reported by the column-set check
            outcomes.append(_Outcome.of(r, phase))
        if not ok and phase == "schema":
            break  # a schema failure makes the value checks meaningless
    findings = [o.finding(cfg) for o in outcomes if not o.success]
    result_json = report_dir / "validation.json"
    result_json.write_text(json.dumps(described, indent=1, default=str), encoding="utf-8")
    (report_dir / "findings.json").write_text(json.dumps([f.__dict__ for f in findings], indent=1), encoding="utf-8")
    return ValidationReport(
        rows=len(frame),
        findings=findings,
        result_json=str(result_json),
        data_docs=str(report_dir / "data_docs" / "index.html"),
        evaluated=evaluated,
        outcomes=outcomes,
    )


def load_reference(processed_dir: Path) -> dict[str, Any] | None:
    """Reference statistics of the latest training data, if a run has published them."""
    path = processed_dir / REFERENCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class _Group:
    """Consecutive staged days validated together."""

    index: int
    days: list[dt.date]
    paths: list[Path]
    rows: int
    schema: pa.Schema  # what its partitions are read as

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
    return [
        _Group(k, days[a:b], paths[a:b], sum(rows[a:b]), group_schema(schemas[a:b])) for k, (a, b) in enumerate(bounds)
    ]


def _key_hashes(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, Any]:
    """The key columns of the rows the uniqueness rule considers, and a 64-bit hash of each."""
    sub = frame[keys]
    # Like Great Expectations, skip a row whose keys are all missing.
    sub = sub[sub.notna().any(axis=1).to_numpy()]
    return sub, pd.util.hash_pandas_object(sub, index=False).to_numpy()


def _keys_across_groups(outcomes: list[_Outcome], groups: list[_Group], keys: list[str], hashes: list) -> None:
    """Count the rows whose key is also in another group into the uniqueness rule's outcome.

    Each group's suite only sees its own rows. Repeated hashes are candidates; the
    keys themselves, read again from the groups that hold a candidate, decide.
    """
    unique = next((o for o in outcomes if o.rule == _UNIQUE and o.error is None), None)
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
    unique.success, unique.result = _counted(
        unique.kwargs,
        res["element_count"],
        len(duplicated),
        res.get("missing_count"),
        duplicated.head(_PARTIAL).to_dict("records"),
    )


def _docs_index(report_dir: Path, parts: list[dict[str, Any]], report: ValidationReport) -> Path:
    """A data docs page for the whole batch: its verdict and a link to each group's data docs."""
    rows = "\n".join(
        f'<tr><td><a href="../{p["part"]}/data_docs/index.html">{p["part"]}</a></td>'
        f"<td>{p['first_day']} to {p['last_day']}</td><td>{p['rows']}</td>"
        f"<td>{'passed' if p['success'] else 'failed'}</td></tr>"
        for p in parts
    )
    page = (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>Validation</title></head><body>\n'
        "<h1>Validation of a batch in groups of days</h1>\n"
        f"<pre>{html.escape(report.summary())}</pre>\n"
        "<table><tr><th>group</th><th>days</th><th>rows</th><th>group's own result</th></tr>\n"
        f"{rows}\n</table>\n</body></html>\n"
    )
    path = report_dir / "data_docs" / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


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
    merged: dict[tuple, _Outcome] = {}
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
        _merge_into(merged, outcomes)
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
    result_json.write_text(json.dumps(_described(outcomes), indent=1, default=str), encoding="utf-8")
    (report_dir / "findings.json").write_text(json.dumps([f.__dict__ for f in findings], indent=1), encoding="utf-8")
    (report_dir / "groups.json").write_text(json.dumps(parts, indent=1), encoding="utf-8")
    report = ValidationReport(
        rows=sum(g.rows for g in groups), findings=findings, result_json=str(result_json), evaluated=evaluated
    )
    report.data_docs = str(_docs_index(report_dir, parts, report))
    return report


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

    More days than ``validate.chunk_rows`` rows are validated in groups of whole
    days, one in memory at a time, with the verdict and messages of a single pass.
    Each group's result and data docs are in ``report_dir/part-NNN/``; the report's
    ``validation.json``, ``findings.json`` and ``data_docs/index.html`` cover the batch,
    and ``groups.json`` lists the groups.

    Raises:
        ValidationFailed: with one line per failed rule; the batch is in ``quarantine_dir``.
    """
    if not days:
        raise ValueError("validate_batch needs at least one staged day")
    parsed = sorted(dt.date.fromisoformat(d) for d in days)
    paths = [partition_dir(staging_dir, d) / PART_FILE for d in parsed]
    groups = _day_groups(parsed, paths, params.validate_.chunk_rows)
    if len(groups) == 1:
        report = validate_frame(
            groups[0].read(),
            params.dataset,
            params.validate_,
            report_dir,
            n_days=len(parsed),
            first_day=parsed[0],
            last_day=parsed[-1],
            reference=reference,
        )
    else:
        report = _validate_groups(params.dataset, params.validate_, groups, report_dir, reference)
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
