"""The preprocessed image cache: every image of a data set letterboxed to ``size x size`` uint8, in one file.

Decoding and resizing a 1024x1024 PNG costs 10-15 ms of one core; copying a row out of this cache ~0.02 ms,
so epochs after the first (and every later run at the same size) are bound by the model, not by zlib.

Layout, one cache per (image base folder, size)::

    data_dir()/cache/<key>/<size>/pixels.u8    raw (rows, size, size) uint8, opened as np.memmap
                                 /index.json   relpath -> [row, file size, mtime_ns], failures, row count

``key`` hashes the absolute image base and :data:`RESIZE_METHOD`, so changing how images are resized makes
new caches instead of silently mixing two methods. Rows are reused across calls with different relpath
lists (train, then val): the cache of a data set is the union of what was asked of it.

Crash safety: pixels are written and fsynced first, the index last (temp file + ``os.replace``). A row is
trusted only when the index lists it with the file's current (size, mtime_ns), so a build that dies leaves
the previous index (or none) and whatever it was writing is decoded again next time. Builds hold an
exclusive ``flock`` on the cache folder, so DDP ranks that call :meth:`ImageCache.open_or_build` together
build once and the others then open the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from cxr_core.atomic import atomic_write_text
from cxr_core.data.preprocess import RESIZE_METHOD, load_letterboxed
from cxr_core.errors import CxrError, ImageReadError
from cxr_core.paths import data_dir, ensure_private_dir

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builds of one cache are then the caller's problem
    fcntl = None  # type: ignore[assignment]

_INDEX_FORMAT = 1
_CHUNK = 16  # images per worker task: keeps cancel and progress responsive
Progress = Callable[[int, int], None]


class CacheBuildCancelled(CxrError):
    """The build was cancelled; rows finished so far are saved and will not be decoded again."""


def cache_key(base: Path) -> str:
    return hashlib.sha256(f"{os.path.abspath(base)}\0{RESIZE_METHOD}".encode("utf-8", "surrogateescape")).hexdigest()[:20]


class ImageCache:
    """Letterboxed uint8 images of one data set at one size; :meth:`get` returns a view into a memmap.

    Pickles without its pixels (DataLoader workers started by spawn re-map the file themselves).
    """

    def __init__(self, directory: Path, base: Path, size: int, row_count: int,
                 images: dict[str, list[int]], failures: dict[str, list], decoded: int = 0):
        self.directory = directory
        self.base = base
        self.size = size
        self.row_count = row_count  # rows in the pixel file, listed or not
        self.decoded = decoded  # files decoded by the call that produced this object (0: all reused)
        self._images = images
        self._failures = failures
        self._pixels: np.ndarray | None = None

    @classmethod
    def open_or_build(
        cls,
        base: str | os.PathLike[str],
        relpaths: Sequence[str],
        size: int,
        *,
        workers: int = 0,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        root: Path | None = None,
    ) -> ImageCache:
        """Open the cache of ``relpaths`` (relative to ``base``), decoding only files new or changed since.

        ``workers >= 2`` decodes in that many threads, each writing its rows of the memmap in place: Pillow
        decodes, and resizes, with the GIL released, so threads scale with cores from the first chunk and cost
        nothing to start (spawned processes re-imported torch: seconds each, no gain below a few thousand
        images), and they are safe beside torch's and the UI's threads where fork is not. Unreadable
        files are recorded in
        :attr:`failures` with their reason and never stop the build. ``progress(done, total)`` is called
        as images land; setting ``cancel`` stops the build with :class:`CacheBuildCancelled`, keeping the
        finished rows. ``root`` defaults to ``data_dir()/cache``.
        """
        if size < 1:
            raise ValueError(f"cache size must be positive, got {size}")
        base = Path(os.path.abspath(Path(base).expanduser()))
        directory = root or data_dir() / "cache"
        for part in ("", cache_key(base), str(size)):  # one at a time: mkdir(parents=True) ignores the mode
            directory = ensure_private_dir(directory / part)
        with _exclusive(directory / "lock"):
            index = _read_index(directory, base, size)
            images, failures = index["images"], index["failures"]
            stats = {rel: _source_stat(base, rel) for rel in dict.fromkeys(relpaths)}
            todo = [rel for rel, st in stats.items() if _known_stat(images, failures, rel) != st]
            if not todo:
                return cls(directory, base, size, index["rows"], images, failures)
            rows = _assign_rows(todo, images, index["rows"])
            total = max(index["rows"], *(row + 1 for row in rows.values()))
            pixels_path = directory / "pixels.u8"
            _grow(pixels_path, total * size * size)
            done: dict[str, str | None] = {}
            try:
                _decode_into(pixels_path, base, size, total, [(rel, rows[rel]) for rel in todo],
                             workers, done, progress, cancel)
            finally:
                _fsync(pixels_path)
                for rel, reason in done.items():
                    size_mtime = list(stats[rel])
                    if reason is None:
                        images[rel] = [rows[rel], *size_mtime]
                        failures.pop(rel, None)
                    else:
                        images.pop(rel, None)
                        failures[rel] = [reason, *size_mtime]
                if done:
                    _write_index(directory, {"format": _INDEX_FORMAT, "method": RESIZE_METHOD, "base": str(base),
                                             "size": size, "rows": total, "images": images, "failures": failures})
            return cls(directory, base, size, total, images, failures, decoded=len(done))

    @property
    def pixels(self) -> np.ndarray:
        """All rows, (rows, size, size) uint8, read-only; rows not listed in the index are unused."""
        if self._pixels is None:
            if self.row_count == 0:
                self._pixels = np.zeros((0, self.size, self.size), np.uint8)
            else:
                self._pixels = np.memmap(self.directory / "pixels.u8", np.uint8, "r",
                                         shape=(self.row_count, self.size, self.size))
        return self._pixels

    @property
    def failures(self) -> dict[str, str]:
        """relpath -> why it could not be read."""
        return {rel: entry[0] for rel, entry in self._failures.items()}

    def row(self, relpath: str) -> int | None:
        entry = self._images.get(relpath)
        return None if entry is None else entry[0]

    def get(self, relpath: str) -> np.ndarray:
        """The (size, size) uint8 image, a view into the memmap (copy it before modifying or keeping it).

        A file recorded as unreadable raises :class:`ImageReadError` with its reason; a relpath never
        given to :meth:`open_or_build` raises ``KeyError``.
        """
        entry = self._images.get(relpath)
        if entry is None:
            if relpath in self._failures:
                raise ImageReadError(self.base / relpath, self._failures[relpath][0])
            raise KeyError(f"{relpath} is not in the image cache {self.directory}")
        return self.pixels[entry[0]]

    def __contains__(self, relpath: object) -> bool:
        return relpath in self._images

    def __len__(self) -> int:
        return len(self._images)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}


def _known_stat(images: dict, failures: dict, rel: str) -> tuple[int, int] | None:
    entry = images.get(rel) or failures.get(rel)
    return None if entry is None else (entry[1], entry[2])


def _source_stat(base: Path, rel: str) -> tuple[int, int]:
    """(size, mtime_ns) of the file behind ``rel`` (the archive of an ``a.npz::member``); (-1, -1) if missing."""
    try:
        st = os.stat(base / rel.split("::", 1)[0])
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _assign_rows(todo: list[str], images: dict[str, list[int]], rows: int) -> dict[str, int]:
    """Changed files keep their row; new ones take rows no longer listed, then rows past the end."""
    used = {entry[0] for entry in images.values()}
    free = iter(sorted(set(range(rows)) - used))
    assigned = {}
    for rel in todo:
        if rel in images:
            assigned[rel] = images[rel][0]
        else:
            row = next(free, None)
            if row is None:
                row, rows = rows, rows + 1
            assigned[rel] = row
    return assigned


def _decode_into(pixels_path: Path, base: Path, size: int, rows: int, jobs: list[tuple[str, int]], workers: int,
                 done: dict[str, str | None], progress: Progress | None, cancel: threading.Event | None) -> None:
    """Decode ``jobs`` into their rows, recording each relpath's outcome in ``done`` as it lands."""
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    if progress:
        progress(0, len(jobs))
    pixels = np.memmap(pixels_path, np.uint8, "r+", shape=(rows, size, size))
    workers = min(workers, len(chunks))
    if workers < 2:
        for chunk in chunks:
            _check_cancel(cancel, done, len(jobs))
            done.update(_decode_rows(pixels, str(base), size, chunk))
            if progress:
                progress(len(done), len(jobs))
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="cxr-cache") as pool:
        pending = {pool.submit(_decode_rows, pixels, str(base), size, chunk) for chunk in chunks}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    done.update(future.result())
                if finished and progress:
                    progress(len(done), len(jobs))
                _check_cancel(cancel, done, len(jobs))
        finally:
            pool.shutdown(cancel_futures=True)


