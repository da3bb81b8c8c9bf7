"""`cxr-tui data ...` and `cxr-tui demo` as subprocesses, the way scripts use them."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from tests.cli import cxr, cxr_json

pytestmark = pytest.mark.slow  # every test here runs cxr-tui as a process

KEYS = {"format", "root", "studies", "images", "images_missing", "unreadable", "patients", "labels", "splits"}


def test_version_and_help():
    out = cxr("--version")
    assert out.returncode == 0 and out.stdout.startswith("cxr-tui ")
    out = cxr("data", "--help")
    assert out.returncode == 0 and "index" in out.stdout and "synth" in out.stdout


def test_user_mistakes_are_one_line_without_traceback(tmp_path):
    out = cxr("data", "index", tmp_path / "missing")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "no such file or directory" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "empty").mkdir()
    out = cxr("data", "index", tmp_path / "empty", "--format", "bogus")
    assert out.returncode == 1 and "unknown data set format 'bogus'" in out.stderr
    out = cxr("data", "index", tmp_path / "empty")
    assert out.returncode == 1 and "Looked for:" in out.stderr and "nih:" in out.stderr
    app = cxr(tmp_path / "empty", timeout=60)  # the app on the same folder: the same line, before any screen
    assert (app.returncode, app.stderr) == (1, out.stderr) and app.stdout == ""


def test_synth_then_index_json_keys(tmp_path):
    out = cxr("data", "synth", tmp_path / "ph", "--n", "24", "--size", "64", "--seed", "3")
    assert out.returncode == 0, out.stderr
    data = cxr_json("data", "index", tmp_path / "ph", "--db", tmp_path / "i.sqlite")
    assert KEYS <= data.keys()
    assert data["format"] == "synthetic" and data["images"] == 24 and data["images_missing"] == 0
    with open(tmp_path / "ph" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = Counter(label for r in rows for label in r["labels"].split("|"))
    assert {k: v for k, v in data["labels"].items() if v} == dict(expected)
    again = cxr_json("data", "stats", tmp_path / "ph", "--db", tmp_path / "i.sqlite")
    assert again["scan"]["changed"] is False and again["labels"] == data["labels"]


def test_demo_generates_indexes_and_prints_stats(tmp_path):
    out = cxr("demo", "--out", tmp_path / "demo", "--db", tmp_path / "i.sqlite", "--no-open")
    assert out.returncode == 0, out.stderr
    assert "synthetic" in out.stdout and "Labels (phantom)" in out.stdout and "Cardiomegaly" in out.stdout


@pytest.mark.real_data
def test_acceptance_nih_sample(real_data, tmp_path):
    data = cxr_json("data", "index", real_data / "nih-sample", "--db", tmp_path / "i.sqlite")
    assert data["format"] == "nih"
    assert (data["studies"], data["images"], data["images_missing"], data["patients"]) == (112120, 100, 112020, 30805)
    assert data["splits"] == {"test": 20, "train_val": 80}
    assert data["unreadable"] == 0


@pytest.mark.real_data
def test_acceptance_nih_64px_folder(real_data, tmp_path):
    root = real_data / "nih-64px"
    data = cxr_json("data", "index", root, "--db", tmp_path / "i.sqlite")
    assert data["format"] == "folder" and data["images"] == 1000 and data["patients"] == 264
    with open(root / "labels.csv", newline="") as fh:
        expected = Counter(label for r in csv.DictReader(fh) for label in r["labels"].split("|"))
    assert {k: v for k, v in data["labels"].items() if v} == dict(expected)


@pytest.mark.real_data
def test_acceptance_iu_reports_tgz(real_data, tmp_path):
    data = cxr_json("data", "index", real_data / "reference" / "NLMCXR_reports.tgz", "--db", tmp_path / "i.sqlite")
    assert data["format"] == "iu" and data["studies"] == 3955 and len(data["labels"]) == 35
    by_image = data["labels_by_image"]
    assert sum(1 for _ in by_image) == 35 and by_image["Hyperinflation"] == 1076 and by_image["Rib Fracture"] == 8
    clinical = cxr_json("data", "index", real_data / "reference" / "NLMCXR_reports.tgz", "--iu-mapping", "clinical",
                        "--db", tmp_path / "i.sqlite")
    assert clinical["scan"]["changed"] and clinical["labels_by_image"]["Hyperinflation"] == 444


def test_kaggle_nih_sample_layout_indexes_as_nih(tmp_path):
    from PIL import Image

    sample = tmp_path / "kaggle" / "sample"
    (sample / "images").mkdir(parents=True)
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y")
    rows = [header]
    for i in range(5):
        name = f"0000001{i}_000.png"
        Image.new("L", (32, 32), 40 * i).save(sample / "images" / name)
        rows.append(f"{name},{'Mass' if i % 2 else 'No Finding'},0,1{i},0{50 + i}Y,F,PA,2048,2500,0.14,0.14")
    (sample / "sample_labels.csv").write_text("\n".join(rows) + "\n")
    data = cxr_json("data", "index", tmp_path / "kaggle", "--db", tmp_path / "i.sqlite")
    assert data["format"] == "nih" and data["images"] == 5 and data["labels"]["Mass"] == 2
