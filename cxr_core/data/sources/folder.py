"""Study folders of DICOM/PNG/JPEG files, optionally with a labels CSV.

Grouping, without a CSV that names images: DICOM files by StudyInstanceUID; other files directly under
the root are one study each (flat layout), files deeper down are grouped by their directory
(``root/<study>/<files>``). A labels CSV (``labels.csv`` at the root, or ``--labels``) has an ``image`` or
a ``study`` column and a ``labels`` column (``|``-separated names, ``No Finding`` for normal; ``?`` for a
study not labelled yet: every finding unknown, masked in training until a reviewer decides), and may have
``patient_id, view, age, sex, split``. Its label names decide the label space (NIH, CheXpert, IU, or the
names themselves).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from cxr_core.data.catalog import walk_images
from cxr_core.data.sources.base import FileCatalog, Problem, SourceOptions, SourceResult
from cxr_core.data.study import Study, StudyImage
from cxr_core.errors import DataError
from cxr_core.labels import LabelSpace, custom_space, space_for_names
from cxr_core.text import is_clean, visible

LABELS_CSV = "labels.csv"
_OPTIONAL = ("patient_id", "view", "age", "sex", "split")


def find_labels_csv(root: Path, options: SourceOptions) -> Path | None:
    if options.labels_csv is not None:
        path = options.labels_csv if options.labels_csv.is_absolute() else root / options.labels_csv
        if not path.is_file():
            raise DataError(f"{path}: labels CSV not found")
        return path
    path = root / LABELS_CSV
    return path if path.is_file() else None


def read_labels_csv(path: Path) -> tuple[str, list[dict[str, str]], list[Problem]]:
    """Rows of a labels CSV as dicts with lower-case keys; returns (key column, rows, problems)."""
    problems: list[Problem] = []
    try:
        text, encoding = _csv_text(path.read_bytes())
        if encoding != "utf-8-sig":
            problems.append(Problem(str(path), f"not UTF-8 text: read as {encoding} (a spreadsheet's \"CSV\" export "
                                               "on Windows); save it as \"CSV UTF-8\" to be sure of accented names",
                                    "warning"))
        with io.StringIO(text, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().casefold() for f in reader.fieldnames or []]
            key = "image" if "image" in fields else "study" if "study" in fields else None
            if key is None or "labels" not in fields:
                raise DataError(f"{path}: a labels CSV needs an 'image' or 'study' column and a 'labels' column")
            rows = []
            for line_no, raw in enumerate(reader, start=2):
                if None in raw:
                    problems.append(Problem(f"{path}:{line_no}", "row has more fields than the header"))
                    continue
                if None in raw.values():  # a short row: its labels would read as "nothing found"
                    problems.append(Problem(f"{path}:{line_no}", "row has fewer fields than the header"))
                    continue
                row = {k.strip().casefold(): (v or "").strip() for k, v in raw.items() if k is not None}
                if not row.get(key):
                    problems.append(Problem(f"{path}:{line_no}", f"row has no {key}"))
                    continue
                unprintable = [n for n in _label_names(row.get("labels", "")) if not is_clean(n)]
                if unprintable:  # a label name is data the model and every screen will carry: never a control code
                    problems.append(Problem(f"{path}:{line_no}", f"label {visible(unprintable[0])} holds control "
                                            "characters; row skipped (its image is kept unlabelled)"))
                    continue
                row["_line"] = str(line_no)
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read labels CSV ({exc})") from None
    return key, rows, problems


def _csv_text(data: bytes) -> tuple[str, str]:
    """The text of a labels CSV and its encoding: UTF-8 (with or without a BOM), else Windows-1252 (what Excel
    writes as "CSV" on Windows), else Latin-1 (every byte is a character): a spreadsheet's file is read, not
    refused as a whole."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"


UNLABELLED = "?"
"""A labels cell meaning "not labelled yet" (every finding unknown), unlike an empty cell (nothing found)."""


