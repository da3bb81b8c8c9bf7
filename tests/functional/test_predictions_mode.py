"""Review without a model: ``cxr-tui ROOT --predictions preds.csv`` (issue 15.4).

The worklist and study view from a predictions file written with :class:`~cxr_core.predictions.Predictions`
directly (no model anywhere); decisions carry the fingerprint the file's meta names; Grad-CAM says it needs a
model; one line for each wrong file; and, in a process of its own, nothing on the path imports torch. The
time to the worklist in a real terminal is measured by ``benchmarks/predictions_mode.py``, not asserted here.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_core.errors import DataError
from cxr_core.predictions import Predictions, match_root
from cxr_core.store import ReviewStore, StudyIndex
from cxr_tui.app import CxrApp
from tests.pilot import until

FINGERPRINT = "0123456789abcdef" * 4
HEAVY = ("torch", "torchvision", "timm", "torchcam", "open_clip")


def indexed_rows(root: Path) -> tuple[list, list[str]]:
    """The root's (study, image path) rows as the index has them, and its findings."""
    with StudyIndex() as index:
        indexed = index.load(root)
    return [(s, image.path) for s in indexed.studies for image in s.images], list(indexed.space.findings)


def write_predictions(root: Path, out: Path, *, seed: int = 0, meta: dict | None = None) -> Predictions:
    """Seeded probabilities for every image of ``root``, as ``cxr-tui predict --out`` would write them."""
    rows, labels = indexed_rows(root)
    probs = np.random.default_rng(seed).random((len(rows), len(labels)), dtype=np.float32)
    preds = Predictions(labels, probs, [s.id for s, _ in rows], [path for _, path in rows],
                        [s.patient_id for s, _ in rows], meta=dict(meta or {}))
    preds.write(out)
    return preds


async def test_review_from_a_predictions_file(phantom_set, tmp_path):
    from cxr_tui.screens.study import StudyScreen
    from cxr_tui.screens.thresholds import ThresholdsScreen
    from cxr_tui.screens.worklist import WorklistScreen

    path = tmp_path / "preds.json"
    preds = write_predictions(phantom_set, path, meta={"fingerprint": FINGERPRINT, "model_name": "run-7",
                                                        "model": "/gpu-box/runs/run-7/checkpoints/best.safetensors"})
    app = CxrApp(phantom_set, predictions=path, image_protocol="halfcell")
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None, what="the predictions file")
        assert app.predictor is None
        assert app.workspace.last_load.source == (f"preds.json: {len(preds)} of {len(preds)} rows matched "
                                                  f"{len(set(preds.study))} of the {len(app.workspace.studies)} "
                                                  f"studies of {phantom_set.name}")
        assert "predictions preds.json" in app.sub_title and "run-7" in app.sub_title
        screen = app.screen
        assert isinstance(screen, WorklistScreen)
        listed = screen.study_list
        assert len(listed) == len(app.workspace.studies) > 0
        for pos in range(len(listed)):  # each study's score: the highest over its images, from the file
            rows = [i for i, study in enumerate(preds.study) if study == listed.study_at(pos)]
            assert math.isclose(listed.max_prob_at(pos), float(preds.probs[rows].max()), rel_tol=1e-6)

        first = listed.study_at(0)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen), what="the study screen")
        study = app.screen
        assert study.study_id == first
        await until(pilot, lambda: study.pixels is not None, what="the image")
        label = study.selected_finding()
        expected = float(preds.probs[preds.study.index(first), preds.labels.index(label)])
        await pilot.press("a")
        with ReviewStore() as store:
            saved = store.latest(app.workspace.root, first)[(first, label)]
        assert saved.decision == "accept"
        assert math.isclose(saved.probability, expected, rel_tol=1e-6)
        assert (saved.model, saved.model_name) == (FINGERPRINT, "run-7")  # the file's model, not "none"

        app._notifications.clear()
        await pilot.press("c")  # Grad-CAM: no model here, and the screen says so
        await pilot.pause(0.1)
        assert any("Grad-CAM needs a model" in n.message and "preds.json" in n.message
                   for n in app._notifications)
        caption = str(app.screen.query_one("#xray-caption").render())
        assert "CAM" not in caption, caption  # it said "CAM computing…" for ever

        await pilot.press("escape", "t")
        await until(pilot, lambda: isinstance(app.screen, ThresholdsScreen), what="the thresholds screen")
        await app.workers.wait_for_complete()
        await pilot.press("escape", "q")


