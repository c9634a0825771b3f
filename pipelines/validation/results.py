"""Validation results: each expectation's outcome, their sum over groups of days, the report.

A long batch is validated in groups of whole days. The groups' outcomes add up to
those of the whole batch: counts are summed and the ``mostly`` shares applied to the
sums, the rows of each day gathered under the per-day bounds (:func:`merge`), so the
verdict and the messages are those of a single pass. A failed outcome becomes a
:class:`Finding`, with the severity its ``params.yaml`` rule has; the
:class:`ValidationReport` holds them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pipelines.config import ValidateConfig


@dataclass
class Finding:
    """A failed expectation, as the gate reports it: where, which rule, what broke it, how severe."""

    phase: str  # "schema" or "values"
    rule: str  # the expectation type
    column: str | None
    detail: str
    check: str = "schema"  # the params.yaml rule: schema, nulls, ranges, categories, ...
    severity: str = "stop"  # "stop" or "warn"
    escalated: bool = False  # a warn rule past its escalation level (validate.escalate): it stops

    def line(self) -> str:
        where = f"column '{self.column}'" if self.column else "table"
        severity = "warn escalated to stop" if self.escalated else self.severity
        return f"[{self.phase}] {where}: {self.rule} ({self.check}, {severity}): {self.detail}"


@dataclass
class ValidationReport:
    """One validation's verdict: its findings, where its result and data docs are, every outcome."""

    rows: int
    findings: list[Finding] = field(default_factory=list)
    result_json: str = ""
    data_docs: str = ""
    evaluated: int = 0
    # Every evaluated expectation's outcome, failed or not: what the groups of a long batch add up.
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

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


# The unexpected values a result keeps: the SUMMARY result format's partial list.
PARTIAL = 20
ROW_COUNT = "expect_table_row_count_to_be_between"
UNIQUE = "expect_compound_columns_to_be_unique"


@dataclass
class Outcome:
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
    def of(cls, result: Any, phase: str) -> Outcome:
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

    def measure(self) -> float | None:
        """How badly it failed, as ``validate.escalate`` measures it; None when it has no such figure.

        For a rule counted row by row, the share of the considered rows that break it; for the
        row count, how far outside its bounds the rows are, as a share of the bound crossed.
        """
        res = self.result
        if self.error is not None:
            return None
        if self.rule == ROW_COUNT:
            rows, lo, hi = res.get("observed_value"), self.kwargs.get("min_value"), self.kwargs.get("max_value")
            if rows is None:
                return None
            if isinstance(rows, dict):  # rows per day: the day furthest outside
                apart = [_outside(n, lo, hi) for n in rows.values()]
                known = [a for a in apart if a is not None]
                return max(known) if known else None
            return _outside(rows, lo, hi)
        pct = res.get("unexpected_percent")
        return None if pct is None else float(pct) / 100

    def finding(self, cfg: ValidateConfig) -> Finding:
        severity = "stop" if self.check == "schema" else cfg.severity.get(self.check, "stop")
        detail, escalated = describe(self), False
        if severity == "warn":
            level, measured = cfg.escalation(self.check), self.measure()
            if measured is not None and measured > level:
                severity, escalated = "stop", True
                detail += f"; {measured:.1%} is above the escalation level {level:.1%} (validate.escalate.{self.check})"
        return Finding(self.phase, self.rule, self.column, detail, self.check, severity, escalated)

    def as_dict(self) -> dict[str, Any]:
        """As Great Expectations describes an expectation's result."""
        out = {"expectation_type": self.rule, "success": self.success, "kwargs": self.kwargs, "result": self.result}
        if self.error is not None:
            out["exception_message"] = self.error
        return out


def _outside(rows: int, lo: int | None, hi: int | None) -> float | None:
    """How far a row count lies outside ``[lo, hi]``, as a share of the bound crossed (0: inside)."""
    if lo is not None and rows < lo:
        return (lo - rows) / lo if lo > 0 else None
    if hi is not None and rows > hi:
        return (rows - hi) / hi if hi > 0 else float("inf")
    return 0.0


