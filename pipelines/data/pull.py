"""A registered model's training data, back on disk: what a data scientist asks for by version or alias.

The model version's lineage tags (written by :func:`pipelines.steps.register.dataset_lineage`)
name its dataset version, a commit on the ``datasets`` branch. :func:`pull_model_data`
clones that commit into a folder of its own and pulls its data from the DVC remote
(:func:`pipelines.steps.version.restore_dataset_version`), then checks the processed
splits against the fingerprint the version recorded. ``python -m pipelines data pull``
runs it; :mod:`pipelines.reproduce` starts from it.

The registry is the project's (``MLFLOW_TRACKING_URI``, else the embedded SQLite store
of :func:`pipelines.settings.resolve`); a SQLite store that does not exist is refused
before MLflow opens it, so a mistaken setting never leaves an empty ``mlflow.db`` behind.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError
from pipelines.errors import VersioningError

if TYPE_CHECKING:
    import mlflow

    from pipelines.settings import Settings


@dataclasses.dataclass(frozen=True)
class ModelDataset:
    """The dataset version a model version was trained on, from its lineage tags."""

    model_name: str
    model_version: str
    git_rev: str
    repo: str | None  # the repository the pipeline recorded it in
    data_fingerprint: str | None
    tags: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "tags"}


def registry_client(tracking_uri: str) -> mlflow.MlflowClient:
    """An MLflow client for the registry at ``tracking_uri``, refusing a SQLite store that does not exist.

    Raises:
        ConfigError: the SQLite file is missing (MLflow would create an empty one and
            then report every model version as not found).
    """
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(
                f"no MLflow registry at {path} (tracking URI {tracking_uri}): set MLFLOW_TRACKING_URI to the "
                "team's tracking server, or MLOPS_HOME to the folder holding the pipeline's mlflow/mlflow.db"
            )
    import mlflow

    return mlflow.MlflowClient(tracking_uri, tracking_uri)


def model_dataset(
    client: mlflow.MlflowClient, name: str, *, version: str | None = None, alias: str | None = None
) -> ModelDataset:
    """The dataset version of a model version, given by number or by alias (exactly one).

    Raises:
        ConfigError: the version or alias does not exist, or its data was not versioned.
    """
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise ConfigError("name a model version or an alias, not both or neither")
    which = f"{name} version {version}" if version is not None else f"{name}@{alias}"
    try:
        found = (
            client.get_model_version(name, str(version))
            if version is not None
            else client.get_model_version_by_alias(name, str(alias))
        )
    except MlflowException as err:
        # A missing version is RESOURCE_DOES_NOT_EXIST; a missing alias, INVALID_PARAMETER_VALUE "... not found".
        if err.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(err):
            raise
        numbers = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        known = ", ".join(map(str, numbers)) or "none"
        raise ConfigError(f"{which} is not in the registry at {client.tracking_uri} (versions: {known})") from None
    tags = dict(found.tags)
    rev = tags.get("lineage.dataset_git_rev", "")
    if not rev or rev.startswith("not versioned"):
        raise ConfigError(f"{which} has no dataset version in its lineage ({rev or 'none'})")
    return ModelDataset(
        model_name=name,
        model_version=str(found.version),
        git_rev=rev,
        repo=tags.get("lineage.dvc_repo"),
        data_fingerprint=tags.get("lineage.data_fingerprint"),
        tags=tags,
    )


def _source_repo(dataset: ModelDataset, project: Path) -> str:
    """This checkout when it holds the dataset commit (a teammate's clone), else the recording repository."""
    from pipelines.data import dvc_repo

    candidates = [project] + ([Path(dataset.repo)] if dataset.repo else [])
    for repo in candidates:
        if repo.is_dir() and dvc_repo.git_ok(repo, "cat-file", "-e", f"{dataset.git_rev}^{{commit}}") is not None:
            return str(repo)
    raise VersioningError(
        f"the dataset version {dataset.git_rev} of {dataset.model_name} version {dataset.model_version} is in "
        f"neither {project} nor {dataset.repo}: fetch the datasets branch first (git fetch origin datasets)"
    )


def _remote(project: Path) -> tuple[str | None, str | None]:
    """The DVC remote to pull from: ``MLOPS_DVC_REMOTE_URL``, else this checkout's default remote.

    None leaves the version's own ``.dvc/config`` (the team's remote) in charge.
    """
    from pipelines.data import dvc_repo

    if os.environ.get("MLOPS_DVC_REMOTE_URL"):
        return dvc_repo.default_remote_url(), dvc_repo.default_remote_endpoint()
    if not (project / ".dvc" / "config").is_file():
        return None, None
    try:
        remote = dvc_repo.default_remote(project)  # .dvc/config.local's override, or the team's
    except VersioningError:
        return None, None
    return remote.url, remote.endpoint


@dataclasses.dataclass(frozen=True)
class PulledData:
    """A model version's dataset version, cloned and pulled into ``workdir``."""

    dataset: ModelDataset
    alias: str | None
    workdir: Path
    fingerprint: str  # of the pulled processed splits: equal to the version's

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.dataset.as_dict(),
            "alias": self.alias,
            "workdir": str(self.workdir),
            "fingerprint": self.fingerprint,
        }


def pull_model_data(
    settings: Settings, dest: Path, *, version: str | None = None, alias: str | None = None
) -> PulledData:
    """Clone a model version's dataset version into ``dest`` and pull its data.

    Args:
        settings: the project's settings (tracking URI, params, repository).
        dest: a new (or empty) folder for the clone.
        version: the model version's number; or
        alias: a registry alias (``champion``, ``challenger``).

    Returns:
        The model version with its lineage, the folder and the processed data's fingerprint.

    Raises:
        ConfigError: no registry, an unknown version or alias, or data that was not versioned.
        VersioningError: the commit or its data could not be restored, or the data differs
            from what the version recorded.
    """
    from pipelines.config import load_params
    from pipelines.model.features import files_fingerprint
    from pipelines.steps.version import restore_dataset_version

    name = load_params(settings.params_path).registration.model_name
    dataset = model_dataset(registry_client(settings.tracking_uri), name, version=version, alias=alias)
    source = _source_repo(dataset, settings.dvc_repo)
    remote_url, endpoint = _remote(settings.dvc_repo)
    restore_dataset_version(source, dataset.git_rev, dest, remote_url=remote_url, endpoint_url=endpoint)
    processed = Path(dest) / "data" / "processed"
    pulled = files_fingerprint(processed.glob("splits/*.parquet"), processed)
    if dataset.data_fingerprint and pulled != dataset.data_fingerprint:
        raise VersioningError(
            f"the pulled processed data of {name} version {dataset.model_version} has fingerprint {pulled}, "
            f"the version records {dataset.data_fingerprint}"
        )
    return PulledData(dataset=dataset, alias=alias, workdir=Path(dest).resolve(), fingerprint=pulled)
