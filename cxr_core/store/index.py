"""The study index: studies, images, labels and splits of every data set root, in SQLite.

A scan walks the root, probes only files whose (size, mtime) changed since the last scan, and calls the
source only when one of its label files or the set of images changed; otherwise the stored report is
returned as it is. The whole rewrite of a data set's studies is one transaction, so a reader never sees
half a scan.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from cxr_core.data.catalog import walk_images
from cxr_core.data.sources import FileCatalog, FileInfo, Problem, SourceOptions, detect_format, get_source
from cxr_core.data.splits import DEFAULT_FRACTIONS, patient_split
from cxr_core.data.stats import DatasetReport, summarise
from cxr_core.data.study import Study, StudyImage, image_base
from cxr_core.errors import CxrError, DataError, ImageReadError
from cxr_core.images import probe_xray
from cxr_core.labels import LabelSpace, get_space
from cxr_core.paths import default_index_path
from cxr_core.store.db import is_open_database, open_database
from cxr_core.text import db_value, fs_text, json_compact

Progress = Callable[[str, int, int], None]
SPLIT_SEED = 0
_PROBE_THREADS = min(8, 2 * (os.cpu_count() or 1))

MIGRATIONS = (
    """
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        root TEXT NOT NULL UNIQUE,
        format TEXT NOT NULL,
        label_space TEXT NOT NULL,
        options TEXT NOT NULL,
        inputs TEXT NOT NULL,
        report TEXT NOT NULL,
        scanned_at REAL NOT NULL
    );
    CREATE TABLE files (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        relpath TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        ok INTEGER NOT NULL, reason TEXT NOT NULL, format TEXT NOT NULL,
        width INTEGER NOT NULL, height INTEGER NOT NULL, meta TEXT NOT NULL,
        PRIMARY KEY (dataset_id, relpath)
    ) WITHOUT ROWID;
    CREATE TABLE studies (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        id TEXT NOT NULL, patient_id TEXT NOT NULL, view TEXT NOT NULL, split TEXT,
        labels TEXT NOT NULL, meta TEXT NOT NULL, position INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, id)
    ) WITHOUT ROWID;
    CREATE TABLE images (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        study_id TEXT NOT NULL, position INTEGER NOT NULL, path TEXT NOT NULL, view TEXT NOT NULL,
        present INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, study_id, position)
    ) WITHOUT ROWID;
    CREATE INDEX studies_split ON studies (dataset_id, split);
    """,
)


class ScanCancelled(CxrError):
    """The scan was cancelled; files probed so far are saved and will not be probed again."""


@dataclass(frozen=True)
class ScanResult:
    report: DatasetReport
    changed: bool
    files_probed: int
    files_reused: int
    seconds: float
    detected_because: str = ""


def _info_from_row(row: tuple) -> FileInfo:
    relpath, size, mtime_ns, ok, reason, fmt, width, height, meta = row
    return FileInfo(fs_text(relpath), size, mtime_ns, bool(ok), reason, fmt, width, height, json.loads(meta))


def _file_row(dataset_id: int, i: FileInfo) -> tuple:
    return (dataset_id, db_value(i.relpath), i.size, i.mtime_ns, int(i.ok), db_value(i.reason), i.format, i.width,
            i.height, json_compact(dict(i.meta)))


def _probe(root: Path, relpath: str, size: int, mtime_ns: int, verify: bool) -> FileInfo:
    try:
        info = probe_xray(root / relpath, verify=verify)
    except ImageReadError as exc:
        return FileInfo(relpath, size, mtime_ns, False, exc.reason)
    meta = dict(info.dicom)
    if info.warnings:
        meta["warnings"] = list(info.warnings)
    return FileInfo(relpath, size, mtime_ns, True, "", info.format, info.width, info.height, meta)


@dataclass(frozen=True)
class IndexedRoot:
    """A data set root brought up to date: its report, label space and studies (images present only)."""

    root: Path
    report: DatasetReport
    space: LabelSpace
    studies: list[Study]
    scan: ScanResult


class StudyIndex:
    """``StudyIndex(path)`` opens (or creates) the index; ``scan(root)`` brings a root up to date."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else default_index_path()
        self._db = open_database(self.path, MIGRATIONS)
        self._conn = self._db.conn  # one connection per file per process; used under self._db.reading()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StudyIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- scanning -----------------------------------------------------------------------------------

    def scan(
        self,
        root: str | Path,
        fmt: str | None = None,
        options: SourceOptions = SourceOptions(),
        *,
        verify: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> ScanResult:
        started = time.perf_counter()
        root = Path(os.path.abspath(Path(root).expanduser()))
        if not root.exists():
            raise DataError(f"{root}: no such file or directory")
        because = ""
        if fmt is None:
            fmt, because = detect_format(root)
        source = get_source(fmt)
        options_key = json.dumps({"format": fmt, "labels_csv": str(options.labels_csv or ""),
                                  "uncertainty": options.uncertainty.value,
                                  "allow_outside_root": options.allow_outside_root,
                                  "iu_mapping": options.iu_mapping})
        with self._db.reading():
            row = self._conn.execute(
                "SELECT id, options, inputs, report FROM datasets WHERE root = ?", (db_value(str(root)),)
            ).fetchone()
            dataset_id = row[0] if row else None
            known = self._known_files(dataset_id) if dataset_id is not None else {}
        # --verify decodes every file, so nothing probed header-only can be reused.
        reusable = {} if verify else known

        files, probed, reused = self._catalog(root, reusable, verify, progress, cancel, dataset_id)
        unchanged = (
            row is not None and row[1] == options_key and probed == 0 and len(files) == len(known)
            and all(known.get(rel) == info for rel, info in files.items())
            and _inputs_unchanged(json.loads(row[2]))
        )
        if unchanged:
            report = DatasetReport.from_dict(json.loads(row[3]))
            return ScanResult(report, False, 0, reused, time.perf_counter() - started, because)

        if progress:
            progress("reading labels", 0, 1)
        catalog = FileCatalog(root, files)
        result = source.read(root, catalog, options)
        studies, problems = _unique_ids(result.studies, list(result.problems))
        split_source = result.split_source
        if not any(s.split for s in studies):
            studies = _assign_splits(studies)
            split_source = "generated: by patient, seed {}, {}".format(
                SPLIT_SEED, " / ".join(f"{k} {v:g}" for k, v in DEFAULT_FRACTIONS.items()))
        base = image_base(root)
        if options.allow_outside_root:
            catalog = FileCatalog(root, {**files, **_outside_files(studies, files, base)})
        present = _present_paths(studies, catalog, base)
        unreadable = {rel: info.reason for rel, info in catalog.items() if not info.ok}
        problems += [Problem(rel, w, "warning") for rel, info in files.items() for w in info.meta.get("warnings", ())]
        if catalog.duplicates:
            problems.append(Problem(catalog.duplicates[0], f"{len(catalog.duplicates)} files share a name with another file; the first in path order is used", "warning"))
        report = summarise(fmt, str(root), result.space, studies, present, unreadable, problems, split_source, result.notes)
        inputs = {str(p): _stat_key(p) for p in result.inputs}
        with self._db.reading():
            self._save(root, dataset_id, result.space, options_key, inputs, report, studies, present, files, known)
        return ScanResult(report, True, probed, reused, time.perf_counter() - started, because)

    def load(self, root: str | Path, fmt: str | None = None, options: SourceOptions = SourceOptions(), *,
             split: str | None = None, progress: Progress | None = None,
             cancel: threading.Event | None = None) -> IndexedRoot:
        """Scan ``root`` (incrementally) and read what a front-end works from, once: the TUI and ``predict`` hand
        the result on instead of scanning again."""
        scan = self.scan(root, fmt, options, progress=progress, cancel=cancel)
        resolved = Path(scan.report.root)
        return IndexedRoot(resolved, scan.report, self.label_space(resolved),
                           self.studies(resolved, split=split, present_only=True), scan)

    def _known_files(self, dataset_id: int) -> dict[str, FileInfo]:
        rows = self._conn.execute(
            "SELECT relpath, size, mtime_ns, ok, reason, format, width, height, meta FROM files WHERE dataset_id = ?",
            (dataset_id,),
        )
        return {r[0]: _info_from_row(r) for r in rows}

    def _catalog(self, root, known, verify, progress, cancel, dataset_id):
        if not root.is_dir():
            return {}, 0, 0
        files: dict[str, FileInfo] = {}
        todo = []
        reused = 0
        for found in walk_images(root, cancel, skip=is_open_database):
            if found.error:
                files[found.relpath] = FileInfo(found.relpath, 0, 0, False, found.error)
                continue
            old = known.get(found.relpath)
            if old is not None and old.size == found.size and old.mtime_ns == found.mtime_ns:
                files[found.relpath] = old
                reused += 1
            else:
                todo.append(found)
        with ThreadPoolExecutor(_PROBE_THREADS) as pool:
            jobs = pool.map(lambda f: _probe(root, f.relpath, f.size, f.mtime_ns, verify), todo)
            for done, info in enumerate(jobs, start=1):
                files[info.relpath] = info
                if progress and (done % 256 == 0 or done == len(todo)):
                    progress("probing images", done, len(todo))
                if cancel is not None and cancel.is_set():
                    pool.shutdown(cancel_futures=True)
                    if dataset_id is not None:
                        with self._db.reading():
                            self._write_files(dataset_id, files.values())
                    raise ScanCancelled(f"{root}: scan cancelled after probing {done} of {len(todo)} files")
        return files, len(todo), reused

    def _write_files(self, dataset_id: int, infos) -> None:
        with self._db.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (_file_row(dataset_id, i) for i in infos))

    def _save(self, root, dataset_id, space, options_key, inputs, report, studies, present, files, known):
        with self._db.transaction() as conn:
            values = (json.dumps(space.to_dict()), options_key, json.dumps(inputs),
                      json.dumps(report.to_dict()), time.time())
            fmt = report.format
            if dataset_id is None:  # another process may have indexed the root for the first time meanwhile
                row = conn.execute("SELECT id FROM datasets WHERE root = ?", (db_value(str(root)),)).fetchone()
                if row is not None:
                    dataset_id, known = row[0], self._known_files(row[0])
            if dataset_id is None:
                dataset_id = conn.execute(
                    "INSERT INTO datasets (root, format, label_space, options, inputs, report, scanned_at)"
                    " VALUES (?,?,?,?,?,?,?)", (db_value(str(root)), fmt, *values)).lastrowid
            else:
                conn.execute("UPDATE datasets SET format=?, label_space=?, options=?, inputs=?, report=?, scanned_at=?"
                             " WHERE id=?", (fmt, *values, dataset_id))
                for table in ("studies", "images"):
                    conn.execute(f"DELETE FROM {table} WHERE dataset_id = ?", (dataset_id,))
                gone = [(dataset_id, db_value(rel)) for rel in known if rel not in files]
                conn.executemany("DELETE FROM files WHERE dataset_id = ? AND relpath = ?", gone)
            changed = [i for rel, i in files.items() if known.get(rel) != i]
            conn.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (_file_row(dataset_id, i) for i in changed))
            meta_json = _MetaEncoder()
            conn.executemany(
                "INSERT INTO studies VALUES (?,?,?,?,?,?,?,?)",
                ((dataset_id, db_value(s.id), db_value(s.patient_id), db_value(s.view), db_value(s.split), s.labels,
                  meta_json(s.meta), n) for n, s in enumerate(studies)),
            )
            conn.executemany(
                "INSERT INTO images VALUES (?,?,?,?,?,?)",
                ((dataset_id, db_value(s.id), k, db_value(im.path), db_value(im.view), int(im.path in present))
                 for s in studies for k, im in enumerate(s.images)),
            )

    # -- reading ------------------------------------------------------------------------------------

    def _dataset_row(self, root: str | Path) -> tuple:
        key = str(Path(os.path.abspath(Path(root).expanduser())))
        row = self._conn.execute("SELECT id, format, label_space, report FROM datasets WHERE root = ?",
                                 (db_value(key),)).fetchone()
        if row is None:
            raise DataError(f"{key}: not indexed yet (run `cxr-tui data index {key}`)")
        return row

    def report(self, root: str | Path) -> DatasetReport:
        with self._db.reading():
            row = self._dataset_row(root)
        return DatasetReport.from_dict(json.loads(row[3]))

    def label_space(self, root: str | Path) -> LabelSpace:
        with self._db.reading():
            spec = json.loads(self._dataset_row(root)[2])
        if spec["name"] != "custom":
            return get_space(spec["name"])
        return LabelSpace(name="custom", labels=tuple(spec["labels"]), title=spec.get("title", ""), normal=spec.get("normal"))

    def studies(self, root: str | Path, split: str | None = None, present_only: bool = False) -> list[Study]:
        """Studies of an indexed root in source order (``split`` filters; ``present_only`` drops images not on disk)."""
        images: dict[str, list[StudyImage]] = {}
        image_sql = "SELECT study_id, path, view, present FROM images WHERE dataset_id = ? ORDER BY study_id, position"
        with self._db.reading():  # one read transaction: images and studies of the same scan
            self._conn.execute("BEGIN")
            try:
                dataset_id = self._dataset_row(root)[0]
                where, args = "s.dataset_id = ?", [dataset_id]
                if split is not None:
                    where += " AND s.split = ?"
                    args.append(db_value(split))
                for study_id, path, view, present in self._conn.execute(image_sql, (dataset_id,)):
                    if present or not present_only:
                        images.setdefault(fs_text(study_id), []).append(StudyImage(fs_text(path), fs_text(view)))
                rows = self._conn.execute(
                    f"SELECT id, patient_id, view, split, labels, meta FROM studies s WHERE {where} ORDER BY position",
                    args).fetchall()
            finally:
                self._conn.execute("COMMIT")
        out = []
        for i, p, v, sp, labels, m in rows:
            i = fs_text(i)
            out.append(Study(i, fs_text(p), tuple(images.get(i, ())), labels, fs_text(v), fs_text(sp), json.loads(m)))
        return out

    def roots(self) -> list[tuple[str, str, float]]:
        """(root, format, last scan time) of every indexed data set, most recent first."""
        with self._db.reading():
            rows = self._conn.execute(
                "SELECT root, format, scanned_at FROM datasets ORDER BY scanned_at DESC").fetchall()
        return [(fs_text(root), fmt, at) for root, fmt, at in rows]


