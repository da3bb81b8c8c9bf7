"""atomic_path: the target is replaced whole or not at all, and leftovers of killed writers are swept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cxr_core.atomic import STALE_TMP_S, atomic_path, atomic_write_text


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
