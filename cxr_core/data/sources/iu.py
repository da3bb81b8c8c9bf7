"""Indiana University chest X-rays (Open-i): one study per report, labels from the report's MeSH terms.

Two layouts carry the same 3,955 reports: NLM's Open-i XML (``ecgen-radiology/N.xml``, extracted or still in
``NLMCXR_reports.tgz``, read as a stream) and Kaggle's ``indiana_reports.csv`` + ``indiana_projections.csv``.
Either way the study id is ``CXR<n>`` (Open-i's ``uId``, Kaggle's ``uid`` n), so both layouts and the image
names agree. IU has one report per patient, so the patient id is the study id. Labels come from the MeSH
major terms through one of two tables (``SourceOptions.iu_mapping``): ``published`` (default), the class
definitions of the published IU-35 label set, oddities included, so that results compare with published ones;
or ``clinical``, which fixes them. docs/iu-labels.md explains both.
"""

from __future__ import annotations

import csv
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import islice
from pathlib import Path

from cxr_core.data.sources.base import FileCatalog, Problem, SourceOptions, SourceResult
from cxr_core.data.study import FRONTAL_VIEWS, Study, StudyImage
from cxr_core.errors import DataError
from cxr_core.labels import LabelSpace, LabelState, get_space

REPORTS_DIR = "ecgen-radiology"
ARCHIVE_PATTERNS = ("*.tgz", "*.tar.gz")
KAGGLE_REPORTS = "indiana_reports.csv"
KAGGLE_PROJECTIONS = "indiana_projections.csv"
KAGGLE_IMAGE_DIR = "images/images_normalized"
SECTIONS = ("indication", "comparison", "findings", "impression")
MAP_FILES = {"published": "iu_mesh_map_published.csv", "clinical": "iu_mesh_map.csv"}
IGNORE, OTHER = "(ignore)", "(other)"
MAX_XML_BYTES = 1 << 20  # real reports are 3-9 kB; anything this big is not one

_VIEWS = {
    "PA": re.compile(r"\bpa\b|postero-?anterior", re.I),
    "AP": re.compile(r"\bap\b|antero-?posterior", re.I),
    "LATERAL": re.compile(r"\blat(eral)?\b", re.I),
    "FRONTAL": re.compile(r"\bfrontal\b", re.I),
}
# Captions describe the exam, not the image ("Xray Chest PA and Lateral" on both images; de-identified
# "Chest XXXX and lateral"), so any hint of a second view disqualifies a caption.
_SEVERAL_VIEWS = re.compile(r"\band\b|/|&|\b(2|two|both|views)\b", re.I)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class TermLabels:
    """What one MeSH term says: ``labels`` (IU-35 classes), whether it is an abnormality, whether a rule matched."""

    labels: frozenset[str]
    abnormal: bool
    unmapped: bool = False


class MeshMap:
    """The rules of a mapping table: rows for a named qualifier override the term's ``*`` rows, ``*`` terms add."""

    def __init__(self, rows: Iterable[tuple[str, str, str]], space: LabelSpace, file: str):
        self.space = space
        self.file = file
        self._specific: dict[tuple[str, str], set[str]] = {}
        self._general: dict[str, set[str]] = {}
        self._any_term: dict[str, set[str]] = {}
        for term, qualifier, label in rows:
            if label not in (IGNORE, OTHER) and label not in space.labels:
                raise ValueError(f"{file}: {term}/{qualifier}: {label!r} is not an IU-35 class")
            term, qualifier = _norm(term), _norm(qualifier)
            if term == "*":
                self._any_term.setdefault(qualifier, set()).add(label)
            elif qualifier == "*":
                self._general.setdefault(term, set()).add(label)
            else:
                self._specific.setdefault((term, qualifier), set()).add(label)
        self._seen: dict[str, TermLabels] = {}

    def classify(self, term: str) -> TermLabels:
        known = self._seen.get(term)
        if known is None:
            known = self._seen[term] = self._classify(term)
        return known

    def _classify(self, term: str) -> TermLabels:
        first, *qualifiers = (_norm(part) for part in term.split("/"))
        found: set[str] = set()
        for q in qualifiers:
            found |= self._specific.get((first, q), set())
        if not found:
            found = set(self._general.get(first, ()))
        for q in qualifiers:
            found |= self._any_term.get(q, set())
        labels = frozenset(found - {IGNORE, OTHER})
        abnormal = OTHER in found or any(label != self.space.normal for label in labels)
        return TermLabels(labels, abnormal or not found, unmapped=not found)

    def label(self, terms: list[str]) -> tuple[str, list[str]]:
        """A report's vector and its unmapped terms: classes named are positive, the rest negative.

        Normal is positive only when nothing abnormal was indexed (findings, ``(other)`` or unmapped terms);
        a report with no terms at all knows nothing, so every label is unknown.
        """
        if not terms:
            return self.space.all_unknown(), []
        positives: set[str] = set()
        abnormal = False
        unmapped = []
        for term in terms:
            result = self.classify(term)
            positives |= result.labels
            abnormal |= result.abnormal
            if result.unmapped:
                unmapped.append(term)
        states = {label: LabelState.POSITIVE for label in positives}
        normal = self.space.normal
        states[normal] = LabelState.NEGATIVE if abnormal else LabelState.POSITIVE
        return self.space.encode(states, default=LabelState.NEGATIVE), unmapped


