"""Reviewer decisions as DICOM Structured Reports: one SR per study read from DICOM, for a PACS to file beside
the images it was read from (``cxr-tui reviews export --dicom-sr OUTDIR``).

A file is a Comprehensive SR (SOP Class 1.2.840.10008.5.1.4.1.1.88.33) whose content is TID 1500 "Imaging
Measurement Report", built with highdicom (the ``dicom-sr`` extra):

* **Who the report is about**: the patient and study identity attributes copied from the study's own DICOM files
  (Patient's Name, Patient ID, Issuer of Patient ID, Birth Date, Sex; Study Instance UID, Study Date and Time,
  Accession Number, Study ID, Referring Physician's Name) and nothing else of them. That is what files the report
  under the right patient and study; nothing the source did not carry is added (no pseudonym, no study id of the
  index, no path, no reviewer's note).
* **What it was read from**: every source image by SOP Class and Instance UID, in the Current Requested Procedure
  Evidence Sequence and in the Image Library (TID 1600).
* **Who decided**: the document's observation context (TID 1001) lists every person who decided (Person Observer
  Name and Login Name, role in this procedure NCIt "Reader" or "Adjudicator") and every model their decisions came
  with as a device observer (Device Observer Name = run id or file name, Serial Number = the checkpoint's
  fingerprint, UID = a name-based UUID of that fingerprint as ``2.25.<n>``, Manufacturer "cxr").
* **The decisions**: one Measurement Group (TID 1501) per reading, i.e. per (person, role, model), whose own
  observer context (HAS OBS CONTEXT, DICOM's way to change the observer inside a document) names that person and
  that model. It holds one qualitative evaluation per finding: the finding = Present (accept), Absent (reject) or
  Indeterminate (uncertain), all SNOMED CT. Findings take the code DICOM's own context groups give them where one
  exists (:data:`FINDING_CODES`, e.g. Effusion = SCT 60046008 "Pleural effusion"), else a local code in the
  ``99CXR`` scheme whose value and meaning are the label name (declared in the Coding Scheme Identification
  Sequence). Cleared decisions are left out; notes are never written (free text may name anyone).

The report is marked PARTIAL, UNVERIFIED and PRELIMINARY: these are a workbench's decisions, not a signed
report. Its UIDs are name-based: exporting the same decisions again gives the same SOP Instance UID (a PACS
keeps one copy), any change of a decision gives a new one, and every report of a study shares one series.
Files are written owner-only (0600): they carry the patient's identity.
"""

from __future__ import annotations

import datetime
import os
import re
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_core import __version__
from cxr_core.atomic import atomic_path, check_writable_dir
from cxr_core.data.sources.base import Problem
from cxr_core.data.study import Study, image_base
from cxr_core.errors import CxrError, DataError, ImageReadError, os_error_text
from cxr_core.images.read import sniff_format
from cxr_core.store.index import StudyIndex
from cxr_core.store.reviews import ACCEPT, ADJUDICATOR, READER, REJECT, UNCERTAIN, Review, ReviewStore
from cxr_core.text import filename_part, visible

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

INSTALL_HINT = "pip install 'cxr[dicom-sr]'"
LOCAL_SCHEME = "99CXR"
"""Coding scheme designator of finding names that have no code in DICOM's context groups (a private scheme: 99...)."""
MANUFACTURER = "cxr"
SERIES_NUMBER = 990
SERIES_DESCRIPTION = "cxr reader decisions"
SR_FORMAT = "1"
"""Part of every SOP Instance UID's name: a change of what a report holds for the same decisions gives new UIDs."""

FINDING_CODES: dict[str, tuple[str, str]] = {
    "effusion": ("SCT", "PleuralEffusion"),
    "pleural effusion": ("SCT", "PleuralEffusion"),
    "pneumothorax": ("SCT", "Pneumothorax"),
    "cardiomegaly": ("SCT", "Cardiomegaly"),
    "edema": ("SCT", "PulmonaryEdema"),
    "pulmonary edema": ("SCT", "PulmonaryEdema"),
    "mass": ("SCT", "Mass"),
    "nodule": ("SCT", "Nodule"),
    "fibrosis": ("SCT", "Fibrosis"),
    "pneumomediastinum": ("SCT", "Pneumomediastinum"),
    "infiltration": ("DCM", "Infiltrate"),
    "infiltrate": ("DCM", "Infiltrate"),
    "lung opacity": ("DCM", "Opacity"),
    "opacity": ("DCM", "Opacity"),
}
"""Label name (case-insensitive) -> (scheme, pydicom keyword): codes DICOM itself lists for chest findings
(pydicom's dictionary of the standard's context groups, so each one is checked against the standard's tables)."""

