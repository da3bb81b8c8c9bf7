"""The Thresholds screen under Pilot: its numbers against OperatingPoints, the keys, save/revert, no-truth data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from textual import on
from textual.app import App
from textual.widgets import DataTable, Static

from cxr_core.eval.operating_points import OperatingPoints, tune
from cxr_core.eval.thresholds_file import load_thresholds
from cxr_core.predictions import Predictions
from cxr_core.store.reviews import ReviewStore
from cxr_tui.app import ScreenCommands
from cxr_tui.messages import ThresholdsChanged
from cxr_tui.screens.thresholds import (
    NO_TRUTH,
    RATE_KEYS,
    ThresholdsScreen,
    default_thresholds_path,
    format_rate,
    format_threshold,
)
from cxr_tui.state import Workspace

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax"]


def make_predictions(n: int = 500, seed: int = 7, truth: bool = True) -> Predictions:
    """``n`` images, two per study: scores that separate the classes imperfectly; a few unknown truths."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.3, 0.15, 0.25, 0.08])
    y = (rng.random((n, len(LABELS))) < prevalence).astype(np.float32)
    probs = np.clip(0.35 * y + rng.normal(0.35, 0.18, size=y.shape), 0.0, 1.0).astype(np.float32)
    t = y.copy()
    t[rng.random(y.shape) < 0.05] = np.nan
    study = [f"s{i // 2:04d}" for i in range(n)]
    image = [f"{s}/{i % 2}.png" for i, s in enumerate(study)]
    return Predictions(LABELS, probs, study, image, truth=t if truth else None, meta={"source": "synthetic"})


class ThresholdsApp(App[None]):
    """A bare app holding a workspace, pushing the screen, and recording ThresholdsChanged."""

    COMMANDS = App.COMMANDS | {ScreenCommands}  # the app's one palette provider

    def __init__(self, workspace: Workspace, reviews_path: Path | None = None) -> None:
        super().__init__()
        self.workspace = workspace
        self.reviews = ReviewStore(reviews_path)  # as CxrApp: the app's one store, handed to its screens
        self.changes: list[ThresholdsChanged] = []

    def on_mount(self) -> None:
        self.push_screen(ThresholdsScreen())

    def on_unmount(self) -> None:
        self.reviews.close()

    @on(ThresholdsChanged)
    def record(self, message: ThresholdsChanged) -> None:
        self.changes.append(message)


def workspace(tmp_path: Path, preds: Predictions | None = None, thresholds: dict[str, float] | None = None) -> Workspace:
    return Workspace(root=tmp_path / "data", model=tmp_path / "run" / "checkpoints" / "best.safetensors",
                     thresholds=dict(thresholds or {}), predictions=preds if preds is not None else make_predictions(),
                     reviewer="dr-test")


def cell(table: DataTable, label: str, key: str) -> str:
    return str(table.get_cell(label, key)).strip()  # cells are padded to the column width


def assert_table_matches(screen: ThresholdsScreen, points: OperatingPoints) -> None:
    table = screen.query_one(DataTable)
    stats = points.at(screen.thresholds)
    for k, label in enumerate(LABELS):
        assert cell(table, label, "threshold").rstrip("* ") == f"{screen.thresholds[label]:.3f}"
        for key in RATE_KEYS:
            assert cell(table, label, key) == format_rate(float(getattr(stats, key)[k])), (label, key)
        assert cell(table, label, "flagged") == str(int(stats.flagged[k]))
        assert cell(table, label, "support") == str(int(stats.support[k]))


async def test_table_equals_operating_points(tmp_path: Path) -> None:
    preds = make_predictions()
    app = ThresholdsApp(workspace(tmp_path, preds, {"Effusion": 0.62, "Cardiomegaly": 0.41}))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ThresholdsScreen)
        assert screen.thresholds == {"Atelectasis": 0.5, "Cardiomegaly": 0.41, "Effusion": 0.62, "Pneumothorax": 0.5}
        points = OperatingPoints.from_predictions(preds)
        assert_table_matches(screen, points)
        assert screen.save_path == tmp_path / "run" / "thresholds.json"


