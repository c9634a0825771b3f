"""Small helpers shared by the tests (pytest puts this folder on the import path)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
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
