"""Model specs, reviewed and versioned: each version's effective params and their diff against the champion's.

The register step logs the run's effective parameters (``params.yaml`` with the run's
overrides applied) beside the model as ``model_spec/v<N>/params.yaml``, and the diff
against the parameters the current champion was trained with as
``model_spec/v<N>/params_diff.json``, with a one-line summary in the version's
``spec.params_diff`` tag and in its model card. The champion's parameters come from its
own ``model_spec`` artifact; a champion registered before these were logged falls back to
its MLflow run's params (the ``train`` and ``preprocess`` sections only, which the train
step logs), and the diff says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPEC_DIR = "model_spec"
PARAMS_FILE = "params.yaml"
DIFF_FILE = "params_diff.json"
PARAMS_URI_TAG = "spec.params_uri"
DIFF_TAG = "spec.params_diff"
# The sections the train step logs as MLflow run params (``section.key[.subkey]``): the fallback's scope.
_RUN_PARAM_SECTIONS = ("train", "preprocess")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as ``{dotted.key: JSON value}``; lists and scalars are leaves."""
    out: dict[str, str] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = json.dumps(value, sort_keys=True, default=str)
    return out


def _run_param_form(params: Mapping[str, Any]) -> dict[str, str]:
    """``train`` and ``preprocess`` as the train step logs them to MLflow: ``str()`` of each value, one level deep.

    The values are those of the parsed sections (tuples stay tuples), as the train step sees them.
    """
    from pipelines.config import parse_params

    parsed = parse_params(dict(params)).model_dump(by_alias=True)
    out = {}
    for section in _RUN_PARAM_SECTIONS:
        for key, value in parsed[section].items():
            if isinstance(value, dict):
                out.update({f"{section}.{key}.{k2}": str(v2) for k2, v2 in value.items()})
            else:
                out[f"{section}.{key}"] = str(value)
    return out


@dataclass(frozen=True)
class ParamsDiff:
    """Keys whose values differ (old, new), keys only in the new params, keys only in the champion's."""

    champion_version: str | None
    source: str  # where the champion's params came from
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not (self.changed or self.added or self.removed)

    def summary(self, limit: int = 6) -> str:
        """One line: what changed against whom (the first ``limit`` keys named)."""
        if self.champion_version is None:
            return f"no champion to compare with ({self.source})"
        if self.identical:
            return f"params identical to champion v{self.champion_version}'s ({self.source})"
        items = [f"{k} {old} -> {new}" for k, (old, new) in sorted(self.changed.items())]
        items += [f"{k} added" for k in sorted(self.added)] + [f"{k} removed" for k in sorted(self.removed)]
        shown = ", ".join(items[:limit]) + (f", and {len(items) - limit} more" if len(items) > limit else "")
        counts = f"{len(self.changed)} changed, {len(self.added)} added, {len(self.removed)} removed"
        return f"vs champion v{self.champion_version} ({self.source}): {counts}: {shown}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": {k: {"champion": o, "this": n} for k, (o, n) in self.changed.items()}}


def diff_params(
    old: Mapping[str, str], new: Mapping[str, str], champion_version: str | None, source: str
) -> ParamsDiff:
    """The difference of two flat params mappings (the champion's, this version's)."""
    return ParamsDiff(
        champion_version=champion_version,
        source=source,
        changed={k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]},
        added={k: new[k] for k in sorted(new.keys() - old.keys())},
        removed={k: old[k] for k in sorted(old.keys() - new.keys())},
    )


def champion_params_diff(
    client: Any, name: str, champion: str | None, effective: Mapping[str, Any], tracking_uri: str
) -> ParamsDiff:
    """Diff ``effective`` (this version's params, nested) against the champion's own.

    From the champion's ``params.yaml`` artifact; without one, or when it cannot be read (the
    summary then says why), from its MLflow run's ``train`` and ``preprocess`` params.
    """
    import yaml

    if champion is None:
        return ParamsDiff(champion_version=None, source="first version")
    mv = client.get_model_version(name, champion)
    uri = mv.tags.get(PARAMS_URI_TAG)
    fallback = "its MLflow run's train and preprocess params"
    if uri:
        import mlflow

        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
            theirs = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
            return diff_params(flatten(theirs), flatten(effective), champion, f"its {PARAMS_FILE}")
        except Exception as err:  # the run's params still say what matters most; the summary says why
            log.warning("champion v%s's params (%s) cannot be read: %s; comparing its run's params", champion, uri, err)
            fallback = f"{fallback}: its {PARAMS_FILE} could not be read ({type(err).__name__})"
    run = client.get_run(mv.run_id) if mv.run_id else None
    logged = {k: v for k, v in (run.data.params if run else {}).items() if k.split(".")[0] in _RUN_PARAM_SECTIONS}
    return diff_params(logged, _run_param_form(effective), champion, fallback)


def record_params(
    client: Any,
    run_id: str,
    name: str,
    version: str,
    effective: Mapping[str, Any],
    champion: str | None,
    tracking_uri: str,
    work_dir: Path,
) -> ParamsDiff:
    """Log the version's effective params and their diff against the champion's; tag the version.

    Args:
        client: an MLflow client of the registry.
        run_id: the run the version was logged in (the artifacts go there, under ``model_spec/v<N>``).
        name, version: the registered version.
        effective: the run's effective params (``Params.model_dump(mode="json", by_alias=True)``).
        champion: the champion's version before this one, or None.
        tracking_uri: the MLflow tracking URI.
        work_dir: scratch for the two files.

    Returns:
        The diff.
    """
    import yaml

    diff = champion_params_diff(client, name, champion, effective, tracking_uri)
    folder = work_dir / SPEC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARAMS_FILE).write_text(yaml.safe_dump(dict(effective), sort_keys=False), encoding="utf-8")
    (folder / DIFF_FILE).write_text(json.dumps(diff.as_dict(), indent=1), encoding="utf-8")
    artifact_dir = f"{SPEC_DIR}/v{version}"
    client.log_artifact(run_id, str(folder / PARAMS_FILE), artifact_dir)
    client.log_artifact(run_id, str(folder / DIFF_FILE), artifact_dir)
    client.set_model_version_tag(name, version, PARAMS_URI_TAG, f"runs:/{run_id}/{artifact_dir}/{PARAMS_FILE}")
    client.set_model_version_tag(name, version, DIFF_TAG, diff.summary()[:500])
    log.info("v%s params %s", version, diff.summary())
    return diff
