"""Reviewer decisions as DICOM SR (cxr_core.store.dicom_sr, ``reviews export --dicom-sr``): one report per study read
from DICOM, that pydicom opens and highdicom parses, referencing exactly the source instances, holding each reader's
and adjudicator's decision as recorded with the reader and the model named, and carrying no identifier its own source
did not (another study's planted identifiers, the index's pseudonym, paths, notes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage
from typer.testing import CliRunner

from cxr_core import privacy
from cxr_core.errors import CxrError
from cxr_core.store import ReviewStore, StudyIndex
from cxr_core.store.dicom_sr import FINDING_CODES, LOCAL_SCHEME, export_dicom_sr
from cxr_tui.cli.reviews import app
from tests.malformed import gradient, write_dicom, write_png

hd = pytest.importorskip("highdicom", reason="the dicom-sr extra (highdicom) is not installed")

FINGERPRINT = "3f" * 32
RUN = "run-2025-demo"
NOTE = "NOTE-SECRET-Zebulon"  # a reader's note: never in an SR

# Per study, every identifying field different, so a value found in another study's SR is a leak.
IDENTITIES = {
    "s1": {"PatientName": "Alphaworth^Annabel", "PatientID": "MRN-A-1111", "PatientBirthDate": "19410101",
           "AccessionNumber": "ACC-A-1111", "StudyID": "SID-A-11", "ReferringPhysicianName": "Refa^Alfred",
           "InstitutionName": "Alpha Infirmary", "OperatorsName": "Opa^Agatha", "StationName": "STATION-A",
           "PatientAddress": "1 Alpha Lane", "OtherPatientIDs": "OTHER-A-1111", "StudyDate": "20240101",
           "StudyTime": "101010"},
    "s2": {"PatientName": "Bravington^Bertram", "PatientID": "MRN-B-2222", "PatientBirthDate": "19520202",
           "AccessionNumber": "ACC-B-2222", "StudyID": "SID-B-22", "ReferringPhysicianName": "Refb^Beatrix",
           "InstitutionName": "Bravo Infirmary", "OperatorsName": "Opb^Bruno", "StationName": "STATION-B",
           "PatientAddress": "2 Bravo Lane", "OtherPatientIDs": "OTHER-B-2222", "StudyDate": "20240202",
           "StudyTime": "202020"},
    "s4": {"PatientName": "Charlton^Cecily", "PatientID": "MRN-C-3333", "AccessionNumber": "ACC-C-3333"},
}
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName",
          "StudyDate", "StudyTime")
"""What an SR copies from its own source (the identity attributes); the rest of the source's header stays out."""


