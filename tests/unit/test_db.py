"""SQLite connections: processes opening a fresh database at once all end up on the migrated schema."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

from cxr_core.store.db import connect

MIGRATIONS = ("CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y INTEGER)")


def _open(path: str, start, out) -> None:
    start.wait()
    try:
        conn = connect(Path(path), MIGRATIONS)
        conn.execute("INSERT INTO b VALUES (1)")
        conn.close()
        out.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        out.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_first_opens_migrate_once(tmp_path):
    path = tmp_path / "fresh.sqlite"
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(str(path), start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    results = [out.get(timeout=5) for _ in procs]
    assert results == ["ok"] * 6
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM b").fetchone()[0] == 6
    assert (path.stat().st_mode & 0o777) == 0o600
