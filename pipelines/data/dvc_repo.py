"""Git and DVC plumbing for dataset versions: commands, the repository lock, remotes.

DVC runs through its command line, one subprocess per command, and git through
its own; a failure becomes a :class:`pipelines.errors.VersioningError` naming the
command, the folder and what the tool said. Every DVC and git operation on a
repository holds :func:`dvc_lock`, so two pipeline runs never run them at once
(DVC itself fails, rather than waits, on its own lock).

:mod:`pipelines.steps.version` builds the dataset versions on top of this.

Environment variables:
    MLOPS_DVC_REMOTE_URL       the DVC remote (default: ``~/.cache/flights-mlops/dvc-remote``)
    MLOPS_DVC_REMOTE_ENDPOINT  the S3 endpoint of that remote (MinIO, moto); unset for AWS
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
                               S3 credentials, read by DVC from the environment, never written
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.errors import TransientVersioningError, VersioningError

log = logging.getLogger(__name__)

DEFAULT_REMOTE_NAME = "storage"
LOCK_FILE = "flights-mlops-versioning.lock"  # in the repository's git directory
DVC_PROJECT_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore")
_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "flights-mlops pipeline",
    "GIT_AUTHOR_EMAIL": "flights-mlops@localhost",
    "GIT_COMMITTER_NAME": "flights-mlops pipeline",
    "GIT_COMMITTER_EMAIL": "flights-mlops@localhost",
}


# --------------------------------------------------------------------------- commands


def _explain(stdout: str | None, stderr: str | None, lines: int = 12) -> str:
    text = "\n".join(s for s in (stderr, stdout) if s)
    kept = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and "Having any troubles?" not in ln and "dvc.org/support" not in ln
    ]
    return " | ".join(kept[-lines:]) or "no output"


def run_command(
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


def dvc(repo: Path, *args: str) -> str:
    """Run ``dvc <args>`` in ``repo`` (this interpreter's DVC), return its stdout."""
    return run_command([sys.executable, "-m", "dvc", *args], repo, env=_dvc_env(), what="dvc " + shlex.join(args))


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None) -> str:
    """Run ``git <args>`` in ``repo``, return its stdout stripped; a failure raises :class:`VersioningError`."""
    return run_command(["git", *args], repo, env=env, stdin=stdin, what="git " + shlex.join(args)).strip()


def git_ok(repo: Path, *args: str) -> str | None:
    """stdout of a git query, or None when it answers no (non-zero exit)."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def toplevel(repo: Path) -> Path:
    """The repository's root; ``repo`` must be it (DVC projects live at the top of the work tree)."""
    repo = Path(repo).expanduser().resolve()
    if not repo.is_dir():
        raise VersioningError(f"{repo} is not a directory")
    top = git_ok(repo, "rev-parse", "--show-toplevel")
    if top is None:
        raise VersioningError(f"{repo} is not inside a git repository (DVC needs one)")
    if Path(top).resolve() != repo:
        raise VersioningError(f"{repo} is not the top of its git work tree ({top})")
    return repo


# --------------------------------------------------------------------------- lock

_held: dict[tuple[str, int], int] = {}
_held_guard = threading.Lock()


def _lock_file(repo: Path) -> Path:
    repo = toplevel(repo)
    # The git directory exists before `dvc init` (which cannot run over an existing
    # .dvc/), is never committed, and is shared by every process using this repository.
    common = Path(git(repo, "rev-parse", "--git-common-dir"))
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
    out = git(repo, "ls-files", "--stage", "--", *paths)
    return {line.split("\t", 1)[1]: line for line in out.splitlines() if "\t" in line}


