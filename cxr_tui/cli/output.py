"""How commands talk: results on stdout (tables, or JSON with --json), progress and errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def error_line(message: str) -> None:
    """One line naming what went wrong; never a traceback for a user mistake."""
    stderr.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A callback ``(stage, done, total)`` drawing a progress bar on stderr when it is a terminal."""
    if not (enabled and stderr.is_terminal):
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
