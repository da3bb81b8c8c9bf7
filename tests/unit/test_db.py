"""SQLite connections: processes opening a fresh database at once all end up on the migrated schema."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

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


@pytest.mark.slow
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


# -- one connection per file per process (issue 10) ------------------------------------------------------------

_DURABILITY_SCRIPT = r"""
import os, signal, subprocess, sys
from cxr_core.store.reviews import ReviewStore
db = sys.argv[1]
a = ReviewStore(db)
a.record("/r", "s1", "Effusion", "accept")
b = ReviewStore(db)  # a second view in the same process (a screen)
b.latest("/r")
reader = "from cxr_core.store.reviews import ReviewStore; s = ReviewStore(sys.argv[1]); s.latest('/r'); s.close()"
subprocess.run([sys.executable, "-c", "import sys; " + reader, db], check=True)  # another process reads and leaves
for i in range(2, 6):
    a.record("/r", f"s{i}", "Effusion", "reject")
    print(f"ack s{i}", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_two_stores_a_foreign_reader_and_sigkill_lose_nothing(tmp_path):
    """The issue's reduced repro: two stores in one process, a reader process opens and closes, SIGKILL."""
    import subprocess
    import sys

    from cxr_core.store.reviews import ReviewStore

    db = tmp_path / "reviews.sqlite"
    proc = subprocess.run([sys.executable, "-c", _DURABILITY_SCRIPT, str(db)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.split().count("ack") == 4
    with ReviewStore(db) as fresh:
        assert sorted(study for study, _ in fresh.latest("/r")) == ["s1", "s2", "s3", "s4", "s5"]


def test_stores_on_one_file_share_one_connection(tmp_path):
    from cxr_core.store.db import open_database
    from cxr_core.store.reviews import ReviewStore

    path = tmp_path / "x.sqlite"
    a = open_database(path, MIGRATIONS)
    b = open_database(tmp_path / "." / "x.sqlite", MIGRATIONS)  # another spelling of the same file
    assert a.conn is b.conn and a.lock is b.lock and a.users == 2
    a.close()
    a.close()  # twice is harmless
    assert b.users == 1
    b.conn.execute("INSERT INTO a VALUES (1)")  # still open for the remaining user
    b.close()
    with pytest.raises(sqlite3.ProgrammingError):
        b.conn.execute("SELECT 1")
    with ReviewStore(tmp_path / "r.sqlite") as one, ReviewStore(tmp_path / "r.sqlite") as two:
        assert one._conn is two._conn


def test_no_descriptor_but_sqlites_on_a_database(tmp_path):
    """Opening a database never leaves (or briefly holds) a descriptor of ours on its inode."""
    import os

    from cxr_core.store.db import open_database

    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    path = tmp_path / "new.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", spy)
        db = open_database(path, MIGRATIONS)
        again = open_database(path, MIGRATIONS)
    assert str(path) not in opened and not any(p.endswith("-wal") or p.endswith("-shm") for p in opened)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in tmp_path.glob("new.sqlite-*"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    again.close()
    db.close()


def test_a_scan_never_opens_a_database_this_process_holds(tmp_path):
    """A suffix-less database inside a data root (``--db ROOT/cxrdb``) is not opened to sniff for DICOM."""
    import os

    import numpy as np
    from PIL import Image

    from cxr_core.store.index import StudyIndex

    root = tmp_path / "root"
    root.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "a.png")
    db = root / "cxrdb"
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    with StudyIndex(db) as index, pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", spy)
        report = index.scan(root, "folder").report
    assert report.studies == 1
    assert str(db) not in opened