def _label_names(cell: str) -> list[str]:
    return [n.strip() for n in cell.split("|") if n.strip() and n.strip() != UNLABELLED]


def _age(text: str) -> int | None:
    digits = text.rstrip("YyMmWwDd").strip()
    return int(digits) if digits.isdigit() else None


def _inside(root: Path, candidate: Path) -> bool:
    try:
        Path(os.path.realpath(candidate)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True


def resolve_csv_image(root: Path, csv_dir: Path, value: str, catalog: FileCatalog, options: SourceOptions) -> tuple[str | None, str]:
    """Map an ``image`` cell to a catalog path; returns (relpath or None, reason when None)."""
    pure = PurePosixPath(value.replace("\\", "/"))
    target = Path(value) if pure.is_absolute() else csv_dir / value
    if (pure.is_absolute() or ".." in pure.parts) and not _inside(root, target):
        if not options.allow_outside_root:
            return None, "path points outside the data root (refused; pass --allow-outside-root to permit)"
        if target.is_file():
            return os.path.relpath(target, root), ""
    rel = str(pure)
    if pure.is_absolute():  # an absolute path inside the root names the same file as its relative path
        rel = PurePosixPath(os.path.relpath(target, root)).as_posix()
    found: str | None = None
    if rel in catalog:
        found = rel
    elif csv_dir != root:
        rel_csv = (csv_dir.relative_to(root) / rel).as_posix() if _inside(root, csv_dir) else rel
        if rel_csv in catalog:
            found = rel_csv
    if found is None and len(pure.parts) == 1:
        found = catalog.find_name(pure.name)
    if found is None:
        return None, "image not found under the root"
    if not options.allow_outside_root and not _inside(root, root / found):
        # A symlink inside the root that leads out of it (e.g. from an archive someone else made).
        return None, "path leads outside the data root through a symlink (refused; pass --allow-outside-root to permit)"
    return found, ""


def _group_files(catalog: FileCatalog) -> dict[str, list[str]]:
    """Study id -> relpaths of readable files, by DICOM StudyInstanceUID or by directory."""
    groups: dict[str, list[str]] = defaultdict(list)
    by_uid: dict[str, list[str]] = defaultdict(list)
    for rel, info in catalog.items():
        if not info.ok:
            continue  # listed as unreadable by the index; not a study of its own
        uid = info.meta.get("StudyInstanceUID")
        if uid:
            by_uid[uid].append(rel)
            continue
        pure = PurePosixPath(rel)
        groups[str(pure.parent) if len(pure.parts) > 1 else pure.stem].append(rel)
    for uid, rels in sorted(by_uid.items()):
        # Friendliest id first: the study's own folder, the file's name for a lone file at the root,
        # and the UID itself when folders mix studies.
        dirs = {str(PurePosixPath(r).parent) for r in rels}
        study = dirs.pop() if len(dirs) == 1 else uid
        if study == ".":
            study = PurePosixPath(rels[0]).stem if len(rels) == 1 else uid
        if study in groups:
            study = uid
        groups[study].extend(rels)
    return groups


def read_folder(root: Path, catalog: FileCatalog, options: SourceOptions, space: LabelSpace | None = None,
                fmt: str = "folder") -> SourceResult:
    problems: list[Problem] = []
    labels_csv = find_labels_csv(root, options)
    rows: list[dict[str, str]] = []
    key = None
    if labels_csv is not None:
        key, rows, problems = read_labels_csv(labels_csv)
    if space is None:
        names = {n for row in rows for n in _label_names(row.get("labels", ""))}
        space = space_for_names(names) if rows else custom_space([])

    studies: list[Study] = []
    unmapped: Counter[str] = Counter()
    claimed: set[str] = set()
    used_ids: set[str] = set()

    def unique_id(path: str) -> str:
        """The file's stem, or its whole relative path when two files share a stem."""
        pure = PurePosixPath(path)
        study_id = pure.stem if pure.stem not in used_ids else str(pure.with_suffix(""))
        used_ids.add(study_id)
        return study_id

    def labelled(row: dict[str, str]) -> str:
        if (row["labels"] or "").strip() == UNLABELLED:
            return space.all_unknown()
        vector, bad = space.from_positives(_label_names(row["labels"]))
        unmapped.update(bad)
        return vector

    def study_from(study_id: str, rels: list[str], row: dict[str, str] | None) -> Study:
        metas = [catalog[r].meta for r in rels if r in catalog]
        first = metas[0] if metas else {}
        view = (row or {}).get("view") or first.get("ViewPosition", "")
        patient = (row or {}).get("patient_id") or first.get("patient_key") or study_id
        meta = {
            "age": _age((row or {}).get("age") or first.get("PatientAge", "")),
            "sex": ((row or {}).get("sex") or first.get("PatientSex", "") or "").upper() or None,
        }
        images = tuple(StudyImage(r, catalog[r].meta.get("ViewPosition", view) if r in catalog else view) for r in rels)
        return Study(
            id=study_id,
            patient_id=patient,
            images=images,
            labels=labelled(row) if row else space.all_unknown(),
            view=view.upper(),
            split=((row or {}).get("split") or None),
            meta=meta,
        )

    if key == "image":
        for row in rows:
            rel, reason = resolve_csv_image(root, labels_csv.parent, row["image"], catalog, options)
            where = f"{labels_csv}:{row['_line']}"
            if rel is None and "outside" in reason:
                problems.append(Problem(where, f"{row['image']}: {reason}"))
                if "symlink" in reason:
                    claimed.add(row["image"])  # refused: not taken in again as an unlabelled image
                continue
            path = rel or row["image"]
            if path in claimed:
                problems.append(Problem(where, f"{row['image']} listed twice; kept the first"))
                continue
            claimed.add(path)
            studies.append(study_from(unique_id(path), [path], row))
        groups = {unique_id(rel): [rel] for rel, info in catalog.items() if info.ok and rel not in claimed}
    else:
        groups = _group_files(catalog)

    by_study = {row["study"]: row for row in rows} if key == "study" else {}
    for study_id in sorted(groups):
        studies.append(study_from(study_id, sorted(groups[study_id]), by_study.pop(study_id, None)))
    if key == "image" and groups:
        problems.append(Problem(str(labels_csv), f"{len(groups)} images have no row in the labels CSV; kept unlabelled", "warning"))
    for study_id, row in by_study.items():
        problems.append(Problem(f"{labels_csv}:{row['_line']}", f"study {study_id!r} has no images under the root"))
    if unmapped:
        summary = ", ".join(f"{k} ({v})" for k, v in unmapped.most_common(10))
        problems.append(Problem(str(labels_csv), f"labels not in the {space.name} space, ignored: {summary}", "warning"))
    if rows and not any(r.get("patient_id") for r in rows):
        problems.append(Problem(str(labels_csv), "no patient_id column: each study is its own patient for splits", "warning"))
    splits = {s.split for s in studies if s.split}
    return SourceResult(
        format=fmt,
        space=space,
        studies=studies,
        problems=problems,
        inputs=[labels_csv] if labels_csv else [],
        split_source=f"official ({labels_csv.name}: split column)" if splits else None,
        notes={"labels_csv": str(labels_csv.relative_to(root)) if labels_csv and _inside(root, labels_csv) else str(labels_csv or "")} if labels_csv else {},
    )


class FolderSource:
    name = "folder"
    looked_for = "folder: image files (PNG, JPEG, DICOM) in the root or in study folders below it"

    @staticmethod
    def detect(root: Path) -> str | None:
        if not root.is_dir():
            return None
        if (root / LABELS_CSV).is_file():
            return f"found {LABELS_CSV}"
        for found in walk_images(root):
            return f"found image files (e.g. {found.relpath})"
        return None

    @staticmethod
    def read(root: Path, catalog: FileCatalog, options: SourceOptions) -> SourceResult:
        return read_folder(root, catalog, options)