def rows_per_day_outcome(day_rows: dict[str, int], lo: int, hi: int) -> Outcome:
    """The row-count rule over the days of a batch: each day's rows within ``[lo, hi]``.

    Args:
        day_rows: ISO day -> its rows, every day of the batch (a day without rows counts 0).
        lo: the fewest rows a day may hold.
        hi: the most.

    Returns:
        One outcome for the batch (``validate.row_count``), failed when any day is outside, naming those days.
    """
    success = all(lo <= n <= hi for n in day_rows.values())
    return Outcome(
        "values", ROW_COUNT, None, "row_count", {"min_value": lo, "max_value": hi}, success,
        {"observed_value": dict(day_rows)},
    )  # fmt: skip


def _days_outside(outcome: Outcome) -> str:
    lo, hi = outcome.kwargs.get("min_value"), outcome.kwargs.get("max_value")
    rows = outcome.result["observed_value"]
    outside = [(day, n) for day, n in rows.items() if not lo <= n <= hi]
    days = "; ".join(f"day {day}: {n} rows" for day, n in outside[:12])
    more = f"; and {len(outside) - 12} more day(s)" if len(outside) > 12 else ""
    return f"expected {lo} to {hi} rows per day; {len(outside)} of {len(rows)} day(s) outside: {days}{more}"


def describe(outcome: Outcome) -> str:
    """A failed outcome in one readable line: the rule, how many rows break it, a few of their values."""
    kwargs = {k: v for k, v in outcome.kwargs.items() if k not in ("batch_id", "column")}
    res = outcome.result
    if outcome.error is not None:
        return f"could not be evaluated: {outcome.error}"
    if outcome.rule == ROW_COUNT and isinstance(res.get("observed_value"), dict):
        return _days_outside(outcome)
    if outcome.rule == "expect_table_columns_to_match_set" and isinstance(res.get("observed_value"), list):
        expected, observed = set(kwargs.get("column_set") or []), set(res["observed_value"])
        return f"missing columns {sorted(expected - observed)}, unexpected columns {sorted(observed - expected)}"
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


def counted(
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
        "partial_unexpected_list": sample[:PARTIAL],
    }
    if missing is not None:
        result["missing_count"] = missing
    return bool(success), result


def _bound(a: Any, b: Any, pick: Any) -> Any:
    try:
        return pick(a, b)
    except TypeError:  # None, or values that do not compare
        return a


def merge(a: Outcome, b: Outcome) -> Outcome:
    """The outcome of an expectation over two groups of days, from each group's outcome."""
    if a.error is not None or b.error is not None:
        return a if a.error is not None else b
    ra, rb = a.result, b.result
    kwargs = dict(a.kwargs)
    if a.rule == ROW_COUNT and isinstance(ra.get("observed_value"), dict):
        # Rows per day: each group counted its own days against the same per-day bounds.
        rows = {**ra["observed_value"], **rb["observed_value"]}
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        return replace(a, success=all(lo <= n <= hi for n in rows.values()), result={"observed_value": rows})
    if a.rule == ROW_COUNT:
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
        success, result = counted(
            kwargs,
            ra["element_count"] + rb["element_count"],
            ra["unexpected_count"] + rb["unexpected_count"],
            ra.get("missing_count", 0) + rb.get("missing_count", 0) if has_missing else None,
            (ra.get("partial_unexpected_list") or []) + (rb.get("partial_unexpected_list") or []),
        )
        return replace(a, kwargs=kwargs, success=success, result=result)
    # Anything else (a column's type, the column set): failed where any group failed, as it did first.
    return a if not a.success or b.success else b


def merge_into(merged: dict[tuple, Outcome], outcomes: list[Outcome]) -> None:
    """Add a group's outcomes into ``merged``, matching each to the same expectation of the groups before."""
    seen: Counter = Counter()
    for o in outcomes:
        base = (o.phase, o.rule, o.column, o.check)
        key = (*base, seen[base])
        seen[base] += 1
        merged[key] = merge(merged[key], o) if key in merged else o


def described(outcomes: list[Outcome]) -> dict[str, Any]:
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
