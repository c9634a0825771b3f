"""The version_data step: record the pipeline's data sets with DVC on a dedicated git branch.

A *dataset version* is a git commit on the ``datasets`` branch (name
configurable) whose tree is the code at the developer's ``HEAD`` plus the DVC
pointer files (``data/raw.dvc``, ...), the DVC project files and ``dvc.lock``
when present. The bytes live in the DVC cache and the remote; the commit
names them. Recording never touches the developer's checked-out branch, index
or working tree:

* the commit is built with git plumbing in a temporary index
  (``GIT_INDEX_FILE``), and the branch ref is moved with ``git update-ref``
  (compare-and-swap on the previous tip) only after ``dvc push`` succeeded;
* ``dvc add`` writes the pointer files next to the data, where DVC insists on
  them, and refuses pointer files that git ignores, so they cannot be hidden
  with a ``.gitignore`` rule. Each file ``dvc add`` may write (the pointers,
  the ``.gitignore`` beside each data folder) is therefore put back exactly as
  it was when the call returns, on success and on failure: the developer's
  ``git status`` is the same before and after. The pointers' contents are in
  the returned :class:`DatasetVersion` and in the commit.

:func:`version_data` is the step (publish the run's processed data, record the
version, push the branch); :func:`record_dataset_version` records one version;
a data scientist on another machine gets it back with
:func:`restore_dataset_version` (``git clone``, ``git checkout``, ``dvc pull``).
The git and DVC commands, the repository lock and the remotes are in
:mod:`pipelines.data.dvc_repo`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.data import dvc_repo
from pipelines.data.dvc_repo import DEFAULT_REMOTE_NAME, default_remote_endpoint, default_remote_url, dvc_lock
from pipelines.errors import VersioningError

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "datasets"


@dataclasses.dataclass(frozen=True)
class DatasetVersion:
    """One recorded dataset version.

    Attributes:
        git_rev: the commit on ``branch`` holding the pointer files.
        branch: the dataset branch.
        tag: the tag on ``git_rev``, if one was asked for.
        content_hash: ``sha256:`` of the (path, DVC hash) of every output: equal for equal bytes.
        pointers: repository path of each pointer file -> the DVC hash of its output.
    """

    git_rev: str
    branch: str
    tag: str | None
    content_hash: str
    pointers: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the step


def version_data(
    params: Params,
    window_end: dt.date,
    note: str,
    *,
    repo: Path,
    raw_dir: Path,
    published_dir: Path,
    processed_dir: Path | None,
    validation: dict[str, Any] | None = None,
    git_remote: str | None = None,
    enabled: bool = True,
) -> DatasetVersion | None:
    """Publish this run's processed data and record it with the raw partitions as a dataset version.

    Under the repository's lock: make ``repo`` a DVC project with the default
    remote (``MLOPS_DVC_REMOTE_URL``), check the remote before anything is
    written, bring the dataset branch up to ``git_remote``'s, publish
    ``processed_dir`` to ``published_dir``, record both folders (pushed to the
    remote, pointers committed on the branch with the run's effective
    ``params.yaml`` and a datasheet), then push the branch to ``git_remote``.

    Args:
        params: the run's effective params: the version's ``params.yaml`` is all of it
            (so ``dvc repro`` there runs what the run ran), and its datasheet reads it.
        window_end: the last day of the training window, in the source's calendar.
        note: which run records it (``<dag id> run <run id>``), for the commit and the params' header.
        repo: the DVC repository's top folder; ``raw_dir`` and ``published_dir`` lie inside it.
        raw_dir: the published raw partitions (``data/raw``).
        published_dir: where processed data is published (``data/processed``).
        processed_dir: this run's processed data; None in a run that did not preprocess
            (``train.retrain: on_demand``): the version then holds the raw partitions only,
            and ``published_dir`` keeps the champion's training data (the reference the
            next validations learn from).
        validation: the validation report of the run's batch, for the datasheet.
        git_remote: a git remote the dataset branch is synced from and pushed to; None: local only.
        enabled: False (``MLOPS_VERSIONING=off``) publishes the processed data and records nothing.

    Returns:
        The recorded version, or None when ``enabled`` is False.

    Raises:
        VersioningError: the data lies outside ``repo``, or the remote is unusable: unreachable,
            refusing us, or a local remote that no longer holds the versions the dataset branch
            records (``published_dir`` is then left as it was, and nothing is pushed).
        TransientVersioningError: a push failed on the way to a usable remote (retried by Airflow).
    """
    if not enabled:
        if processed_dir is not None:
            # Still published: the next run's validation learns from its reference statistics.
            publish(processed_dir, published_dir)
        log.warning("MLOPS_VERSIONING=off: this run's data is not recorded as a dataset version")
        return None
    from pipelines.data import datasheet

    for folder in (raw_dir, published_dir):
        if not folder.is_relative_to(repo):
            raise VersioningError(
                f"the data folder {folder} is outside the DVC repository {repo}: "
                "set MLOPS_DATA_DIR inside it, MLOPS_DVC_REPO around it, or MLOPS_VERSIONING=off"
            )
    remote_url = default_remote_url()
    with dvc_lock(repo):
        dvc_repo.ensure_dvc(repo)
        dvc_repo.configure_remote(repo, remote_url, endpoint_url=default_remote_endpoint())
        # Before touching the published data: an unreachable remote must leave it as it was.
        dvc_repo.check_default_remote(repo)
        if git_remote:
            dvc_repo.sync_branch(repo, git_remote, DEFAULT_BRANCH)
        # After the sync, so a new clone's first run knows the versions the team recorded.
        dvc_repo.check_remote_holds_versions(repo, dvc_repo.default_remote(repo), DEFAULT_BRANCH)
        if processed_dir is not None:
            publish(processed_dir, published_dir)
        else:
            log.info("this run did not preprocess: the dataset version holds the raw partitions only")
        recorded = [raw_dir] if processed_dir is None else [raw_dir, published_dir]
        shown = published_dir if processed_dir is not None else None
        version = record_dataset_version(
            repo,
            recorded,
            message=f"Dataset for {window_end.isoformat()} ({note}{', raw data only' if processed_dir is None else ''})",
            contents={
                "params.yaml": effective_params_yaml(params, window_end, note),
                "DATASHEET.md": datasheet.render(params, raw_dir, shown, remote_url, validation),
            },
        )
        if git_remote:
            dvc_repo.push_branch(repo, git_remote, version.branch)
    log.info("dataset version %s on branch %s (%s)", version.git_rev, version.branch, version.content_hash)
    return version


def effective_params_yaml(params: Params, window_end: dt.date, note: str) -> str:
    """The params a run actually used, as a ``params.yaml`` that ``dvc repro`` can run with."""
    import yaml

    raw = params.model_dump(by_alias=True, mode="json")
    raw["preprocess"]["window_end"] = window_end.isoformat()
    header = f"# Effective parameters of {note}: params.yaml with the run's overrides and window end.\n"
    return header + yaml.safe_dump(raw, sort_keys=False)


def publish(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src``, swapping folders so readers never see a half copy."""
    staging = dst.with_name(f".{dst.name}.incoming")
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(src, staging)
    if dst.exists():
        dst.rename(old)
    staging.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- record


