"""Dialogs: screens that sit over another to ask or show one thing (confirm, report, folder, new run)."""

from cxr_tui.dialogs.confirm import ConfirmScreen
from cxr_tui.dialogs.folder import FolderPicker
from cxr_tui.dialogs.launch import LaunchForm
from cxr_tui.dialogs.report import ReportScreen

__all__ = ["ConfirmScreen", "FolderPicker", "LaunchForm", "ReportScreen"]