@cache
def mesh_map(name: str) -> MeshMap:
    """The rules of mapping ``name`` (a key of ``MAP_FILES``); DataError naming the valid ones otherwise."""
    file = MAP_FILES.get(name)
    if file is None:
        raise DataError(f"unknown IU mapping {name!r}: use one of {', '.join(MAP_FILES)}")
    text = resources.files("cxr_core.labels").joinpath(file).read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return MeshMap(((r["term"], r["qualifier"], r["label"]) for r in rows), get_space("iu"), file)


@dataclass
class Report:
    id: str
    sections: dict[str, str | None]
    terms: list[str]
    images: list[tuple[str, str]] = field(default_factory=list)  # (image id or file name, view)


def caption_view(caption: str, n_images: int) -> str:
    """The view a caption names, when it can only describe this image: one image, one view, no second view."""
    if n_images != 1 or _SEVERAL_VIEWS.search(caption):
        return ""
    named = [view for view, pattern in _VIEWS.items() if pattern.search(caption)]
    return named[0] if len(named) == 1 else ""


def _text(element: ET.Element) -> str | None:
    return " ".join("".join(element.itertext()).split()) or None


def parse_report(data: bytes, name: str) -> Report:
    """One Open-i XML report; ValueError with the reason when it is not one."""
    if b"<!DOCTYPE" in data:
        raise ValueError("has a DOCTYPE (entity declarations are not accepted)")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"malformed XML ({exc})") from None
    if root.tag != "eCitation":
        raise ValueError(f"not an Open-i report (root element <{root.tag}>)")
    uid = root.find("uId")
    report_id = (uid.get("id") or "").strip() if uid is not None else ""
    if not report_id:
        stem = Path(name).stem
        if not stem.isdigit():
            raise ValueError("no <uId id=...> and the file name is not a report number")
        report_id = f"CXR{stem}"
    sections: dict[str, str | None] = dict.fromkeys(SECTIONS)
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").casefold()
        if label in sections:
            sections[label] = _text(element)
    terms = [t for t in (_text(m) for m in root.iterfind("MeSH/major")) if t]
    parents = [(p.get("id", "").strip(), p.findtext("caption") or "") for p in root.iter("parentImage")]
    parents = [(image_id, caption) for image_id, caption in parents if image_id]
    images = [(image_id, caption_view(caption, len(parents))) for image_id, caption in parents]
    return Report(report_id, sections, terms, images)


def _looks_like_report(data: bytes) -> bool:
    return b"<eCitation" in data[:4096]


def _xml_dir(directory: Path) -> bool:
    return any(_looks_like_report(_head(p)) for p in islice(directory.glob("*.xml"), 5))


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(4096)
    except OSError:
        return b""


def _is_report_archive(path: Path) -> bool:
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in islice(tar, 5):
                if member.isfile() and member.name.endswith(".xml"):
                    fh = tar.extractfile(member)
                    return fh is not None and _looks_like_report(fh.read(4096))
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        return False
    return False