DECISION_CODES: dict[str, tuple[str, str]] = {
    ACCEPT: ("SCT", "Present"),
    REJECT: ("SCT", "Absent"),
    UNCERTAIN: ("SCT", "Indeterminate"),
}
ROLE_CODES: dict[str, tuple[str, str]] = {READER: ("NCIt", "Reader"), ADJUDICATOR: ("NCIt", "Adjudicator")}
"""Person Observer's Role in this Procedure, from DICOM's CID 7453 "Performing Roles"."""

_PATIENT_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                  "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")
"""The identity attributes copied from the source: the only header values of the source an SR carries."""
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_UID_NAMESPACE = uuid.UUID("5f0c6a52-52b4-4b8e-9a3e-7c2f4d1e8b90")  # cxr's namespace for name-based UIDs


@dataclass(frozen=True)
class SrFile:
    """One report written: where, for which study, what it references and holds."""

    root: str
    study: str
    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    references: tuple[str, ...]
    """SOP Instance UIDs of the source images."""
    decisions: int
    observers: tuple[str, ...]
    """The people whose decisions it holds (readers, then adjudicators)."""

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "study": self.study, "path": str(self.path),
                "sop_instance_uid": self.sop_instance_uid, "study_instance_uid": self.study_instance_uid,
                "references": list(self.references), "decisions": self.decisions, "observers": list(self.observers)}


