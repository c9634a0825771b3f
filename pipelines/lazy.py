"""Modules imported on their first use, for step modules that tasks import only for a name.

The DAG's tasks import error classes from the step modules (``CollectError``,
``ValidationFailed``, ``PreprocessError``) to fail clearly on bad data. With
the step worker the step itself runs in the worker, so importing pandas and
NumPy just to define those names cost each such task process 1.5-2 s of its
start-up. ``pd = lazy("pandas")`` binds a stand-in that imports the module on
the first attribute access; code using ``pd.DataFrame`` is unchanged.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class _LazyModule:
    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> ModuleType:
    """``name`` itself if already imported, else a stand-in that imports it on first use."""
    module = sys.modules.get(name)
    return module if module is not None else _LazyModule(name)  # type: ignore[return-value]
