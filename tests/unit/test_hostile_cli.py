"""Untrusted text through every command, as a script runs them: a hostile data set (see tests/hostile.py) goes
through data index/stats, train, predict, thresholds tune/show, eval, cam and reviews export/list. No raw
control byte reaches stdout, stderr or a written file, nothing is read as markup, no traceback, the bad file is
named once, and everything good is still done."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from cxr_core.store.reviews import ReviewStore
from tests.cli import cxr
from tests.hostile import BAD_FILE, HOSTILE_FILES, HOSTILE_LABELS, NON_UTF8_NAME, build_hostile_root, raw_controls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hostile")
    return {"base": base, "root": build_hostile_root(base), "home": base / "home"}


def run(world: dict[str, Path], *args: object, ok: bool = True, cwd: Path | None = None):
    out = cxr(*args, env={"CXR_HOME": str(world["home"]), "CXR_PSEUDONYM_KEY": "00" * 32}, cwd=cwd)
    for stream in (out.stdout, out.stderr):
        assert "Traceback" not in stream, stream[-3000:]
        assert "Warning:" not in stream, stream[-3000:]  # pydicom quoting a hostile header value, with its path
        assert not raw_controls(stream), (raw_controls(stream), stream[-2000:])
    if ok:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_every_command_on_hostile_names(world, tmp_path):
    root = world["root"]
    index = run(world, "data", "index", root)
    assert index.stdout.count("bad\\x1b]0;BAD\\x07.png") == 1  # the unreadable file, named once, visibly
    assert "data [/i] [old] [bold]x[/bold]" in index.stdout  # the root's markup shown, not eaten or raised
    assert "Ed\\x1b]0;LBL\\x07ema holds control characters" in index.stdout  # a label name that is a control code
    report = json.loads(run(world, "data", "index", root, "--json").stdout)
    assert report["unreadable"] == 1 and report["unreadable_files"][0]["path"] == f"images/{BAD_FILE}"
    good_films = len(list((root / "images").iterdir())) - 1  # all but the bad file
    assert report["images"] == good_films + 1  # every good film, and the DICOM
    stats = run(world, "data", "stats", root)
    assert "Nodule [r/o]" in stats.stdout and "[/]" in stats.stdout and "=Pneumothorax" in stats.stdout

    runs = tmp_path / "runs"
    trained = json.loads(run(world, "train", "--data", root, "--model", "tiny_resnet", "--image-size", "48",
                             "--epochs", "1", "--workers", "0", "--runs-dir", runs, "--json").stdout)
    assert trained["state"] == "finished"
    run_dir = Path(trained["path"])
    assert not raw_controls((run_dir / "log.txt").read_bytes())

    preds = tmp_path / "preds.csv"
    run(world, "predict", root, "--model", run_dir, "--out", preds)
    text = preds.read_text(encoding="utf-8")
    assert not raw_controls(text)
    with open(preds, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    cells = {cell for row in rows for cell in row[:3]}
    assert "'=HYPERLINK(\"http---x\",\"y\")" in cells and "'@SUM(1+1)" in cells and "'+cmd" in cells
    assert "good\\x1b]0;PWNED\\x07" in cells and "r\\xe9sum\\xe9" in cells and "bidi\\u202egnp" in cells
    assert "'=Pneumothorax" in rows[0] and "[/]" in rows[0]
    as_json = json.loads(run(world, "predict", root, "--model", run_dir, "--json").stdout)
    images = {p["image"] for p in as_json["predictions"]}
    assert "images/" + os.fsdecode(NON_UTF8_NAME) in images  # the undecodable name, whole, through JSON
    assert {f"images/{name}" for name in HOSTILE_FILES} <= images

    thresholds = tmp_path / "t.json"
    tuned = run(world, "thresholds", "tune", "--preds", preds, "--split", "all", "--out", thresholds)
    assert "Nodule [r/o]" in tuned.stdout and "[/]" in tuned.stdout
    shown = run(world, "thresholds", "show", thresholds)
    assert "=Pneumothorax" in shown.stdout

    report_dir = tmp_path / "eval"
    run(world, "eval", run_dir, "--data", root, "--split", "all", "--n-boot", "20", "--out", report_dir)
    for name in ("report.md", "per_class.csv", "predictions.csv"):
        assert not raw_controls((report_dir / name).read_bytes()), name
    assert "'=Pneumothorax" in (report_dir / "per_class.csv").read_text()

    cam = run(world, "cam", root / "images" / HOSTILE_FILES[0], "--model", run_dir, "--finding", HOSTILE_LABELS["Nodule"],
              "--json", cwd=tmp_path)
    written = json.loads(cam.stdout)["out"]  # the default name, made from the film's and the class's names
    assert "/" not in written and (tmp_path / written).is_file() and not raw_controls(written)
    run(world, "cam", root / "images" / os.fsdecode(NON_UTF8_NAME), "--model", run_dir,
        "--out", tmp_path / "cam2.png")


def test_reviews_of_hostile_studies_export_and_list(world, tmp_path):
    root = world["root"]
    studies = [Path(name).stem for name in HOSTILE_FILES] + [os.fsdecode(NON_UTF8_NAME)[:-4]]
    with ReviewStore(world["home"] / "reviews.sqlite") as store:
        for study in studies:
            store.record(root, study, "Nodule [r/o]", "accept", note="=cmd|' /C calc\x1b[2J")
        assert {r.study for r in store.reviews(root)} == set(studies)  # the undecodable name came back whole
    out = tmp_path / "reviews.csv"
    run(world, "reviews", "export", "--out", out)
    text = out.read_text(encoding="utf-8")
    assert not raw_controls(text)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["note"] for r in rows} == {"'=cmd|' /C calc\\x1b[2J"}
    assert "r\\xe9sum\\xe9" in {r["study"] for r in rows}
    listed = run(world, "reviews", "list", "--limit", "0")
    assert "good\\x1b]0;PWNED\\x07" in listed.stdout.replace("\n", "") or "good\\x1b" in listed.stdout
