"""atomic_path: the target is replaced whole or not at all, and leftovers of killed writers are swept."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from cxr_core.atomic import STALE_TMP_S, atomic_path, atomic_write_text, locked
from cxr_core.errors import CxrError


def test_failed_write_leaves_target_and_no_tmp(tmp_path: Path):
    target = tmp_path / "status.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_stale_leftovers_of_killed_writers_are_removed_on_the_next_write(tmp_path: Path):
    target = tmp_path / "thresholds[1].json"  # glob metacharacters in the name
    stale = tmp_path / ".thresholds[1].json.abc123.tmp"
    young = tmp_path / ".thresholds[1].json.def456.tmp"  # maybe a live writer in another process
    other = tmp_path / ".other.json.zzz.tmp"
    for p in (stale, young, other):
        p.write_text("partial")
    old = time.time() - STALE_TMP_S - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    assert not stale.exists() and young.exists() and other.exists()  # only this target's, only old ones
    assert (target.stat().st_mode & 0o777) == 0o600


def test_lock_held_elsewhere_is_waited_for_then_a_one_line_error(tmp_path: Path):
    import fcntl
    import threading

    target = tmp_path / "thresholds.json"
    with locked(target):  # creates the lock file
        pass
    holder = [os.open(tmp_path / ".thresholds.json.lock", os.O_RDWR)]  # another open file: flock conflicts
    fcntl.flock(holder[0], fcntl.LOCK_EX)

    def release() -> None:
        with contextlib.suppress(IndexError):
            os.close(holder.pop())  # closing releases the lock; popped so it is closed once

    try:
        started = time.monotonic()
        with pytest.raises(CxrError, match=r"thresholds.json: another process is saving it"), locked(target, timeout=0.3):
            pass
        assert time.monotonic() - started >= 0.3
        threading.Timer(0.2, release).start()  # the holder finishes: the waiter gets the lock
        with locked(target, timeout=5):
            assert not holder
    finally:
        release()
