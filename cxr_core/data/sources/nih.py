"""NIH ChestX-ray14: ``Data_Entry_2017*.csv`` (or the Kaggle sample's ``sample_labels.csv``) + images.

Users often hold only some of the twelve ``images_0NN.tar.gz`` archives, so the label table is the list
of studies and each row's image is looked up anywhere below the root; rows whose image is absent stay
studies with a missing image (counted by the index, never an error). NIH's official split comes from
``train_val_list.txt`` / ``test_list.txt`` when they sit beside the label table.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from cxr_core.data.sources.base import FileCatalog, Problem, SourceOptions, SourceResult
from cxr_core.data.study import Study, StudyImage
from cxr_core.errors import DataError
from cxr_core.labels import get_space

LABEL_TABLE_PATTERNS = ("Data_Entry_2017*.csv", "sample_labels.csv")
SPLIT_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
_COLUMNS = {
    "image": ("image index",),
    "labels": ("finding labels",),
    "follow_up": ("follow-up #", "follow up #", "follow-up"),
    "patient": ("patient id",),
    "age": ("patient age",),
    "sex": ("patient gender", "patient sex"),
    "view": ("view position",),
}
_AGE = re.compile(r"^\s*0*(\d+)\s*([YMWD]?)\s*$", re.IGNORECASE)


def find_label_tables(root: Path, depth: int = 2) -> list[Path]:
    """Label tables at ``root`` or up to ``depth`` levels below, newest NIH revision first."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for level in range(depth + 1):
        for pattern in LABEL_TABLE_PATTERNS:
            found.extend(sorted(root.glob("/".join(["*"] * level + [pattern]))))
        if found:
            break
    # Data_Entry_2017_v2020.csv sorts after Data_Entry_2017.csv; prefer the revision, then the sample.
    return sorted(found, key=lambda p: (p.name == "sample_labels.csv", -len(p.name), str(p)))


def _parse_age(text: str) -> int | None:
    match = _AGE.match(text or "")
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2).upper()
    return value if unit in ("", "Y") else 0


def _read_split_lists(directory: Path) -> tuple[dict[str, str], list[Path]]:
    split_of: dict[str, str] = {}
    used = []
    for split, filename in SPLIT_FILES.items():
        path = directory / filename
        if path.is_file():
            used.append(path)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                name = line.strip()
                if name:
                    split_of[name] = split
    return split_of, used


class NIHSource:
    name = "nih"
    looked_for = "nih: Data_Entry_2017*.csv or sample_labels.csv (at the root or up to two levels below)"

    @staticmethod
    def detect(root: Path) -> str | None:
        tables = find_label_tables(root)
        return f"found {tables[0].relative_to(root)}" if tables else None

    @staticmethod
    def read(root: Path, catalog: FileCatalog, options: SourceOptions) -> SourceResult:
        tables = find_label_tables(root)
        if not tables:
            raise DataError(f"{root}: no NIH label table ({NIHSource.looked_for})")
        table = tables[0]
        space = get_space("nih")
        problems: list[Problem] = []
        if len(tables) > 1:
            others = ", ".join(str(t.relative_to(root)) for t in tables[1:])
            problems.append(Problem(str(table), f"several label tables; using this one, ignoring {others}", "warning"))
        split_of, split_files = _read_split_lists(table.parent)
        if not split_files and table.parent != root:
            split_of, split_files = _read_split_lists(root)

        try:
            with table.open(newline="", encoding="utf-8-sig") as fh:
                rows = csv.reader(fh)
                header = next(rows, None)
                if header is None:
                    raise DataError(f"{table}: empty label table")
                names = [h.strip().casefold() for h in header]
                col = {}
                for key, options_ in _COLUMNS.items():
                    col[key] = next((names.index(o) for o in options_ if o in names), None)
                missing = [k for k in ("image", "labels", "patient") if col[k] is None]
                if missing:
                    raise DataError(f"{table}: not an NIH label table (no column for {', '.join(missing)})")
                studies, unmapped, seen = _read_rows(rows, col, table, catalog, space, split_of, problems)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{table}: cannot read label table ({exc})") from None

        if unmapped:
            summary = ", ".join(f"{k} ({v})" for k, v in unmapped.most_common(10))
            problems.append(Problem(str(table), f"labels not in NIH-14, ignored: {summary}", "warning"))
        unlisted = sum(1 for s in studies if s.split is None) if split_files else 0
        if unlisted:
            problems.append(Problem(str(table), f"{unlisted} rows are in neither official split list", "warning"))
        extra = [rel for rel in catalog if rel.rsplit("/", 1)[-1] not in seen]
        notes = {"label_table": str(table.relative_to(root))}
        if extra:
            notes["images_not_in_table"] = len(extra)
            problems.append(Problem(extra[0], f"{len(extra)} image files are not in the label table (e.g. this one)", "warning"))
        boxes = table.parent / "BBox_List_2017.csv"
        if boxes.is_file():
            notes["boxes"] = str(boxes.relative_to(root))
        return SourceResult(
            format="nih",
            space=space,
            studies=studies,
            problems=problems,
            inputs=[table, *split_files],
            split_source=("official (" + ", ".join(p.name for p in split_files) + ")") if split_files else None,
            notes=notes,
        )


def _read_rows(rows, col, table, catalog, space, split_of, problems):
    """Studies from the table's rows; the hot loop of indexing NIH's 112,120 rows, so kept lean."""
    studies: list[Study] = []
    unmapped: Counter[str] = Counter()
    encoded: dict[str, str] = {}
    ages: dict[str, int | None] = {}
    seen: set[str] = set()
    width = max(i for i in col.values() if i is not None) + 1
    get = {key: (lambda row, i=i: row[i].strip()) if i is not None else (lambda row: "") for key, i in col.items()}
    image_of, labels_of, patient_of = get["image"], get["labels"], get["patient"]
    age_of, sex_of, view_of, follow_of = get["age"], get["sex"], get["view"], get["follow_up"]
    find_name = catalog.find_name

    for line_no, row in enumerate(rows, start=2):
        if len(row) < width:
            if any(row):
                problems.append(Problem(f"{table}:{line_no}", f"row has {len(row)} fields, expected at least {width}"))
            continue
        image = image_of(row)
        if not image:
            problems.append(Problem(f"{table}:{line_no}", "row has no image name"))
            continue
        if image in seen:
            problems.append(Problem(f"{table}:{line_no}", f"duplicate row for {image}; kept the first"))
            continue
        seen.add(image)
        raw = labels_of(row)
        vector = encoded.get(raw)
        if vector is None:
            vector, bad = space.from_positives(n.strip() for n in raw.split("|") if n.strip())
            unmapped.update(bad)
            encoded[raw] = vector
        age_text = age_of(row)
        age = ages.get(age_text, -1)
        if age == -1:
            age = ages[age_text] = _parse_age(age_text)
        meta = {"age": age, "sex": sex_of(row).upper() or None}
        follow_up = follow_of(row)
        if follow_up.isdigit():
            meta["follow_up"] = int(follow_up)
        view = view_of(row).upper()
        studies.append(
            Study(
                id=image.rsplit(".", 1)[0],
                patient_id=patient_of(row).lstrip("0") or "0",
                images=(StudyImage(find_name(image) or image, view),),
                labels=vector,
                view=view,
                split=split_of.get(image),
                meta=meta,
            )
        )
    return studies, unmapped, seen
