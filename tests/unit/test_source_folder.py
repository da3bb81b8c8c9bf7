from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cxr_core.store.index import StudyIndex
from tests.cli import cxr, cxr_json
from tests.malformed import PLANTED_IDENTIFIERS, build_mixed_folder, gradient, write_dicom


@pytest.fixture
def index(tmp_path):
    with StudyIndex(tmp_path / "index.sqlite") as idx:
        yield idx


def _png(path, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def test_flat_files_and_study_folders(tmp_path, index):
    root = tmp_path / "hospital"
    _png(root / "a.png")
    _png(root / "b.jpg".replace("jpg", "png"))
    _png(root / "patient1" / "study7" / "pa.png")
    _png(root / "patient1" / "study7" / "lat.png")
    index.scan(root)
    studies = {s.id: s for s in index.studies(root)}
    assert set(studies) == {"a", "b", "patient1/study7"}
    assert [im.path for im in studies["patient1/study7"].images] == ["patient1/study7/lat.png", "patient1/study7/pa.png"]
    assert index.report(root).label_space == "custom" and studies["a"].labels == ""


def test_dicom_grouped_by_study_uid_with_pseudonymous_patients(tmp_path, index):
    root = tmp_path / "pacs"
    (root / "exam1").mkdir(parents=True)
    (root / "mixed").mkdir()
    deep = gradient(20, 16, np.uint16) >> 4
    write_dicom(root / "exam1" / "1.dcm", deep, study_uid="1.2.3.1", view="PA", patient_id="MRN-1")
    write_dicom(root / "exam1" / "2.dcm", deep, study_uid="1.2.3.1", view="LL", patient_id="MRN-1")
    write_dicom(root / "mixed" / "x.dcm", deep, study_uid="1.2.3.2", patient_id="MRN-2")
    write_dicom(root / "mixed" / "y.dcm", deep, study_uid="1.2.3.3", patient_id="MRN-2")
    write_dicom(root / "IM0001", deep, study_uid="1.2.3.4", patient_id="MRN-3")
    result = index.scan(root)
    assert result.report.format == "folder" and result.report.studies == 4 and result.report.images == 5
    studies = {s.id: s for s in index.studies(root)}
    assert "exam1" in studies and "IM0001" in studies
    assert [im.view for im in studies["exam1"].images] == ["PA", "LL"]
    assert {"1.2.3.2", "1.2.3.3"} <= set(studies) or {"mixed", "1.2.3.3"} <= set(studies)
    patients = {s.patient_id for s in studies.values()}
    assert len(patients) == 3 and all(p.startswith("pt-") for p in patients)
    assert result.report.patients == 3


def test_labels_csv_with_study_column(tmp_path, index):
    root = tmp_path / "d"
    _png(root / "s1" / "f.png")
    _png(root / "s2" / "f.png")
    (root / "labels.csv").write_text("study,labels,patient_id\ns1,Lung Opacity|Support Devices,p1\ns2,No Finding,p2\ns9,Edema,p3\n")
    result = index.scan(root)
    assert result.report.label_space == "chexpert"
    assert result.report.labels["Lung Opacity"] == 1 and result.report.labels["No Finding"] == 1
    assert any("study 's9' has no images" in p["reason"] for p in result.report.problems)


def test_a_question_mark_means_not_labelled_yet_not_normal(tmp_path, index):
    root = tmp_path / "d"
    for name in ("a", "b", "c"):
        _png(root / f"{name}.png")
    (root / "labels.csv").write_text("image,labels,split\na.png,Effusion,train\nb.png,?,train\nc.png,,train\n")
    result = index.scan(root)
    by_id = {s.id: s for s in index.studies(result.report.root)}
    space = index.label_space(result.report.root)
    assert set(by_id["b"].labels) == {"."}  # every finding unknown: masked until someone decides
    assert "." not in by_id["c"].labels and space.positives(by_id["c"].labels) == ["No Finding"]
    assert space.positives(by_id["a"].labels) == ["Effusion"]


def test_a_short_row_is_reported_not_read_as_normal(tmp_path, index):
    root = tmp_path / "d"
    for name in ("a", "b"):
        _png(root / f"{name}.png")
    (root / "labels.csv").write_text("image,patient_id,labels\na.png,p1,Effusion\nb.png,p2\n")  # b's labels lost
    result = index.scan(root)
    by_id = {s.id: s for s in index.studies(result.report.root)}
    space = index.label_space(result.report.root)
    assert space.positives(by_id["b"].labels) != ["No Finding"]  # not a normal film: unlabelled
    assert any(p["path"].endswith("labels.csv:3") and "fewer fields than the header" in p["reason"]
               for p in result.report.problems)


def test_a_labels_csv_saved_by_a_spreadsheet_on_windows_is_read_with_a_warning(tmp_path, index):
    root = tmp_path / "d"
    for name in ("a", "b"):
        _png(root / f"{name}.png")
    text = "image,labels,patient_id\na.png,Effusion,Müller\nb.png,No Finding,José\n"
    (root / "labels.csv").write_bytes(text.encode("cp1252"))  # Excel's "CSV" on Windows: not UTF-8
    result = index.scan(root)
    studies = {s.id: s for s in index.studies(result.report.root)}
    assert index.label_space(result.report.root).positives(studies["a"].labels) == ["Effusion"]
    assert any(p["severity"] == "warning" and "read as cp1252" in p["reason"] for p in result.report.problems)
    assert len({s.patient_id for s in studies.values()}) == 2  # both rows read (the whole file was refused)


@pytest.mark.slow
def test_mixed_good_and_malformed_folder_indexes_with_every_bad_file_listed(tmp_path):
    root = tmp_path / "mixed files"
    good, bad = build_mixed_folder(root)
    db = tmp_path / "i.sqlite"
    data = cxr_json("data", "index", root, "--db", db)
    assert data["images"] == len(good)
    listed = {item["path"]: item["reason"] for item in data["unreadable_files"]}
    for name, reason in bad.items():
        assert name in listed, f"{name} not listed"
        assert reason in listed[name], (name, listed[name])
    assert data["unreadable"] == len(bad)
    warnings = [p for p in data["problems"] if p["path"] == "jpeg_named.png"]
    assert warnings and "JPEG" in warnings[0]["reason"]
    out = cxr("data", "index", root, "--db", db)
    assert out.returncode == 0
    for name in bad:
        assert name in out.stdout
    assert "tórax ñ 1" in {s.id for s in StudyIndex(db).studies(root)}


@pytest.mark.slow
def test_no_dicom_identifier_reaches_the_index_or_output(tmp_path):
    root = tmp_path / "phi"
    build_mixed_folder(root)
    db = tmp_path / "i.sqlite"
    out = cxr("data", "stats", root, "--db", db, "--json")
    assert out.returncode == 0
    blobs = [out.stdout, out.stderr] + [p.read_bytes().decode("latin-1") for p in tmp_path.glob("i.sqlite*")]
    for value in PLANTED_IDENTIFIERS.values():
        if len(value) > 8:  # dates are too generic to search for
            assert all(value not in blob for blob in blobs), value


def test_symlinked_directories_are_followed_once(tmp_path, index):
    elsewhere = tmp_path / "disk2"
    _png(elsewhere / "x.png")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(elsewhere, root / "linked")
    os.symlink(root, root / "linked" / "back")  # a directory loop through the link
    result = index.scan(root)
    assert result.report.images == 1


def test_an_absolute_path_inside_the_root_is_the_same_image(tmp_path, index):
    """Was: counted missing, and the same file indexed again as an unlabelled study."""
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(gradient()).save(root / "imgs" / name)
    (root / "labels.csv").write_text(f"image,labels\n{root / 'imgs' / 'a.png'},Effusion\nimgs/b.png,No Finding\n")
    report = index.scan(root, "folder").report
    assert (report.studies, report.images, report.images_missing) == (2, 2, 0)
    assert [p["reason"] for p in report.problems if p["severity"] != "warning"] == []
    studies = {s.id: s for s in index.studies(root)}
    assert studies["a"].images[0].path == "imgs/a.png" and studies["a"].labels != studies["b"].labels