def _write(path: Path, study_uid: str, identity: dict[str, str], **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, gradient(24, 20), study_uid=study_uid)
    ds = pydicom.dcmread(path)
    for keyword in ("PatientBirthDate", "StudyDate", "StudyTime", "InstitutionName", "OperatorsName",
                    "ReferringPhysicianName"):  # write_dicom plants its own: only this study's values stay
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in {**identity, **extra}.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def world(tmp_path: Path):
    """A folder root: s1 (two DICOM images), s2 (one DICOM, a DX with orientation and spacing, Latin-1 name),
    s3 (a PNG), s4 (two DICOM files that disagree on the patient); indexed; decisions of two readers and an
    adjudicator, plus one on a study the index does not know."""
    root = tmp_path / "data"
    s1_uid, s2_uid, s4_uid = (pydicom.uid.generate_uid() for _ in range(3))
    files = {
        "s1": [_write(root / "s1" / "a.dcm", s1_uid, IDENTITIES["s1"]),
               _write(root / "s1" / "b.dcm", s1_uid, IDENTITIES["s1"], ViewPosition="LL")],
        "s2": [_write(root / "s2" / "a.dcm", s2_uid, IDENTITIES["s2"], PatientOrientation=["P", "F"],
                      ImagerPixelSpacing=[0.15, 0.15])],
        "s4": [_write(root / "s4" / "a.dcm", s4_uid, IDENTITIES["s4"]),
               _write(root / "s4" / "b.dcm", s4_uid, {**IDENTITIES["s4"], "PatientID": "MRN-C-OTHER"})],
    }
    (root / "s3").mkdir()
    write_png(root / "s3" / "a.png", gradient(24, 20))
    (root / "labels.csv").write_text("study,labels\ns1,Effusion|Nodule\ns2,Cardiomegaly\ns3,No Finding\ns4,Mass\n")
    with StudyIndex() as index:
        loaded = index.load(root)
    assert sorted(s.id for s in loaded.studies) == ["s1", "s2", "s3", "s4"]

    db = tmp_path / "reviews.sqlite"
    model = {"model": FINGERPRINT, "model_name": RUN}
    with ReviewStore(db) as store:
        store.record(root, "s1", "Effusion", "accept", reviewer="alice", probability=0.81, flagged=True, note=NOTE,
                     **model)
        store.record(root, "s1", "Nodule", "uncertain", reviewer="alice", **model)
        store.record(root, "s1", "Atelectasis", "reject", reviewer="alice", **model)
        store.record(root, "s1", "Atelectasis", "clear", reviewer="alice", **model)  # withdrawn: left out
        store.record(root, "s1", "Effusion", "reject", reviewer="bob", **model)
        store.record(root, "s1", "Nodule", "accept", reviewer="bob", **model)
        store.record(root, "s1", "Effusion", "accept", reviewer="carol", role="adjudicator")
        store.record(root, "s2", "Cardiomegaly", "accept", reviewer="alice", **model)
        store.record(root, "s2", "Pleural_Thickening", "reject", reviewer="alice", **model)
        store.record(root, "s3", "Effusion", "accept", reviewer="alice", **model)
        store.record(root, "s4", "Mass", "accept", reviewer="alice", **model)
        store.record(root, "ghost", "Mass", "accept", reviewer="alice", **model)
    return root, db, files


def _export(root: Path, db: Path, out: Path):
    with ReviewStore(db) as store, StudyIndex() as index:
        return export_dicom_sr(out, root, store=store, index=index)


# -- walking the SR content tree with pydicom alone (independent of the writer and of highdicom) -------------------