def _data_targets(repo: Path, paths: list[Path]) -> list[str]:
    if not paths:
        raise VersioningError("no data paths to record")
    targets: list[str] = []
    for p in paths:
        full = (p if Path(p).is_absolute() else repo / p).resolve()
        try:
            rel = full.relative_to(repo)
        except ValueError:
            raise VersioningError(f"{full} is outside the repository {repo}: DVC only tracks data inside it") from None
        if rel == Path(".") or rel.parts[0] in (".git", ".dvc"):
            raise VersioningError(f"{full} cannot be versioned as a data set")
        if not full.exists():
            raise VersioningError(f"{full} does not exist")
        if rel.as_posix() not in targets:
            targets.append(rel.as_posix())
    return targets


def _snapshot(files: list[Path]) -> dict[Path, bytes | None]:
    return {f: f.read_bytes() if f.is_file() else None for f in files}


def _restore(snapshot: dict[Path, bytes | None]) -> None:
    for f, content in snapshot.items():
        if content is None:
            f.unlink(missing_ok=True)
        elif not f.is_file() or f.read_bytes() != content:
            f.write_bytes(content)


def _pointer_hashes(repo: Path, pointer: str) -> dict[str, str]:
    """Output path (repository-relative) -> DVC hash, from one ``.dvc`` file."""
    import yaml

    text = (repo / pointer).read_text(encoding="utf-8")
    outs = (yaml.safe_load(text) or {}).get("outs") or []
    hashes = {}
    for out in outs:
        value = out.get("md5") or out.get("etag") or out.get("checksum")
        if not value:
            raise VersioningError(f"{pointer} has an output without a hash: {out}")
        hashes[(Path(pointer).parent / out["path"]).as_posix()] = str(value)
    if not hashes:
        raise VersioningError(f"{pointer} lists no output")
    return hashes


def _checked_out_branches(repo: Path) -> set[str]:
    out = dvc_repo.git(repo, "worktree", "list", "--porcelain")
    return {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("branch ")}