def _check_cancel(cancel: threading.Event | None, done: dict, total: int) -> None:
    if cancel is not None and cancel.is_set():
        raise CacheBuildCancelled(f"image cache build cancelled after {len(done)} of {total} images")


def _decode_rows(pixels: np.ndarray, base: str, size: int, chunk: list[tuple[str, int]]) -> dict[str, str | None]:
    """Write each image into its row; relpath -> None, or the reason it could not be read."""
    outcome: dict[str, str | None] = {}
    for rel, row in chunk:
        try:
            pixels[row] = load_letterboxed(os.path.join(base, rel), size)
        except ImageReadError as err:
            outcome[rel] = err.reason
        else:
            outcome[rel] = None
    return outcome


def _grow(path: Path, nbytes: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < nbytes:
            os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _empty_index() -> dict:
    return {"rows": 0, "images": {}, "failures": {}}


def _read_index(directory: Path, base: Path, size: int) -> dict:
    """The stored index, or an empty one when it is missing, unreadable, or describes other pixels."""
    try:
        index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        pixel_bytes = (directory / "pixels.u8").stat().st_size
    except (OSError, ValueError):
        return _empty_index()
    expected = {"format": _INDEX_FORMAT, "method": RESIZE_METHOD, "base": str(base), "size": size}
    if not isinstance(index, dict) or any(index.get(k) != v for k, v in expected.items()):
        return _empty_index()
    if pixel_bytes < index["rows"] * size * size:
        return _empty_index()
    return index


def _write_index(directory: Path, index: dict) -> None:
    atomic_write_text(directory / "index.json", json.dumps(index, separators=(",", ":")))


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class TrainingCachePixels(Mapping[str, np.ndarray]):
    """Read-only: image path -> its row in a training image cache, for the rows the cache would itself trust.

    Pickles without the memmap (DataLoader workers map the file again).
    """

    def __init__(self, directory: Path, size: int, row_count: int, rows: dict[str, int]):
        self.directory = directory
        self.size = size
        self.row_count = row_count
        self.rows = rows
        self._pixels: np.ndarray | None = None

    def __getitem__(self, path: str) -> np.ndarray:
        row = self.rows[path]
        if self._pixels is None:
            self._pixels = np.memmap(self.directory / "pixels.u8", np.uint8, "r",
                                     shape=(self.row_count, self.size, self.size))
        return self._pixels[row]

    def __contains__(self, path: object) -> bool:
        return path in self.rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}


