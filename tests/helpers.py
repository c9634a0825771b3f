"""Small helpers shared by the tests (pytest puts this folder on the import path)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping


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