def _commit_tree(
    repo: Path,
    files: list[str],
    parents: list[str],
    message: str,
    previous: str | None,
    contents: Mapping[str, str] | None = None,
) -> str:
    """Commit HEAD's tree plus ``files`` (from the work tree) and ``contents`` (path -> text),
    without touching the real index.

    Returns ``previous`` itself when its tree is the same (same code, same data).
    """
    import tempfile

    git_dir = Path(dvc_repo.git(repo, "rev-parse", "--absolute-git-dir"))
    with tempfile.TemporaryDirectory(dir=git_dir, prefix="flights-mlops-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        dvc_repo.git(repo, "read-tree", "HEAD", env=env)
        blobs = dvc_repo.git(repo, "hash-object", "-w", "--", *files).split()
        entries = "".join(f"100644 {blob}\t{path}\n" for blob, path in zip(blobs, files, strict=True))
        for path, text in (contents or {}).items():
            blob = dvc_repo.git(repo, "hash-object", "-w", "--stdin", stdin=text)
            entries += f"100644 {blob}\t{path}\n"
        dvc_repo.git(repo, "update-index", "--add", "--index-info", env=env, stdin=entries)
        tree = dvc_repo.git(repo, "write-tree", env=env)
    if previous is not None and dvc_repo.git(repo, "rev-parse", f"{previous}^{{tree}}") == tree:
        return previous
    args = [arg for p in parents for arg in ("-p", p)]
    return dvc_repo.git(repo, "commit-tree", tree, *args, "-F", "-", env=dvc_repo.identity_env(repo), stdin=message)


def record_dataset_version(
    repo: Path,
    paths: list[Path],
    *,
    message: str,
    tag: str | None = None,
    branch: str = DEFAULT_BRANCH,
    contents: Mapping[str, str] | None = None,
) -> DatasetVersion:
    """Version data folders with DVC and commit their pointers on the dataset branch.

    ``dvc add`` the paths, ``dvc push`` them to the default remote, then commit
    HEAD's tree plus the pointer files (and the DVC project files, ``dvc.lock``
    and any ``.gitignore`` DVC wrote) on ``branch``, with parents [previous tip
    of ``branch``, HEAD] (HEAD left out when the tip already descends from it).
    The branch moves only after a successful push; recording the same data on
    the same code again returns the existing version (Airflow retries are safe).
    The developer's branch, index and working tree are left as they were.

    Args:
        repo: the repository's top folder, a DVC project with a default remote.
        paths: data files or folders inside ``repo`` (absolute, or relative to it).
        message: the commit message.
        tag: an annotated tag to put on the version; it may already exist only on that same commit.
        branch: the dataset branch, never the one checked out.
        contents: files to put in the version as given (path -> text), e.g. the run's
            effective ``params.yaml``, so that ``dvc repro`` there uses what the run used.

    Returns:
        The version: commit, branch, tag, content hash and pointer hashes.

    Raises:
        VersioningError: a path, the remote, DVC or git failed; nothing recorded.
        TransientVersioningError: the push failed on the way to a usable remote; nothing recorded.
    """
    repo = dvc_repo.toplevel(repo)
    targets = _data_targets(repo, paths)
    if dvc_repo.git_ok(repo, "check-ref-format", "--branch", branch) is None:
        raise VersioningError(f"{branch!r} is not a valid branch name")
    if tag is not None and dvc_repo.git_ok(repo, "check-ref-format", f"refs/tags/{tag}") is None:
        raise VersioningError(f"{tag!r} is not a valid tag name")
    pointers = [f"{t}.dvc" for t in targets]
    with dvc_lock(repo):
        if not (repo / ".dvc" / "config").is_file():
            raise VersioningError(f"{repo} is not a DVC project: call ensure_dvc and configure_remote first")
        head = dvc_repo.git_ok(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        if head is None:
            raise VersioningError(f"{repo} has no commit yet: a dataset version records the code at HEAD")
        if f"refs/heads/{branch}" in _checked_out_branches(repo):
            raise VersioningError(
                f"branch {branch!r} is checked out in a work tree of {repo}; record on another branch"
            )
        previous = dvc_repo.git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
        tagged = (
            dvc_repo.git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}") if tag else None
        )
        if tagged is not None and tagged != previous:
            raise VersioningError(f"tag {tag!r} already exists on {tagged}, which is not the tip of {branch!r}")
        remote = dvc_repo.default_remote(repo)
        dvc_repo.check_remote(remote)
        dvc_repo.check_remote_holds_versions(repo, remote, branch)

        touched = [repo / p for p in pointers] + sorted({(repo / t).parent / ".gitignore" for t in targets})
        before = _snapshot(touched)
        try:
            dvc_repo.dvc(repo, "add", "--no-relink", *targets)
            try:
                dvc_repo.dvc(repo, "push", "--remote", remote.name, *pointers)
            except VersioningError as err:
                raise dvc_repo.push_failure(f"dvc push to {remote.describe()} (nothing recorded)", err) from None

            hashes: dict[str, str] = {}
            per_pointer: dict[str, str] = {}
            for p in pointers:
                out_hashes = _pointer_hashes(repo, p)
                hashes.update(out_hashes)
                per_pointer[p] = ",".join(out_hashes.values())
            digest = hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in sorted(hashes.items())).encode())
            content_hash = f"sha256:{digest.hexdigest()}"

            # The .gitignore entries DVC wrote for the data belong in the version (a clone
            # then shows the pulled data as ignored), not in the developer's work tree.
            ignores = [f for f in touched[len(pointers) :] if f.is_file() and f.read_bytes() != before[f]]
            extra = [f for f in (*dvc_repo.DVC_PROJECT_FILES, "dvc.lock") if (repo / f).is_file()]
            files = list(dict.fromkeys([*pointers, *(f.relative_to(repo).as_posix() for f in ignores), *extra]))
            parents = [previous] if previous else []
            if previous is None or dvc_repo.git_ok(repo, "merge-base", "--is-ancestor", head, previous) is None:
                parents.append(head)
            trailers = "".join(f"Dataset-Pointer: {p} {h}\n" for p, h in per_pointer.items())
            body = f"{message.strip()}\n\nDataset-Content-Hash: {content_hash}\n{trailers}"
            commit = _commit_tree(repo, files, parents, body, previous, contents)
        finally:
            _restore(before)

        if tagged is not None and tagged != commit:
            raise VersioningError(f"tag {tag!r} is on {tagged}, not on the new version {commit}; branch not moved")
        if commit != previous:
            # Compare-and-swap: fails, rather than overwrites, if the branch moved meanwhile.
            dvc_repo.git(
                repo,
                "update-ref",
                "-m",
                f"record dataset version: {message.strip()[:60]}",
                f"refs/heads/{branch}",
                commit,
                previous or "",
            )
        if tag is not None and tagged is None:
            dvc_repo.git(
                repo,
                "tag",
                "--annotate",
                "--message",
                message.strip() or tag,
                tag,
                commit,
                env=dvc_repo.identity_env(repo),
            )
    return DatasetVersion(git_rev=commit, branch=branch, tag=tag, content_hash=content_hash, pointers=per_pointer)


