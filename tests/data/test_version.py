"""Tests of ``pipelines.steps.version`` and ``pipelines.data.dvc_repo``: real git and real DVC, in temporary repositories.

Nothing here touches the project's own repository or the user's home: every
repository, DVC remote, cache and config folder lives under pytest's tmp paths,
and the S3 remote is a ``moto_server`` on a loopback port.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import isolated_git_dvc_env

from pipelines.data.dvc_repo import configure_remote, default_remote_endpoint, default_remote_url, dvc_lock, ensure_dvc
from pipelines.errors import VersioningError
from pipelines.steps.version import DatasetVersion, record_dataset_version, restore_dataset_version, version_data

DATA = [Path("data/raw"), Path("data/processed")]
CHANGED = "data/raw/date=2013-01-02/part-0.csv"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HOME, git and DVC config and cache folders in tmp; a fixed git identity."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in isolated_git_dvc_env(home).items():
            mp.setenv(key, value)
        for key in ("MLOPS_DVC_REMOTE_URL", "MLOPS_DVC_REMOTE_ENDPOINT", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        yield home


def _git(repo: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=check, capture_output=True, text=True).stdout.strip()


def _make_repo(root: Path) -> Path:
    """A git repository shaped like the project: params.yaml, /data/raw/ git-ignored, two data folders."""
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet", "--initial-branch", "main")
    (repo / ".gitignore").write_text("/data/raw/\n")
    (repo / "params.yaml").write_text("train:\n  epochs: 6\n")
    _git(repo, "add", ".gitignore", "params.yaml")
    _git(repo, "commit", "--quiet", "-m", "code")
    for day, rows in (("2013-01-01", "1,EWR,12\n2,JFK,-3\n"), ("2013-01-02", "3,LGA,40\n")):
        part = repo / "data" / "raw" / f"date={day}" / "part-0.csv"
        part.parent.mkdir(parents=True)
        part.write_text("flight,origin,arr_delay\n" + rows)
    (repo / "data" / "processed").mkdir(parents=True)
    (repo / "data" / "processed" / "stats.json").write_text('{"rows": 3}\n')
    return repo


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every data file below ``root`` (DVC's own files left out)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".dvc" and p.name != ".gitignore"
    }


def _developer_view(repo: Path) -> dict[str, str]:
    """What the developer sees: branch, HEAD, index entries, status (untracked files included)."""
    return {
        "branch": _git(repo, "symbolic-ref", "HEAD"),
        "head": _git(repo, "rev-parse", "HEAD"),
        "index": _git(repo, "ls-files", "--stage"),
        "status": _git(repo, "status", "--porcelain", "--untracked-files=all"),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parents(repo: Path, rev: str) -> list[str]:
    return _git(repo, "rev-list", "--parents", "-n", "1", rev).split()[1:]


# --------------------------------------------------------------------------- two versions


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two dataset versions of one repository, with a code commit between them."""
    root = tmp_path_factory.mktemp("versions")
    repo = _make_repo(root)
    remote = root / "remote"
    index_before_init = _git(repo, "ls-files", "--stage")
    ensure_dvc(repo)
    ensure_dvc(repo)  # idempotent
    index_after_init = _git(repo, "ls-files", "--stage")
    configure_remote(repo, str(remote))

    view0 = _developer_view(repo)
    v1 = record_dataset_version(repo, DATA, message="data of 2013-01-02", tag="data-v1")
    view0_after = _developer_view(repo)
    data1 = _hashes(repo / "data")

    (repo / "params.yaml").write_text("train:\n  epochs: 8\n")  # the developer moves on
    _git(repo, "commit", "--quiet", "-am", "more epochs")
    (repo / CHANGED).write_text("flight,origin,arr_delay\n3,LGA,41\n4,EWR,0\n")
    view1 = _developer_view(repo)
    v2 = record_dataset_version(repo, [repo / "data" / "raw", Path("data/processed")], message="corrected day")
    view1_after = _developer_view(repo)
    data2 = _hashes(repo / "data")
    v2_retry = record_dataset_version(repo, DATA, message="corrected day (retried task)")
    return SimpleNamespace(
        repo=repo,
        remote=remote,
        root=root,
        v1=v1,
        v2=v2,
        v2_retry=v2_retry,
        data1=data1,
        data2=data2,
        views=[(view0, view0_after), (view1, view1_after)],
        index_before_init=index_before_init,
        index_after_init=index_after_init,
    )


