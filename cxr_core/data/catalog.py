"""Finding image files under a data set root, without reading them.

The walk follows symlinked directories (users link archives in from other disks) but never visits a
directory twice, so a symlink loop cannot hang it; entries that cannot be stat'ed (broken links, loops,
permission errors) come back with a reason instead of stopping the walk.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr_core.images import looks_like_image

_SKIP_DIRS = frozenset({"__MACOSX", "__pycache__"})


@dataclass(frozen=True, slots=True)
class FoundFile:
    """A candidate image file with its size and mtime, or ``error`` saying why it could not be stat'ed."""

    relpath: str
    size: int = 0
    mtime_ns: int = 0
    error: str = ""


def _stat_error(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink (target does not exist)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def walk_images(root: Path, cancel: threading.Event | None = None,
                skip: Callable[[os.stat_result], bool] | None = None) -> Iterator[FoundFile]:
    """Yield every candidate image file below ``root`` with its size and mtime (sorted per directory).

    ``skip(stat)``: files never to open while guessing whether a suffix-less name is a DICOM (the index passes
    "a database this process has open").
    """
    seen: set[tuple[int, int]] = set()
    stack = [(str(root), "")]
    while stack:
        if cancel is not None and cancel.is_set():
            return
        directory, prefix = stack.pop()
        try:
            st = os.stat(directory)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if prefix:
                yield FoundFile(prefix.rstrip("/"), error=f"directory not readable ({_stat_error(exc)})")
            continue
        subdirs = []
        for entry in entries:
            rel = prefix + entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not entry.name.startswith(".") and entry.name not in _SKIP_DIRS:
                    subdirs.append((entry.path, rel + "/"))
                continue
            if entry.name.startswith(".") or not looks_like_image(entry.path, skip=skip):
                continue
            try:
                st = entry.stat()
            except OSError as exc:
                yield FoundFile(rel, error=_stat_error(exc))
                continue
            yield FoundFile(rel, st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subdirs))