@pytest.mark.slow
async def test_fine_and_coarse_keys_step_the_selected_threshold(tmp_path: Path) -> None:
    preds = make_predictions()
    points = OperatingPoints.from_predictions(preds)
    app = ThresholdsApp(workspace(tmp_path, preds))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        table = screen.query_one(DataTable)
        await pilot.press("j", "down")  # Effusion
        assert screen.selected == "Effusion"
        before = cell(table, "Effusion", "sensitivity")
        await pilot.press("right")
        assert screen.thresholds["Effusion"] == pytest.approx(0.51)
        await pilot.press("plus", "right_square_bracket")
        assert screen.thresholds["Effusion"] == pytest.approx(0.57)
        await pilot.press("shift+right")
        assert screen.thresholds["Effusion"] == pytest.approx(0.62)
        assert cell(table, "Effusion", "threshold") == format_threshold(0.62, unsaved=True)
        sens = float(points.at({**screen.thresholds}).sensitivity[LABELS.index("Effusion")])
        assert cell(table, "Effusion", "sensitivity") == format_rate(sens) != before
        await pilot.press("left", "minus", "left_square_bracket", "shift+left")
        assert screen.thresholds["Effusion"] == pytest.approx(0.50)
        await pilot.press("k")
        assert screen.selected == "Cardiomegaly"
        for _ in range(60):
            await pilot.press("left_square_bracket")
        assert screen.thresholds["Cardiomegaly"] == 0.0  # clamped
        assert_table_matches(screen, points)
        assert app.changes and app.changes[-1].thresholds == screen.thresholds
        assert app.changes[-1].saved_to is None


async def test_auto_modes_equal_tune(tmp_path: Path) -> None:
    preds = make_predictions()
    points = OperatingPoints.from_predictions(preds)
    app = ThresholdsApp(workspace(tmp_path, preds))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await pilot.press("j")  # Cardiomegaly
        await pilot.press("2")
        (choice,) = tune(points, "sens=0.8", labels=["Cardiomegaly"])
        assert screen.thresholds["Cardiomegaly"] == choice.threshold
        k = LABELS.index("Cardiomegaly")
        stats = points.at(screen.thresholds)
        assert stats.sensitivity[k] >= 0.8
        above = np.nextafter(np.float32(choice.threshold), np.float32(2))
        assert points.at({"Cardiomegaly": float(above)}).sensitivity[k] < 0.8  # the highest such threshold
        assert screen.thresholds["Atelectasis"] == 0.5  # only the selected disease moved
        await pilot.press("1")
        assert screen.thresholds["Cardiomegaly"] == tune(points, "f1", labels=["Cardiomegaly"])[0].threshold
        await pilot.press("a", "3")  # every disease, Youden
        assert screen.thresholds == {c.label: c.threshold for c in tune(points, "youden")}
        assert not screen.apply_to_all
        assert screen.modes == dict.fromkeys(LABELS, "youden")
        assert_table_matches(screen, points)
        await pilot.press("a", "escape")  # armed, then cancelled: the screen stays
        assert not screen.apply_to_all and app.screen is screen


async def test_command_palette_offers_the_actions(tmp_path: Path) -> None:
    preds = make_predictions()
    app = ThresholdsApp(workspace(tmp_path, preds))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await pilot.press("ctrl+p", *"youden all")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen
        assert screen.thresholds == {c.label: c.threshold for c in tune(OperatingPoints.from_predictions(preds), "youden")}


async def test_command_palette_offers_the_screens_keys(tmp_path: Path) -> None:
    """The palette lists the bindings of the screen it was opened over (not its own, as app.screen would)."""
    preds = make_predictions()
    app = ThresholdsApp(workspace(tmp_path, preds))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert screen.selected == preds.labels[0]
        await pilot.press("ctrl+p", *"next disease")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen
        assert screen.selected == preds.labels[1]


async def test_save_writes_the_file_and_tells_the_app(tmp_path: Path) -> None:
    app = ThresholdsApp(workspace(tmp_path))
    path = tmp_path / "run" / "thresholds.json"
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await pilot.press("down", "down", "right", "right", "s")
        await pilot.pause()
        stored = load_thresholds(path)
        assert stored.thresholds == pytest.approx(screen.thresholds)
        assert stored.thresholds["Effusion"] == pytest.approx(0.52)
        assert stored.history[-1]["who"] == "dr-test"
        assert stored.labels["Effusion"].mode == "manual"
        assert stored.labels["Effusion"].metrics["flagged"] == int(
            screen.points.at(screen.thresholds).flagged[LABELS.index("Effusion")])
        saved = [m for m in app.changes if m.saved_to is not None]
        assert saved and saved[-1].saved_to == path and saved[-1].thresholds == screen.thresholds
        assert "*" not in str(screen.query_one(DataTable).get_cell("Effusion", "threshold"))
        # A second save after an automatic choice records its mode and keeps the history.
        await pilot.press("1", "s")
        await pilot.pause()
        stored = load_thresholds(path)
        assert stored.labels["Effusion"].mode == "f1"
        assert [row["who"] for row in stored.history] == ["dr-test", "dr-test"]
        assert stored.history[-1]["changes"]["Effusion"]["from"] == pytest.approx(0.52)


