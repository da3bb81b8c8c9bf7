"""SQLite databases the way every cxr database wants them: one connection per file per process, WAL, owner-only.

**One connection per database per process.** :func:`open_database` hands every store that opens the same file
(a reviews store in the app and another in a screen, the index in a command and in ``predict_root``) the same
:class:`Database`: one ``sqlite3.Connection`` and one lock, counted by reference and closed with its last user.
SQLite keeps POSIX advisory locks per process and inode, so a second connection, or worse any other file
descriptor on the file being closed, can drop the locks the first one holds ("How To Corrupt An SQLite
Database File", section 2.2): another process then takes itself for the last connection, checkpoints and
deletes the WAL, and this process goes on committing into a deleted file. Hence also: **no descriptor on a
database that SQLite does not own**. A new database file is made owner-only by creating it empty under a
private temporary name and hard-linking it into place (no descriptor of ours is ever open on a file SQLite
has open); where a file system cannot link, SQLite creates it and it is chmod-ed by path at once.

The lock is the connection's, not a store's: a transaction belongs to the connection, so every use of
``Database.conn`` (reads too: a read on a connection inside another thread's transaction would see its
uncommitted rows) happens under ``Database.lock``. A forked child never uses (or closes) its parent's
connections: it opens its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from cxr_core.errors import CxrError, database_error_text, os_error_text
from cxr_core.paths import ensure_private_dir
from cxr_core.text import visible

BUSY_TIMEOUT_MS = 30_000

_registry: dict[str, _Shared] = {}
_registry_lock = threading.Lock()
_orphans: list[_Shared] = []  # a forked child's inherited connections: kept alive so they are never closed there


class _Shared:
    """The one connection to a file, its lock and how many handles use it."""

    def __init__(self, path: Path, key: str, conn: sqlite3.Connection):
        self.path, self.key, self.conn = path, key, conn
        self.lock = threading.RLock()
        self.users = 0
        st = os.stat(path)
        self.inode = (st.st_dev, st.st_ino)


class Database:
    """A store's handle on the process-wide connection to one SQLite file.

    Use ``conn`` only while holding ``lock`` (re-entrant, shared by every handle on the file). ``close()``
    releases this handle; the connection closes when the last handle is released.
    """

    def __init__(self, shared: _Shared):
        self._shared = shared
        self.path, self.conn, self.lock = shared.path, shared.conn, shared.lock
        self._released = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; a SQLite failure becomes one CxrError naming the file and the cause."""
        with self.lock:
            try:
                yield self.conn
            except sqlite3.Error as exc:
                raise database_error(self.path, exc) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the lock; rolled back on any error, which is re-raised (a SQLite
        one as a CxrError: the real cause, e.g. a full disk, not the "cannot rollback" that may follow it)."""
        with self.reading() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @property
    def users(self) -> int:
        """Handles open on this connection in this process (1 when this is the only one)."""
        return self._shared.users

    def close(self) -> None:
        """Release this handle; the last one closes the connection. Closing twice is harmless."""
        shared = self._shared
        with _registry_lock:
            if self._released:
                return
            self._released = True
            if _registry.get(shared.key) is not shared:  # inherited across fork: the parent's, not ours to close
                return
            shared.users -= 1
            if shared.users > 0:
                return
            del _registry[shared.key]
        with shared.lock:
            shared.conn.close()


def open_database(path: str | os.PathLike[str], migrations: Sequence[str]) -> Database:
    """A handle on the process's connection to ``path`` (opened, created owner-only and migrated on first use).

    Migrates to ``len(migrations)`` via ``PRAGMA user_version`` (under the write lock, so processes opening a
    new database at once migrate it once). Every failure is one ``CxrError`` naming the file.
    """
    path = Path(path).expanduser()
    key = _key(path)
    with _registry_lock:
        shared = _registry.get(key)
        if shared is None:
            shared = _registry[key] = _Shared(path, key, _connect(path, migrations))
        else:
            with shared.lock:
                try:
                    _retry_locked(lambda: _migrate(shared.conn, migrations))
                except sqlite3.Error as exc:
                    raise database_error(path, exc) from None
        shared.users += 1
        return Database(shared)


def is_open_database(st: os.stat_result) -> bool:
    """Whether the file with this stat is a database this process has open: a scan must not open it (closing
    that descriptor would drop the connection's locks)."""
    inode = (st.st_dev, st.st_ino)
    with _registry_lock:
        return any(shared.inode == inode for shared in _registry.values())


def connect(path: Path, migrations: Sequence[str]) -> sqlite3.Connection:
    """A private connection (tests and tools that must see the file as another process would).

    The stores use :func:`open_database`; a second connection in a process that already has one on the same
    file is safe with SQLite itself, but cxr keeps to one per process.
    """
    return _connect(Path(path).expanduser(), migrations)


def database_error(path: str | os.PathLike[str] | None, exc: sqlite3.Error) -> CxrError:
    return CxrError(database_error_text(path, exc))


def _key(path: Path) -> str:
    """Same file, same key: the real path of the folder plus the name (the file may not exist yet)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def _connect(path: Path, migrations: Sequence[str]) -> sqlite3.Connection:
    """WAL lets a reader (the TUI) read while a writer commits; the busy timeout makes a second writer wait
    instead of failing with "database is locked". SQLite creates the -wal/-shm files with the database
    file's own permissions, so they stay owner-only too."""
    try:
        ensure_private_dir(path.parent)
        chmod_after = not path.exists() and not _create_private(path)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            if chmod_after:
                conn.execute("PRAGMA user_version").fetchone()  # SQLite has created the file; nothing written yet
                os.chmod(path, 0o600)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _retry_locked(lambda: _migrate(conn, migrations))
        except BaseException:
            conn.close()
            raise
    except OSError as exc:
        raise CxrError(f"{os_error_text(exc)} (opening the database {visible(path)})") from None
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None
    return conn


def _create_private(path: Path) -> bool:
    """Make ``path`` an empty mode-0600 file before SQLite opens it, without ever holding a descriptor on it.

    The empty file is made under a unique temporary name (its descriptor closed at once) and hard-linked into
    place: a link never replaces an existing file, so a database another process created meanwhile is kept.
    Returns False where the file system cannot link (the caller chmods after SQLite creates the file).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)  # a private file nobody else knows: closing it can drop no SQLite lock
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True


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


def _forget_after_fork() -> None:
    """In a forked child: the parent's connections are not ours to use or close; later opens get new ones."""
    global _registry_lock
    _registry_lock = threading.Lock()
    _orphans.extend(_registry.values())
    _registry.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