async def test_rows_that_match_nothing_are_counted_and_a_csv_has_no_model(phantom_set, tmp_path):
    rows, labels = indexed_rows(phantom_set)
    kept = [r for r in rows if r[0].id != rows[0][0].id]  # one study left out of the file
    foreign = [("00000001_000.png", "images_001/images/00000001_000.png"), ("x", "elsewhere/x.png")]
    probs = np.full((len(kept) + 2, len(labels)), 0.25, dtype=np.float32)
    Predictions(labels, probs, [s.id for s, _ in kept] + [f for f, _ in foreign],
                [p for _, p in kept] + [p for _, p in foreign]).write(tmp_path / "preds.csv")
    app = CxrApp(phantom_set, predictions=tmp_path / "preds.csv", image_protocol="halfcell")
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None, what="the predictions file")
        n_studies = len({s.id for s, _ in rows})
        assert app.workspace.last_load.source == (
            f"preds.csv: {len(kept)} of {len(kept) + 2} rows matched {n_studies - 1} of the {n_studies} studies of "
            f"{phantom_set.name}; 2 did not match (e.g. study '00000001_000.png', "
            "image 'images_001/images/00000001_000.png')")
        assert len(app.workspace.predictions) == len(kept)
        assert app.recorded_model() == (None, None)  # a CSV carries no meta: decisions name no model
        await pilot.press("q")


async def test_predictions_of_another_root_end_the_start_with_one_line(phantom_set, tmp_path):
    Predictions(["Effusion"], [[0.5], [0.7]], ["00000001_000.png", "00000002_000.png"],
                ["images_001/images/00000001_000.png", "images_001/images/00000002_000.png"],
                meta={"root": "/data/nih"}).write(tmp_path / "nih.json")
    app = CxrApp(phantom_set, predictions=tmp_path / "nih.json", image_protocol="halfcell")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.startup_error is not None, what="the mismatch")
        await pilot.pause(0.1)
    assert app.return_code == 1
    assert app.startup_error.startswith(f"{tmp_path / 'nih.json'}: none of its 2 rows match a study or image of ")
    assert "made on /data/nih" in app.startup_error and "\n" not in app.startup_error


def test_match_root_by_path_then_by_study_id_in_the_roots_order(phantom_set):
    rows, labels = indexed_rows(phantom_set)
    with StudyIndex() as index:
        indexed = index.load(phantom_set)
    order = list(reversed(range(len(rows))))  # the file lists them backwards
    images = [rows[i][1] if i % 2 else f"/gpu-box/copy/{rows[i][1]}" for i in order]  # half under another root
    preds = Predictions(labels, np.arange(len(rows) * len(labels), dtype=np.float32).reshape(len(rows), -1)[order],
                        [rows[i][0].id for i in order], images, split=[""] * len(rows))
    match = match_root(preds, indexed.studies, phantom_set, source="p.csv", root=phantom_set)
    assert match.matched == len(rows) and match.unmatched == []
    assert match.predictions.image == [path for _, path in rows]  # the root's order and names
    assert match.predictions.study == [s.id for s, _ in rows]
    assert match.predictions.split == [s.split or "" for s, _ in rows]  # filled from the index
    assert np.array_equal(match.predictions.probs[:, 0], np.arange(len(rows), dtype=np.float32) * len(labels))
    with pytest.raises(DataError, match="no prediction rows"):
        match_root(preds.subset(np.zeros(len(preds), dtype=bool)), indexed.studies, source="p.csv")


