"""How commands talk: results on stdout (tables, or JSON with --json), progress and errors on stderr.

Every character a command prints passes one boundary. The consoles never parse text as markup (a root named
``[old]`` or a label ``Nodule [r/o]`` prints as itself; styles come from :func:`say`'s ``(text, style)`` parts),
and :class:`SafeConsole` writes every text segment through :func:`cxr_core.text.visible`, so an escape sequence
inside a file name, CSV cell, DICOM field or label name reaches the terminal as ``\\x1b``, never as ESC. JSON
output escapes the same characters as ``\\u`` sequences, and keeps undecodable bytes as ``\\udcXX``
(Python's ``json`` reads them back to the same name).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.segment import Segment
from rich.text import Text

from cxr_core.text import visible

# Characters JSON leaves raw with ensure_ascii=False that a terminal may act on or that hide text: DEL, C1
# controls, bidi and zero-width format characters, line/paragraph separators, and lone surrogates.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")


class SafeConsole(Console):
    """A rich Console that shows outside text as text: no markup, no emoji codes, controls made visible."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, soft_wrap=True, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # Before rich's Text sees it: Text silently drops BEL, backspace, VT, FF and CR, which visible() shows.
        return super().render_str(visible(text, lines=True), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # The one place where rich turns text into terminal bytes; control segments (cursor moves of a progress
        # bar) are rich's own and pass as they are.
        return super()._render_buffer(
            Segment(visible(segment.text, lines=True), segment.style, segment.control)
            if segment.control is None and not segment.text.isprintable() else segment
            for segment in buffer)


stdout = SafeConsole()
stderr = SafeConsole(stderr=True)


def plain(text: object) -> Text:
    """Outside text as a rich ``Text`` (a table cell, a title): shown as :func:`visible` text, never as markup."""
    return Text(visible(text))


def say(*parts: str | tuple[str, str], console: Console | None = None) -> None:
    """Print one line made of plain parts and ``(text, style)`` parts; no part is ever read as markup."""
    (console or stdout).print(Text.assemble(*(visible(p, lines=True) if isinstance(p, str)
                                              else (visible(p[0], lines=True), p[1]) for p in parts)))


def warn(message: str) -> None:
    say(("warning:", "yellow"), " ", message, console=stderr)


def json_text(data: Any) -> str:
    """``data`` as indented JSON that is safe on a terminal and reads back to the same values."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data) + "\n")


def error_line(message: str) -> None:
    """One line naming what went wrong; never a traceback for a user mistake."""
    say(("error:", "bold red"), " ", message, console=stderr)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A callback ``(stage, done, total)`` drawing a progress bar on stderr when it is a terminal."""
    if not (enabled and stderr.is_terminal):
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=stderr, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
