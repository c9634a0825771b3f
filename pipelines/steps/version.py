"""Versioning: record the pipeline's data sets with DVC on a dedicated git branch.

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

A data scientist on another machine gets a version back with
:func:`restore_dataset_version` (``git clone``, ``git checkout``, ``dvc pull``).

DVC runs through its command line, one subprocess per command; every DVC and
git operation on a repository holds :func:`dvc_lock`, so two pipeline runs
never run them at once (DVC itself fails, rather than waits, on its own lock).

Environment variables:
    MLOPS_DVC_REMOTE_URL       the DVC remote (default: ``~/.cache/flights-mlops/dvc-remote``)
    MLOPS_DVC_REMOTE_ENDPOINT  the S3 endpoint of that remote (MinIO, moto); unset for AWS
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
                               S3 credentials, read by DVC from the environment, never written
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.errors import VersioningError

DEFAULT_BRANCH = "datasets"
DEFAULT_REMOTE_NAME = "storage"
LOCK_FILE = "flights-mlops-versioning.lock"  # in the repository's git directory
_DVC_PROJECT_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore")
_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "flights-mlops pipeline",
    "GIT_AUTHOR_EMAIL": "flights-mlops@localhost",
    "GIT_COMMITTER_NAME": "flights-mlops pipeline",
    "GIT_COMMITTER_EMAIL": "flights-mlops@localhost",
}


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


# --------------------------------------------------------------------------- commands


def _explain(stdout: str | None, stderr: str | None, lines: int = 12) -> str:
    text = "\n".join(s for s in (stderr, stdout) if s)
    kept = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and "Having any troubles?" not in ln and "dvc.org/support" not in ln
    ]
    return " | ".join(kept[-lines:]) or "no output"


def _run(
    cmd: list[str],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    what: str | None = None,
) -> str:
    """Run a command, return its stdout; a failure becomes a :class:`VersioningError`."""
    try:
        done = subprocess.run(
            cmd,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        )
    except FileNotFoundError as err:
        raise VersioningError(f"cannot run {cmd[0]!r}: {err}") from None
    except subprocess.CalledProcessError as err:
        raise VersioningError(
            f"`{what or shlex.join(cmd)}` failed in {cwd} (exit {err.returncode}): {_explain(err.stdout, err.stderr)}"
        ) from None
    return done.stdout


def _dvc_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # Analytics would spawn a reporting daemon per command; off whatever the config says.
    return {**os.environ, "DVC_NO_ANALYTICS": "1", **(extra or {})}


def _dvc(repo: Path, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], repo, env=_dvc_env(), what="dvc " + shlex.join(args))


def _git(repo: Path, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None) -> str:
    return _run(["git", *args], repo, env=env, stdin=stdin, what="git " + shlex.join(args)).strip()


def _git_ok(repo: Path, *args: str) -> str | None:
    """stdout of a git query, or None when it answers no (non-zero exit)."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _toplevel(repo: Path) -> Path:
    """The repository's root; ``repo`` must be it (DVC projects live at the top of the work tree)."""
    repo = Path(repo).expanduser().resolve()
    if not repo.is_dir():
        raise VersioningError(f"{repo} is not a directory")
    top = _git_ok(repo, "rev-parse", "--show-toplevel")
    if top is None:
        raise VersioningError(f"{repo} is not inside a git repository (DVC needs one)")
    if Path(top).resolve() != repo:
        raise VersioningError(f"{repo} is not the top of its git work tree ({top})")
    return repo


# --------------------------------------------------------------------------- lock

_held: dict[tuple[str, int], int] = {}
_held_guard = threading.Lock()


def _lock_file(repo: Path) -> Path:
    repo = _toplevel(repo)
    # The git directory exists before `dvc init` (which cannot run over an existing
    # .dvc/), is never committed, and is shared by every process using this repository.
    common = Path(_git(repo, "rev-parse", "--git-common-dir"))
    return (common if common.is_absolute() else repo / common).resolve() / LOCK_FILE