@dataclass
class SrExport:
    """What :func:`export_dicom_sr` did: the files written, the studies not read from DICOM, the problems."""

    out_dir: Path
    written: list[SrFile] = field(default_factory=list)
    not_dicom: int = 0
    """Studies with decisions whose images are not DICOM (PNG, JPEG, archive members): no SR for them."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def decisions(self) -> int:
        return sum(f.decisions for f in self.written)

    def summary(self) -> str:
        n = len(self.written)
        parts = [f"wrote {n} DICOM SR file{'s' if n != 1 else ''} ({self.decisions} decisions) to {self.out_dir}"]
        if self.not_dicom:
            parts.append(f"{self.not_dicom} stud{'ies' if self.not_dicom != 1 else 'y'} not read from DICOM: no SR")
        if self.problems:
            parts.append(f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "written": [f.to_dict() for f in self.written],
                "files": len(self.written), "decisions": self.decisions, "not_dicom": self.not_dicom,
                "problems": [{"where": p.path, "reason": p.reason, "severity": p.severity} for p in self.problems]}


def export_dicom_sr(out_dir: str | Path, root: str | Path | None = None, *, store: ReviewStore | None = None,
                    index: StudyIndex | None = None) -> SrExport:
    """Write one DICOM SR per study with current decisions (of ``root``, or every root) whose images are DICOM.

    Each file replaces ``OUTDIR/<study>.dcm`` atomically. Studies read from other formats are counted
    (``not_dicom``); a study that cannot be reported (not in the index, unreadable or disagreeing headers) is a
    :class:`Problem` and the others are still written. Raises ``CxrError`` when highdicom is missing or the folder
    cannot be written.
    """
    hd = _highdicom()
    out = check_writable_dir(out_dir, "DICOM SR folder")
    result = SrExport(out)
    own_store, own_index = store is None, index is None
    store = store if store is not None else ReviewStore()
    try:
        by_root: dict[str, dict[str, list[Review]]] = defaultdict(lambda: defaultdict(list))
        for review in store.reviews(root):
            by_root[review.root][review.study].append(review)
        if not by_root:
            return result
        index = index if index is not None else StudyIndex()
        try:
            out.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CxrError(f"{visible(out)}: cannot create ({os_error_text(exc)})") from None
        used: set[str] = set()
        several = len(by_root) > 1
        for key in sorted(by_root):
            _export_root(hd, key, by_root[key], index, result, used, several)
    finally:
        if own_store:
            store.close()
        if own_index and index is not None:
            index.close()
    return result


def _export_root(hd: Any, root: str, studies: dict[str, list[Review]], index: StudyIndex, result: SrExport,
                 used: set[str], several: bool) -> None:
    try:
        indexed = {s.id: s for s in index.studies(root, present_only=True)}
    except DataError as exc:
        n, reason = len(studies), str(exc)
        head, sep, rest = reason.partition(": ")
        if sep and os.path.realpath(head) == os.path.realpath(root):  # the error names the root too: once is enough
            reason = rest
        result.problems.append(Problem(visible(root), f"{reason}: {n} stud{'ies' if n != 1 else 'y'} with decisions, "
                                                      "no SR"))
        return
    base = image_base(Path(root))
    for study_id, reviews in studies.items():
        where = f"{visible(root)}: {visible(study_id)}" if several else visible(study_id)
        study = indexed.get(study_id)
        if study is None:
            result.problems.append(Problem(where, "not in the index with an image present: no SR"))
            continue
        sources, not_dicom, problems = _read_sources(base, study)
        result.problems.extend(problems)
        if not sources:
            if problems:
                result.problems.append(Problem(where, "no readable DICOM file: no SR"))
            else:
                result.not_dicom += 1
            continue
        if not_dicom:
            result.problems.append(Problem(where, f"{not_dicom} of its images not DICOM: not referenced", "warning"))
        identities = {(str(ds.StudyInstanceUID), str(ds.get("PatientID", "")), str(ds.get("PatientName", "")))
                      for ds in sources}
        if len(identities) > 1:
            result.problems.append(Problem(where, "its DICOM files disagree on the patient or the study: no SR"))
            continue
        try:
            with warnings.catch_warnings():  # pydicom/highdicom warnings may quote header values: never shown
                warnings.simplefilter("ignore")
                report, observers = _build(hd, sources, reviews)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            result.problems.append(Problem(where, f"cannot build the DICOM SR ({_reason(exc, sources)}): no SR"))
            continue
        target = _unique_path(result.out_dir, study_id, used)
        try:
            with warnings.catch_warnings(), atomic_path(target, mode=0o600) as tmp:
                warnings.simplefilter("ignore")
                report.save_as(tmp, enforce_file_format=True)
        except OSError as exc:
            raise CxrError(f"{visible(target)}: cannot write ({os_error_text(exc)})") from None
        result.written.append(SrFile(root, study_id, target, str(report.SOPInstanceUID),
                                     str(report.StudyInstanceUID), tuple(str(ds.SOPInstanceUID) for ds in sources),
                                     len(reviews), observers))


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError:
        raise CxrError(f"writing DICOM SR needs highdicom: {INSTALL_HINT}") from None
    return highdicom


def _brief(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return visible((lines[0] if lines else type(exc).__name__)[:200])


def _reason(exc: BaseException, sources: list[Dataset]) -> str:
    """Why a report could not be built, in one line that never quotes an identifying header value (a library's
    message may: "invalid value for DA: '1970.01.01'")."""
    from cxr_core.images.dicom import IDENTIFYING_FIELDS

    text = _brief(exc)
    for source in sources:
        for keyword in IDENTIFYING_FIELDS:
            value = str(source.get(keyword) or "").strip()
            if len(value) >= 3 and (value in text or value.replace("^", " ") in text):
                return f"{type(exc).__name__}; its message quotes the DICOM header, so it is not shown"
    return text


def _read_sources(base: Path, study: Study) -> tuple[list[Dataset], int, list[Problem]]:
    """The headers (no pixels) of a study's DICOM images; how many images are not DICOM; problems."""
    import pydicom

    from cxr_core.images import dicom as _dicom_settings  # noqa: F401  (pydicom reads malformed values quietly)

    sources: list[Dataset] = []
    problems: list[Problem] = []
    not_dicom = 0
    seen: set[str] = set()
    for image in study.images:
        if "::" in image.path:  # an archive member (.npz): never DICOM
            not_dicom += 1
            continue
        path = base / image.path
        try:
            kind = sniff_format(path)
        except ImageReadError as exc:
            problems.append(Problem(visible(image.path), exc.reason))
            continue
        if kind != "dicom":
            not_dicom += 1
            continue
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            missing = [k for k in _REQUIRED_UIDS if not str(dataset.get(k) or "").strip()]
        except Exception as exc:  # pydicom raises many kinds on a damaged header
            problems.append(Problem(visible(image.path), f"unreadable DICOM header ({_brief(exc)})"))
            continue
        if missing:
            problems.append(Problem(visible(image.path), f"DICOM header lacks {', '.join(missing)}: not referenced"))
            continue
        if str(dataset.SOPInstanceUID) in seen:
            continue
        seen.add(str(dataset.SOPInstanceUID))
        sources.append(dataset)
    return sources, not_dicom, problems