class _MetaEncoder:
    """JSON of study metadata, memoised for flat dicts: NIH's 112k rows hold ~20k distinct (age, sex, follow-up)."""

    def __init__(self) -> None:
        self._memo: dict[tuple, str] = {}

    def __call__(self, meta: dict) -> str:
        try:
            key = tuple(meta.items())
            hash(key)
        except TypeError:  # nested values (IU report sections): not worth memoising
            return json_compact(meta)
        text = self._memo.get(key)
        if text is None:
            text = self._memo[key] = json_compact(meta)
        return text


def _stat_key(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _inputs_unchanged(inputs: dict[str, list[int]]) -> bool:
    return all(_stat_key(Path(p)) == key for p, key in inputs.items())


def _unique_ids(studies: list[Study], problems: list[Problem]) -> tuple[list[Study], list[Problem]]:
    seen: set[str] = set()
    kept = []
    for study in studies:
        if study.id in seen:
            problems.append(Problem(study.id, "duplicate study id; kept the first"))
            continue
        seen.add(study.id)
        kept.append(study)
    return kept, problems


def _assign_splits(studies: list[Study]) -> list[Study]:
    parts = patient_split([s.patient_id for s in studies], DEFAULT_FRACTIONS, SPLIT_SEED)
    return [replace(s, split=str(p)) for s, p in zip(studies, parts, strict=True)]


def _outside_files(studies: list[Study], files: dict[str, FileInfo], base: Path) -> dict[str, FileInfo]:
    """Probe images a labels CSV places outside the root (only with allow_outside_root; never cached)."""
    found = {}
    for study in studies:
        for image in study.images:
            path = image.path
            if path in files or "::" in path or not (base / path).is_file():
                continue
            st = (base / path).stat()
            found[path] = _probe(base, path, st.st_size, st.st_mtime_ns, False)
    return found


def _present_paths(studies: list[Study], catalog: FileCatalog, base: Path) -> set[str]:
    """Study image paths that exist and probed readable (archive members: when the archive exists)."""
    present = set()
    archives: dict[str, bool] = {}
    for study in studies:
        for image in study.images:
            if "::" in image.path:
                archive = image.path.split("::", 1)[0]
                if archive not in archives:
                    archives[archive] = (base / archive).is_file()
                if archives[archive]:
                    present.add(image.path)
            else:
                info = catalog.get(image.path)
                if info is not None and info.ok:
                    present.add(image.path)
    return present