def _name(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def _code_value(code) -> tuple[str, str, str]:
    value = code.get("CodeValue") or code.get("LongCodeValue")
    return str(value), code.CodingSchemeDesignator, code.CodeMeaning


def _context(items) -> dict[str, object]:
    """HAS OBS CONTEXT items of a container as {concept meaning: value} (observer type/person/device)."""
    found: dict[str, object] = {}
    for item in items:
        if item.RelationshipType != "HAS OBS CONTEXT":
            continue
        if item.ValueType == "PNAME":
            found[_name(item)] = str(item.PersonName).removesuffix("^")  # a single name is written "alice^"
        elif item.ValueType == "TEXT":
            found[_name(item)] = item.TextValue
        elif item.ValueType == "UIDREF":
            found[_name(item)] = item.UID
        elif item.ValueType == "CODE":
            found.setdefault(_name(item), []).append(item.ConceptCodeSequence[0].CodeMeaning)  # type: ignore[union-attr]
    return found


def _groups(ds) -> list[dict]:
    """Each Measurement Group: its observer context and its decisions {finding meaning: (finding code, value)}."""
    (measurements,) = [i for i in ds.ContentSequence if _name(i) == "Imaging Measurements"]
    out = []
    for group in measurements.ContentSequence:
        assert _name(group) == "Measurement Group"
        decisions = {}
        for item in group.ContentSequence:
            if item.RelationshipType == "CONTAINS" and item.ValueType == "CODE":
                finding = _code_value(item.ConceptNameCodeSequence[0])
                decisions[finding[2]] = (finding, item.ConceptCodeSequence[0].CodeMeaning)
        out.append({"context": _context(group.ContentSequence), "decisions": decisions})
    return out


def _evidence(ds) -> set[str]:
    return {sop.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}


def _library(ds) -> set[str]:
    (library,) = [i for i in ds.ContentSequence if _name(i) == "Image Library"]
    return {image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for group in library.ContentSequence for image in group.ContentSequence if image.ValueType == "IMAGE"}


# -- tests -------------------------------------------------------------------------------------------------------

def test_one_sr_per_dicom_study_references_exactly_its_source_instances(world, tmp_path):
    root, db, files = world
    result = _export(root, db, tmp_path / "sr")
    assert sorted(f.study for f in result.written) == ["s1", "s2"]
    assert result.not_dicom == 1  # s3: a PNG
    problems = {p.path: p.reason for p in result.problems}
    assert "ghost" in problems and "not in the index" in problems["ghost"]
    assert "s4" in problems and "disagree on the patient" in problems["s4"]
    assert not (tmp_path / "sr" / "s4.dcm").exists() and not (tmp_path / "sr" / "s3.dcm").exists()
    assert "1 study not read from DICOM: no SR" in result.summary()
    assert result.decisions == 7  # s1: alice 2, bob 2, carol 1; s2: alice 2 (the cleared one left out)
    for written in result.written:
        ds = pydicom.dcmread(written.path)
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files[written.study]]
        source_uids = {str(s.SOPInstanceUID) for s in sources}
        assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
        assert written.path.name == f"{written.study}.dcm" and (written.path.stat().st_mode & 0o777) == 0o600
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID == written.study_instance_uid
        assert _evidence(ds) == source_uids == set(written.references)
        assert _library(ds) == source_uids
        assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        assert ds.CompletionFlag == "PARTIAL" and ds.VerificationFlag == "UNVERIFIED"


def test_the_srs_validate_with_highdicom(world, tmp_path):
    root, db, files = world
    result = _export(root, db, tmp_path / "sr")
    for written in result.written:
        sr = hd.sr.srread(written.path)
        assert isinstance(sr, hd.sr.ComprehensiveSR)
        report = sr.content
        assert isinstance(report, hd.sr.MeasurementReport)
        assert {e[2] for e in sr.get_evidence()} == set(written.references)
        people = [c.observer_identifying_attributes.name for c in report.get_observer_contexts(codes.DCM.Person)]
        devices = report.get_observer_contexts(codes.DCM.Device)
        assert [p.family_name for p in people] == list(written.observers)
        assert [d.observer_identifying_attributes.serial_number for d in devices] == [FINGERPRINT]
        groups = report.get_image_measurement_groups()
        assert len(groups) == (3 if written.study == "s1" else 1)
        assert [g.tracking_identifier for g in groups][0].startswith("reader alice")


