"""Predictions cached in SQLite, keyed by the image's content hash and the model's fingerprint.

Reopening a folder costs a ``stat`` per file: a file whose (size, mtime) did not change keeps its stored
content hash, and a known (hash, model, variant) pair keeps its probabilities, so nothing is decoded or
run again; the image's distances to the model's training images (:mod:`cxr_core.ood`) are kept beside them, in
their own table. Keying by content, not path, means a moved or copied image is still a hit, and an image edited in
place (new content) is a miss. ``variant`` separates settings that change the numbers (e.g. TTA).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cxr_core.errors import CxrError
from cxr_core.paths import data_dir
from cxr_core.store.db import open_database
from cxr_core.text import db_value, fs_text, visible

MIGRATIONS = (
    """
    CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL);
    CREATE TABLE predictions (
        hash TEXT NOT NULL, model TEXT NOT NULL, variant TEXT NOT NULL, labels TEXT NOT NULL, probs BLOB NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (hash, model, variant)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE distances (
        hash TEXT NOT NULL, model TEXT NOT NULL, measures TEXT NOT NULL, distances BLOB NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (hash, model)
    ) WITHOUT ROWID;
    """,
)
_CHUNK = 500


def default_cache_path() -> Path:
    return data_dir() / "predictions.sqlite"


def content_hash(path: str | os.PathLike[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _move_aside(path: Path) -> Path:
    """Rename a damaged database (and its -wal / -shm files) to ``NAME.damaged-YYYYmmdd-HHMMSS``."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            os.replace(extra, aside.with_name(aside.name + suffix))
    os.replace(path, aside)
    return aside


class PredictionCache:
    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.note: str | None = None
        """Set when a damaged cache file was moved aside and a new one started (said once by prediction)."""
        try:
            self._db = open_database(self.path, MIGRATIONS)
        except CxrError as err:
            if "the database file is damaged" not in str(err) or not self.path.is_file():
                raise
            aside = _move_aside(self.path)  # only a cache: keep the file for a look, start a new one
            self._db = open_database(self.path, MIGRATIONS)
            self.note = (f"{visible(self.path)}: the prediction cache was damaged; moved aside to "
                         f"{visible(aside.name)} and started again (every image is computed once more)")
        self._conn = self._db.conn  # one connection per file per process; used under self._db.reading()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PredictionCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def hashes(self, paths: Sequence[str]) -> list[str | None]:
        """Content hash per path (None when the file cannot be read); unchanged files are not read again."""
        absolute = [os.path.abspath(p) for p in paths]
        known: dict[str, tuple[int, int, str]] = {}
        with self._db.reading():
            for start in range(0, len(absolute), _CHUNK):
                part = absolute[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                for path, size, mtime, digest in self._conn.execute(
                        f"SELECT path, size, mtime_ns, hash FROM files WHERE path IN ({marks})",
                        [db_value(p) for p in part]):
                    known[fs_text(path)] = (size, mtime, digest)
        out: list[str | None] = []
        fresh: list[tuple[str, int, int, str]] = []
        for path in absolute:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            row = known.get(path)
            if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
                out.append(row[2])
                continue
            try:
                digest = content_hash(path)
            except OSError:
                out.append(None)
                continue
            fresh.append((db_value(path), st.st_size, st.st_mtime_ns, digest))
            out.append(digest)
        if fresh:
            with self._db.transaction() as conn:
                conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", fresh)
        return out

    def get(self, hashes: Iterable[str], model: str, variant: str, labels: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored probabilities for the hashes that have them (same model, variant and label order)."""
        wanted = list(dict.fromkeys(h for h in hashes if h))
        key = "|".join(labels)
        found: dict[str, np.ndarray] = {}
        with self._db.reading():
            for start in range(0, len(wanted), _CHUNK):
                part = wanted[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                for digest, stored_labels, blob in self._conn.execute(
                        f"SELECT hash, labels, probs FROM predictions WHERE model = ? AND variant = ? AND hash IN ({marks})",
                        [model, variant, *part]):
                    if stored_labels == key:
                        found[digest] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put(self, items: Iterable[tuple[str, np.ndarray]], model: str, variant: str, labels: Sequence[str]) -> None:
        key = "|".join(labels)
        now = time.time()
        rows = [(digest, model, variant, key, np.asarray(p, dtype=np.float32).tobytes(), now) for digest, p in items]
        if not rows:
            return
        with self._db.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO predictions (hash, model, variant, labels, probs, created) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows)

    def get_distances(self, hashes: Iterable[str], model: str, measures: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored out-of-distribution distances for the hashes that have them (same model and measures)."""
        wanted = list(dict.fromkeys(h for h in hashes if h))
        key = "|".join(measures)
        found: dict[str, np.ndarray] = {}
        with self._db.reading():
            for start in range(0, len(wanted), _CHUNK):
                part = wanted[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                for digest, stored, blob in self._conn.execute(
                        f"SELECT hash, measures, distances FROM distances WHERE model = ? AND hash IN ({marks})",
                        [model, *part]):
                    if stored == key:
                        found[digest] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put_distances(self, items: Iterable[tuple[str, np.ndarray]], model: str, measures: Sequence[str]) -> None:
        key = "|".join(measures)
        now = time.time()
        rows = [(digest, model, key, np.asarray(d, dtype=np.float32).tobytes(), now) for digest, d in items]
        if not rows:
            return
        with self._db.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO distances (hash, model, measures, distances, created) "
                             "VALUES (?, ?, ?, ?, ?)", rows)

    def count(self, model: str | None = None) -> int:
        with self._db.reading():
            if model is None:
                return self._conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
            return self._conn.execute("SELECT count(*) FROM predictions WHERE model = ?", (model,)).fetchone()[0]
