"""The app as a reviewer drives it (Pilot): worklist, study, decisions saved, CAM, help, reopen from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_core.checkpoint import save_checkpoint
from cxr_core.models import create_model
from cxr_core.phantoms import FINDINGS
from cxr_core.store.reviews import ReviewStore
from cxr_tui.app import CxrApp
from cxr_tui.screens.help import HelpScreen
from cxr_tui.screens.study import StudyScreen
from cxr_tui.screens.worklist import WorklistScreen
from cxr_tui.widgets.worklist import WorklistTable
from cxr_tui.widgets.xray import XRayView
from tests.pilot import until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=list(FINDINGS), image_size=48)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(path, model.state_dict(), model.cxr_config.to_dict())
    return path


async def test_review_flow(phantom_set, checkpoint):
    app = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        screen = app.screen
        assert isinstance(screen, WorklistScreen)
        table = screen.query_one(WorklistTable)
        assert len(screen.study_list) == len(app.workspace.studies) > 0
        maxima = [float(screen.study_list.max_prob_at(i)) for i in range(len(screen.study_list))]
        assert maxima == sorted(maxima, reverse=True)  # most suspicious first

        await pilot.press("f")  # flagged only at the 0.5 defaults
        assert all(int(screen.study_list.row(i).n_flagged) > 0 for i in range(len(screen.study_list)))
        await pilot.press("escape")
        assert len(screen.study_list) == len(app.workspace.studies)

        await pilot.press("j", "j")
        first = table.study_id
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen))
        study = app.screen
        assert study.study_id == first
        await until(pilot, lambda: study.pixels is not None)

        assert study.selected_finding() == study._top_flag()  # a study opens on its most probable flag
        await pilot.press("j")
        label = study.selected_finding()
        await pilot.press("a")  # accept it (the cursor then moves on to a flag still undecided)
        with ReviewStore() as store:
            saved = store.latest(app.workspace.root, first)
        assert saved[(first, label)].decision == "accept"

        await pilot.press("c")
        await until(pilot, lambda: study.query_one("#study-image", XRayView).has_cam)

        await pilot.press("n")
        assert study.study_id != first
        await pilot.press("escape")
        assert isinstance(app.screen, WorklistScreen)
        assert screen.study_list.status_at(screen.study_list.position_of(first)) != ""

        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("q")


async def test_help_shows_the_keys_of_the_screen_you_are_on_first(phantom_set, checkpoint):
    from textual.widgets import Markdown

    from cxr_tui.screens.thresholds import ThresholdsScreen

    app = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        await pilot.press("question_mark")
        assert app.screen.query_one(Markdown).source.startswith("# cxr keys\n\n## Worklist")
        await pilot.press("escape", "t")
        await until(pilot, lambda: isinstance(app.screen, ThresholdsScreen))
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)  # it listed the worklist's keys first, there too
        assert app.screen.query_one(Markdown).source.startswith("# cxr keys\n\n## Thresholds")


async def test_when_no_flag_waits_each_key_moves_on_to_the_next_undecided_finding(phantom_set, checkpoint):
    # A model that flags nothing (all below threshold): a, x, u all landed on the same finding, each replacing
    # the last decision, because the cursor only ever moved to a waiting flag.
    app = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        for label in FINDINGS:
            app.workspace.thresholds[label] = 1.0  # nothing is flagged
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen))
        study = app.screen
        study._fill_findings()
        assert study._flagged() == []
        labels = study._labels()
        first = study.selected_finding()
        await pilot.press("a", "x", "u")
        decided = [labels[k] for k in range(labels.index(first), labels.index(first) + 3)]
        with ReviewStore() as store:
            saved = {finding: review.decision for (_, finding), review in store.latest(app.workspace.root,
                                                                                        study.study_id).items()}
        assert saved == dict(zip(decided, ["accept", "reject", "uncertain"], strict=True))
        assert study.selected_finding() == labels[labels.index(first) + 3]


async def test_a_normal_film_takes_one_key_and_the_next_unreviewed_study_one(phantom_set, checkpoint):
    app = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        worklist = app.screen
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen))
        study = app.screen
        labels = study._labels()
        first = study.study_id
        flags = study._flagged()
        assert flags, "the fixture model should flag something at 0.5"
        assert study.selected_finding() == flags[0]  # opens on the most probable flag

        await pilot.press("0")  # normal: one key
        with ReviewStore() as store:
            saved = store.latest(app.workspace.root, first)
        assert {finding for _, finding in saved} == set(labels)
        assert {review.decision for review in saved.values()} == {"reject"}
        second = study.study_id
        assert second != first  # the next unreviewed study opened by itself

        scores = study._study_scores()
        await pilot.press("A")  # agree with the model: one key
        with ReviewStore() as store:
            saved = store.latest(app.workspace.root, second)
        expected = {label: "accept" if scores[k] >= app.workspace.threshold(label) else "reject"
                    for k, label in enumerate(labels)}
        assert {finding: review.decision for (_, finding), review in saved.items()} == expected
        third = study.study_id
        assert third not in (first, second)

        await pilot.press("N")  # next unreviewed: one key, skipping the two read ones
        fourth = study.study_id
        assert fourth not in (first, second, third)
        top = study.selected_finding()
        await pilot.press("a", "X")  # the top flag is true, the rest false: two keys
        with ReviewStore() as store:
            saved = store.latest(app.workspace.root, fourth)
        assert {finding: review.decision for (_, finding), review in saved.items()} == {
            label: "accept" if label == top else "reject" for label in labels}
        assert study.study_id not in (first, second, fourth)
        await pilot.press("escape")
        assert app.screen is worklist
        for done in (first, second, fourth):
            assert worklist.study_list.status_at(worklist.study_list.position_of(done)) == "reviewed"


async def test_reopen_comes_from_the_cache(phantom_set, checkpoint):
    first = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with first.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: first.workspace.last_load is not None)
    again = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with again.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: again.workspace.last_load is not None)
        assert again.workspace.last_load.computed == 0 and again.workspace.last_load.cached == len(again.workspace.predictions)


async def test_thresholds_saved_for_a_model_outside_a_run_come_back_next_time(phantom_set, checkpoint):
    """A checkpoint file that is not in a run (the demo model is one): saved thresholds load on the next start."""
    from cxr_tui.screens.thresholds import ThresholdsScreen

    first = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with first.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: first.workspace.last_load is not None)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(first.screen, ThresholdsScreen))
        await pilot.press("right", "right", "s")
        saved = first.screen.save_path
        value = first.screen.thresholds[first.screen.selected]
        label = first.screen.selected
        assert saved.is_file() and value == pytest.approx(0.52)
    again = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with again.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: again.workspace.last_load is not None)
        assert again.workspace.thresholds_path == saved
        assert again.workspace.threshold(label) == pytest.approx(value)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(again.screen, ThresholdsScreen))
        assert "unsaved" not in str(again.screen.query_one("#thresholds-status").render())


async def test_thresholds_tuned_on_test_in_the_screen_make_eval_warn(phantom_set, checkpoint, tmp_path):
    """Tune on the test split in the screen and save; `eval` of that run on test then says so."""
    import shutil

    from cxr_tui.screens.thresholds import ThresholdsScreen
    from tests.cli import cxr

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = shutil.copy(checkpoint, run / "checkpoints" / "best.safetensors")
    app = CxrApp(phantom_set, Path(model), image_protocol="halfcell")
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ThresholdsScreen))
        screen = app.screen
        while screen.split != "test":
            await pilot.press("v")
        await pilot.press("s")
        await pilot.pause()
    assert (run / "thresholds.json").is_file()
    done = cxr("eval", run, "--data", phantom_set, "--split", "test", "--n-boot", "20", "--out", tmp_path / "eval")
    assert done.returncode == 0, done.stderr
    assert "warning: the thresholds were tuned on the test split" in done.stdout
    assert "Caveat" in (tmp_path / "eval" / "report.md").read_text()


async def test_unusable_model_is_one_notification_not_a_crash(phantom_set, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    app = CxrApp(phantom_set, bad, image_protocol="halfcell")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: bool(app._notifications))
        texts = [n.message for n in app._notifications]
        assert any("bad.safetensors" in t for t in texts)
        assert isinstance(app.screen, WorklistScreen) and len(app.screen.study_list) > 0


async def test_usable_at_80x24(phantom_set, checkpoint):
    app = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.pixels is not None)
        assert app.screen.query_one("#findings").size.width > 0


@pytest.mark.real_data
async def test_nih_sample_lists_every_label_row_and_marks_missing_images(real_data, tmp_path):
    """The demo model on NIH's partial download: 112,120 rows, 112,020 marked missing, 100 images predicted."""
    from cxr_core.demo import demo_model_path

    app = CxrApp(real_data / "nih-sample", demo_model_path(), image_protocol="halfcell")
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None, seconds=180)
        screen = app.screen
        assert screen.study_list.total == 112_120 and screen.missing == 112_020
        assert len(app.workspace.predictions) == 100
        assert screen.hide_missing and len(screen.study_list) == 100  # most rows have no image: hidden at first
        # A phantom-trained model on real films: said in the header and the worklist, with the measure.
        assert "OUT OF DISTRIBUTION" in app.sub_title
        assert "Mahalanobis" in (app.workspace.out_of_distribution or "")
        await pilot.press("m")
        assert len(screen.study_list) == 112_120
        await pilot.press("r")  # unreviewed only: the missing ones are not work to do
        assert len(screen.study_list) == 100
        position = screen.study_list.position_of(app.workspace.predictions.study[0])
        assert position is not None and screen.study_list.row(position).max_prob != "–"