def _uid(*parts: object) -> str:
    """A name-based UID (UUID version 5 as ``2.25.<integer>``, DICOM PS3.5 B.2): the same names, the same UID."""
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _value_text(value: object, limit: int | None = None) -> str:
    """Outside text for a DICOM value whose VR splits values at backslashes (PN, LO, SH, UC): visible, no ``\\``."""
    text = visible(value).replace("\\", "/").strip()
    return text[:limit] if limit else text


def _code(hd: Any, scheme: str, keyword: str) -> Any:
    from pydicom.sr.codedict import codes

    code = getattr(getattr(codes, scheme), keyword)
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def finding_code(hd: Any, finding: str) -> Any:
    """The coded concept of a finding name: DICOM's code where :data:`FINDING_CODES` has one, else ``99CXR``."""
    known = FINDING_CODES.get(finding.strip().casefold())
    if known is not None:
        return _code(hd, *known)
    name = _value_text(finding) or "?"
    return hd.sr.CodedConcept(name, LOCAL_SCHEME, name[:64])


def _identity(source: Dataset) -> Dataset:
    """A copy of the source's UIDs and identity attributes only: what highdicom copies into the SR and references.

    Values that are not valid for their VR (a birth date ``1970.01.01``) are left empty rather than failing the
    report; absent ones stay empty (type 2), never invented.
    """
    from pydicom.dataset import Dataset

    reduced = Dataset()
    for keyword in _REQUIRED_UIDS:
        setattr(reduced, keyword, str(source.get(keyword)).strip())
    for keyword in _PATIENT_STUDY:
        value = source.get(keyword)
        text = "" if value is None else str(value).strip()
        if keyword in ("PatientBirthDate", "StudyDate") and not _DATE.fullmatch(text):
            text = ""
        elif keyword == "StudyTime" and not _TIME.fullmatch(text):
            text = ""
        elif keyword == "PatientSex" and text.upper() not in ("M", "F", "O"):
            text = ""
        setattr(reduced, keyword, (text.upper() if keyword == "PatientSex" else text) or None)
    return reduced


def _library_entry(source: Dataset) -> Dataset:
    """What the Image Library (TID 1600) describes of an image: UIDs, size, and for projection radiographs with
    both attributes the patient orientation and imager pixel spacing (highdicom needs them for CR/DX entries)."""
    from pydicom.dataset import Dataset

    entry = Dataset()
    entry.SOPClassUID = str(source.SOPClassUID)
    entry.SOPInstanceUID = str(source.SOPInstanceUID)
    entry.Rows, entry.Columns = int(source.Rows), int(source.Columns)
    modality = str(source.get("Modality") or "").strip().upper()
    orientation, spacing = source.get("PatientOrientation"), source.get("ImagerPixelSpacing")
    if modality in _PROJECTION and _pair(orientation) and _pair(spacing):
        entry.Modality = modality
        entry.PatientOrientation = list(orientation)
        entry.ImagerPixelSpacing = list(spacing)
    else:
        entry.Modality = ""  # no modality-specific descriptors: the entry still names the modality by SOP class
    return entry


def _pair(value: object) -> bool:
    try:
        return value is not None and len(value) == 2 and all(str(v).strip() for v in value)  # type: ignore[arg-type]
    except TypeError:
        return False


@dataclass(frozen=True)
class _Reading:
    reviewer: str
    role: str
    model: str | None
    model_name: str | None


def _readings(reviews: Iterable[Review]) -> dict[_Reading, list[Review]]:
    """Decisions grouped by who made them in which role with which model: readers by name, then adjudicators."""
    groups: dict[_Reading, list[Review]] = defaultdict(list)
    for r in reviews:
        groups[_Reading(r.reviewer, r.role, r.model, r.model_name)].append(r)
    order = sorted(groups, key=lambda g: (g.role != READER, g.reviewer, g.model or "", g.model_name or ""))
    return {g: sorted(groups[g], key=lambda r: r.finding.casefold()) for g in order}


def person_name(reviewer: str) -> str:
    """A reviewer's name as a DICOM PN: ``\\`` and ``=`` (value and group separators) replaced, at most 64
    characters, and a login-style single name ended by ``^`` (PS3.5 6.2.1.2: a family name alone, said so)."""
    name = _value_text(reviewer).replace("=", "-")[:63] or "?"
    return name if "^" in name else name + "^"


