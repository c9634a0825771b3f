"""Small helpers shared by the tests (pytest puts this folder on the import path)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path


def set_env(values: Mapping[str, str]) -> Callable[[], None]:
    """Set environment variables for a module-scoped fixture; returns the function that puts them back.

    (``monkeypatch`` is function-scoped, and these fixtures train models once per module.)
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore


def deep_update(base: dict, extra: Mapping) -> dict:
    """Merge ``extra`` into the nested mapping ``base`` (e.g. a parsed params.yaml); returns ``base``."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def isolated_git_dvc_env(home: Path) -> dict[str, str]:
    """HOME, git and DVC config and cache folders under ``home``, and a fixed git identity."""
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test Developer",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Test Developer",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
    }


@contextlib.contextmanager
def light_worker(log_dir: Path, name: str) -> Iterator[dict]:
    """A step worker preloading only the config (the real one imports TensorFlow: slow for a unit test).

    Yields its ``env`` (set to hand steps to it), ``proc``, socket ``path`` and ``log``; stopped on exit.
    """
    import subprocess
    import sys
    import tempfile

    from pipelines.ops import worker

    path = Path(tempfile.gettempdir()) / f"mlops-test-{name}-{os.getpid()}.sock"
    env = {**os.environ, worker.ENV_MODE: "warm", worker.ENV_SOCKET: str(path)}
    log = log_dir / "worker.log"
    command = [sys.executable, "-m", "pipelines.ops.worker", "serve", "--socket", str(path)]
    command += ["--idle-timeout", "0", "--preload", "pipelines.config"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        worker.wait_ready(env, timeout=60)
        yield {"env": env, "proc": proc, "path": path, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