def test_setup_leaves_the_index_and_keeps_the_remote_local(recorded: SimpleNamespace) -> None:
    repo = recorded.repo
    assert recorded.index_after_init == recorded.index_before_init
    config = (repo / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "autostage = false" in config
    assert "remote" not in config
    local = (repo / ".dvc" / "config.local").read_text()
    assert str(recorded.remote) in local and "remote = storage" in local
    _git(repo, "check-ignore", "--quiet", ".dvc/config.local")  # raises if it could be committed


def test_two_versions_on_the_dataset_branch(recorded: SimpleNamespace) -> None:
    repo, v1, v2 = recorded.repo, recorded.v1, recorded.v2
    assert isinstance(v1, DatasetVersion) and v1.as_dict()["git_rev"] == v1.git_rev
    assert _git(repo, "rev-parse", "datasets") == v2.git_rev
    assert _git(repo, "rev-parse", "data-v1^{commit}") == v1.git_rev
    assert (v1.branch, v1.tag, v2.tag) == ("datasets", "data-v1", None)

    code1, code2 = _git(repo, "rev-parse", "main~1"), _git(repo, "rev-parse", "main")
    assert _parents(repo, v1.git_rev) == [code1]
    assert _parents(repo, v2.git_rev) == [v1.git_rev, code2]  # previous version, then the code it was made with
    assert "epochs: 6" in _git(repo, "show", f"{v1.git_rev}:params.yaml")
    assert "epochs: 8" in _git(repo, "show", f"{v2.git_rev}:params.yaml")

    for version in (v1, v2):
        assert set(version.pointers) == {"data/raw.dvc", "data/processed.dvc"}
        for pointer, md5 in version.pointers.items():
            assert f"md5: {md5}" in _git(repo, "show", f"{version.git_rev}:{pointer}")
        assert _git(repo, "show", f"{version.git_rev}:data/.gitignore") == "/processed"
        files = _git(repo, "ls-tree", "-r", "--name-only", version.git_rev).splitlines()
        assert {".dvc/config", ".dvcignore", "params.yaml"} <= set(files)
        assert ".dvc/config.local" not in files
    assert v1.pointers["data/raw.dvc"] != v2.pointers["data/raw.dvc"]
    assert v1.pointers["data/processed.dvc"] == v2.pointers["data/processed.dvc"]
    assert v1.content_hash != v2.content_hash and v1.content_hash.startswith("sha256:")

    # A retried task records nothing new.
    assert recorded.v2_retry == v2


def test_the_developer_checkout_is_untouched(recorded: SimpleNamespace) -> None:
    for before, after in recorded.views:
        assert after == before
    repo = recorded.repo
    assert not (repo / "data" / "raw.dvc").exists() and not (repo / "data" / ".gitignore").exists()
    assert _git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"


def test_restore_each_version_byte_identical(recorded: SimpleNamespace) -> None:
    for n, (rev, expected) in enumerate([("data-v1", recorded.data1), (recorded.v2.git_rev, recorded.data2)]):
        dest = restore_dataset_version(str(recorded.repo), rev, recorded.root / f"clone-{n}", str(recorded.remote))
        assert _hashes(dest / "data") == expected
        assert _git(dest, "status", "--porcelain", "--untracked-files=all") == ""
    changed = CHANGED.removeprefix("data/")
    assert recorded.data1[changed] != recorded.data2[changed]
    assert {k: v for k, v in recorded.data1.items() if k != changed} == {
        k: v for k, v in recorded.data2.items() if k != changed
    }


def test_restore_without_a_remote_says_so_and_cleans_up(recorded: SimpleNamespace) -> None:
    dest = recorded.root / "clone-no-remote"
    with pytest.raises(VersioningError, match="pass remote_url"):
        restore_dataset_version(str(recorded.repo), "data-v1", dest)
    assert not dest.exists()


def test_bad_paths_fail_before_any_work(recorded: SimpleNamespace) -> None:
    tip = _git(recorded.repo, "rev-parse", "datasets")
    with pytest.raises(VersioningError, match="outside the repository"):
        record_dataset_version(recorded.repo, [recorded.root], message="x")
    with pytest.raises(VersioningError, match="does not exist"):
        record_dataset_version(recorded.repo, [Path("data/nothing")], message="x")
    with pytest.raises(VersioningError, match="checked out"):
        record_dataset_version(recorded.repo, DATA, message="x", branch="main")
    assert _git(recorded.repo, "rev-parse", "datasets") == tip


# --------------------------------------------------------------------------- the step


def _step_args(repo: Path, tmp_path: Path) -> dict:
    from pipelines.config import load_params

    processed = tmp_path / "run" / "processed"
    processed.mkdir(parents=True)
    (processed / "stats.json").write_text('{"rows": 5}\n')
    return {
        "params": load_params(Path(__file__).resolve().parents[2] / "params.yaml"),
        "window_end": dt.date(2013, 1, 2),
        "note": "test run",
        "repo": repo,
        "raw_dir": repo / "data" / "raw",
        "published_dir": repo / "data" / "processed",
        "processed_dir": processed,
    }


def test_version_data_off_publishes_and_records_nothing(tmp_path: Path) -> None:
    """MLOPS_VERSIONING=off: the run's processed data is still published (the next validation's reference)."""
    repo = _make_repo(tmp_path)
    args = _step_args(repo, tmp_path)
    view = _developer_view(repo)
    assert version_data(**args, enabled=False) is None
    assert (repo / "data" / "processed" / "stats.json").read_text() == '{"rows": 5}\n'
    assert not (repo / ".dvc").exists() and _developer_view(repo) == view


def test_version_data_refuses_data_outside_the_repository(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path)
    args = {**_step_args(repo, tmp_path), "published_dir": tmp_path / "elsewhere" / "processed"}
    with pytest.raises(VersioningError, match="outside the DVC repository .*MLOPS_DATA_DIR"):
        version_data(**args)
    assert not (tmp_path / "elsewhere").exists() and not (repo / ".dvc").exists()


# --------------------------------------------------------------------------- failures


def _cache(repo: Path) -> dict[str, str]:
    return _hashes(repo / ".dvc" / "cache")


def test_unreachable_remote_fails_and_changes_nothing(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path)
    ensure_dvc(repo)
    configure_remote(repo, str(tmp_path / "remote"))
    v1 = record_dataset_version(repo, DATA, message="first")
    # A developer who keeps the pointer checked out: it must survive a failed recording.
    (repo / "data" / "raw.dvc").write_text(_git(repo, "show", f"{v1.git_rev}:data/raw.dvc") + "\n")
    (repo / CHANGED).write_text("flight,origin,arr_delay\n9,JFK,99\n")
    frozen = {
        "tip": v1.git_rev,
        "refs": _git(repo, "for-each-ref"),
        "pointer": (repo / "data" / "raw.dvc").read_bytes(),
        "cache": _cache(repo),
        "view": _developer_view(repo),
    }

    a_file = tmp_path / "remote-is-a-file"
    a_file.write_text("not a folder")
    closed = f"http://127.0.0.1:{_free_port()}"
    for url, endpoint in ((str(a_file), None), ("s3://dvc-remote/flights", closed)):
        configure_remote(repo, url, endpoint_url=endpoint)
        started = time.monotonic()
        with pytest.raises(VersioningError) as failure:
            record_dataset_version(repo, DATA, message="second", tag="data-v2")
        assert time.monotonic() - started < 20
        message = str(failure.value)
        assert "'storage'" in message and url in message, message
        assert {
            "tip": _git(repo, "rev-parse", "datasets"),
            "refs": _git(repo, "for-each-ref"),
            "pointer": (repo / "data" / "raw.dvc").read_bytes(),
            "cache": _cache(repo),
            "view": _developer_view(repo),
        } == frozen


def test_a_missing_local_remote_is_refused_not_recreated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A remote folder moved away fails version_data, naming it; nothing is pushed; restored, it works."""
    repo = _make_repo(tmp_path)
    remote = tmp_path / "team-remote"
    monkeypatch.setenv("MLOPS_DVC_REMOTE_URL", str(remote))
    with caplog.at_level("INFO", logger="pipelines.data.dvc_repo"):
        v1 = version_data(**_step_args(repo, tmp_path / "run1"))
    assert f"created DVC remote 'storage' ({remote})" in caplog.text, "a first run creates the remote, and says so"

    (repo / CHANGED).write_text("flight,origin,arr_delay\n5,JFK,7\n")
    published = _hashes(repo / "data" / "processed")
    moved = tmp_path / "team-remote.moved"
    remote.rename(moved)
    for state in ("missing", "empty"):
        if state == "empty":
            remote.mkdir()
        with pytest.raises(VersioningError) as failure:
            version_data(**_step_args(repo, tmp_path / f"run-{state}"))
        message = str(failure.value)
        assert f"DVC remote 'storage' ({remote})" in message and v1.git_rev[:12] in message, message
        assert ("does not exist" if state == "missing" else "missing: data/") in message, message
        assert _git(repo, "rev-parse", "datasets") == v1.git_rev
        assert _hashes(repo / "data" / "processed") == published, "the published data is left as it was"
        assert (not remote.exists()) if state == "missing" else not any(remote.iterdir()), "nothing pushed"
    remote.rmdir()

    moved.rename(remote)
    v2 = version_data(**_step_args(repo, tmp_path / "run-restored"))
    assert _parents(repo, v2.git_rev)[0] == v1.git_rev
    dest = restore_dataset_version(str(repo), v1.git_rev, tmp_path / "clone", str(remote))
    assert (dest / CHANGED).read_text() == "flight,origin,arr_delay\n3,LGA,40\n"


def test_lock_times_out_while_another_run_holds_it(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path)
    held, release = threading.Event(), threading.Event()

    def other_run() -> None:
        with dvc_lock(repo):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as timeout:
            with dvc_lock(repo, timeout=0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 5
        lock_file = repo / ".git" / "flights-mlops-versioning.lock"
        assert str(lock_file) in str(timeout.value) and "another pipeline run" in str(timeout.value)
    finally:
        release.set()
        thread.join(10)
    with dvc_lock(repo, timeout=1) as path:  # free again, and re-entrant in one thread
        assert path == lock_file
        with dvc_lock(repo, timeout=0):
            pass


# --------------------------------------------------------------------------- configuration


def test_default_remote_url_and_endpoint() -> None:
    assert default_remote_url({"MLOPS_DVC_REMOTE_URL": "s3://b/p", "HOME": "/h"}) == "s3://b/p"
    assert default_remote_url({"HOME": "/h"}) == "/h/.cache/flights-mlops/dvc-remote"
    assert default_remote_url({"HOME": "/h", "XDG_CACHE_HOME": "/c"}) == "/c/flights-mlops/dvc-remote"
    assert default_remote_endpoint({"MLOPS_DVC_REMOTE_ENDPOINT": "http://minio:9000"}) == "http://minio:9000"
    assert default_remote_endpoint({}) is None


def test_configure_remote_refuses_credentials_and_stray_endpoints(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="credentials"):
        configure_remote(tmp_path, "https://user:secret@example.com/dvc")
    with pytest.raises(ValueError, match="s3://"):
        configure_remote(tmp_path, str(tmp_path / "remote"), endpoint_url="http://127.0.0.1:9000")


# --------------------------------------------------------------------------- S3


@pytest.fixture
def moto_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A ``moto_server`` on a free loopback port, with the bucket ``dvc-remote``; AWS_* set for DVC."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path / "moto.log").open("wb")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
    except OSError as err:
        log.close()
        pytest.skip(f"moto_server cannot start: {err}")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.skip(f"moto_server exited with {proc.returncode}: {(tmp_path / 'moto.log').read_text()[-500:]}")
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip(f"moto_server did not answer on {endpoint} within 30 s")
                time.sleep(0.2)
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        for key, value in {**creds, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="dvc-remote")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_s3_remote_push_then_pull_round_trips(tmp_path: Path, moto_s3: str) -> None:
    repo = _make_repo(tmp_path)
    ensure_dvc(repo)
    url = "s3://dvc-remote/flights"
    configure_remote(repo, url, endpoint_url=moto_s3)
    local = (repo / ".dvc" / "config.local").read_text()
    assert moto_s3 in local and "testing" not in local  # endpoint written, credentials never
    version = record_dataset_version(repo, DATA, message="to S3", tag="s3-v1")
    expected = _hashes(repo / "data")

    dest = restore_dataset_version(str(repo), "s3-v1", tmp_path / "elsewhere", url, endpoint_url=moto_s3)
    assert _hashes(dest / "data") == expected

    # Reachable endpoint, missing bucket: the push itself fails; the branch stays and the cache loses nothing.
    configure_remote(repo, "s3://no-such-bucket/flights", endpoint_url=moto_s3)
    (repo / CHANGED).write_text("flight,origin,arr_delay\n5,JFK,1\n")
    cache = _cache(repo)
    with pytest.raises(VersioningError, match=r"dvc push to DVC remote 'storage' \(s3://no-such-bucket/flights"):
        record_dataset_version(repo, DATA, message="lost?")
    assert _git(repo, "rev-parse", "datasets") == version.git_rev
    assert cache.items() <= _cache(repo).items()
    assert not (repo / "data" / "raw.dvc").exists()


def _dropping_server() -> tuple[str, threading.Event]:
    """A loopback endpoint that accepts each connection and closes it at once: a network fault."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", stop


def test_a_push_lost_on_the_network_is_left_to_the_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote checks out (its endpoint answers) but the push breaks: transient, so fail_fast lets it through."""
    from pipelines.errors import StepError, TransientVersioningError, fail_fast

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    endpoint, stop = _dropping_server()
    try:
        repo = _make_repo(tmp_path)
        ensure_dvc(repo)
        configure_remote(repo, "s3://dvc-remote/flights", endpoint_url=endpoint)
        with pytest.raises(TransientVersioningError) as failure:
            fail_fast(record_dataset_version)(repo, DATA, message="on a bad network")
    finally:
        stop.set()
    assert not isinstance(failure.value, StepError)
    assert "dvc push to DVC remote 'storage' (s3://dvc-remote/flights" in str(failure.value)
    assert _git(repo, "rev-parse", "--verify", "--quiet", "datasets", check=False) == ""


def test_a_lock_timeout_is_left_to_the_retry(tmp_path: Path) -> None:
    from pipelines.errors import fail_fast

    repo = _make_repo(tmp_path)
    held, release = threading.Event(), threading.Event()

    def other_run() -> None:
        with dvc_lock(repo):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(TimeoutError):
            fail_fast(lambda: dvc_lock(repo, timeout=0.2).__enter__())()
    finally:
        release.set()
        thread.join(10)