def _person(hd: Any, reviewer: str, role: str) -> Any:
    attributes = hd.sr.PersonObserverIdentifyingAttributes(
        name=person_name(reviewer), login_name=visible(reviewer), role_in_procedure=_code(hd, *ROLE_CODES[role]))
    return hd.sr.ObserverContext(_code(hd, "DCM", "Person"), attributes)


def _device(hd: Any, model: str | None, model_name: str | None) -> Any | None:
    if not model and not model_name:
        return None
    attributes = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid("device", model or model_name), name=visible(model_name or model), manufacturer_name=MANUFACTURER,
        serial_number=visible(model) if model else None)
    return hd.sr.ObserverContext(_code(hd, "DCM", "Device"), attributes)


def _build(hd: Any, sources: list[Dataset], reviews: list[Review]) -> tuple[Any, tuple[str, ...]]:
    """The SR dataset of one study, and the people whose decisions it holds."""
    study_uid = str(sources[0].StudyInstanceUID)
    evidence = [_identity(ds) for ds in sources]
    readings = _readings(reviews)
    people: dict[tuple[str, str], Any] = {}
    devices: dict[tuple[str | None, str | None], Any] = {}
    groups = []
    for reading, rows in readings.items():
        person = people.setdefault((reading.reviewer, reading.role), _person(hd, reading.reviewer, reading.role))
        key = (reading.model, reading.model_name)
        device = devices[key] if key in devices else devices.setdefault(key, _device(hd, *key))
        tracking = hd.sr.TrackingIdentifier(
            uid=_uid("reading", study_uid, reading.reviewer, reading.role, reading.model, reading.model_name),
            identifier=f"{reading.role} {visible(reading.reviewer)}")
        evaluations = [hd.sr.QualitativeEvaluation(finding_code(hd, r.finding), _code(hd, *DECISION_CODES[r.decision]))
                       for r in rows]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking,
                                                            qualitative_evaluations=evaluations)
        content = group[0].ContentSequence
        context = list(person) + (list(device) if device is not None else [])
        at = len(tracking)  # the observer of this group, right after its tracking identifier
        for offset, item in enumerate(context):
            content.insert(at + offset, item)
        groups.append(group)

    observation = hd.sr.ObservationContext()
    for context in [*people.values(), *(d for d in devices.values() if d is not None)]:
        observation.extend(context)
    report = hd.sr.MeasurementReport(
        observation_context=observation, procedure_reported=_code(hd, "SCT", "ChestImaging"),
        imaging_measurements=groups, title=_code(hd, "DCM", "ImagingMeasurementReport"),
        referenced_images=[_library_entry(ds) for ds in sources])
    local = any(r.finding.strip().casefold() not in FINDING_CODES for r in reviews)
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    coding_schemes = [CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME, name="cxr finding names", responsible_organization=MANUFACTURER)] if local else None
    last = datetime.datetime.fromtimestamp(max(r.at for r in reviews))
    instance = _uid("sr", SR_FORMAT, __version__, study_uid, *sorted(r.action_id for r in reviews))
    document = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report[0], series_instance_uid=_uid("series", study_uid),
        series_number=SERIES_NUMBER, sop_instance_uid=instance, instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER, software_versions=__version__, series_description=SERIES_DESCRIPTION,
        content_date=last.date(), content_time=last.time().replace(microsecond=0), coding_schemes=coding_schemes,
        specific_character_set="ISO_IR 192", is_complete=False, is_final=False, is_verified=False)
    return document, tuple(dict.fromkeys(reviewer for reviewer, _ in people))


def _unique_path(folder: Path, study: str, used: set[str]) -> Path:
    """``folder/<study>.dcm`` with the study id made a safe file name; ``-2``, ``-3``... when two studies (of two
    roots) give the same name (compared case-insensitively: some file systems are)."""
    stem = filename_part(study)
    name, n = f"{stem}.dcm", 1
    while name.casefold() in used:
        n += 1
        name = f"{stem}-{n}.dcm"
    used.add(name.casefold())
    return folder / name


__all__ = ["FINDING_CODES", "LOCAL_SCHEME", "SrExport", "SrFile", "export_dicom_sr", "finding_code", "person_name"]