@contextlib.contextmanager
def dvc_lock(repo: Path, timeout: float = 600) -> Iterator[Path]:
    """Hold the repository's versioning lock (``fcntl.flock``) for the ``with`` block.

    Re-entrant within a thread, so a caller may hold it around several of this
    module's functions. The lock file is ``<git dir>/flights-mlops-versioning.lock``.

    Args:
        repo: the repository's top folder.
        timeout: seconds to wait for another holder before giving up.

    Yields:
        The lock file's path.

    Raises:
        TimeoutError: another process or thread held the lock for ``timeout`` seconds.
    """
    import fcntl
    import socket

    path = _lock_file(repo)
    key = (str(path), threading.get_ident())
    with _held_guard:
        reentered = key in _held
        if reentered:
            _held[key] += 1
    if reentered:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key] -= 1
        return

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    holder = path.read_text(encoding="utf-8", errors="replace").strip() or "unknown holder"
                    raise TimeoutError(
                        f"could not acquire the DVC versioning lock {path} within {timeout:g} s: "
                        f"another pipeline run is versioning data in this repository ({holder})"
                    ) from None
                time.sleep(min(0.05, left))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, thread {threading.get_ident()}\n".encode(), 0)
        with _held_guard:
            _held[key] = 1
        try:
            yield path
        finally:
            with _held_guard:
                del _held[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- setup


def _read_ini(path: Path) -> dict[str, dict[str, str]]:
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as err:
        raise VersioningError(f"{path} cannot be parsed: {err}") from None
    return {s: dict(parser[s]) for s in parser.sections()}


def _index_entries(repo: Path, *paths: str) -> dict[str, str]:
    out = _git(repo, "ls-files", "--stage", "--", *paths)
    return {line.split("\t", 1)[1]: line for line in out.splitlines() if "\t" in line}


def ensure_dvc(repo: Path) -> None:
    """Make ``repo`` a DVC project (``dvc init`` once) with analytics and auto-staging off.

    Idempotent. ``dvc init`` stages its files in git; they are unstaged again so
    the developer's index is left as it was: commit ``.dvc/config``,
    ``.dvc/.gitignore`` and ``.dvcignore`` yourself (dataset commits carry them
    either way).
    """
    repo = _toplevel(repo)
    with dvc_lock(repo):
        if not (repo / ".dvc").is_dir():
            before = _index_entries(repo, *_DVC_PROJECT_FILES)
            _dvc(repo, "init", "--quiet")
            after = _index_entries(repo, *_DVC_PROJECT_FILES)
            added = sorted(set(after) - set(before))
            changed = [before[p] for p in before if after.get(p) != before[p]]
            if added:
                _git(repo, "update-index", "--force-remove", "--", *added)
            if changed:
                _git(repo, "update-index", "--index-info", stdin="\n".join(changed) + "\n")
        core = _read_ini(repo / ".dvc" / "config").get("core", {})
        for key in ("analytics", "autostage"):
            if core.get(key, "").lower() != "false":
                _dvc(repo, "config", f"core.{key}", "false")


def default_remote_url(env: Mapping[str, str] | None = None) -> str:
    """``MLOPS_DVC_REMOTE_URL``, else a local folder outside any work tree.

    The local default is ``$XDG_CACHE_HOME/flights-mlops/dvc-remote``, which is
    ``~/.cache/flights-mlops/dvc-remote`` when ``XDG_CACHE_HOME`` is unset.
    """
    env = os.environ if env is None else env
    if env.get("MLOPS_DVC_REMOTE_URL"):
        return env["MLOPS_DVC_REMOTE_URL"]
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return str(Path(cache).expanduser() / "flights-mlops" / "dvc-remote")


def default_remote_endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """``MLOPS_DVC_REMOTE_ENDPOINT`` (an S3 endpoint such as MinIO's), or None."""
    env = os.environ if env is None else env
    return env.get("MLOPS_DVC_REMOTE_ENDPOINT") or None


def _is_local(url: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a bare path (or a Windows drive)


def _local_path(url: str, base: Path) -> Path:
    raw = urlsplit(url).path if url.startswith("file://") else url
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def configure_remote(repo: Path, url: str, *, name: str = DEFAULT_REMOTE_NAME, endpoint_url: str | None = None) -> None:
    """Make ``url`` the default DVC remote of this checkout only (``.dvc/config.local``).

    The local config is git-ignored, so a machine's remote is never committed.
    Credentials are never written: for S3, DVC reads ``AWS_*`` from the environment.

    Args:
        repo: the repository's top folder (a DVC project: see :func:`ensure_dvc`).
        url: a local folder, or an object-store URL (``s3://bucket/prefix``).
        name: the remote's name; an existing remote of that name is replaced.
        endpoint_url: the S3 endpoint (MinIO, moto); S3 URLs only.
    """
    parts = urlsplit(url)
    if endpoint_url is not None and parts.scheme != "s3":
        raise ValueError(f"endpoint_url is for s3:// remotes, not {url!r}")
    for value in (url, endpoint_url):
        if value and (urlsplit(value).username or urlsplit(value).password):
            raise ValueError(f"{value!r} embeds credentials: pass them as AWS_* environment variables")
    repo = _toplevel(repo)
    if _is_local(url):
        url = str(_local_path(url, Path.cwd()))
    with dvc_lock(repo):
        if not (repo / ".dvc" / "config").is_file():
            raise VersioningError(f"{repo} is not a DVC project: call ensure_dvc first")
        # --force replaces the whole section, so no option of an earlier remote of that name survives.
        _dvc(repo, "remote", "add", "--local", "--force", "--default", name, url)
        if endpoint_url:
            _dvc(repo, "remote", "modify", "--local", name, "endpointurl", endpoint_url)


# --------------------------------------------------------------------------- remotes


@dataclasses.dataclass(frozen=True)
class _Remote:
    name: str
    url: str
    endpoint: str | None

    def describe(self) -> str:
        where = f"{self.url}, endpoint {self.endpoint}" if self.endpoint else self.url
        return f"DVC remote '{self.name}' ({where})"


def _default_remote(repo: Path) -> _Remote:
    values: dict[str, tuple[str, str]] = {}
    for line in _dvc(repo, "config", "--list", "--show-origin").splitlines():
        origin, _, setting = line.partition("\t")
        key, sep, value = setting.partition("=")
        if sep:
            values[key.strip()] = (origin.strip(), value.strip())
    name = values.get("core.remote", ("", ""))[1]
    if not name:
        raise VersioningError(
            f"no default DVC remote in {repo}: call configure_remote(repo, default_remote_url()) first"
        )
    if f"remote.{name}.url" not in values:
        raise VersioningError(f"the default DVC remote '{name}' of {repo} is not defined (no remote.{name}.url)")
    origin, url = values[f"remote.{name}.url"]
    if _is_local(url):  # DVC reads a relative path relative to the config file that holds it
        url = str(_local_path(url, (repo / origin).parent))
    endpoint = values.get(f"remote.{name}.endpointurl", ("", ""))[1] or None
    return _Remote(name=name, url=url, endpoint=endpoint)


def check_default_remote(repo: Path) -> str:
    """Fail fast, naming the remote, if the default DVC remote is missing or unreachable.

    Returns:
        A description of the remote (name and URL).
    """
    remote = _default_remote(_toplevel(repo))
    _check_remote(remote)
    return remote.describe()


def _check_remote(remote: _Remote) -> None:
    """Fail before anything is written when the remote obviously cannot take a push."""
    import socket

    if _is_local(remote.url):
        path = Path(remote.url)
        if path.exists() and not path.is_dir():
            raise VersioningError(f"{remote.describe()} is unusable: {path} exists and is not a directory")
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise VersioningError(f"{remote.describe()} is unusable: {parent} is not a writable directory")
        return
    if remote.endpoint:
        ep = urlsplit(remote.endpoint)
        port = ep.port or (443 if ep.scheme == "https" else 80)
        try:
            with socket.create_connection((ep.hostname or "localhost", port), timeout=10):
                pass
        except OSError as err:
            raise VersioningError(f"{remote.describe()} is unreachable: {err}") from None


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


def _identity_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    if _git_ok(repo, "var", "GIT_COMMITTER_IDENT") is None or _git_ok(repo, "var", "GIT_AUTHOR_IDENT") is None:
        for key, value in _FALLBACK_IDENTITY.items():
            env.setdefault(key, value)
    return env


def _checked_out_branches(repo: Path) -> set[str]:
    out = _git(repo, "worktree", "list", "--porcelain")
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

    git_dir = Path(_git(repo, "rev-parse", "--absolute-git-dir"))
    with tempfile.TemporaryDirectory(dir=git_dir, prefix="flights-mlops-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", "HEAD", env=env)
        blobs = _git(repo, "hash-object", "-w", "--", *files).split()
        entries = "".join(f"100644 {blob}\t{path}\n" for blob, path in zip(blobs, files, strict=True))
        for path, text in (contents or {}).items():
            blob = _git(repo, "hash-object", "-w", "--stdin", stdin=text)
            entries += f"100644 {blob}\t{path}\n"
        _git(repo, "update-index", "--add", "--index-info", env=env, stdin=entries)
        tree = _git(repo, "write-tree", env=env)
    if previous is not None and _git(repo, "rev-parse", f"{previous}^{{tree}}") == tree:
        return previous
    args = [arg for p in parents for arg in ("-p", p)]
    return _git(repo, "commit-tree", tree, *args, "-F", "-", env=_identity_env(repo), stdin=message)


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
    """
    repo = _toplevel(repo)
    targets = _data_targets(repo, paths)
    if _git_ok(repo, "check-ref-format", "--branch", branch) is None:
        raise VersioningError(f"{branch!r} is not a valid branch name")
    if tag is not None and _git_ok(repo, "check-ref-format", f"refs/tags/{tag}") is None:
        raise VersioningError(f"{tag!r} is not a valid tag name")
    pointers = [f"{t}.dvc" for t in targets]
    with dvc_lock(repo):
        if not (repo / ".dvc" / "config").is_file():
            raise VersioningError(f"{repo} is not a DVC project: call ensure_dvc and configure_remote first")
        head = _git_ok(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        if head is None:
            raise VersioningError(f"{repo} has no commit yet: a dataset version records the code at HEAD")
        if f"refs/heads/{branch}" in _checked_out_branches(repo):
            raise VersioningError(
                f"branch {branch!r} is checked out in a work tree of {repo}; record on another branch"
            )
        previous = _git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
        tagged = _git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}") if tag else None
        if tagged is not None and tagged != previous:
            raise VersioningError(f"tag {tag!r} already exists on {tagged}, which is not the tip of {branch!r}")
        remote = _default_remote(repo)
        _check_remote(remote)

        touched = [repo / p for p in pointers] + sorted({(repo / t).parent / ".gitignore" for t in targets})
        before = _snapshot(touched)
        try:
            _dvc(repo, "add", "--no-relink", *targets)
            try:
                _dvc(repo, "push", "--remote", remote.name, *pointers)
            except VersioningError as err:
                raise VersioningError(f"dvc push to {remote.describe()} failed; nothing recorded: {err}") from None

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
            extra = [f for f in (*_DVC_PROJECT_FILES, "dvc.lock") if (repo / f).is_file()]
            files = list(dict.fromkeys([*pointers, *(f.relative_to(repo).as_posix() for f in ignores), *extra]))
            parents = [previous] if previous else []
            if previous is None or _git_ok(repo, "merge-base", "--is-ancestor", head, previous) is None:
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
            _git(
                repo,
                "update-ref",
                "-m",
                f"record dataset version: {message.strip()[:60]}",
                f"refs/heads/{branch}",
                commit,
                previous or "",
            )
        if tag is not None and tagged is None:
            _git(repo, "tag", "--annotate", "--message", message.strip() or tag, tag, commit, env=_identity_env(repo))
    return DatasetVersion(git_rev=commit, branch=branch, tag=tag, content_hash=content_hash, pointers=per_pointer)


def sync_branch(repo: Path, remote: str, branch: str = DEFAULT_BRANCH) -> None:
    """Bring the local dataset branch up to the remote's, so new versions go on top of the team's.

    A clone starts without the local branch: it is created from the remote's. A remote without
    the branch yet is fine (the first push creates it).

    Raises:
        VersioningError: the local branch has diverged from the remote's.
    """
    if _git_ok(repo, "ls-remote", "--exit-code", "--heads", remote, branch) is None:
        return
    try:
        _git(repo, "fetch", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}")
    except VersioningError as err:
        raise VersioningError(
            f"the local {branch!r} branch has diverged from {remote!r}'s; reconcile them by hand: {err}"
        ) from None


def push_branch(repo: Path, remote: str, branch: str = DEFAULT_BRANCH) -> None:
    """Push the dataset branch to a git remote, so other clones can check its versions out.

    Raises:
        VersioningError: naming the git remote, if the push fails.
    """
    try:
        _git(repo, "push", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}")
    except VersioningError as err:
        raise VersioningError(f"git push of {branch!r} to remote {remote!r} failed: {err}") from None


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
    import shutil

    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise VersioningError(f"{dest} exists and is not an empty folder")
    created = not dest.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = str(Path(repo_url_or_path).resolve()) if Path(repo_url_or_path).exists() else repo_url_or_path
    try:
        _run(["git", "clone", "--quiet", "--no-checkout", source, str(dest)], dest.parent)
        _git(dest, "checkout", "--quiet", git_rev)
        if not (dest / ".dvc" / "config").is_file():
            raise VersioningError(f"{git_rev} of {repo_url_or_path} has no .dvc/config: not a dataset version")
        pointers = _git(dest, "ls-files", "--", "*.dvc").splitlines()
        if not pointers:
            raise VersioningError(f"{git_rev} of {repo_url_or_path} holds no .dvc pointer file")
        if remote_url is not None:
            configure_remote(dest, remote_url, name=remote_name, endpoint_url=endpoint_url)
        with dvc_lock(dest):
            try:
                _dvc(dest, "pull", *pointers)
            except VersioningError as err:
                try:
                    where = _default_remote(dest).describe()
                except VersioningError as no_remote:
                    where = f"no usable remote ({no_remote}); pass remote_url"
                raise VersioningError(f"dvc pull of {git_rev} from {where} failed: {err}") from None
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