@pytest.mark.parametrize("case", ["missing", "not predictions", "a folder", "with --model", "no root"])
def test_the_cli_says_what_is_wrong_in_one_line(case, phantom_set, tmp_path, monkeypatch, capsys):
    from cxr_tui.cli.main import run

    preds = tmp_path / "preds.csv"
    args = [str(phantom_set), "--predictions", str(preds)]
    if case == "missing":
        expected = f"{preds}: no such predictions file"
    elif case == "not predictions":
        preds.write_text("patient,finding\n1,Effusion\n", encoding="utf-8")
        expected = f"{preds}: not a cxr predictions CSV (expected columns study, image, ...): write one with"
    elif case == "a folder":
        args[-1] = str(tmp_path)
        expected = f"{tmp_path}: not a file"
    elif case == "with --model":
        args += ["--model", str(tmp_path / "model.safetensors")]
        expected = "--predictions and --model: choose one"
    else:
        args = ["--predictions", str(preds)]
        expected = "--predictions needs the data set root"
    monkeypatch.setattr(sys, "argv", ["cxr-tui", *args])
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + expected), err
    assert len(err.splitlines()) == 1


IMPORT_PATH = """
import asyncio, sys
from pathlib import Path

from cxr_tui.cli.main import app as cli  # the entry point's imports
from cxr_tui.cli.open import check_predictions
from cxr_tui.app import CxrApp
from cxr_tui.screens.study import StudyScreen
from cxr_tui.screens.thresholds import ThresholdsScreen

root, preds = Path(sys.argv[1]), Path(sys.argv[2])
HEAVY = %r
check_predictions(preds, root, None)


async def until(pilot, condition, what):
    for _ in range(1200):
        if condition():
            return
        await pilot.pause(0.05)
    raise SystemExit(f"timed out waiting for {what}")


async def main():
    app = CxrApp(root, predictions=preds, image_protocol="halfcell")
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None, "the predictions")
        await pilot.press("o", "o", "o", "o", "o", "f", "escape")  # every sort (disagreement: no model, passed), flagged
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen), "the study screen")
        await until(pilot, lambda: app.screen.pixels is not None, "the image")
        await pilot.press("a", "j", "x", "c", "w", "i")  # decisions, Grad-CAM's notice, window, invert
        await pilot.press("escape", "t")
        await until(pilot, lambda: isinstance(app.screen, ThresholdsScreen), "the thresholds screen")
        await app.workers.wait_for_complete()
        await pilot.press("escape", "q")
    print("reviewed", len(app.workspace.predictions), "rows;", app.return_code)
    # importtime logs `import` statements, not importlib.import_module (the faces' own step): sys.modules as well
    print("walked", all(name in sys.modules for name in ("cxr_core.store.index", "cxr_core.predictions",
                                                         "cxr_core.images.read", "cxr_core.eval.operating_points")))
    print("heavy", sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))


asyncio.run(main())
"""


@pytest.mark.slow
def test_nothing_on_the_path_imports_torch(phantom_set, tmp_path):
    """``python -X importtime``: index, predictions file, worklist, study view, decisions, thresholds screen."""
    preds = tmp_path / "preds.csv"
    write_predictions(phantom_set, preds)
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORT_PATH % (HEAVY,), str(phantom_set), str(preds)],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.splitlines()[-3:] == [f"reviewed {len(Predictions.read(preds))} rows; 0", "walked True",
                                            "heavy []"], out.stdout[-2000:]
    imported = [line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert {"cxr_tui.screens.study", "cxr_tui.screens.thresholds", "cxr_core.store.db"} <= set(imported)
    heavy = sorted({name for name in imported if name.split(".")[0] in HEAVY})
    assert heavy == [], f"imported on the --predictions path: {heavy[:20]}"
