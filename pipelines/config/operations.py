"""The sections of what runs around the model: register (the gate), predict, mlflow, monitor and serve."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipelines.config.base import Section


class CanaryConfig(Section):
    """The batch canary: the challenger scored beside the champion on the next day's rows before the alias moves."""

    # The two models' decisions (at the evaluation's threshold) must agree on at least this share of the
    # rows for the challenger to be promoted; null: no canary (and no agreement bar for the shadow period).
    min_agreement: Annotated[float | None, Field(ge=0, le=1)] = None
    # Scored on a seeded sample of at most this many of the day's rows: the register step's time stays bounded.
    max_rows: Annotated[int, Field(ge=100)] = 100_000
    seed: int = 0


class RegisterConfig(Section):
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


class SqlSink(Section):
    """Where batch predictions are also upserted (keyed by the data set's key columns, else its row id)."""

    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "predictions"
    url: str | None = None  # environment variables are expanded, e.g. postgresql+psycopg2://${PGUSER}@host/db
    conn_id: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> SqlSink:
        if (self.url is None) == (self.conn_id is None):
            raise ValueError("set exactly one of 'url' or 'conn_id'")
        return self


class PredictConfig(Section):
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


class MlflowConfig(Section):
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


class MonitorConfig(Section):
    """Drift and performance monitoring of the champion, and when it asks for retraining."""

    class Drift(Section):
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

    class PredictionDrift(Section):
        """The champion's recent probabilities against its probabilities on the reference."""

        method: DriftMethod = "wasserstein"
        threshold: Annotated[float, Field(gt=0)] = 1.0
        retrain: bool = False  # reported always; a reason to retrain only when true
        min_rows: Annotated[int, Field(ge=1)] = 1000

    class Performance(Section):
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

    class Alerts(Section):
        """Where notifications go: a log line and a file by default, and a webhook when a URL is set."""

        channels: tuple[Literal["log", "file"], ...] = ("log", "file")
        # A URL is a secret more often than not: MLOPS_ALERT_WEBHOOK_URL takes precedence.
        webhook_url: Annotated[str | None, Field(pattern=r"^https?://")] = None
        # "package.module:function", called with each alert (a dict) after the channels.
        callback: Annotated[str | None, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] = None
        timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0

    class Served(Section):
        """What the prediction service answered (``data/served/``): drift, the shadow, online performance."""

        # Served rows matched to their published labels needed before online performance is reported.
        min_labelled_rows: Annotated[int, Field(ge=1)] = 200

    class Compute(Section):
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


class ServeConfig(Section):
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
