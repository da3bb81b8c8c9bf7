"""Errors a user can cause and fix. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path


class CxrError(Exception):
    """Base of every error caused by input or configuration rather than by a bug."""


class DataError(CxrError):
    """A data set root, labels file or option is not usable; the message says which and why."""


class ImageReadError(CxrError):
    """An image file could not be read. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedImage(ImageReadError):
    """The file is not an image format cxr reads (or not an image at all)."""


class CorruptImage(ImageReadError):
    """The file claims a supported format but its content is damaged or incomplete."""


class ImageTooLarge(ImageReadError):
    """The header announces more pixels than the configured limit (a decompression bomb guard)."""


class MissingDecoder(ImageReadError):
    """The image needs an optional decoder that is not installed; the reason says what to install."""


_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "name too long",
    errno.EIO: "input/output error (a failing disk or network file system)",
}


def os_error_text(exc: OSError) -> str:
    """``"<file>: <cause>"`` for an OSError, in words a user can act on (the file shown as visible text)."""
    from cxr_core.text import visible

    reason = _OS_REASONS.get(exc.errno) or exc.strerror or str(exc)
    names = [visible(os.fsdecode(n)) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def as_cxr_error(exc: OSError, doing: str = "") -> CxrError:
    """An OSError as the one-line CxrError the CLI and the TUI show (``doing``: e.g. "cannot write")."""
    text = os_error_text(exc)
    return CxrError(f"{text} ({doing})" if doing else text)


def database_error_text(path: str | os.PathLike[str] | None, exc: sqlite3.Error) -> str:
    """A SQLite failure in words a user can act on, naming the file (the real cause, not a symptom)."""
    from cxr_core.text import visible

    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        reason = "another process kept the database locked (it is busy writing); try again when it is done"
    elif "malformed" in text or "not a database" in text or "corrupt" in text:
        reason = "the database file is damaged; move it away (cxr creates a new one) or restore it from a backup"
    elif "full" in text:
        reason = "the disk is full"
    elif "readonly" in text or "read-only" in text:
        reason = "the database is read-only (its file or folder cannot be written)"
    elif "unable to open" in text:
        reason = "cannot open the database file (is its folder there and writable?)"
    elif "disk i/o" in text:
        reason = "input/output error while reading or writing the database"
    else:
        reason = f"database error ({exc})"
    return f"{visible(path)}: {reason}" if path is not None else reason


def error_text(error: BaseException | None) -> str:
    """What a user is told about a failure: a CxrError as it is, an OSError or a SQLite error as the file and
    the cause (full disk, read-only, locked, damaged), and anything else (a bug) by its type."""
    if isinstance(error, CxrError):
        return str(error)
    if isinstance(error, OSError):
        return os_error_text(error)
    if isinstance(error, sqlite3.Error):
        return database_error_text(None, error)
    return f"{type(error).__name__}: {error}"