async def test_film_keys_zoom_window_level_and_full_screen(phantom_set, checkpoint):
    app = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen))
        study = app.screen
        await until(pilot, lambda: study.pixels is not None)
        view = study.query_one("#study-image", XRayView)
        before = view.state
        await pilot.press("plus", "right_square_bracket", "right_curly_bracket")
        assert view.state.zoom == pytest.approx(1.25 * before.zoom)  # fine steps, not 2x
        assert view.state.width > before.width and view.state.center > before.center
        await pilot.press("z")
        assert view.state.zoom == 1.0
        await pilot.press("F")
        assert view.fullscreen
        await pilot.press("escape")  # leaves full screen, stays on the study
        assert not view.fullscreen and app.screen is study


async def test_disagreement_sort_measures_the_studies_and_next_opens_the_most_disputed(phantom_set, checkpoint):
    """`o` to the disagreement order runs the model under several views in the background; the worklist then
    shows the core's disagreement ordering and `n` opens its first unreviewed study."""
    import numpy as np

    from cxr_core.data import image_base
    from cxr_core.eval import review_order
    from cxr_core.infer import Predictor, study_disagreement
    from cxr_tui.screens.worklist import SORTS

    app = CxrApp(phantom_set, checkpoint, image_protocol="halfcell")
    async with app.run_test(size=(120, 32)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        screen = app.screen
        while SORTS[screen.sort_index][0] != "disagreement":
            await pilot.press("o")
        await until(pilot, lambda: app.workspace.study_disagreement is not None)
        await pilot.pause()
        status = str(screen.query_one("#worklist-status").render())
        assert "sorted by disagreement" in status and "measuring" not in status
        workspace = app.workspace
        studies = workspace.study_order
        expected_info, _ = study_disagreement(Predictor.from_checkpoint(checkpoint, device="cpu", cache=False),
                                              workspace.predictions, studies, image_base(workspace.root))
        np.testing.assert_allclose(workspace.study_disagreement, expected_info, rtol=1e-4, atol=1e-6)
        expected = [s for s, _ in review_order(studies, workspace.study_probs, workspace.predictions.labels,
                                               workspace.thresholds, "disagreement", expected_info)]
        shown = [screen.study_list.study_at(i) for i in range(len(screen.study_list))]
        assert shown == expected

        await pilot.press("n")  # the most disputed study not yet reviewed
        await until(pilot, lambda: isinstance(app.screen, StudyScreen))
        assert app.screen.study_id == expected[0]
        await pilot.press("escape", "q")
