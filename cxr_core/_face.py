"""Package faces that import on first use: a package names what the front-ends may use, and a front-end that
asks for ``cxr_core.infer.Predictor`` loads torch then, not when it imports the package for something light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy(package: str, face: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``; ``face`` maps a public name to ``"module"`` or
    ``"module:attribute"`` (a face name may differ from the module's own)."""

    def get(name: str) -> Any:
        target = face.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute or name)

    return get, sorted(face)