def ensure_dvc(repo: Path) -> None:
    """Make ``repo`` a DVC project (``dvc init`` once) with analytics and auto-staging off.

    Idempotent. ``dvc init`` stages its files in git; they are unstaged again so
    the developer's index is left as it was: commit ``.dvc/config``,
    ``.dvc/.gitignore`` and ``.dvcignore`` yourself (dataset commits carry them
    either way).
    """
    repo = toplevel(repo)
    with dvc_lock(repo):
        if not (repo / ".dvc").is_dir():
            before = _index_entries(repo, *DVC_PROJECT_FILES)
            dvc(repo, "init", "--quiet")
            after = _index_entries(repo, *DVC_PROJECT_FILES)
            added = sorted(set(after) - set(before))
            changed = [before[p] for p in before if after.get(p) != before[p]]
            if added:
                git(repo, "update-index", "--force-remove", "--", *added)
            if changed:
                git(repo, "update-index", "--index-info", stdin="\n".join(changed) + "\n")
        core = _read_ini(repo / ".dvc" / "config").get("core", {})
        for key in ("analytics", "autostage"):
            if core.get(key, "").lower() != "false":
                dvc(repo, "config", f"core.{key}", "false")


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
    repo = toplevel(repo)
    if _is_local(url):
        url = str(_local_path(url, Path.cwd()))
    with dvc_lock(repo):
        if not (repo / ".dvc" / "config").is_file():
            raise VersioningError(f"{repo} is not a DVC project: call ensure_dvc first")
        # --force replaces the whole section, so no option of an earlier remote of that name survives.
        dvc(repo, "remote", "add", "--local", "--force", "--default", name, url)
        if endpoint_url:
            dvc(repo, "remote", "modify", "--local", name, "endpointurl", endpoint_url)


# --------------------------------------------------------------------------- remotes


@dataclasses.dataclass(frozen=True)
class Remote:
    """A DVC remote as the repository's configuration resolves it."""

    name: str
    url: str
    endpoint: str | None

    def describe(self) -> str:
        where = f"{self.url}, endpoint {self.endpoint}" if self.endpoint else self.url
        return f"DVC remote '{self.name}' ({where})"


def default_remote(repo: Path) -> Remote:
    """The repository's default DVC remote (``core.remote``), a local path made absolute.

    Raises:
        VersioningError: there is no default remote, or it has no URL.
    """
    values: dict[str, tuple[str, str]] = {}
    for line in dvc(repo, "config", "--list", "--show-origin").splitlines():
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
    return Remote(name=name, url=url, endpoint=endpoint)


def check_default_remote(repo: Path) -> str:
    """Fail fast, naming the remote, if the default DVC remote is missing or unreachable.

    Returns:
        A description of the remote (name and URL).
    """
    remote = default_remote(toplevel(repo))
    check_remote(remote)
    return remote.describe()


def check_remote(remote: Remote) -> None:
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


def _remote_object(root: Path, md5: str) -> Path | None:
    """Where a local remote keeps an object of this hash (DVC 3's layout, then DVC 2's), or None."""
    for candidate in (root / "files" / "md5" / md5[:2] / md5[2:], root / md5[:2] / md5[2:]):
        if candidate.is_file():
            return candidate
    return None


def _version_objects(repo: Path, rev: str) -> dict[str, str]:
    """Pointer file -> the DVC hash of its output, for every ``.dvc`` file of a commit."""
    import yaml

    objects = {}
    for pointer in git(repo, "ls-tree", "-r", "--name-only", rev).splitlines():
        if not pointer.endswith(".dvc"):
            continue
        for out in (yaml.safe_load(git(repo, "show", f"{rev}:{pointer}")) or {}).get("outs") or []:
            if out.get("md5"):
                objects[f"{pointer} ({out.get('path')})"] = str(out["md5"])
    return objects


