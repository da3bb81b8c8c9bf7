"""What to review next by disagreement: the model's answers under several views (TTA) and MC-dropout samples,
scored as BALD mutual information, ranked findings in turn; in the core and in `cxr-tui worklist`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxr_core.checkpoint import save_checkpoint
from cxr_core.errors import CxrError
from cxr_core.eval import mutual_information, review_order
from cxr_core.eval.uncertainty import disagreement_rank
from cxr_core.infer import Predictor, study_disagreement, view_probabilities
from cxr_core.infer.disagreement import has_dropout, head_dropout
from cxr_core.models import create_model
from cxr_core.predictions import Predictions

LABELS = ["Effusion", "Mass"]


def _bits(p: float) -> float:
    return float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))


def test_mutual_information_is_entropy_of_the_mean_minus_mean_entropy():
    views = np.array([[[0.1, 0.3], [0.5, np.nan]],
                      [[0.9, 0.3], [0.5, np.nan]]])  # (views 2, images 2, findings 2)
    info = mutual_information(views)
    assert info[0, 0] == pytest.approx(_bits(0.5) - _bits(0.1))  # views disagree: 1 - 0.469 bits
    assert info[0, 1] == pytest.approx(0.0, abs=1e-12)  # every view says 0.3: unsure, but not about the model
    assert info[1, 0] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(info[1, 1])  # never scored
    with pytest.raises(ValueError):
        mutual_information(np.zeros((2, 3)))


def test_disagreement_takes_findings_in_turn():
    info = np.array([[0.9, 0.0],
                     [0.8, 0.0],
                     [0.0, 0.1],
                     [np.nan, np.nan]])
    rank = disagreement_rank(info)
    # each finding's most disputed study first (rows 0 and 2), then the seconds; unscored last
    order = [s for s, _ in review_order(["a", "b", "c", "d"], np.full((4, 2), 0.5), LABELS, {}, "disagreement", info)]
    assert order[:2] == ["a", "c"] and order[2] == "b" and order[-1] == "d"
    assert np.isnan(rank[3])
    with pytest.raises(ValueError, match="views"):
        review_order(["a"], np.full((1, 2), 0.5), LABELS, {}, "disagreement")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    root = tmp / "root"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(root / f"s{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    torch.manual_seed(0)
    model = create_model("resnet10t", labels=LABELS, image_size=32)
    checkpoint = tmp / "model.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    return root, checkpoint


def test_views_include_the_plain_prediction_and_unreadable_files_are_named(setup):
    root, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0)
    paths = [str(root / f"s{i}.png") for i in range(6)] + [str(root / "broken.png")]
    assert not has_dropout(predictor.inference_model)  # timm's defaults: TTA only
    views, errors = view_probabilities(predictor, paths)
    assert views.shape == (4, 7, 2)  # identity, scale, two shifts
    plain = predictor.predict(paths[:6]).probs
    np.testing.assert_allclose(views[0, :6], plain, rtol=1e-5, atol=1e-6)
    assert list(errors) == [6] and np.isnan(views[:, 6]).all()
    assert not np.allclose(views[1, :6], views[0, :6])  # the views do show the model something else
    with pytest.raises(CxrError, match="unknown view"):
        view_probabilities(predictor, paths, views=("rotate",))


def test_a_head_with_dropout_is_sampled_and_the_model_left_as_it_was(setup):
    root, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0)
    predictor.inference_model.drop_rate = 0.5  # as a model created with drop_rate=0.5 has it
    before = [m.training for m in predictor.inference_model.modules()]
    assert head_dropout(predictor.inference_model) == 0.5
    torch.manual_seed(1)
    views, _ = view_probabilities(predictor, [str(root / f"s{i}.png") for i in range(6)], views=("identity",),
                                  mc_samples=6)
    assert views.shape == (7, 6, 2)
    assert not np.allclose(views[1], views[2])  # the samples differ: dropout is on in them
    assert mutual_information(views).max() > 0
    assert predictor.inference_model.training is False
    assert [m.training for m in predictor.inference_model.modules()] == before


def test_worklist_orders_by_disagreement_with_the_model(setup, tmp_path):
    root, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0)
    paths = [str(root / f"s{i}.png") for i in range(6)]
    result = predictor.predict(paths)
    preds = Predictions(LABELS, result.probs, [f"s{i}" for i in range(6)], [f"s{i}.png" for i in range(6)],
                        meta={"root": str(root)})
    csv = preds.write(tmp_path / "preds.csv")
    runner = CliRunner()
    shown = runner.invoke(__import__("cxr_tui.cli.main", fromlist=["app"]).app,
                          ["worklist", "--preds", str(csv), "--order", "disagreement", "--model", str(checkpoint),
                           "--root", str(root), "--json", "--limit", "0"])
    assert shown.exit_code == 0, shown.output
    order = [row["study"] for row in json.loads(shown.output)["worklist"]]
    views, _ = view_probabilities(predictor, paths)
    info = mutual_information(views)
    expected = [s for s, _ in review_order([f"s{i}" for i in range(6)], result.probs, LABELS, {}, "disagreement",
                                           info)]
    assert order == expected
    missing = runner.invoke(__import__("cxr_tui.cli.main", fromlist=["app"]).app,
                            ["worklist", "--preds", str(csv), "--order", "disagreement"])
    assert missing.exit_code == 1 and "--model" in missing.output + str(missing.exception)


def test_study_disagreement_runs_only_the_asked_studies_and_takes_each_findings_highest(setup):
    root, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0)
    images = [f"s{i}.png" for i in range(6)] + ["broken.png"]
    studies = ["a", "a", "b", "b", "c", "d", "e"]  # e: only an unreadable image
    preds = Predictions(LABELS, np.full((7, 2), 0.5, dtype=np.float32), studies, images)
    asked: list[int] = []
    info, errors = study_disagreement(predictor, preds, ["e", "b", "a"], root, progress=lambda d, t: asked.append(t))
    assert asked and set(asked) == {5}  # a's two, b's two and e's one image; not c's or d's
    assert list(errors) == ["broken.png"] and errors["broken.png"]
    per_image = mutual_information(view_probabilities(predictor, [str(root / p) for p in images[:4]])[0])
    np.testing.assert_allclose(info[2], np.fmax(per_image[0], per_image[1]), rtol=1e-5)  # a
    np.testing.assert_allclose(info[1], np.fmax(per_image[2], per_image[3]), rtol=1e-5)  # b
    assert np.isnan(info[0]).all()  # e: nothing readable
    other = Predictions(["Effusion"], np.full((7, 1), 0.5, dtype=np.float32), studies, images)
    with pytest.raises(CxrError, match="findings"):
        study_disagreement(predictor, other, ["a"], root)


def test_the_model_lock_is_held_a_batch_at_a_time(setup):
    """The TUI's Grad-CAM shares the model: the measurement takes the lock per batch, never for the whole run."""
    import threading

    class Counting:
        def __init__(self) -> None:
            self.lock, self.entered = threading.Lock(), 0

        def __enter__(self) -> None:
            self.lock.acquire()
            self.entered += 1

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    root, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0, batch_size=2)
    lock = Counting()
    held_between: list[bool] = []
    views, _ = view_probabilities(predictor, [str(root / f"s{i}.png") for i in range(6)], lock=lock,
                                  progress=lambda done, total: held_between.append(lock.lock.locked()))
    assert lock.entered == 3 and held_between == [False, False, False]  # three batches, free after each
    assert not np.isnan(views).any()