def locate(root: Path) -> tuple[str, Path] | None:
    """Which layout ``root`` holds and its report file or folder; Kaggle first (it has per-image views)."""
    if root.is_file():
        return ("archive", root) if root.name.endswith((".tgz", ".tar.gz")) and _is_report_archive(root) else None
    if not root.is_dir():
        return None
    if (root / KAGGLE_REPORTS).is_file():
        return "kaggle", root / KAGGLE_REPORTS
    for directory in (root / REPORTS_DIR, root):
        if directory.is_dir() and _xml_dir(directory):
            return "xml", directory
    for pattern in ARCHIVE_PATTERNS:
        for path in sorted(root.glob(pattern)):
            if _is_report_archive(path):
                return "archive", path
    return None


def _from_files(paths: Iterable[Path], problems: list[Problem]) -> Iterator[tuple[str, bytes]]:
    for path in paths:
        try:
            if path.stat().st_size > MAX_XML_BYTES:
                problems.append(Problem(str(path), f"larger than {MAX_XML_BYTES} bytes: not a report"))
                continue
            yield str(path), path.read_bytes()
        except OSError as exc:
            problems.append(Problem(str(path), f"cannot read ({exc.strerror or exc})"))


def _from_archive(archive: Path, problems: list[Problem]) -> Iterator[tuple[str, bytes]]:
    """The archive's XML members, streamed in order: nothing is extracted to disk."""
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                name = f"{archive}::{member.name}"
                if member.size > MAX_XML_BYTES:
                    problems.append(Problem(name, f"larger than {MAX_XML_BYTES} bytes: not a report"))
                    continue
                fh = tar.extractfile(member)
                if fh is not None:
                    yield name, fh.read()
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        problems.append(Problem(str(archive), f"archive unreadable from here on ({exc}); kept the reports before"))


