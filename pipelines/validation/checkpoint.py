"""Great Expectations' side of the gate: a suite run as a checkpoint, and the data docs.

Each run has its own ephemeral context, whose data docs site writes into the run's
report folder. A batch validated in groups of days gets an index page of its own
linking each group's data docs.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.validation.results import ValidationReport


def run_suite(frame: pd.DataFrame, name: str, expectations: list, report_dir: Path) -> tuple[bool, list, dict]:
    """Run ``expectations`` on ``frame`` as a checkpoint; its data docs go to ``report_dir/data_docs``.

    Returns:
        Whether every expectation passed, each expectation's result, and the checkpoint's ``describe_dict``.
    """
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
    batch = (
        ctx.data_sources.add_pandas("pipeline").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    )
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


def docs_index(report_dir: Path, parts: list[dict[str, Any]], report: ValidationReport) -> Path:
    """A data docs page for the whole batch: its verdict and a link to each group's data docs.

    Args:
        parts: one entry per group: ``part``, ``first_day``, ``last_day``, ``rows``, ``success``.
        report: the whole batch's report.

    Returns:
        The page, ``report_dir/data_docs/index.html``.
    """
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
