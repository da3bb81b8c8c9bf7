"""CheXpert and MIMIC-CXR-JPG: the CheXpert labeller's CSVs (1 / 0 / -1 / blank).

The four states are kept as they are (positive, negative, uncertain, unknown); the uncertainty policy
(``ones``, ``zeros``, ``ignore``) is recorded with the data set and applied only when training targets are
made, so the same index serves U-Ones and U-Ignore experiments.

* CheXpert: ``train.csv`` / ``valid.csv`` (/ ``test.csv``) with ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and
  the 14 observations; ``Path`` starts with the release folder (``CheXpert-v1.0-small/train/...``).
  A study is ``<split>/<patient>/<study>``; its image rows carry the same labels (merged if not).
* MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` (labels per study), with ``-split`` and ``-metadata``
  beside it; images at ``files/pXX/p<subject>/s<study>/<dicom_id>.jpg``.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import defaultdict
from pathlib import Path, PurePosixPath

from cxr_core.data.sources.base import FileCatalog, Problem, SourceOptions, SourceResult
from cxr_core.data.study import Study, StudyImage
from cxr_core.errors import DataError
from cxr_core.labels import LabelSpace, LabelState, get_space

CHEXPERT_CSVS = {"train.csv": "train", "valid.csv": "val", "test.csv": "test"}
MIMIC_PREFIX = "mimic-cxr-2.0.0-"
MIMIC_SPLITS = {"train": "train", "validate": "val", "test": "test"}
_STATE = {"1": LabelState.POSITIVE, "1.0": LabelState.POSITIVE, "0": LabelState.NEGATIVE, "0.0": LabelState.NEGATIVE,
          "-1": LabelState.UNCERTAIN, "-1.0": LabelState.UNCERTAIN, "": LabelState.UNKNOWN}
# When rows of one study disagree, the most informative state wins.
_PRECEDENCE = {"1": 3, "u": 2, "0": 1, ".": 0}


def _open_csv(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with _open_csv(path) as fh:
            # Cells beyond the header (DictReader files them under None, as a list) are ignored.
            return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None and not isinstance(v, list)}
                    for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _chexpert_dir(root: Path) -> Path | None:
    """The folder holding CheXpert's CSVs: the root or a ``CheXpert*`` folder in it."""
    for directory in (root, *sorted(root.glob("CheXpert*"))):
        path = directory / "train.csv" if directory.is_dir() else None
        if path is not None and path.is_file():
            with path.open(encoding="utf-8-sig", errors="replace") as fh:
                header = fh.readline()
            if "Path" in header and "Pleural Effusion" in header:
                return directory
    return None


def _encode(space: LabelSpace, row: dict[str, str], where: str, problems: list[Problem]) -> str:
    codes = []
    for label in space.labels:
        cell = row.get(label, "")
        state = _STATE.get(cell)
        if state is None:
            problems.append(Problem(where, f"{label}: value {cell!r} is not 1, 0, -1 or blank; read as blank"))
            state = LabelState.UNKNOWN
        codes.append(state.value)
    return "".join(codes)


def _merge(a: str, b: str) -> str:
    return "".join(x if _PRECEDENCE[x] >= _PRECEDENCE[y] else y for x, y in zip(a, b, strict=True))


