"""Commands that write a file or folder replace only what they wrote before: `predict --out`, `cam --out`,
`reviews export --out` and `eval --out` refuse a user's file (the data set's labels, the X-ray itself, a
spreadsheet, a folder of notes) in one line, before any work, unless --force; `cam` never writes over its input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_core.outputs import (
    CAM_SOFTWARE,
    EVAL_CSV_HEAD,
    check_cam_out,
    check_eval_out,
    check_predictions_out,
    check_reviews_out,
    is_cam_png,
    is_eval_folder,
    is_predictions_file,
    is_reviews_export,
    write_cam_png,
)
from cxr_core.predictions import Predictions
from cxr_core.store import EXPORT_COLUMNS, ReviewStore

LABELS_CSV = "image,labels,patient_id\na.png,Effusion,p1\nb.png,No Finding,p2\n"
MISSING_MODEL = "no-such-model.safetensors"  # a refusal must come before the model is even looked for


def _preds(truth: bool = False) -> Predictions:
    probs = np.array([[0.1, 0.9], [0.7, 0.2]], dtype=np.float32)
    return Predictions(["Effusion", "Mass"], probs, ["s1", "s2"], ["a.png", "b.png"], ["p1", "p2"],
                       np.array([[0, 1], [1, 0]], dtype=np.float32) if truth else None, split=["test", "val"])


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """The installed entry point (its error boundary included), in this process: (exit code, stdout, stderr)."""
    from cxr_tui.cli.main import run

    monkeypatch.setattr(sys, "argv", ["cxr-tui", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "400")  # one error line stays one line
    code = 0
    try:
        run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json_error_or_nothing(out: str, json_out: bool) -> bool:
    """stdout after a refusal: nothing, or with --json the error as a JSON object (and nothing else)."""
    return json.loads(out)["exit_code"] == 1 if json_out else out == ""


def _refused(code: int, err: str, path: Path, reason: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and reason in lines[0], err


# -- predict --------------------------------------------------------------------------------------------------


def test_predictions_files_are_recognised(tmp_path: Path):
    for name, truth in (("p.csv", False), ("t.csv", True), ("p.json", False), ("t.json", True)):
        _preds(truth).write(tmp_path / name, {"Effusion": 0.5, "Mass": 0.5})
        assert is_predictions_file(tmp_path / name), name
    header_only = tmp_path / "empty.csv"
    header_only.write_text("study,image,patient,Effusion\n")
    assert is_predictions_file(header_only)
    json_as_csv = tmp_path / "preds.csv"
    json_as_csv.write_text((tmp_path / "p.json").read_text())
    assert is_predictions_file(json_as_csv)  # whatever its name says, it is a predictions file
    thresholds = tmp_path / "thresholds.json"  # has "labels" and "predictions" keys, of other types
    thresholds.write_text(json.dumps({"labels": {"Mass": {"threshold": 0.3}}, "predictions": "p.csv", "n": 2}))
    foreign = {
        "labels.csv": LABELS_CSV,
        "ids.csv": "study,image,patient,labels\ns1,a.png,p1,Effusion|Mass\n",
        "two.csv": "study,image\ns1,a.png\n",
        "notes.txt": "remember the milk\n",
        "list.json": "[1, 2]\n",
        "bad.json": "{not json",
    }
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    for name in (*foreign, "thresholds.json"):
        assert not is_predictions_file(tmp_path / name), name
        with pytest.raises(Exception, match="exists and is not a predictions file; choose another --out or pass --force"):
            check_predictions_out(tmp_path / name)
        check_predictions_out(tmp_path / name, force=True)
    assert not is_predictions_file(tmp_path)
    check_predictions_out(tmp_path / "new.csv")  # the first write
    (tmp_path / "mktemp.csv").touch()
    check_predictions_out(tmp_path / "mktemp.csv")  # an empty file holds nothing to lose
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    check_predictions_out(tmp_path / "dangling.csv")


@pytest.mark.parametrize("json_out", [False, True])
def test_predict_refuses_the_data_sets_labels_before_any_work(tmp_path, monkeypatch, capsys, json_out):
    root = tmp_path / "root"
    root.mkdir()
    labels = root / "labels.csv"
    labels.write_text(LABELS_CSV)
    code, out, err = _cli(monkeypatch, capsys, "predict", root, "--model", MISSING_MODEL, "--out", labels,
                          *(["--json"] if json_out else []))
    _refused(code, err, labels, "exists and is not a predictions file; choose another --out or pass --force")
    assert _json_error_or_nothing(out, json_out) and labels.read_text() == LABELS_CSV


# -- cam ------------------------------------------------------------------------------------------------------


def test_cam_png_mark(tmp_path: Path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    ours = write_cam_png(tmp_path / "cam.png", rgb)
    with Image.open(ours) as image:
        assert image.info["Software"] == CAM_SOFTWARE
        assert np.array_equal(np.asarray(image.convert("RGB")), rgb)
    assert is_cam_png(ours) and oct(ours.stat().st_mode & 0o777) == "0o644"
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    Image.fromarray(rgb).save(tmp_path / "fake.jpg", format="JPEG")
    (tmp_path / "notes.txt").write_text("x")
    for name in ("plain.png", "fake.jpg", "notes.txt", "missing.png"):
        assert not is_cam_png(tmp_path / name), name
    check_cam_out(ours, tmp_path / "film.png")  # its own overlay: replaced
    with pytest.raises(Exception, match="exists and is not an overlay cxr cam wrote; choose another --out or pass --force"):
        check_cam_out(tmp_path / "plain.png", tmp_path / "film.png")
    check_cam_out(tmp_path / "plain.png", tmp_path / "film.png", force=True)
    check_cam_out(tmp_path / "new.png", tmp_path / "film.png")
    with pytest.raises(Exception, match="give --out a name ending in .png"):
        check_cam_out(tmp_path / "cam.txt", tmp_path / "film.png", force=True)
    check_cam_out(tmp_path / "CAM.PNG", tmp_path / "film.png")
    check_cam_out(tmp_path / "film-cam-Mass", tmp_path / "film.png", named=False)  # cam's own default name


@pytest.mark.parametrize("force", [False, True])
def test_cam_never_writes_over_its_input(tmp_path, monkeypatch, capsys, force):
    film = tmp_path / "film.png"
    Image.fromarray(np.full((16, 16), 80, dtype=np.uint8)).save(film)
    before = film.read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(film)
    hard = tmp_path / "hard.png"
    hard.hardlink_to(film)
    for out in (film, link, hard, tmp_path / "." / "film.png"):
        code, _, err = _cli(monkeypatch, capsys, "cam", film, "--model", MISSING_MODEL, "--out", out, "--json",
                            *(["--force"] if force else []))
        _refused(code, err, out, "is the input image")
        assert "--force" not in err
    code, _, err = _cli(monkeypatch, capsys, "cam", link, "--model", MISSING_MODEL, "--out", film)
    _refused(code, err, film, "is the input image")
    assert film.read_bytes() == before


def test_cam_refuses_a_foreign_file_and_a_name_that_is_not_png(tmp_path, monkeypatch, capsys):
    film = tmp_path / "film.png"
    Image.fromarray(np.full((16, 16), 80, dtype=np.uint8)).save(film)
    other = tmp_path / "other.png"
    Image.fromarray(np.full((16, 16), 9, dtype=np.uint8)).save(other)
    before = other.read_bytes()
    code, _, err = _cli(monkeypatch, capsys, "cam", film, "--model", MISSING_MODEL, "--out", other)
    _refused(code, err, other, "exists and is not an overlay cxr cam wrote; choose another --out or pass --force")
    assert other.read_bytes() == before
    text = tmp_path / "x.txt"
    code, _, err = _cli(monkeypatch, capsys, "cam", film, "--model", MISSING_MODEL, "--out", text)
    _refused(code, err, text, "the overlay is written as PNG")
    assert not text.exists()


# -- reviews export -------------------------------------------------------------------------------------------


def test_reviews_export_recognised(tmp_path: Path):
    ours = tmp_path / "reviews.csv"
    with ReviewStore(tmp_path / "r.sqlite") as store:
        store.record("/root", "s1", "Mass", "accept")
        store.export_csv(ours)
    assert is_reviews_export(ours)
    old = tmp_path / "old.csv"  # before model_name and role were added
    old.write_text(",".join(f'"{c}"' for c in EXPORT_COLUMNS[:10]) + "\n")
    assert is_reviews_export(old)
    for name, text in (("budget.csv", "month,amount\njan,3\n"), ("short.csv", "study,finding,decision\n"),
                       ("shuffled.csv", ",".join(reversed(EXPORT_COLUMNS)) + "\n"), ("blank.csv", "\n\n")):
        (tmp_path / name).write_text(text)
        assert not is_reviews_export(tmp_path / name), name
        with pytest.raises(Exception, match="exists and is not a reviews export"):
            check_reviews_out(tmp_path / name)
    check_reviews_out(tmp_path / "budget.csv", force=True)
    check_reviews_out(tmp_path / "new.csv")


def test_reviews_export_refuses_an_unrelated_csv(tmp_path, monkeypatch, capsys):
    db = tmp_path / "r.sqlite"
    with ReviewStore(db) as store:
        store.record("/root", "s1", "Mass", "accept")
    budget = tmp_path / "budget.csv"
    budget.write_text("month,amount\njan,3\n")
    for extra in ([], ["--json"]):
        code, out, err = _cli(monkeypatch, capsys, "reviews", "export", "--out", budget, "--db", db, *extra)
        _refused(code, err, budget, "exists and is not a reviews export; choose another --out or pass --force")
        assert _json_error_or_nothing(out, bool(extra)) and budget.read_text() == "month,amount\njan,3\n"
    monkeypatch.chdir(tmp_path)  # the default name, reviews.csv here, is checked too
    Path("reviews.csv").write_text("name,phone\n")
    code, _, err = _cli(monkeypatch, capsys, "reviews", "export", "--db", db)
    _refused(code, err, Path("reviews.csv"), "exists and is not a reviews export")
    code, _, err = _cli(monkeypatch, capsys, "reviews", "export", "--out", budget, "--db", db, "--force")
    assert code == 0, err
    assert is_reviews_export(budget)
    code, out, err = _cli(monkeypatch, capsys, "reviews", "export", "--out", budget, "--db", db, "--json")
    assert code == 0 and json.loads(out)["rows"] == 1, err  # its own export: replaced without --force
    fresh = tmp_path / "fresh.csv"
    code, _, err = _cli(monkeypatch, capsys, "reviews", "export", "--out", fresh, "--db", db)
    assert code == 0 and is_reviews_export(fresh), err


# -- eval -----------------------------------------------------------------------------------------------------


def test_eval_csv_head_is_the_reports():
    from cxr_core.eval.report import CSV_COLUMNS

    assert CSV_COLUMNS[:len(EVAL_CSV_HEAD)] == EVAL_CSV_HEAD


def _eval_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text("# report\n")
    (folder / "per_class.csv").write_text(",".join(EVAL_CSV_HEAD) + ",auc_lo\nMass,3,1,0.5,0.4\n")
    return folder


def test_eval_folders_recognised(tmp_path: Path):
    ours = _eval_folder(tmp_path / "ours")
    (ours / "my-notes.txt").write_text("kept")  # a note beside a report does not make the folder foreign
    assert is_eval_folder(ours)
    check_eval_out(ours)
    check_eval_out(tmp_path / "new" / "deeper")
    (tmp_path / "empty").mkdir()
    check_eval_out(tmp_path / "empty")
    user = tmp_path / "user"
    user.mkdir()
    (user / "report.md").write_text("my thesis\n")
    assert not is_eval_folder(user)
    with pytest.raises(Exception, match="is a folder that is not empty and holds no cxr eval report"):
        check_eval_out(user)
    check_eval_out(user, force=True)
    (user / "per_class.csv").write_text("name,score\n")
    assert not is_eval_folder(user)


@pytest.mark.parametrize("json_out", [False, True])
def test_eval_refuses_a_users_folder_before_any_work(tmp_path, monkeypatch, capsys, json_out):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "report.md").write_text("my thesis\n")
    code, out, err = _cli(monkeypatch, capsys, "eval", MISSING_MODEL, "--data", tmp_path, "--out", user,
                          *(["--json"] if json_out else []))
    _refused(code, err, user, "not empty and holds no cxr eval report; choose another --out or pass --force")
    assert _json_error_or_nothing(out, json_out) and (user / "report.md").read_text() == "my thesis\n"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = _cli(monkeypatch, capsys, "eval", MISSING_MODEL, "--data", tmp_path, "--out", a_file)
    _refused(code, err, a_file, "not a folder")


# -- end to end -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, Path]:
    """A folder data set of 4 films with a labels.csv, and a tiny model for it."""
    import torch

    from cxr_core.checkpoint import save_checkpoint
    from cxr_core.models import create_model

    root = tmp_path_factory.mktemp("set") / "root"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,labels,patient_id,split"]
    for i in range(8):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(root / f"f{i}.png")
        rows.append(f"f{i}.png,{'Effusion' if i % 2 else 'No Finding'},p{i},test")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=["Effusion", "Mass"], image_size=32)
    checkpoint = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    return root, checkpoint


@pytest.mark.slow
def test_predict_end_to_end_keeps_labels_and_replaces_its_own(small_set, tmp_path):
    from tests.cli import cxr, cxr_json

    root, checkpoint = small_set
    labels = (root / "labels.csv").read_text()
    done = cxr("predict", root, "--model", checkpoint, "--out", root / "labels.csv", "--db", tmp_path / "i.sqlite")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "labels.csv: exists and is not a predictions file" in done.stderr
    assert (root / "labels.csv").read_text() == labels
    for name in ("preds.csv", "preds.json"):
        out = tmp_path / name
        for _ in range(2):  # the first write, then over its own file
            summary = cxr_json("predict", root, "--model", checkpoint, "--out", out, "--db", tmp_path / "i.sqlite")
            assert summary["images"] == 8 and len(Predictions.read(out)) == 8
    notes = tmp_path / "notes.csv"
    notes.write_text("mine\n")
    summary = cxr_json("predict", root, "--model", checkpoint, "--out", notes, "--force", "--db", tmp_path / "i.sqlite")
    assert summary["images"] == 8 and is_predictions_file(notes)


@pytest.mark.slow
def test_cam_end_to_end_marks_and_replaces_its_own_overlay(small_set, tmp_path):
    from tests.cli import cxr, cxr_json

    root, checkpoint = small_set
    film = tmp_path / "film.png"
    film.write_bytes((root / "f1.png").read_bytes())
    out = tmp_path / "cam.png"
    for _ in range(2):
        result = cxr_json("cam", film, "--model", checkpoint, "--finding", "Effusion", "--out", out)
        assert result["out"] == str(out) and is_cam_png(out)
    default = cxr_json("cam", film, "--model", checkpoint, "--finding", "Effusion", cwd=tmp_path)
    assert default["out"] == "film-cam-Effusion.png" and is_cam_png(tmp_path / default["out"])
    before = film.read_bytes()
    for extra in ([], ["--force"]):
        done = cxr("cam", film, "--model", checkpoint, "--out", film, *extra)
        assert done.returncode == 1 and "is the input image" in done.stderr and "Traceback" not in done.stderr
    assert film.read_bytes() == before
    (tmp_path / "film-cam-Effusion.png").write_bytes(before)  # the default name now holds a user's film
    done = cxr("cam", film, "--model", checkpoint, "--finding", "Effusion", cwd=tmp_path)
    assert done.returncode == 1 and "not an overlay cxr cam wrote" in done.stderr
    assert (tmp_path / "film-cam-Effusion.png").read_bytes() == before


@pytest.mark.slow
def test_eval_end_to_end_writes_again_into_its_own_report_folder(small_set, tmp_path):
    from tests.cli import cxr, cxr_json

    root, checkpoint = small_set
    out = tmp_path / "report"
    for _ in range(2):
        result = cxr_json("eval", checkpoint, "--data", root, "--out", out, "--n-boot", "0",
                          "--db", tmp_path / "i.sqlite")
        assert result and is_eval_folder(out)
    done = cxr("eval", checkpoint, "--data", root, "--out", root, "--n-boot", "0", "--db", tmp_path / "i.sqlite")
    assert done.returncode == 1 and "holds no cxr eval report" in done.stderr
    assert not (root / "report.md").exists()
