"""Choosing a data set root: a folder tree over the current screen."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text, TextType
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Input, Static

from cxr_core.text import visible


class FolderTree(DirectoryTree):
    """A directory tree whose folder names are shown as they are (no markup, controls made visible)."""

    def process_label(self, label: TextType) -> Text:
        return Text(visible(label.plain if isinstance(label, Text) else label))


class FolderPicker(ModalScreen[Path | None]):
    """Browse to another study root, or type its path (enter on a folder opens it; escape cancels)."""

    BINDINGS = [
        Binding("escape", "dismiss_none", "Cancel"),
        Binding("o", "open_highlighted", "Open this folder"),
        Binding("u,backspace", "up", "Parent folder"),
        Binding("slash", "type_path", "Type a path", key_display="/"),
    ]

    def __init__(self, start: Path) -> None:
        super().__init__()
        self.start = start

    def compose(self) -> ComposeResult:
        yield Static("Choose a data set root: arrows move, [b]o[/] opens the highlighted folder, [b]u[/] goes up, "
                     "[b]/[/] types a path, escape cancels", id="picker-title")
        yield Input(value=str(self.start), placeholder="a folder (or .tgz / .npz): enter opens it", id="picker-path")
        yield FolderTree(self.start, id="picker-tree")

    def on_mount(self) -> None:
        self.query_one(FolderTree).focus()

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    def action_up(self) -> None:
        """Show the parent of the tree's folder."""
        tree = self.query_one(FolderTree)
        current = Path(tree.path)
        if current.parent != current:
            tree.path = current.parent
            self.query_one("#picker-path", Input).value = str(current.parent)

    def action_type_path(self) -> None:
        path_input = self.query_one("#picker-path", Input)
        path_input.focus()
        path_input.cursor_position = len(path_input.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """A typed path: a folder or a data set file opens; anything else is one line, and the picker stays."""
        path = Path(event.value.strip()).expanduser()
        if path.is_dir() or (path.is_file() and path.suffix.lower() in (".tgz", ".npz")):
            self.dismiss(path)
        else:
            self.notify(f"{visible(str(path))}: not a folder or a data set file", severity="warning")

    def action_open_highlighted(self) -> None:
        node = self.query_one(DirectoryTree).cursor_node
        if node is not None and node.data is not None:
            path = Path(node.data.path)
            self.dismiss(path if path.is_dir() else path)

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        if event.path.suffix.lower() in (".tgz", ".npz"):
            self.dismiss(event.path)