def _age(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def _read_chexpert(root: Path, base: Path, catalog: FileCatalog, space: LabelSpace) -> tuple[list[Study], list[Problem], list[Path]]:
    problems: list[Problem] = []
    inputs: list[Path] = []
    studies: dict[str, dict] = {}
    prefix = base.relative_to(root).as_posix() if base != root else ""
    for filename, split in CHEXPERT_CSVS.items():
        path = base / filename
        if not path.is_file():
            continue
        inputs.append(path)
        for line_no, row in enumerate(_rows(path), start=2):
            where = f"{path}:{line_no}"
            raw = row.get("Path", "").replace("\\", "/")
            parts = PurePosixPath(raw).parts
            if len(parts) < 4:
                problems.append(Problem(where, f"Path {raw!r} is not <release>/<split>/<patient>/<study>/<file>"))
                continue
            inner = PurePosixPath(*parts[1:]).as_posix()  # drop the release folder name
            rel = "/".join(p for p in (prefix, inner) if p)
            if rel not in catalog and raw in catalog:
                rel = raw
            study_id = str(PurePosixPath(inner).parent)
            vector = _encode(space, row, where, problems)
            frontal = row.get("Frontal/Lateral", "").casefold() == "frontal"
            view = (row.get("AP/PA") or "FRONTAL") if frontal else "LATERAL"
            entry = studies.get(study_id)
            if entry is None:
                studies[study_id] = {
                    "patient": PurePosixPath(inner).parts[1], "images": [StudyImage(rel, view.upper())],
                    "labels": vector, "split": split,
                    "meta": {"age": _age(row.get("Age", "")), "sex": (row.get("Sex", "")[:1] or None)},
                }
                continue
            entry["images"].append(StudyImage(rel, view.upper()))
            if vector != entry["labels"]:
                entry["labels"] = _merge(entry["labels"], vector)
                entry.setdefault("conflict", True)
    result = []
    conflicts = 0
    for study_id, e in studies.items():
        conflicts += bool(e.get("conflict"))
        views = [im.view for im in e["images"]]
        view = next((v for v in views if v != "LATERAL"), views[0])
        result.append(Study(study_id, e["patient"], tuple(e["images"]), e["labels"], view, e["split"], e["meta"]))
    if conflicts:
        problems.append(Problem(str(base), f"{conflicts} studies had image rows with different labels; merged (positive > uncertain > negative > blank)", "warning"))
    return result, problems, inputs


def _read_mimic(root: Path, catalog: FileCatalog, space: LabelSpace) -> tuple[list[Study], list[Problem], list[Path]]:
    problems: list[Problem] = []
    labels_path = _find(root, MIMIC_PREFIX + "chexpert.csv")
    assert labels_path is not None
    inputs = [labels_path]
    split_of: dict[str, str] = {}
    split_path = _find(root, MIMIC_PREFIX + "split.csv")
    if split_path:
        inputs.append(split_path)
        for row in _rows(split_path):
            split_of[row.get("study_id", "")] = MIMIC_SPLITS.get(row.get("split", ""), row.get("split", "") or "")
    images: dict[str, list[StudyImage]] = defaultdict(list)
    meta_path = _find(root, MIMIC_PREFIX + "metadata.csv")
    if meta_path:
        inputs.append(meta_path)
        for row in _rows(meta_path):
            subject, study = row.get("subject_id", ""), row.get("study_id", "")
            rel = f"files/p{subject[:2]}/p{subject}/s{study}/{row.get('dicom_id', '')}.jpg"
            images[study].append(StudyImage(rel, row.get("ViewPosition", "").upper()))
    else:
        for rel in catalog:
            parts = PurePosixPath(rel).parts
            if len(parts) >= 4 and parts[-2].startswith("s"):
                images[parts[-2][1:]].append(StudyImage(rel))
    studies = []
    for line_no, row in enumerate(_rows(labels_path), start=2):
        subject, study = row.get("subject_id", ""), row.get("study_id", "")
        if not subject or not study:
            problems.append(Problem(f"{labels_path}:{line_no}", "row has no subject_id or study_id"))
            continue
        ims = tuple(images.get(study, ()))
        view = next((im.view for im in ims if im.view in ("PA", "AP")), ims[0].view if ims else "")
        vector = _encode(space, row, f"{labels_path}:{line_no}", problems)
        studies.append(Study(f"s{study}", f"p{subject}", ims, vector, view, split_of.get(study) or None, {}))
    return studies, problems, inputs


class CheXpertSource:
    name = "chexpert"
    looked_for = ("chexpert: train.csv/valid.csv with Path and CheXpert label columns (CheXpert), "
                  "or mimic-cxr-2.0.0-chexpert.csv[.gz] (MIMIC-CXR-JPG)")

    @staticmethod
    def detect(root: Path) -> str | None:
        if not root.is_dir():
            return None
        mimic = _find(root, MIMIC_PREFIX + "chexpert.csv")
        if mimic is not None:
            return f"found {mimic.name} (MIMIC-CXR-JPG)"
        base = _chexpert_dir(root)
        return f"found {(base / 'train.csv').relative_to(root)} (CheXpert)" if base else None

    @staticmethod
    def read(root: Path, catalog: FileCatalog, options: SourceOptions) -> SourceResult:
        space = get_space("chexpert")
        if _find(root, MIMIC_PREFIX + "chexpert.csv") is not None:
            studies, problems, inputs = _read_mimic(root, catalog, space)
            split_source = "official (mimic-cxr-2.0.0-split.csv)" if len(inputs) > 1 and any(s.split for s in studies) else None
            variant = "mimic-cxr-jpg"
        else:
            base = _chexpert_dir(root)
            if base is None:
                raise DataError(f"{root}: no CheXpert or MIMIC-CXR-JPG label CSV ({CheXpertSource.looked_for})")
            studies, problems, inputs = _read_chexpert(root, base, catalog, space)
            split_source = "official (" + ", ".join(p.name for p in inputs) + ")"
            variant = "chexpert"
        return SourceResult(
            format="chexpert", space=space, studies=studies, problems=problems, inputs=inputs,
            split_source=split_source,
            notes={"variant": variant, "uncertainty_policy": options.uncertainty.value},
        )
