"""The sections of the steps that make a model: preprocess, train, evaluate and tune."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipelines.config.base import Section


class SplitConfig(Section):
    validation_days: Annotated[int, Field(ge=1)] = 14
    holdout_days: Annotated[int, Field(ge=1)] = 14
    min_train_days: Annotated[int, Field(ge=1)] = 7


class PreprocessConfig(Section):
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


class TrainConfig(Section):
    class Periodic(Section):
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


class BaselineConfig(Section):
    max_iter: Annotated[int, Field(ge=1)] = 200
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    max_leaf_nodes: Annotated[int, Field(ge=2)] = 31
    # Fitted on a seeded sample of at most this many training rows (all of them when fewer):
    # its memory stays flat as the data grows.
    max_rows: Annotated[int, Field(ge=1000)] = 500_000


class HourBuckets(Section):
    column: str = "hour"
    edges: tuple[int, ...] = (0, 6, 12, 18, 24)

    @model_validator(mode="after")
    def _increasing(self) -> HourBuckets:
        if len(self.edges) < 2 or list(self.edges) != sorted(set(self.edges)):
            raise ValueError("edges must be at least two strictly increasing numbers")
        return self


class ImportanceConfig(Section):
    """Permutation importance of each raw feature on the holdout, through the composed model."""

    # Shuffles of each feature's column; the drop is their mean (and its spread their std).
    repeats: Annotated[int, Field(ge=1, le=50)] = 3
    # Scored on a seeded sample of at most this many holdout rows: the cost stays flat as data grows.
    max_rows: Annotated[int, Field(ge=500, le=1_000_000)] = 10_000
    # A feature whose shuffling lowers the holdout AUC by less than this is flagged as not helping.
    min_drop: Annotated[float, Field(ge=0, le=1)] = 0.001


class EvaluateConfig(Section):
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    baseline: BaselineConfig = BaselineConfig()
    slice_columns: tuple[str, ...] = ("carrier", "origin", "month")
    # Hour-of-day slices over a column of hours; null switches them off (a table without such a column).
    hour_buckets: HourBuckets | None = None
    min_slice_rows: Annotated[int, Field(ge=1)] = 200
    # A slice whose AUC is this far below the overall AUC is flagged on the run.
    slice_flag_margin: Annotated[float, Field(ge=0, le=1)] = 0.05
    importance: ImportanceConfig = ImportanceConfig()


class FloatRange(Section):
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


class TuneConfig(Section):
    """The hyper-parameter search (``python -m pipelines tune``, the ``flights_tuning`` DAG).

    Each trial trains ``epochs`` epochs on a preprocessed dataset's training split and is
    scored on its validation split; the current ``train`` values are always trial 0.
    """

    class Space(Section):
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