def check_remote_holds_versions(repo: Path, remote: Remote, branch: str) -> None:
    """Refuse a local remote that lost the data the dataset branch records; create it for a first version.

    A local remote that was moved or deleted would otherwise be recreated empty by the
    next ``dvc push``, which would push only the new version: the team's data split in
    two places. So when ``branch`` records dataset versions, the remote must exist and
    hold the objects of its latest one. Without a recorded version the remote is
    created here (and the log says so). Object-store remotes are checked by
    :func:`check_remote` only: they are not recreated by a push.

    Args:
        repo: the repository's top folder.
        remote: its default remote (:func:`default_remote`).
        branch: the dataset branch, as synced from the team's git remote.

    Raises:
        VersioningError: naming the remote, the branch and what is missing.
    """
    if not _is_local(remote.url):
        return
    root = Path(remote.url)
    tip = git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    recorded = (
        git(repo, "log", "--format=%H", "--grep=^Dataset-Content-Hash:", f"refs/heads/{branch}").split() if tip else []
    )
    if not recorded:
        if not root.exists():
            root.mkdir(parents=True)
            log.info("created %s: the first dataset version of %s goes there", remote.describe(), repo)
        return
    latest = recorded[0]
    where = f"branch {branch!r} of {repo} records {len(recorded)} dataset version(s), the latest {latest[:12]}"
    advice = (
        "restore the folder, or set MLOPS_DVC_REMOTE_URL to where it is now; nothing was pushed, "
        "so the team's data is not split between two remotes"
    )
    if not root.is_dir():
        raise VersioningError(f"{remote.describe()} does not exist, but {where}, whose data it must hold: {advice}")
    missing = [
        f"{what} {md5}" for what, md5 in _version_objects(repo, latest).items() if _remote_object(root, md5) is None
    ]
    if missing:
        raise VersioningError(
            f"{remote.describe()} does not hold the data of the latest dataset version ({where}); "
            f"missing: {'; '.join(missing)}. It was emptied or replaced: {advice}"
        )


_PERMANENT_MARKERS = (
    "accessdenied",
    "access denied",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "nosuchbucket",
    "permission denied",
    "forbidden",
    "403",
    "does not appear to be a git repository",
    "no such remote",
    "authentication failed",
)


def push_failure(what: str, err: VersioningError) -> Exception:
    """The error for a failed push: :class:`VersioningError` when the remote refuses us
    (credentials, permissions, a missing bucket or git remote), else :class:`TransientVersioningError`.

    The remote was checked before the push, so what remains is mostly the way to it
    (network, throttling, a branch moved by another run meanwhile): worth a retry.

    Args:
        what: what failed, naming the remote (e.g. ``dvc push to DVC remote 'storage' (...)``).
        err: the command's error.

    Returns:
        The exception to raise.
    """
    text = str(err).lower()
    if any(marker in text for marker in _PERMANENT_MARKERS):
        return VersioningError(f"{what} failed, and a retry cannot fix it: {err}")
    return TransientVersioningError(f"{what} failed (worth a retry): {err}")


# --------------------------------------------------------------------------- git identity and branches


def identity_env(repo: Path) -> dict[str, str]:
    """The environment for a commit: the user's git identity, or the pipeline's when none is set."""
    env = dict(os.environ)
    if git_ok(repo, "var", "GIT_COMMITTER_IDENT") is None or git_ok(repo, "var", "GIT_AUTHOR_IDENT") is None:
        for key, value in _FALLBACK_IDENTITY.items():
            env.setdefault(key, value)
    return env


def sync_branch(repo: Path, remote: str, branch: str) -> None:
    """Bring the local dataset branch up to the remote's, so new versions go on top of the team's.

    A clone starts without the local branch: it is created from the remote's. A remote without
    the branch yet is fine (the first push creates it).

    Raises:
        VersioningError: the local branch has diverged from the remote's.
    """
    if git_ok(repo, "ls-remote", "--exit-code", "--heads", remote, branch) is None:
        return
    try:
        git(repo, "fetch", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}")
    except VersioningError as err:
        raise VersioningError(
            f"the local {branch!r} branch has diverged from {remote!r}'s; reconcile them by hand: {err}"
        ) from None


def push_branch(repo: Path, remote: str, branch: str) -> None:
    """Push the dataset branch to a git remote, so other clones can check its versions out.

    Raises:
        VersioningError: the git remote refuses the push (it does not exist, or denies us).
        TransientVersioningError: any other push failure (network, a branch moved meanwhile).
    """
    try:
        git(repo, "push", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}")
    except VersioningError as err:
        raise push_failure(f"git push of {branch!r} to remote {remote!r}", err) from None