# --------------------------------------------------------------------------- restore


def restore_dataset_version(
    repo_url_or_path: str,
    git_rev: str,
    dest: Path,
    remote_url: str | None = None,
    *,
    endpoint_url: str | None = None,
    remote_name: str = DEFAULT_REMOTE_NAME,
) -> Path:
    """Clone the repository at a dataset version and pull its data (what a data scientist runs).

    Args:
        repo_url_or_path: anything ``git clone`` takes.
        git_rev: a dataset commit, tag, or the dataset branch.
        dest: a new (or empty) folder for the clone; removed again if the restore fails.
        remote_url: the DVC remote to pull from, set in the clone's ``.dvc/config.local``;
            None uses the remote committed in the version's ``.dvc/config``, if any.
        endpoint_url: the S3 endpoint of ``remote_url``.
        remote_name: the name given to ``remote_url``.

    Returns:
        ``dest``, holding the code and the data of that version.
    """
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise VersioningError(f"{dest} exists and is not an empty folder")
    created = not dest.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = str(Path(repo_url_or_path).resolve()) if Path(repo_url_or_path).exists() else repo_url_or_path
    try:
        dvc_repo.run_command(["git", "clone", "--quiet", "--no-checkout", source, str(dest)], dest.parent)
        dvc_repo.git(dest, "checkout", "--quiet", git_rev)
        if not (dest / ".dvc" / "config").is_file():
            raise VersioningError(f"{git_rev} of {repo_url_or_path} has no .dvc/config: not a dataset version")
        pointers = dvc_repo.git(dest, "ls-files", "--", "*.dvc").splitlines()
        if not pointers:
            raise VersioningError(f"{git_rev} of {repo_url_or_path} holds no .dvc pointer file")
        if remote_url is not None:
            dvc_repo.configure_remote(dest, remote_url, name=remote_name, endpoint_url=endpoint_url)
        with dvc_lock(dest):
            try:
                dvc_repo.dvc(dest, "pull", *pointers)
            except VersioningError as err:
                try:
                    where = dvc_repo.default_remote(dest).describe()
                except VersioningError as no_remote:
                    where = f"no usable remote ({no_remote}); pass remote_url"
                raise VersioningError(f"dvc pull of {git_rev} from {where} failed: {err}") from None
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
