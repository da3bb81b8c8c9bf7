"""Choosing a data set root: a folder tree over the current screen."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text, TextType
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Static

from cxr_core.text import visible


class FolderTree(DirectoryTree):
    """A directory tree whose folder names are shown as they are (no markup, controls made visible)."""

    def process_label(self, label: TextType) -> Text:
        return Text(visible(label.plain if isinstance(label, Text) else label))


class FolderPicker(ModalScreen[Path | None]):
    """Browse to another study root (enter on a folder opens it; escape cancels)."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel"), Binding("o", "open_highlighted", "Open this folder")]

    def __init__(self, start: Path) -> None:
        super().__init__()
        self.start = start

    def compose(self) -> ComposeResult:
        yield Static("Choose a data set root: move with the arrows, [b]o[/] opens the highlighted folder, escape cancels",
                     id="picker-title")
        yield FolderTree(self.start, id="picker-tree")

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    def action_open_highlighted(self) -> None:
        node = self.query_one(DirectoryTree).cursor_node
        if node is not None and node.data is not None:
            path = Path(node.data.path)
            self.dismiss(path if path.is_dir() else path)

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        if event.path.suffix.lower() in (".tgz", ".npz"):
            self.dismiss(event.path)
