"""Package exports loaded on first use, so that importing a package (e.g. for ``wsss --help``) does not
import torch, numpy or mlflow until one of its names is actually needed."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(namespace: dict[str, Any], exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for the package whose ``globals()`` is ``namespace``: ``exports``
    maps an exported name to the submodule that defines it (relative, e.g. ``".evaluate"``); the value is
    cached in the package on first access."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