async def test_a_damaged_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "run" / "thresholds.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    app = ThresholdsApp(workspace(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("right", "s")
        await pilot.pause()
        assert path.read_text(encoding="utf-8") == "{not json"
        assert all(m.saved_to is None for m in app.changes)
        assert any("not a cxr thresholds file" in n.message for n in app._notifications)


async def test_revert_goes_back_to_the_saved_values(tmp_path: Path) -> None:
    preds = make_predictions()
    app = ThresholdsApp(workspace(tmp_path, preds, {"Atelectasis": 0.45}))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        start = dict(screen.thresholds)
        await pilot.press("right", "right", "j", "3")
        assert screen.thresholds != start
        await pilot.press("r")
        assert screen.thresholds == start
        assert app.changes[-1].thresholds == start
        assert_table_matches(screen, OperatingPoints.from_predictions(preds))
        await pilot.press("k", "right", "s", "right", "right", "r")  # save, move, revert: back to the save
        await pilot.pause()
        assert screen.thresholds["Atelectasis"] == pytest.approx(0.46)


async def test_reopening_reads_the_saved_file_as_the_revert_point(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    path = tmp_path / "run" / "thresholds.json"
    app = ThresholdsApp(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("right", "s")
        await pilot.pause()
    ws.thresholds = {"Atelectasis": 0.8}  # unsaved working values from elsewhere
    app = ThresholdsApp(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert screen.saved["Atelectasis"] == pytest.approx(0.51) == load_thresholds(path).thresholds["Atelectasis"]
        assert str(screen.query_one(DataTable).get_cell("Atelectasis", "threshold")).endswith("*")
        await pilot.press("r")
        assert screen.thresholds["Atelectasis"] == pytest.approx(0.51)


async def test_predictions_without_truth(tmp_path: Path) -> None:
    preds = make_predictions(truth=False)
    app = ThresholdsApp(workspace(tmp_path, preds))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        notice = screen.query_one("#thresholds-notice", Static)
        assert notice.display and "carry no labels" in str(notice.render()) and NO_TRUTH.startswith("These")
        table = screen.query_one(DataTable)
        await pilot.press("right")
        k = 0
        flagged = int((preds.probs[:, k] >= np.float32(0.51)).sum())
        assert cell(table, LABELS[k], "flagged") == str(flagged)
        assert [str(key.value) for key in table.columns] == ["label", "threshold", "flagged", "share"]
        assert cell(table, LABELS[k], "share") == f"{100 * flagged / len(preds):.1f}%"
        await pilot.press("1")  # cannot tune without labels: the threshold stays
        assert screen.thresholds[LABELS[k]] == pytest.approx(0.51)
        await pilot.press("s")
        await pilot.pause()
        stored = load_thresholds(tmp_path / "run" / "thresholds.json")
        assert stored.thresholds[LABELS[k]] == pytest.approx(0.51)
        assert stored.labels[LABELS[k]].metrics["flagged"] == flagged


async def test_no_predictions_shows_a_message(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    ws.predictions = None
    app = ThresholdsApp(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("right", "1", "s", "r", "j")
        screen = app.screen
        assert "No predictions" in str(screen.query_one("#thresholds-notice", Static).render())
        assert screen.thresholds == {} and app.changes == []


async def test_agreement_with_reviews(tmp_path: Path) -> None:
    preds = make_predictions()
    ws = workspace(tmp_path, preds)
    db = tmp_path / "reviews.sqlite"
    k = LABELS.index("Atelectasis")
    studies = sorted(set(preds.study))[:40]
    study_max = {s: float(np.nanmax(preds.probs[[i for i, x in enumerate(preds.study) if x == s], k]))
                 for s in studies}
    decisions = {s: ("accept" if study_max[s] >= 0.55 else "reject") for s in studies}
    decisions[studies[0]] = "uncertain"
    with ReviewStore(db) as store:
        for s, d in decisions.items():
            store.record(ws.root, s, "Atelectasis", d, reviewer="dr-test")
        store.record(ws.root, "not-in-predictions", "Atelectasis", "accept", reviewer="dr-test")
    app = ThresholdsApp(ws, reviews_path=db)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        table = screen.reviewed.agreement("Atelectasis", k, 0.5)
        expect = [(study_max[s] >= np.float32(0.5), d) for s, d in decisions.items() if d != "uncertain"]
        assert table.both_positive == sum(f and d == "accept" for f, d in expect)
        assert table.model_only == sum(f and d == "reject" for f, d in expect)
        assert table.reviewer_only == 0 and table.excluded == 2
        panel = str(screen.query_one("#thresholds-agreement", Static).render())
        assert "kappa" in panel and f"({table.n} studies, every split)" in panel
        for _ in range(5):
            await pilot.press("right")
        perfect = screen.reviewed.agreement("Atelectasis", k, screen.thresholds["Atelectasis"])
        assert screen.thresholds["Atelectasis"] == pytest.approx(0.55)
        assert perfect.kappa == pytest.approx(1.0) and "kappa 1.00" in str(
            screen.query_one("#thresholds-agreement", Static).render())
        await pilot.press("j")
        assert "(0 studies, every split)" in str(screen.query_one("#thresholds-agreement", Static).render())


async def test_no_reviews_yet(tmp_path: Path) -> None:
    app = ThresholdsApp(workspace(tmp_path), reviews_path=tmp_path / "none.sqlite")
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "no reviews yet" in str(app.screen.query_one("#thresholds-agreement", Static).render())


def test_default_path_outside_a_run(tmp_path: Path, cxr_home: Path) -> None:
    preds = make_predictions(20)
    ws = Workspace(model=tmp_path / "models" / "chest.safetensors", predictions=preds)
    assert default_thresholds_path(ws) == cxr_home / "thresholds" / "chest.json"
    preds.meta["fingerprint"] = "abc123"
    assert default_thresholds_path(ws) == cxr_home / "thresholds" / "abc123.json"


def test_snapshot_100x30(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001 - pytest-textual-snapshot's fixture
    ws = Workspace(root=Path("/data/demo"), model=Path("/runs/demo/checkpoints/best.safetensors"),
                   thresholds={"Effusion": 0.55}, predictions=make_predictions(), reviewer="dr-test")

    async def settle(pilot) -> None:  # noqa: ANN001
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    app = ThresholdsApp(ws, reviews_path=tmp_path / "none.sqlite")
    assert snap_compare(app, press=["j", "j", "right"], terminal_size=(100, 30), run_before=settle)


async def test_tunes_on_validation_by_default_and_marks_test(tmp_path: Path) -> None:
    """The split to tune on: validation first; `v` moves to the others; test is marked and recorded when saved."""
    preds = make_predictions()
    thirds = len(preds) // 3
    preds.split = ["train"] * thirds + ["val"] * thirds + ["test"] * (len(preds) - 2 * thirds)
    ws = workspace(tmp_path, preds)
    app = ThresholdsApp(ws, reviews_path=tmp_path / "reviews.sqlite")
    async with app.run_test(size=(110, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        status = lambda: str(screen.query_one("#thresholds-status", Static).render())  # noqa: E731
        assert screen.split == "val" and set(screen.predictions.split) == {"val"}
        assert screen.points.n == thirds and "on val" in status() and "TEST" not in status()
        seen = []
        for _ in range(3):
            await pilot.press("v")
            seen.append(screen.split)
        assert seen == ["train", "all", "test"] and "TUNING ON TEST" in status()
        assert screen.points.n == len(preds) - 2 * thirds
        await pilot.press("right", "s")
        await pilot.pause()
    tuned_on = load_thresholds(default_thresholds_path(ws)).tuned_on
    assert tuned_on.split == "test" and tuned_on.test_asked and tuned_on.images == len(preds) - 2 * thirds


async def test_rate_columns_fit_their_numbers_after_starting_undefined(tmp_path: Path) -> None:
    """A PPV column first filled with "—" (nothing flagged at 0.5) still shows 0.160 whole after a change."""
    preds = make_predictions()
    preds.probs = np.minimum(preds.probs, 0.49)  # no disease reaches 0.5 at first: every PPV undefined
    app = ThresholdsApp(workspace(tmp_path, preds), reviews_path=tmp_path / "reviews.sqlite")
    async with app.run_test(size=(110, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        table = screen.query_one("#thresholds-table", DataTable)
        assert {cell(table, label, "ppv").strip() for label in LABELS} == {"—"}
        for _ in range(10):
            await pilot.press("left")
        await pilot.pause()
        ppv = format_rate(float(screen._stats.ppv[0]))
        assert len(ppv) == 5 and ppv != "—"
        row = table.render_line(1).text  # the first data row as drawn (line 0 is the header)
        assert ppv in row, row
