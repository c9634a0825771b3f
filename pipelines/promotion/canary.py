"""The batch canary: the challenger scored beside the champion on tomorrow's rows, before the alias moves.

The holdout says how well a model ranks the past; the canary says how differently
it would act on the rows it is about to score. Both registered versions score the
same rows (the day ``batch_predict`` scores next, else the newest collected day)
through the batch scorer's path (``models:/<name>/<version>`` pyfunc, the
signature's dtypes, batches of ``predict.batch_rows``); the figures are the share of
rows whose decisions agree at the evaluation's threshold and the mean absolute
difference of the probabilities. The gate (:func:`pipelines.promotion.canary_reason`)
asks for ``register.canary.min_agreement``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import CanaryConfig, DatasetConfig, PredictConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TAG_PREFIX = "canary."


@dataclass(frozen=True)
class Canary:
    """What the canary found; ``ran`` is False with a ``note`` saying why when there are no figures.

    Not ``applicable`` (no champion, or the challenger is the champion) is not a failure: there is
    nothing to compare with.
    """

    ran: bool
    note: str = ""
    applicable: bool = True
    day: str | None = None
    source: str | None = None  # "next day" (the day batch_predict scores) or "newest collected day"
    rows: int = 0
    agreement: float = float("nan")  # share of rows whose decisions agree at the threshold
    mean_abs_diff: float = float("nan")  # mean |challenger - champion| probability
    threshold: float = float("nan")
    champion_version: str | None = None
    challenger_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """The figures as model version tags (``canary.*``)."""
        if not self.ran:
            return {f"{TAG_PREFIX}note": ("did not run: " if self.applicable else "not applicable: ") + self.note[:480]}
        return {
            f"{TAG_PREFIX}day": str(self.day),
            f"{TAG_PREFIX}source": str(self.source),
            f"{TAG_PREFIX}rows": str(self.rows),
            f"{TAG_PREFIX}agreement": f"{self.agreement:.6f}",
            f"{TAG_PREFIX}mean_abs_diff": f"{self.mean_abs_diff:.6f}",
            f"{TAG_PREFIX}threshold": f"{self.threshold:g}",
            f"{TAG_PREFIX}champion_version": str(self.champion_version),
        }


def compare_scores(challenger: np.ndarray, champion: np.ndarray, threshold: float) -> tuple[float, float]:
    """Decision agreement at ``threshold`` and mean absolute difference of two models' probabilities.

    Raises:
        ValueError: the two score vectors differ in length or are empty.
    """
    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"canary scores must be two vectors of one non-zero length, got {a.shape} and {b.shape}")
    agreement = float(np.mean((a >= threshold) == (b >= threshold)))
    return agreement, float(np.mean(np.abs(a - b)))


def newest_collected_day(raw_dir: Path) -> dt.date | None:
    """The newest published partition's day in ``raw_dir`` (``date=YYYY-MM-DD``), None when there is none."""
    days = sorted(p.name.removeprefix("date=") for p in raw_dir.glob("date=*") if p.is_dir())
    return dt.date.fromisoformat(days[-1]) if days else None


def canary_rows(
    dataset: DatasetConfig, run_day: dt.date, raw_dir: Path, max_rows_per_day: int | None = None
) -> tuple[dt.date, str, pd.DataFrame]:
    """The rows the canary scores: the day ``batch_predict`` scores next, else the newest collected day.

    The next day is fetched from the source as batch scoring fetches it; when the source has
    no such day (past the end of a bounded source, a file not delivered yet) or it holds no rows,
    the newest published partition in ``raw_dir`` is used instead.

    Returns:
        The day, which of the two it is, and its feature columns.

    Raises:
        CollectError: neither day has rows to score.
    """
    from pipelines.data.partitions import partition_path, read_partitions
    from pipelines.errors import CollectError
    from pipelines.steps.collect import fetch_day
    from pipelines.steps.predict import next_day

    features = list(dataset.features.all)
    day = next_day(dataset, run_day)
    why = f"no day after {run_day} in the source"
    if day is not None:
        try:
            frame = fetch_day(dataset, day, max_rows=max_rows_per_day)
            if len(frame):
                return day, "next day", frame[features]
            why = f"the next day {day} has no rows"
        except CollectError as err:
            why = f"the next day {day} could not be fetched ({str(err).splitlines()[0]})"
    newest = newest_collected_day(raw_dir)
    if newest is not None:
        frame = read_partitions([partition_path(raw_dir, newest)], columns=features)
        if len(frame):
            log.info("canary: %s; scoring the newest collected day %s instead", why, newest)
            return newest, "newest collected day", frame
    raise CollectError(f"canary: {why}, and no collected day in {raw_dir} has rows to score")


