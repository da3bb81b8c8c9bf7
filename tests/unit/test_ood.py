"""Out-of-distribution warning: the stats, their calibration, the checkpoint, prediction, eval, the CLI, the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxr_core.checkpoint import (
    CheckpointError,
    add_ood_stats,
    load_checkpoint,
    read_metadata,
    read_ood_stats,
    save_checkpoint,
)
from cxr_core.data.preprocess import load_letterboxed
from cxr_core.infer import engine as engine_module
from cxr_core.infer import predict_root
from cxr_core.infer.engine import Predictor
from cxr_core.infer.prediction_cache import PredictionCache
from cxr_core.models import create_model
from cxr_core.ood import (
    FEATURE,
    INTENSITY,
    TrainingStats,
    compute_stats,
    image_features,
    stats_for_model,
)
from cxr_core.phantoms import write_phantoms

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion"]
SIZE = 32


def _films(rng: np.random.Generator, n: int, size: int = 32, brightness: float = 0.0) -> np.ndarray:
    """Smooth synthetic 'films': a bright disc on a dark field plus noise; ``brightness`` shifts every pixel."""
    y, x = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.3)
        image = 60 + 120 * (((x - cx) ** 2 + (y - cy) ** 2) < r ** 2) + rng.normal(0, 12, (size, size))
        out.append(np.clip(image + brightness, 0, 255).astype(np.uint8))
    return np.stack(out)


def _features(rng: np.random.Generator, n: int, mix: np.ndarray, shift: float = 0.0) -> np.ndarray:
    return rng.normal(size=(n, mix.shape[0])) @ mix + shift


# -- the stats themselves --------------------------------------------------------------------------------


def test_in_distribution_is_not_far_and_a_shifted_sample_is():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16))
    stats = compute_stats(_films(rng, 300), _features(rng, 300, mix), layer="fc")
    assert stats.measures == (FEATURE, INTENSITY) and stats.n_images == 300 and stats.feature_layer == "fc"

    same = stats.report(stats.distances(_films(rng, 200), _features(rng, 200, mix)))
    assert not same.far and same.measure == FEATURE and same.share_beyond < 0.06
    assert same.message.startswith("in distribution: ") and "Mahalanobis" in same.message

    shifted_features = stats.report(stats.distances(_films(rng, 50), _features(rng, 50, mix, shift=3.0)))
    assert shifted_features.far and shifted_features.measure == FEATURE
    assert shifted_features.measures[FEATURE].share_beyond > 0.9 and not shifted_features.measures[INTENSITY].far
    assert shifted_features.message.startswith("out of distribution: ")
    assert "99th percentile of the training images' feature distance (Mahalanobis distance of the model's " \
           "pooled features)" in shifted_features.message

    brighter = stats.report(stats.distances(_films(rng, 50, brightness=60), _features(rng, 50, mix)))
    assert brighter.far and brighter.measure == INTENSITY and "intensity histogram" in brighter.message
    assert brighter.distances.shape == (50,) and np.isfinite(brighter.distances).all()


def test_the_threshold_is_calibrated_on_images_the_stats_were_not_fitted_on():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(8, 8))
    train = _features(rng, 500, mix)
    stats = compute_stats(_films(rng, 500), train)
    held_out = stats.report(stats.distances(_films(rng, 3000), _features(rng, 3000, mix)))
    for measure in held_out.measures.values():
        assert 0.0 <= measure.share_beyond <= 0.03, measure  # ~1 % of unseen images beyond the 99th percentile
        beyond_p95 = float(np.mean(measure.distances > measure.p95))
        assert 0.02 <= beyond_p95 <= 0.10, (measure.name, beyond_p95)
    # cross-fitted: the reference is what unseen images score, not the (smaller) in-sample distances
    in_sample = np.sqrt(np.einsum("ij,jk,ik->i", train - stats.feature_mean, stats.precision(),
                                  train - stats.feature_mean))
    assert np.percentile(stats.feature_reference, 99) > np.percentile(in_sample, 99)


def test_intensity_only_without_features_and_single_images_read_naturally():
    rng = np.random.default_rng(2)
    stats = compute_stats(_films(rng, 100))
    assert stats.measures == (INTENSITY,) and not stats.has_features
    one = stats.report(stats.distances(_films(rng, 1, brightness=90), None))
    assert one.far and one.message.startswith("out of distribution: the image lies beyond the 99th percentile")
    with pytest.raises(ValueError, match="at least"):
        compute_stats(_films(rng, 5))


def test_subset_keeps_the_thresholds_and_json_is_plain():
    rng = np.random.default_rng(3)
    stats = compute_stats(_films(rng, 100))
    report = stats.report(np.concatenate([stats.distances(_films(rng, 10)),
                                          stats.distances(_films(rng, 10, brightness=90))]))
    assert report.share_beyond == pytest.approx(0.5, abs=0.1)
    far_half = report.subset(np.arange(10, 20))
    assert far_half.far and far_half.n_images == 10 and far_half.measures[INTENSITY].p99 == report.measures[INTENSITY].p99
    summary = json.loads(json.dumps(far_half.to_json()))
    assert summary["far"] and summary["measure"] == INTENSITY and "distances" not in summary["measures"][INTENSITY]
    assert len(far_half.to_json(per_image=True)["measures"][INTENSITY]["distances"]) == 10


# -- in the checkpoint -----------------------------------------------------------------------------------


def _stats(seed: int = 4) -> TrainingStats:
    rng = np.random.default_rng(seed)
    return compute_stats(_films(rng, 60), _features(rng, 60, rng.normal(size=(12, 12))), layer="fc")


def test_checkpoint_round_trip_keeps_the_stats(tmp_path):
    stats = _stats()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"name": "x"}, metrics={"auc": 0.9}, ood=stats)
    back = load_checkpoint(path).ood
    assert back is not None and back.measures == stats.measures and back.feature_layer == "fc"
    np.testing.assert_allclose(back.feature_cov, stats.feature_cov, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.feature_mean, stats.feature_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.intensity_reference, stats.intensity_reference, rtol=1e-5)
    for measure, (p95, p99) in stats.thresholds().items():
        assert back.thresholds()[measure] == pytest.approx((p95, p99), rel=1e-5)
    assert read_ood_stats(path).n_images == 60
    assert "ood" not in read_metadata(path)  # the JSON the callers read is unchanged


def test_add_ood_stats_keeps_weights_state_and_metadata(tmp_path):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.arange(4.0).half()}, {"name": "x"}, train_config={"lr": 0.1}, epoch=3,
                    train_state={"step": torch.tensor([7]), "nested": {"k": (1, 2)}})
    os.chmod(path, 0o644)
    assert load_checkpoint(path).ood is None  # a checkpoint from before: no stats, no warning
    add_ood_stats(path, _stats())
    add_ood_stats(path, _stats(5))  # replaces, does not pile up
    again = load_checkpoint(path, train_state=True)
    assert again.weights["w"].dtype == torch.float16 and torch.equal(again.weights["w"], torch.arange(4.0).half())
    assert again.train_state["step"].tolist() == [7] and again.train_state["nested"] == {"k": (1, 2)}
    assert again.epoch == 3 and again.train_config == {"lr": 0.1}
    assert again.ood.n_images == 60 and np.allclose(again.ood.histogram, _stats(5).histogram)
    assert path.stat().st_mode & 0o777 == 0o644


def test_unknown_or_damaged_stats(tmp_path, monkeypatch):
    stats = _stats()
    path = tmp_path / "m.safetensors"
    meta, tensors = stats.to_checkpoint()
    monkeypatch.setattr(TrainingStats, "to_checkpoint", lambda self: ({**meta, "version": 99}, tensors))
    save_checkpoint(path, {"w": torch.ones(1)}, {"name": "x"}, ood=stats)
    assert load_checkpoint(path).ood is None  # a newer format: ignored, never a false warning
    bad = {**tensors, "feature_cov_upper": tensors["feature_cov_upper"][:-1]}
    monkeypatch.setattr(TrainingStats, "to_checkpoint", lambda self: (meta, bad))
    save_checkpoint(path, {"w": torch.ones(1)}, {"name": "x"}, ood=stats)
    with pytest.raises(CheckpointError, match="out-of-distribution stats"):
        load_checkpoint(path)


# -- prediction ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ood")
    train = base / "train"
    write_phantoms(train, 64, 48, seed=1)
    shown = base / "shown"
    write_phantoms(shown, 24, 48, seed=0)
    noise = base / "noise"
    (noise / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["image,labels,patient_id"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(noise / "images" / f"n{i}.png")
        rows.append(f"images/n{i}.png,{LABELS[i % 3]},p{i}")
    (noise / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"train": train, "shown": shown, "noise": noise}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, phantoms) -> dict[str, Path]:
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=LABELS, image_size=SIZE).eval()
    pixels = np.stack([load_letterboxed(f, SIZE) for f in sorted((phantoms["train"] / "images").glob("*.png"))])
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(folder / "old.safetensors", model.state_dict(), model.cxr_config.to_dict())
    save_checkpoint(folder / "new.safetensors", model.state_dict(), model.cxr_config.to_dict(),
                    ood=stats_for_model(model, model.cxr_config, pixels))
    return {"old": folder / "old.safetensors", "new": folder / "new.safetensors"}


def _pngs(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "images").glob("*.png"))


def test_predict_scores_each_image_from_the_same_forward(checkpoints, phantoms):
    predictor = Predictor.from_checkpoint(checkpoints["new"], device="cpu", cache=False, tta=["hflip"], amp=False)
    paths = _pngs(phantoms["shown"])
    result = predictor.predict(paths)
    assert result.ood is not None and not result.ood.far and result.ood.measure == FEATURE
    # the hooked forward's features are the model's own (the plain view, not the flipped one)
    pixels = np.stack([load_letterboxed(p, SIZE) for p in paths])
    loaded = predictor.loaded
    features, layer = image_features(loaded.model, loaded.config, pixels)
    assert layer == "fc"
    expected = loaded.ood.distances(pixels, features)
    np.testing.assert_allclose(result.ood_distances, expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(result.ood.distances, expected[:, 0], rtol=1e-3, atol=1e-3)

    far = predictor.predict(_pngs(phantoms["noise"]))
    assert far.ood.far and far.ood.share_beyond == 1.0 and far.ood.message.startswith("out of distribution: 100% of 12")


def test_cached_predictions_keep_their_distances_and_older_ones_are_sampled(checkpoints, phantoms, tmp_path,
                                                                           monkeypatch):
    paths = _pngs(phantoms["noise"])
    cache = PredictionCache(tmp_path / "cache.sqlite")
    predictor = Predictor.from_checkpoint(checkpoints["new"], device="cpu", cache=cache)
    first = predictor.predict(paths)
    again = predictor.predict(paths)
    assert again.computed == 0 and again.cached == len(paths)
    np.testing.assert_allclose(again.ood_distances, first.ood_distances, rtol=1e-6)
    assert again.ood.far and again.ood.n_images == len(paths)

    # Probabilities cached before their distances were: a sample of those images is decoded and scored again.
    assert cache.count() == len(paths)  # one row of probabilities per image; distances in their own table
    with cache._db.transaction() as conn:
        conn.execute("DELETE FROM distances")
    monkeypatch.setattr(engine_module, "PREDICT_SAMPLE", 5)
    sampled = predictor.predict(paths)
    assert sampled.computed == 0 and sampled.ood.n_images == 5 and sampled.ood.far
    assert np.isfinite(sampled.ood_distances).all(axis=1).sum() == 5
    hashes = cache.hashes(paths)
    assert len(cache.get_distances(hashes, predictor.fingerprint, ["feature", "intensity"])) == 5  # stored again
    assert cache.get_distances(hashes, predictor.fingerprint, ["intensity"]) == {}  # other measures: a miss
    cache.close()


def test_a_cache_written_before_distances_opens_and_keeps_its_predictions(tmp_path):
    import sqlite3

    from cxr_core.infer.prediction_cache import MIGRATIONS

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("INSERT INTO predictions VALUES ('h', 'm', 'plain', 'A', ?, 0)",
                     (np.float32([0.25]).tobytes(),))
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    with PredictionCache(path) as cache:
        assert cache.get(["h"], "m", "plain", ["A"])["h"].tolist() == [0.25]
        assert cache.get_distances(["h"], "m", ["intensity"]) == {}
        cache.put_distances([("h", np.float32([0.5]))], "m", ["intensity"])
        assert cache.get_distances(["h"], "m", ["intensity"])["h"].tolist() == [0.5]


def test_predict_root_attaches_the_report_and_warns_only_when_far(checkpoints, phantoms):
    predictor = Predictor.from_checkpoint(checkpoints["new"], device="cpu", cache=False)
    shown = predict_root(predictor, phantoms["shown"])
    assert shown.ood is not None and not shown.ood.far and shown.warnings == []
    assert shown.predictions.meta["ood"]["far"] is False and len(shown.ood.distances) == len(shown.predictions)

    noise = predict_root(predictor, phantoms["noise"])
    assert noise.ood.far and noise.warnings == [noise.ood.message]
    assert noise.predictions.meta["ood"]["measure"] == FEATURE
    assert json.loads(json.dumps(noise.predictions.to_json()))["meta"]["ood"]["far"] is True

    one = predict_root(predictor, Path(_pngs(phantoms["noise"])[0]))
    assert one.ood.far and "the image lies beyond" in one.warnings[0]

    old = predict_root(Predictor.from_checkpoint(checkpoints["old"], device="cpu", cache=False), phantoms["noise"])
    assert old.ood is None and old.warnings == [] and "ood" not in old.predictions.meta


def test_eval_report_names_the_measure(checkpoints, phantoms, tmp_path):
    from cxr_core.eval import evaluate_run

    predictor = Predictor.from_checkpoint(checkpoints["new"], device="cpu", cache=False)
    done = evaluate_run(predictor, phantoms["noise"], split="all", n_boot=0, out=tmp_path / "far")
    assert done.ood.far and done.ood.message in done.warnings and done.to_json()["ood"]["far"] is True
    report = (tmp_path / "far" / "report.md").read_text()
    assert f"> **Caveat:** {done.ood.message}." in report
    assert "## Distance from the training images" in report and "Mahalanobis distance" in report
    assert "| intensity: Wasserstein distance of the intensity histogram | 12 |" in report

    old = evaluate_run(Predictor.from_checkpoint(checkpoints["old"], device="cpu", cache=False), phantoms["noise"],
                       split="all", n_boot=0, out=tmp_path / "old")
    assert old.ood is None and "ood" not in old.to_json()
    text = (tmp_path / "old" / "report.md").read_text()
    assert "training images" not in text and "distribution" not in text


@pytest.mark.slow  # the command decodes ahead in spawned helper processes while the model loads
def test_predict_cli_prints_the_warning_and_json_carries_it(checkpoints, phantoms):
    from cxr_tui.cli.main import app

    runner = CliRunner()
    done = runner.invoke(app, ["predict", str(phantoms["noise"]), "--model", str(checkpoints["new"]),
                               "--device", "cpu", "--no-cache"])
    assert done.exit_code == 0, done.output
    assert "warning: out of distribution: 100% of 12 images lie beyond the 99th percentile of the training " \
           "images' feature distance (Mahalanobis distance of the model's pooled features)" in done.stderr
    as_json = runner.invoke(app, ["predict", str(phantoms["noise"]), "--model", str(checkpoints["new"]),
                                  "--device", "cpu", "--no-cache", "--json"])
    data = json.loads(as_json.stdout)
    assert data["ood"]["far"] is True and data["ood"]["measure"] == FEATURE
    assert data["ood"]["message"] in data["warnings"]
    quiet = runner.invoke(app, ["predict", str(phantoms["shown"]), "--model", str(checkpoints["new"]),
                                "--device", "cpu", "--no-cache"])
    assert quiet.exit_code == 0 and "distribution" not in quiet.stderr


# -- the shipped demo model ------------------------------------------------------------------------------


def test_demo_model_carries_stats_and_phantoms_are_not_far(tmp_path):
    from cxr_core.demo import DEMO_SEED, DEMO_SIZE, demo_model_path

    stats = read_ood_stats(demo_model_path())
    assert stats is not None and stats.measures == (FEATURE, INTENSITY) and stats.n_images == 512
    write_phantoms(tmp_path / "demo", 24, DEMO_SIZE, DEMO_SEED)  # the first 24 films of the demo set
    predictor = Predictor.from_checkpoint(demo_model_path(), device="cpu", cache=False)
    result = predict_root(predictor, tmp_path / "demo")
    assert result.ood is not None and not result.ood.far and result.warnings == []
    assert result.ood.share_beyond <= 0.2


def _nih_films(real_data: Path, folder: Path, n: int) -> Path:
    """A folder of links to the first ``n`` real NIH films (the files stay where they are)."""
    images = sorted((real_data / "nih-sample" / "images_001" / "images").glob("*.png"))[:n]
    if not images:
        pytest.skip("no NIH images under CXR_REAL_DATA")
    folder.mkdir()
    for image in images:
        (folder / image.name).symlink_to(image)
    return folder


def test_demo_model_on_real_nih_films_is_far(real_data, tmp_path):
    from cxr_core.demo import demo_model_path

    predictor = Predictor.from_checkpoint(demo_model_path(), device="cpu", cache=False)
    result = predict_root(predictor, _nih_films(real_data, tmp_path / "films", 16))
    assert result.ood is not None and result.ood.far and result.ood.measure == FEATURE
    assert result.ood.share_beyond >= 0.9 and result.ood.message in result.warnings


@pytest.mark.slow
def test_predict_command_on_real_nih_films_says_so(real_data, tmp_path):
    from cxr_core.demo import demo_model_path
    from tests.cli import cxr

    folder = _nih_films(real_data, tmp_path / "films", 8)
    done = cxr("predict", folder, "--model", demo_model_path(), "--device", "cpu", "--no-cache")
    assert done.returncode == 0, done.stderr
    assert "warning: out of distribution:" in done.stderr and "Mahalanobis distance" in done.stderr


# -- training ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_run_puts_stats_in_both_checkpoints(tmp_path, phantom_set):
    from cxr_core.runs import RunDir
    from cxr_core.train.config import TrainConfig, write_run_config
    from cxr_core.train.runner import run_training

    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=2, batch_size=16,
                         lr=3e-3, workers=0, seed=7)
    run = RunDir.create(tmp_path / "runs", "ood")
    write_run_config(run, config)
    assert run_training(run) == "finished"
    best, last = read_ood_stats(run.best_checkpoint), read_ood_stats(run.last_checkpoint)
    assert best is not None and last is not None and best.feature_layer == "fc"
    assert best.n_images == last.n_images > 20
    assert load_checkpoint(run.last_checkpoint, train_state=True).train_state is not None  # still resumable
    assert "training-image statistics of" in run.log_path.read_text()
    held_out = predict_root(Predictor.from_checkpoint(run.path, device="cpu", cache=False), phantom_set, split="test")
    assert held_out.ood is not None and not held_out.ood.far, held_out.ood.to_json()
