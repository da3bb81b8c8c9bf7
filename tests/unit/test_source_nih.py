from __future__ import annotations

from pathlib import Path

import pytest

from cxr_core.data.sources import SourceOptions, detect_format
from cxr_core.data.sources.base import FileCatalog, FileInfo
from cxr_core.data.sources.nih import NIHSource
from cxr_core.errors import DataError

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,80,M,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Pleural_Thickening,0,3,074Y,F,PA,2500,2048,0.168,0.168",
    "00000003_000.png,Hernia,0,3,74,F,PA,2500,2048,0.168,0.168",
    "broken,row",
]


def _catalog(root: Path, rels: list[str]) -> FileCatalog:
    return FileCatalog(root, {r: FileInfo(r, 10, 1, True, format="png", width=1024, height=1024) for r in rels})


def _write(root: Path, rows=ROWS, name="Data_Entry_2017.csv") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(HEADER + "\n".join(rows) + "\n")


def test_reads_rows_with_missing_images_official_split_and_problems(tmp_path):
    _write(tmp_path)
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    catalog = _catalog(tmp_path, ["images_001/images/00000001_000.png", "images_001/images/00000002_000.png"])
    result = NIHSource.read(tmp_path, catalog, SourceOptions())
    by_id = {s.id: s for s in result.studies}
    assert list(by_id) == ["00000001_000", "00000001_001", "00000002_000", "00000003_000"]
    assert by_id["00000001_000"].images[0].path == "images_001/images/00000001_000.png"
    assert by_id["00000001_001"].images[0].path == "00000001_001.png"  # absent: the expected name
    assert result.space.positives(by_id["00000001_001"].labels) == ["Cardiomegaly", "Emphysema"]
    assert result.space.positives(by_id["00000002_000"].labels) == ["No Finding"]
    assert by_id["00000003_000"].meta["age"] == 74 and by_id["00000003_000"].split == "test"
    assert by_id["00000002_000"].view == "AP" and by_id["00000001_000"].split == "train_val"
    reasons = " | ".join(str(p) for p in result.problems)
    assert "duplicate row for 00000003_000.png" in reasons
    assert "row has 2 fields" in reasons
    assert result.split_source.startswith("official")
    assert {p.name for p in result.inputs} == {"Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"}


def test_kaggle_sample_layout_is_detected_one_level_down(tmp_path):
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y\n")
    sample = tmp_path / "sample"
    sample.mkdir()
    (sample / "sample_labels.csv").write_text(header + "00000013_005.png,Emphysema|Infiltration,5,13,060Y,M,AP,3056,2544,0.139,0.139\n")
    assert detect_format(tmp_path)[0] == "nih"
    catalog = _catalog(tmp_path, ["sample/images/00000013_005.png"])
    (study,) = NIHSource.read(tmp_path, catalog, SourceOptions()).studies
    assert study.images[0].path == "sample/images/00000013_005.png"
    assert study.meta["age"] == 60 and study.patient_id == "13"


def test_not_a_label_table_is_one_clear_error(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"Data_Entry_2017.csv: not an NIH label table"):
        NIHSource.read(tmp_path, _catalog(tmp_path, []), SourceOptions())


@pytest.mark.real_data
def test_real_nih_table_reads_all_rows(real_data):
    import time

    root = real_data / "nih-sample"
    rels = [f"images_001/images/{p.name}" for p in (root / "images_001" / "images").glob("*.png")]
    start = time.perf_counter()
    result = NIHSource.read(root, _catalog(root, rels), SourceOptions())
    assert time.perf_counter() - start < 5
    assert len(result.studies) == 112120
    assert len({s.patient_id for s in result.studies}) == 30805
    assert sum(s.split == "test" for s in result.studies) == 25596
    assert not [p for p in result.problems if p.severity == "error"]
    assert result.notes["boxes"] == "BBox_List_2017.csv"


def test_stats_of_a_partial_download_count_present_studies_apart_from_table_rows(tmp_path):
    from cxr_core.data.stats import summarise

    _write(tmp_path)
    present = ["images_001/images/00000001_000.png", "images_001/images/00000002_000.png"]
    result = NIHSource.read(tmp_path, _catalog(tmp_path, present), SourceOptions())
    report = summarise("nih", str(tmp_path), result.space, result.studies, set(present), {}, [], None, {})
    assert report.studies == 4 and report.studies_present == 2
    assert report.labels["Cardiomegaly"] == 2 and report.labels_present["Cardiomegaly"] == 1
    assert report.labels["Hernia"] == 1 and report.labels_present["Hernia"] == 0
    assert report.labels_present["No Finding"] == 1