def test_each_decision_is_held_as_recorded_with_its_reader_and_model(world, tmp_path):
    root, db, _ = world
    result = _export(root, db, tmp_path / "sr")
    by_study = {f.study: pydicom.dcmread(f.path) for f in result.written}
    s1 = _groups(by_study["s1"])
    readings = {(g["context"]["Person Observer Name"], tuple(g["context"]["Person Observer's Role in this Procedure"])):
                g for g in s1}
    assert set(readings) == {("alice", ("Reader",)), ("bob", ("Reader",)), ("carol", ("Adjudicator",))}
    decided = {who: {finding: value for finding, (_, value) in g["decisions"].items()} for who, g in readings.items()}
    assert decided[("alice", ("Reader",))] == {"Pleural effusion": "Present", "Nodule": "Indeterminate"}
    assert decided[("bob", ("Reader",))] == {"Pleural effusion": "Absent", "Nodule": "Present"}
    assert decided[("carol", ("Adjudicator",))] == {"Pleural effusion": "Present"}
    for who in (("alice", ("Reader",)), ("bob", ("Reader",))):
        context = readings[who]["context"]
        assert context["Observer Type"] == ["Person", "Device"]
        assert context["Device Observer Name"] == RUN and context["Device Observer Serial Number"] == FINGERPRINT
        assert context["Person Observer's Login Name"] == who[0]
    assert "Device Observer Name" not in readings[("carol", ("Adjudicator",))]["context"]  # no model with her call
    # Document level: every observer, persons and the model.
    root_context = _context(by_study["s1"].ContentSequence)
    assert root_context["Observer Type"] == ["Person", "Person", "Person", "Device"]
    assert root_context["Device Observer Serial Number"] == FINGERPRINT

    (s2,) = _groups(by_study["s2"])
    assert s2["decisions"]["Cardiomegaly"] == (("287272002", "SCT", "Cardiomegaly"), "Present")
    assert s2["decisions"]["Pleural_Thickening"] == (("Pleural_Thickening", LOCAL_SCHEME, "Pleural_Thickening"),
                                                     "Absent")
    effusion = readings[("alice", ("Reader",))]["decisions"]["Pleural effusion"][0]
    assert effusion == ("60046008", "SCT", "Pleural effusion")
    assert by_study["s2"].CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME
    assert "CodingSchemeIdentificationSequence" not in by_study["s1"]  # every finding of s1 has a DICOM code


def test_the_patient_and_study_are_those_of_the_source(world, tmp_path):
    root, db, files = world
    result = _export(root, db, tmp_path / "sr")
    for written in result.written:
        ds = pydicom.dcmread(written.path)
        source = pydicom.dcmread(files[written.study][0], stop_before_pixels=True)
        for keyword in COPIED:
            assert str(ds.get(keyword, "")) == str(source.get(keyword, "")), keyword
        for keyword in ("InstitutionName", "OperatorsName", "StationName", "PatientAddress", "OtherPatientIDs"):
            assert keyword not in ds, keyword


def test_no_identifier_the_source_did_not_carry(world, tmp_path):
    root, db, files = world
    result = _export(root, db, tmp_path / "sr")
    assert result.written
    for written in result.written:
        data = written.path.read_bytes().lower()
        own = IDENTITIES[written.study]
        for study, identity in IDENTITIES.items():
            for keyword, value in identity.items():
                if keyword == "StudyTime":  # six digits: could occur inside a UID by chance
                    continue
                needle = value.lower().encode()
                if study == written.study and keyword in COPIED:
                    assert needle in data, (written.study, keyword)  # the search sees what it looks for
                elif value not in own.values():
                    assert needle not in data, f"{written.study}: {study}'s {keyword} leaked"
        # The source's other fields stay out too, and nothing of cxr's own about the patient or the files goes in.
        for keyword in ("InstitutionName", "OperatorsName", "StationName", "PatientAddress", "OtherPatientIDs"):
            assert own[keyword].lower().encode() not in data, keyword
        assert privacy.pseudonym(own["PatientID"]).lower().encode() not in data
        assert NOTE.lower().encode() not in data
        assert str(root).lower().encode() not in data and b"labels.csv" not in data


def test_the_same_decisions_give_the_same_uids_and_a_change_gives_a_new_report(world, tmp_path):
    root, db, _ = world
    first = {f.study: f for f in _export(root, db, tmp_path / "a").written}
    again = {f.study: f for f in _export(root, db, tmp_path / "b").written}
    assert {s: f.sop_instance_uid for s, f in first.items()} == {s: f.sop_instance_uid for s, f in again.items()}
    with ReviewStore(db) as store:
        store.record(root, "s1", "Nodule", "reject", reviewer="bob", model=FINGERPRINT, model_name=RUN)
    changed = {f.study: f for f in _export(root, db, tmp_path / "a").written}
    assert changed["s1"].sop_instance_uid != first["s1"].sop_instance_uid
    assert changed["s2"].sop_instance_uid == first["s2"].sop_instance_uid
    old, new = pydicom.dcmread(first["s1"].path), pydicom.dcmread(changed["s1"].path)
    assert old.SeriesInstanceUID == new.SeriesInstanceUID  # every report of a study in one series
    assert old.SOPInstanceUID == new.SOPInstanceUID == changed["s1"].sop_instance_uid  # replaced in place
    groups = {g["context"]["Person Observer Name"]: g["decisions"] for g in _groups(new)}
    assert groups["bob"]["Nodule"][1] == "Absent"


