"""Shown when cxr-tui starts with nothing to open: offer the demo, or a folder."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Center, Vertical
from textual.widgets import Button, Footer, Header, Static

from cxr_tui.messages import RootChosen
from cxr_tui.screens.base import CxrScreen

WELCOME = """[b]cxr[/b] — a chest X-ray workbench

Review what a model flags, with the image and its Grad-CAM inline; accept or reject each finding;
tune each disease's threshold; train a model and watch it converge.

Start with the demo (synthetic phantoms and a small bundled model), or open a data set folder:
NIH ChestX-ray14, Indiana University / Open-i, CheXpert, MIMIC-CXR-JPG, or your own DICOM/PNG/JPEG folders.
From a shell: [b]cxr-tui ROOT --model RUN_OR_CHECKPOINT[/b]."""


class WelcomeScreen(CxrScreen[None]):
    BINDINGS = [Binding("d", "demo", "Open the demo", id="welcome.demo"),
                Binding("b", "browse", "Open a folder", id="welcome.browse")]

    def compose(self) -> ComposeResult:
        yield Header()
        with Center(), Vertical(id="welcome"):
            yield Static(WELCOME, id="welcome-text")
            yield Button("Open the demo (d)", id="welcome-demo", variant="primary")
            yield Button("Open a folder (b)", id="welcome-browse")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "welcome-demo":
            self.action_demo()
        else:
            self.action_browse()

    def action_demo(self) -> None:
        self.prepare_demo()

    def action_browse(self) -> None:
        from cxr_tui.dialogs import FolderPicker

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.app.post_message(RootChosen(path))

        self.app.push_screen(FolderPicker(Path.cwd()), chosen)

    def prepare_demo(self) -> None:
        self.notify("generating the demo phantoms (once) …")
        self.run_worker(self._demo, thread=True, exclusive=True, exit_on_error=False)

    def _demo(self) -> None:
        from cxr_core.demo import demo_model_path, ensure_demo_set

        root = ensure_demo_set()
        self.app.call_from_thread(self.app.open_root, root, demo_model_path())