def training_cache_pixels(base: str | os.PathLike[str], relpaths: Sequence[str], size: int, *,
                          root: Path | None = None) -> TrainingCachePixels | None:
    """The rows of the training image cache of ``base`` at ``size`` that can stand in for decoding, or None.

    Nothing is built, locked or written: the cache's index is read as training reads it (same format, resize
    method, base, size and a pixel file long enough, else nothing is used), and a row counts only while its
    file's (size, mtime_ns) still equal what the cache recorded. ``root`` defaults to ``data_dir()/cache``.
    """
    given = Path(base)  # the keys are spelt as the caller spells its paths: str(base / relpath)
    absolute = Path(os.path.abspath(given.expanduser()))  # the cache is keyed as training keys it
    try:
        directory = (root or data_dir() / "cache") / cache_key(absolute) / str(size)
        if not (directory / "index.json").is_file():
            return None
        index = _read_index(directory, absolute, size)
    except (OSError, CxrError):
        return None
    images = index["images"]
    rows: dict[str, int] = {}
    for rel in relpaths:
        entry = images.get(rel)
        if entry and 0 <= entry[0] < index["rows"] and tuple(entry[1:3]) == _source_stat(absolute, rel):
            rows[str(given / rel)] = int(entry[0])
    return TrainingCachePixels(directory, size, int(index["rows"]), rows) if rows else None
