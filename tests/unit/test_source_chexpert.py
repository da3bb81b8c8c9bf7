from __future__ import annotations

import gzip

from cxr_core.data.sources import SourceOptions, detect_format
from cxr_core.data.sources.base import FileCatalog, FileInfo
from cxr_core.data.sources.chexpert import CheXpertSource
from cxr_core.labels import LabelState, UncertaintyPolicy, get_space

SPACE = get_space("chexpert")
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(SPACE.labels)


def _row(path, frontal, appa, values: dict[str, str], sex="Male", age="68") -> str:
    cells = [values.get(label, "") for label in SPACE.labels]
    return ",".join([path, sex, age, "Frontal" if frontal else "Lateral", appa, *cells])


def _catalog(root, rels):
    return FileCatalog(root, {r: FileInfo(r, 1, 1, True, format="jpeg") for r in rels})


def test_chexpert_states_views_splits_and_merge(tmp_path):
    base = tmp_path / "CheXpert-v1.0-small"
    base.mkdir()
    (base / "train.csv").write_text("\n".join([
        HEADER,
        _row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", True, "AP",
             {"Edema": "1.0", "Atelectasis": "-1.0", "Pneumothorax": "0.0"}),
        _row("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", False, "",
             {"Edema": "1.0", "Atelectasis": "1.0", "Pneumothorax": "0.0"}),
        _row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", True, "PA", {"No Finding": "1.0", "Fracture": "7"}),
    ]) + "\n")
    (base / "valid.csv").write_text(HEADER + "\n" + _row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", True, "AP", {"Edema": "0.0"}) + "\n")
    assert detect_format(tmp_path)[0] == "chexpert"
    catalog = _catalog(tmp_path, ["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"])
    result = CheXpertSource.read(tmp_path, catalog, SourceOptions(uncertainty=UncertaintyPolicy.ONES))
    by_id = {s.id: s for s in result.studies}
    s1 = by_id["train/patient00001/study1"]
    assert [im.view for im in s1.images] == ["AP", "LATERAL"] and s1.view == "AP"
    assert s1.images[0].path == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    states = SPACE.decode(s1.labels)
    assert states["Edema"] is LabelState.POSITIVE and states["Pneumothorax"] is LabelState.NEGATIVE
    assert states["Atelectasis"] is LabelState.POSITIVE  # -1 and 1 merged: positive wins
    assert states["Fracture"] is LabelState.UNKNOWN
    assert by_id["valid/patient64541/study1"].split == "val" and s1.split == "train"
    assert s1.patient_id == "patient00001"
    reasons = " ".join(p.reason for p in result.problems)
    assert "'7' is not 1, 0, -1 or blank" in reasons and "different labels" in reasons
    assert result.notes["uncertainty_policy"] == "ones"


def test_uncertain_kept_distinct_from_blank(tmp_path):
    (tmp_path / "train.csv").write_text(HEADER + "\n" + _row("CheXpert-v1.0/train/patient1/study2/view1_frontal.jpg", True, "AP", {"Edema": "-1"}) + "\n")
    (study,) = CheXpertSource.read(tmp_path, _catalog(tmp_path, []), SourceOptions()).studies
    states = SPACE.decode(study.labels)
    assert states["Edema"] is LabelState.UNCERTAIN and states["Cardiomegaly"] is LabelState.UNKNOWN


def test_mimic_cxr_jpg_layout(tmp_path):
    labels = "subject_id,study_id," + ",".join(SPACE.labels) + "\n" + "10000032,50414267," + ",".join(
        "1.0" if name == "Pleural Effusion" else "" for name in SPACE.labels) + "\n"
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as fh:
        fh.write(labels)
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\nabc,50414267,10000032,validate\n")
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id,study_id,ViewPosition\nabc,10000032,50414267,PA\n")
    assert detect_format(tmp_path) == ("chexpert", "found mimic-cxr-2.0.0-chexpert.csv.gz (MIMIC-CXR-JPG)")
    result = CheXpertSource.read(tmp_path, _catalog(tmp_path, []), SourceOptions())
    (study,) = result.studies
    assert study.id == "s50414267" and study.patient_id == "p10000032" and study.split == "val"
    assert study.images[0].path == "files/p10/p10000032/s50414267/abc.jpg" and study.view == "PA"
    assert SPACE.positives(study.labels) == ["Pleural Effusion"]
    assert result.notes["variant"] == "mimic-cxr-jpg"