def test_names_outside_ascii_survive(tmp_path):
    root = tmp_path / "data"
    uid = pydicom.uid.generate_uid()
    _write(root / "m" / "a.dcm", uid, {"PatientName": "Müller^Jörg", "PatientID": "ID-ÅÄÖ"},
           SpecificCharacterSet="ISO_IR 100")
    (root / "labels.csv").write_text("study,labels\nm,Effusion\n")
    with StudyIndex() as index:
        index.load(root)
    db = tmp_path / "r.sqlite"
    with ReviewStore(db) as store:
        store.record(root, "m", "Effusion", "accept", reviewer="Zoë\x1b[31m")
        store.record(root, "m", "Nodule [r/o]\\x", "reject", reviewer="Zoë\x1b[31m")
    (written,) = _export(root, db, tmp_path / "sr").written
    ds = pydicom.dcmread(written.path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jörg" and ds.PatientID == "ID-ÅÄÖ"
    (group,) = _groups(ds)
    assert group["context"]["Person Observer Name"] == "Zoë/x1b[31m"
    assert group["context"]["Person Observer's Login Name"] == "Zoë\\x1b[31m"  # no raw ESC in the file
    assert b"\x1b" not in written.path.read_bytes()
    assert set(group["decisions"]) == {"Pleural effusion", "Nodule [r/o]/x"}


def test_a_study_highdicom_cannot_report_is_a_problem_and_the_others_are_written(tmp_path):
    root = tmp_path / "data"
    _write(root / "ok" / "a.dcm", pydicom.uid.generate_uid(), IDENTITIES["s1"])
    _write(root / "odd" / "a.dcm", pydicom.uid.generate_uid(), IDENTITIES["s2"], SOPClassUID="1.2.826.0.1.3680043.99.1")
    with StudyIndex() as index:
        index.load(root)
    db = tmp_path / "r.sqlite"
    with ReviewStore(db) as store:
        for study in ("ok", "odd"):
            store.record(root, study, "Mass", "accept", reviewer="alice")
    result = _export(root, db, tmp_path / "sr")
    assert [f.study for f in result.written] == ["ok"]
    (problem,) = result.problems
    assert problem.path == "odd" and problem.reason.startswith("cannot build the DICOM SR (")


def test_a_reason_that_quotes_the_header_is_withheld():
    from cxr_core.store.dicom_sr import _reason

    source = pydicom.Dataset()
    source.PatientName, source.PatientID = "Alphaworth^Annabel", "MRN-A-1111"
    assert _reason(ValueError("no such SOP class 1.2.3"), [source]) == "no such SOP class 1.2.3"
    for message in ("bad PN 'Alphaworth^Annabel'", "Alphaworth Annabel?", "id MRN-A-1111 too long"):
        reason = _reason(ValueError(message), [source])
        assert "Alphaworth" not in reason and "MRN" not in reason and reason.startswith("ValueError")


def test_every_mapped_finding_has_a_code_in_dicoms_tables():
    for finding, (scheme, keyword) in FINDING_CODES.items():
        code = getattr(getattr(codes, scheme), keyword)
        assert code.scheme_designator == scheme and code.value, finding


def test_nothing_to_export_writes_nothing(tmp_path):
    db = tmp_path / "empty.sqlite"
    with ReviewStore(db) as store:
        result = export_dicom_sr(tmp_path / "sr", store=store)
    assert result.written == [] and result.problems == [] and not (tmp_path / "sr").exists()
    assert result.summary().startswith("wrote 0 DICOM SR files")


def test_an_unindexed_root_is_a_problem_not_a_failure(tmp_path):
    db = tmp_path / "r.sqlite"
    with ReviewStore(db) as store:
        store.record(tmp_path / "never-indexed", "x", "Mass", "accept", reviewer="alice")
        result = export_dicom_sr(tmp_path / "sr", store=store)
    assert result.written == [] and len(result.problems) == 1
    assert "not indexed" in result.problems[0].reason and "1 study with decisions" in result.problems[0].reason
    assert result.problems[0].reason.startswith("not indexed yet")  # the root is the problem's place: not again
    cli = CliRunner().invoke(app, ["export", "--dicom-sr", str(tmp_path / "sr"), "--db", str(db)])
    assert cli.exit_code == 1 and "error: " in cli.stdout  # nothing exported, only errors: not a success


def test_without_highdicom_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import fails
    with ReviewStore(tmp_path / "r.sqlite") as store, pytest.raises(CxrError, match=r"cxr\[dicom-sr\]"):
        export_dicom_sr(tmp_path / "sr", store=store)


@pytest.mark.slow
def test_dicom_toolkits_accept_the_srs(world, tmp_path):
    """dciodvfy (dicom3tools) checks the Comprehensive SR IOD; dsrdump (dcmtk) refuses a content tree that breaks the
    IOD's relationship constraints (a per-group observer context included). Skipped where neither is installed."""
    tools = [tool for tool in ("dciodvfy", "dsrdump") if shutil.which(tool)]
    if not tools:
        pytest.skip("neither dciodvfy (apt: dicom3tools) nor dsrdump (apt: dcmtk) is installed")
    root, db, _ = world
    for written in _export(root, db, tmp_path / "sr").written:
        for tool in tools:
            run = subprocess.run([tool, str(written.path)], capture_output=True, text=True, timeout=60)
            lines = (run.stdout + run.stderr).splitlines()
            assert run.returncode == 0 and not [line for line in lines if line.startswith(("Error", "E:", "F:"))], (
                tool, lines)


# -- CLI -----------------------------------------------------------------------------------------------------------

def test_cli_export_dicom_sr(world, tmp_path, monkeypatch):
    root, db, _ = world
    out = tmp_path / "sr"
    runner = CliRunner()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(app, ["export", "--dicom-sr", str(out), "--root", str(root), "--db", str(db)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert list(cwd.iterdir()) == []  # no CSV unless --out is given
    lines = result.stdout.splitlines()
    assert lines[-1] == f"wrote 2 DICOM SR files (7 decisions) to {out}; 1 study not read from DICOM: no SR; 2 problems"
    assert any(line.startswith("error: ghost: not in the index") for line in lines)
    assert any(line.startswith("error: s4: its DICOM files disagree") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["s1.dcm", "s2.dcm"]

    csv_out = tmp_path / "r.csv"
    result = runner.invoke(app, ["export", "--dicom-sr", str(out), "--out", str(csv_out), "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rows"] == 10 and csv_out.exists()  # the CSV too: every current decision, PNG study included
    assert data["dicom_sr"]["files"] == 2 and data["dicom_sr"]["not_dicom"] == 1
    assert {p["where"] for p in data["dicom_sr"]["problems"]} == {"ghost", "s4"}
    s1 = next(w for w in data["dicom_sr"]["written"] if w["study"] == "s1")
    assert s1["observers"] == ["alice", "bob", "carol"] and len(s1["references"]) == 2

    result = runner.invoke(app, ["export", "--dicom-sr", str(out), "--history", "--db", str(db)])
    assert result.exit_code != 0 and isinstance(result.exception, CxrError)