def score_version(model_name: str, version: str, frame: pd.DataFrame, batch_rows: int, tracking_uri: str) -> np.ndarray:
    """A registered version's probabilities for ``frame``, the way ``batch_predict`` computes them."""
    import mlflow

    from pipelines.steps.predict import score_rows
    from pipelines.tracking import use_tracking

    with use_tracking(tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    return score_rows(model, frame, batch_rows).astype(np.float64)


def run_canary(
    dataset: DatasetConfig,
    cfg: CanaryConfig,
    predict_cfg: PredictConfig,
    model_name: str,
    challenger: str,
    champion: str | None,
    threshold: float,
    run_day: dt.date | None,
    raw_dir: Path | None,
    tracking_uri: str,
    max_rows_per_day: int | None = None,
) -> Canary:
    """Score the next day's rows with the challenger and the champion; never raises for a missing input.

    Args:
        dataset: the source and the feature columns.
        cfg: ``register.canary``: the row cap and its seed.
        predict_cfg: its ``batch_rows`` is the scoring batch, as in batch scoring.
        model_name: the registered model.
        challenger, champion: the two versions (champion None: not applicable).
        threshold: the decision threshold (the evaluation's).
        run_day: the run's data day: the canary scores the day after it.
        raw_dir: the published partitions, for the fallback day.
        tracking_uri: the MLflow tracking and registry URI.
        max_rows_per_day: the most rows a fetched day may hold (``validate.rows_per_day``).

    Returns:
        The figures, or ``ran=False`` with the reason when there is nothing to compare.
    """
    from pipelines.errors import CollectError

    if champion is None:
        return Canary(ran=False, applicable=False, note="no champion to compare with", challenger_version=challenger)
    if champion == challenger:
        return Canary(ran=False, applicable=False, note=f"v{challenger} is the champion", challenger_version=challenger)
    if run_day is None or raw_dir is None:
        return Canary(ran=False, note="no run day to take the next day's rows from", challenger_version=challenger)
    try:
        day, source, frame = canary_rows(dataset, run_day, raw_dir, max_rows_per_day)
    except CollectError as err:
        return Canary(ran=False, note=str(err), challenger_version=challenger, champion_version=champion)
    if len(frame) > cfg.max_rows:
        frame = frame.sample(n=cfg.max_rows, random_state=cfg.seed)
    frame = frame.reset_index(drop=True)
    new = score_version(model_name, challenger, frame, predict_cfg.batch_rows, tracking_uri)
    old = score_version(model_name, champion, frame, predict_cfg.batch_rows, tracking_uri)
    agreement, mean_abs_diff = compare_scores(new, old, threshold)
    canary = Canary(
        ran=True,
        day=day.isoformat(),
        source=source,
        rows=len(frame),
        agreement=agreement,
        mean_abs_diff=mean_abs_diff,
        threshold=threshold,
        champion_version=champion,
        challenger_version=challenger,
    )
    log.info(
        "canary on %s (%s, %d rows): v%s and champion v%s agree on %.2f%% of decisions, mean |diff| %.4f",
        canary.day,
        source,
        canary.rows,
        challenger,
        champion,
        100 * agreement,
        mean_abs_diff,
    )
    return canary
