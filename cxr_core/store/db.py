"""SQLite connections the way every cxr database wants them: WAL, patient when busy, owner-only files."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from cxr_core.errors import CxrError
from cxr_core.paths import ensure_private_dir

BUSY_TIMEOUT_MS = 30_000


def connect(path: Path, migrations: Sequence[str]) -> sqlite3.Connection:
    """Open (creating if needed, mode 0600) and migrate to ``len(migrations)`` via ``PRAGMA user_version``.

    WAL lets a reader (the TUI) read while a writer commits; the busy timeout makes a second writer wait
    instead of failing with "database is locked". SQLite creates the -wal/-shm files with the database
    file's own permissions, so they stay owner-only too.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _retry_locked(lambda: _migrate(conn, migrations))
    except (OSError, sqlite3.DatabaseError) as exc:
        raise CxrError(f"{path}: cannot open database ({exc})") from None
    return conn


def _retry_locked(step, seconds: float = BUSY_TIMEOUT_MS / 1000):
    """Run ``step``, retrying while another process holds the lock it needs.

    Switching to WAL and the first migration take locks for which SQLite may answer "database is locked" at
    once instead of calling the busy handler (several processes opening a new database together).
    """
    deadline = time.monotonic() + seconds
    delay = 0.005
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _migrate(conn: sqlite3.Connection, migrations: Sequence[str]) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise sqlite3.DatabaseError(f"database schema v{version} is newer than this cxr (v{len(migrations)}); upgrade cxr")
    if version == len(migrations):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated since (two ranks, two reviewers).
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for script in migrations[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {max(version, len(migrations))}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
