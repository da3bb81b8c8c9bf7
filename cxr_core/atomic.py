"""Atomic file replacement: a reader sees the old file or the new one, never half of either.

Write to a temporary file in the same directory, flush and fsync it, then ``os.replace`` it over the target
(atomic on POSIX within one file system) and fsync the directory so the rename itself survives a crash.
A writer killed between the two leaves its temporary file behind; the next successful write of the same
target removes such leftovers once they are ``STALE_TMP_S`` old (a live writer's file is younger).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cxr_core.errors import CxrError

STALE_TMP_S = 3600.0  # a temporary file untouched this long belongs to a writer that died
LOCK_TIMEOUT_S = 5.0  # longest wait for another process's read-modify-write of the same file


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], mode: int = 0o600) -> Iterator[Path]:
    """Yield a temporary path to write (by any library); on success it replaces ``target`` atomically.

    On an exception the temporary file is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, mode)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    _fsync_dir(target.parent)
    remove_stale_tmp(target)


def check_writable(target: str | os.PathLike[str], what: str = "output") -> Path:
    """Raise a one-line CxrError now, before any work, if ``target`` cannot be written: its folder is missing,
    is not a folder or is not writable, or ``target`` is a directory. Returns ``target`` as a Path."""
    from cxr_core.text import visible

    target = Path(target).expanduser()
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise CxrError(f"{visible(target)}: is a directory, not a file ({what})")
    if not parent.exists():
        raise CxrError(f"{visible(parent)}: no such folder (for the {what} {visible(target.name)})")
    if not parent.is_dir():
        raise CxrError(f"{visible(parent)}: not a folder (for the {what} {visible(target.name)})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CxrError(f"{visible(parent)}: not writable ({'read-only file system' if _read_only(parent) else 'permission denied'})")
    return target  # the file itself is replaced, not written in place: the folder's permission is what counts


def check_writable_dir(folder: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Raise a one-line CxrError now if ``folder`` cannot be created or written: the first part of it that
    exists must be a writable folder. Returns ``folder`` as a Path."""
    from cxr_core.text import visible

    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CxrError(f"{visible(existing)}: not a folder (for the {what} {visible(folder)})")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(existing) else "permission denied"
        raise CxrError(f"{visible(existing)}: not writable, {why} (for the {what} {visible(folder)})")
    return folder


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def remove_stale_tmp(target: str | os.PathLike[str], older_than_s: float = STALE_TMP_S) -> int:
    """Remove ``target``'s temporary files left by killed writers (untouched ``older_than_s``); returns how many."""
    target = Path(target)
    cutoff = time.time() - older_than_s
    removed = 0
    with contextlib.suppress(OSError):
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                if leftover.lstat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
    return removed


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str, mode: int = 0o600) -> None:
    atomic_write_bytes(target, text.encode("utf-8"), mode)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(target: str | os.PathLike[str], timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive advisory lock for a read-modify-write of ``target`` across processes.

    The lock is ``flock`` on a sibling ``.<name>.lock`` file (created 0600, left in place: removing it would
    let a third writer lock a different inode). Where ``fcntl`` does not exist the block runs unlocked.
    Waits at most ``timeout`` seconds for another holder (a UI thread must not hang on a suspended process
    or a stuck network mount); then, or when the lock cannot be created or taken at all, raises CxrError
    naming ``target``.
    """
    target = Path(target)
    with flocked(target.parent / f".{target.name}.lock", timeout, name=target,
                 busy=f"another process is saving it (lock held for more than {timeout:.0f} s); try again",
                 failed="cannot lock for writing"):
        yield


NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
"""``flock`` errors of a file system that has no locks (NFS without lockd, sshfs, some FUSE), not of a holder."""


@contextlib.contextmanager
def flocked(lock_path: Path, timeout: float, *, name: object, busy: str, failed: str,
            error: type[CxrError] = CxrError, unlocked: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``flock`` on ``lock_path`` (created 0600), waiting at most ``timeout`` s: the one lock loop of
    :func:`locked` and a run's lock. Raises ``error("<name>: <busy>")`` when another holder keeps it, or
    ``error("<name>: <failed> (<cause>)")`` when it cannot be taken; on a file system without locks, calls
    ``unlocked`` and runs the block unlocked when given one (else that is a failure too). Where ``fcntl`` does
    not exist the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise error(f"{name}: {failed} ({exc.strerror or exc})") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise error(f"{name}: {busy}") from None
                time.sleep(0.02)
            except OSError as exc:
                if unlocked is not None and exc.errno in NO_LOCKS:
                    unlocked()
                    break
                raise error(f"{name}: {failed} ({exc.strerror or exc})") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
