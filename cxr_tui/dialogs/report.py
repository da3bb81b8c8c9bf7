"""A Markdown report (an evaluation's report.md) over the current screen; escape closes it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, MarkdownViewer, Static

from cxr_core.text import visible


class ReportScreen(ModalScreen[None]):
    """A run's evaluation report (report.md) in a Markdown viewer."""

    DEFAULT_CSS = """
    ReportScreen { align: center middle; }
    ReportScreen > Vertical { width: 95%; height: 95%; border: round $primary; background: $surface; }
    ReportScreen #report-title { width: 1fr; height: 1; padding: 0 1; text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "close", "Close")]

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(visible(self.path), id="report-title", markup=False)
            yield MarkdownViewer(visible(self.path.read_text(encoding="utf-8", errors="replace"), lines=True),
                                 show_table_of_contents=False, open_links=False, id="report")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
