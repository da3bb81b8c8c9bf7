"""Dialogs: screens that sit over another to ask or show one thing (confirm, report, folder, new run).

Loaded on first use, like the core's faces: the worklist's folder picker must not bring the launch form's
model zoo (and torch) with it (``cxr-tui ROOT --predictions preds.csv`` reviews without torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_tui.dialogs.confirm import ConfirmScreen
    from cxr_tui.dialogs.folder import FolderPicker
    from cxr_tui.dialogs.launch import LaunchForm
    from cxr_tui.dialogs.report import ReportScreen

_FACE = {"ConfirmScreen": "confirm", "FolderPicker": "folder", "LaunchForm": "launch", "ReportScreen": "report"}

__all__ = ["ConfirmScreen", "FolderPicker", "LaunchForm", "ReportScreen"]


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