def _read_xml(files: Iterable[tuple[str, bytes]], problems: list[Problem]) -> list[Report]:
    reports = []
    for name, data in files:
        try:
            reports.append(parse_report(data, name.rsplit("/", 1)[-1]))
        except ValueError as exc:
            problems.append(Problem(name, str(exc)))
    return reports


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            # Cells beyond the header (DictReader files them under None, as a list) are ignored.
            rows = [{k.strip().casefold(): (v or "").strip() for k, v in row.items() if k is not None and not isinstance(v, list)}
                    for row in reader]
            return [(h or "").strip().casefold() for h in reader.fieldnames or []], rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _need(path: Path, header: list[str], columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: not a Kaggle IU table (no column {', '.join(missing)})")


def _read_kaggle(reports_csv: Path, problems: list[Problem]) -> tuple[list[Report], list[Path]]:
    header, rows = _csv_rows(reports_csv)
    _need(reports_csv, header, ("uid", "mesh"))
    reports: dict[int, Report] = {}
    for line_no, row in enumerate(rows, start=2):
        uid = row["uid"]
        if not uid.isdigit():
            problems.append(Problem(f"{reports_csv}:{line_no}", f"uid {uid!r} is not a report number"))
            continue
        if int(uid) in reports:
            problems.append(Problem(f"{reports_csv}:{line_no}", f"duplicate uid {uid}; kept the first", "warning"))
            continue
        terms = [t.strip() for t in row["mesh"].split(";") if t.strip()]
        sections = {s: row.get(s) or None for s in SECTIONS}
        reports[int(uid)] = Report(f"CXR{int(uid)}", sections, terms)
    inputs = [reports_csv]
    projections = reports_csv.with_name(KAGGLE_PROJECTIONS)
    if not projections.is_file():
        reason = f"no {KAGGLE_PROJECTIONS} beside it: studies have no images"
        problems.append(Problem(str(reports_csv), reason, "warning"))
        return list(reports.values()), inputs
    inputs.append(projections)
    header, rows = _csv_rows(projections)
    _need(projections, header, ("uid", "filename", "projection"))
    orphans = 0
    for row in rows:
        report = reports.get(int(row["uid"])) if row["uid"].isdigit() else None
        if report is None:
            orphans += 1
        elif row["filename"]:
            report.images.append((row["filename"], row["projection"].upper()))
    if orphans:
        reason = f"{orphans} images belong to no report in {KAGGLE_REPORTS}"
        problems.append(Problem(str(projections), reason, "warning"))
    return list(reports.values()), inputs


def _image_path(catalog: FileCatalog, name: str, kaggle: bool) -> str:
    if kaggle:
        return catalog.find_name(name) or f"{KAGGLE_IMAGE_DIR}/{name}"
    return catalog.find_stem(name) or f"{name}.png"


def _order(study: Study) -> tuple[int, str]:
    digits = study.id[3:]
    return (int(digits) if digits.isdigit() else -1, study.id)


class IUSource:
    name = "iu"
    looked_for = (f"iu: Open-i XML reports ({REPORTS_DIR}/*.xml, or NLMCXR_reports.tgz) "
                  f"or Kaggle {KAGGLE_REPORTS} + {KAGGLE_PROJECTIONS}")

    @staticmethod
    def detect(root: Path) -> str | None:
        found = locate(root)
        if found is None:
            return None
        layout, path = found
        where = path.name if path == root else path.relative_to(root).as_posix()
        return {"kaggle": f"found {where}", "xml": f"found Open-i XML reports in {where}/",
                "archive": f"found Open-i report archive {where}"}[layout]

    @staticmethod
    def read(root: Path, catalog: FileCatalog, options: SourceOptions) -> SourceResult:
        found = locate(root)
        if found is None:
            raise DataError(f"{root}: no IU reports ({IUSource.looked_for})")
        layout, path = found
        rules = mesh_map(options.iu_mapping)
        problems: list[Problem] = []
        if layout == "kaggle":
            reports, inputs = _read_kaggle(path, problems)
        elif layout == "xml":
            # The folder's mtime notices added/removed/renamed reports; the files notice edits in place.
            # Stat-ing the 3,955 reports takes ~40 ms here, a fraction of the image scan the index does anyway.
            files = sorted(path.glob("*.xml"))
            reports = _read_xml(_from_files(files, problems), problems)
            inputs = [path, *files]
        else:
            reports = _read_xml(_from_archive(path, problems), problems)
            inputs = [path]
        if not reports:
            detail = f" ({problems[0]})" if problems else ""
            raise DataError(f"{path}: no readable IU reports{detail}")
        studies, unmapped = _studies(reports, catalog, layout == "kaggle", rules, problems)
        notes: dict = {"layout": layout, "reports": str(path), "iu_mapping": options.iu_mapping,
                       "unmapped_terms": dict(unmapped.most_common())}
        notes["reports_without_images"] = sum(1 for s in studies if not s.images)
        if unmapped:
            n_reports = sum(1 for s in studies if any(t in unmapped for t in s.meta["mesh"]))
            examples = ", ".join(t for t, _ in unmapped.most_common(5))
            problems.append(Problem(str(path), f"{len(unmapped)} distinct MeSH terms in {n_reports} reports match no "
                                    f"rule of {rules.file} (e.g. {examples}); those reports are not Normal", "warning"))
        table = Path(str(resources.files("cxr_core.labels").joinpath(rules.file)))
        return SourceResult(format="iu", space=get_space("iu"), studies=studies, problems=problems,
                            inputs=[*inputs, table], split_source=None, notes=notes)


def _studies(reports: list[Report], catalog: FileCatalog, kaggle: bool, rules: MeshMap,
             problems: list[Problem]) -> tuple[list[Study], Counter[str]]:
    unmapped: Counter[str] = Counter()
    studies: dict[str, Study] = {}
    for report in reports:
        if report.id in studies:
            problems.append(Problem(report.id, "duplicate report id; kept the first", "warning"))
            continue
        vector, bad = rules.label(report.terms)
        unmapped.update(bad)
        images = tuple(StudyImage(_image_path(catalog, name, kaggle), view) for name, view in report.images)
        view = next((i.view for i in images if i.view in FRONTAL_VIEWS), "")
        studies[report.id] = Study(id=report.id, patient_id=report.id, images=images, labels=vector, view=view,
                                   meta={"report": report.sections, "mesh": report.terms})
    return sorted(studies.values(), key=_order), unmapped
