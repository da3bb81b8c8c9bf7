"""CxrScreen: what every full screen of the app shares — the app typed as :class:`~cxr_tui.app.CxrApp`, and the
extra commands it offers in the command palette (beyond its key bindings, which the palette lists anyway)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from textual.screen import Screen, ScreenResultType

if TYPE_CHECKING:
    from cxr_tui.app import CxrApp


class PaletteCommand(NamedTuple):
    """One command palette entry: its name, the screen action it runs, and a line of help."""

    name: str
    action: str
    help: str


class CxrScreen(Screen[ScreenResultType]):
    """A screen of :class:`~cxr_tui.app.CxrApp`: reads the workspace and resources through a typed ``app``."""

    if TYPE_CHECKING:
        @property
        def app(self) -> CxrApp: ...

    def palette_commands(self) -> Iterable[PaletteCommand]:
        """Commands beyond the key bindings (e.g. an action with arguments no key has); none by default."""
        return ()
