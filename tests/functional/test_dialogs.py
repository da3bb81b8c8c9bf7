"""Dialogs as a user drives them: the folder picker goes up and takes a typed path."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import Input

from cxr_tui.dialogs.folder import FolderPicker, FolderTree


class PickerApp(App[None]):
    def __init__(self, start: Path) -> None:
        super().__init__()
        self.start = start
        self.chosen: list[Path | None] = []

    def on_mount(self) -> None:
        self.push_screen(FolderPicker(self.start), self.chosen.append)


@pytest.mark.slow
async def test_folder_picker_goes_up_and_takes_a_typed_path(tmp_path: Path) -> None:
    start = tmp_path / "a" / "b"
    start.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.mkdir()
    app = PickerApp(start)
    async with app.run_test(size=(100, 30)) as pilot:
        picker = app.screen
        await pilot.press("u")
        assert Path(picker.query_one(FolderTree).path) == tmp_path / "a"
        await pilot.press("slash")
        path_input = picker.query_one("#picker-path", Input)
        assert path_input.has_focus and path_input.value == str(tmp_path / "a")
        path_input.value = str(tmp_path / "missing")
        await pilot.press("enter")
        assert app.screen is picker and app.chosen == []  # not a folder: said, and the picker stays
        path_input.value = ""
        await pilot.press(*str(target), "enter")  # typed key by key ('u' is text here, not 'up')
        await pilot.pause()
    assert app.chosen == [target]
