"""textual-image's terminal questions, asked only when the answer is needed.

Importing ``textual_image.renderable`` asks the terminal whether it speaks sixel or kitty graphics (a DA1 query
and a kitty graphics APC). That must happen before Textual owns the terminal (a late answer is read as keys),
so :mod:`cxr_tui.widgets.xray` imports it before any app runs. When ``--image-protocol`` names the protocol,
the answer is not needed, and asking costs something: tmux shows the kitty query as the pane's title
(``Gi=...;AAAA``). :func:`prepare` imports textual-image for a named protocol without the graphics queries: the
cell size is still measured (the film's aspect needs it), with the real terminal; the detection then sees no
terminal and settles on its fallback, which cxr does not use because the protocol is named.
"""

from __future__ import annotations

import sys

NEEDS_DETECTION = ("auto", "kitty", "sixel")
"""Protocols whose drawing asks the terminal (auto) or relies on what detection learnt (sixel, kitty)."""


class _NotATerminal:
    """``sys.__stdout__`` as textual-image's detection sees it while it is imported: the same stream, no tty."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


def prepare(protocol: str) -> None:
    """Import textual-image for ``protocol``: with its graphics queries for ``auto`` (and kitty / sixel), without
    them for ``halfcell`` and ``unicode``. Call before :mod:`cxr_tui.app` is imported; later calls do nothing."""
    if "textual_image.renderable" in sys.modules or protocol in NEEDS_DETECTION:
        return
    from textual_image._terminal import get_cell_size

    get_cell_size()  # cached by textual-image: measured once, on the real terminal
    real = sys.__stdout__
    sys.__stdout__ = _NotATerminal(real)
    try:
        import textual_image.renderable  # noqa: F401 - detection runs here, seeing no terminal
    finally:
        sys.__stdout__ = real
