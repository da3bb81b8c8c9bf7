"""Where cxr keeps its own files: the user data dir (index, caches, runs), created owner-only."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import platformdirs

APP_NAME = "cxr"


def data_dir() -> Path:
    """``$CXR_HOME`` if set, else the platform's user data dir (``~/.local/share/cxr`` on Linux)."""
    override = os.environ.get("CXR_HOME")
    path = Path(override).expanduser() if override else platformdirs.user_data_path(APP_NAME)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
        ensure_private_dir(path)
    except OSError as exc:
        from cxr_core.errors import CxrError, os_error_text

        where = "CXR_HOME" if override else "the user data folder"
        raise CxrError(f"{os_error_text(exc)}: cannot use it as {where} (set CXR_HOME to a writable folder)") from None
    if not os.access(path, os.W_OK | os.X_OK):
        from cxr_core.errors import CxrError
        from cxr_core.text import visible

        raise CxrError(f"{visible(path)}: not writable; cxr keeps its index and reviews there "
                       "(set CXR_HOME to a writable folder)")
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by its owner only; leave an existing dir's mode alone."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    return path


def default_index_path() -> Path:
    return data_dir() / "index.sqlite"
