"""The tuning DAG's steps: a dataset version to search on, and the search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.runner.context import (
    RunContext,
    in_step_worker,
)


def run_check_tuning_data(ctx: RunContext, processed_dir: str | None = None) -> dict[str, Any]:
    """The preprocessed dataset a study would tune on, checked before any model is built (JSON only).

    Args:
        processed_dir: the preprocessed data; None: ``data/processed``, the latest dataset version.
    """
    from pipelines.steps.tune import describe_dataset

    ctx.params  # noqa: B018 - fail on bad params before any work
    return describe_dataset(Path(processed_dir) if processed_dir else ctx.settings.processed_dir)


@in_step_worker
def run_tune(ctx: RunContext, processed_dir: str | None = None) -> dict[str, Any]:
    """The hyper-parameter search (:func:`pipelines.steps.tune.tune`) on a preprocessed dataset.

    Args:
        processed_dir: the preprocessed data to tune on; None: ``data/processed``, the latest
            dataset version (``dvc checkout`` or ``python -m pipelines data pull`` for another).
    """
    import dataclasses

    from pipelines.steps.tune import tune

    params = ctx.params
    return tune(
        params.dataset,
        params.preprocess,
        params.train,
        params.tune,
        Path(processed_dir) if processed_dir else ctx.settings.processed_dir,
        ctx.run_dir / "tune",
        dataclasses.replace(ctx.tracking, experiment=params.tune.experiment),
    )
