"""Driving Textual apps in tests: wait, without a fixed sleep, until the app reaches a state."""

from __future__ import annotations

import time
from collections.abc import Callable


async def until(pilot, condition: Callable[[], object], seconds: float = 60.0, what: str = "the app") -> None:
    """Let the app run (in 0.1 s pauses) until ``condition()`` is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)
