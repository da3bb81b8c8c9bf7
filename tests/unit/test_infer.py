"""The inference engine as callers use it: Predictor API, prediction cache, cancel, TTA, predict CLI, torchrun."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_core.checkpoint import save_checkpoint
from cxr_core.data.preprocess import Normalizer, load_letterboxed
from cxr_core.errors import CxrError
from cxr_core.infer.engine import Predictor, flat_warning
from cxr_core.infer.loading import fingerprint, resolve_checkpoint
from cxr_core.infer.prediction_cache import PredictionCache
from cxr_core.models import create_model
from cxr_core.predictions import Predictions

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=LABELS, image_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, model.state_dict(), model.cxr_config.to_dict())
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "studies"
    rng = np.random.default_rng(0)
    rows = ["image,labels,patient_id"]
    for i in range(10):
        (root / f"s{i}").mkdir(parents=True)
        pixels = rng.integers(0, 255, (40 + i, 36), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"s{i}" / "a.png")
        rows.append(f"s{i}/a.png,{'Effusion' if i % 2 else 'Cardiomegaly'},p{i // 2}")
    (root / "s3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _images(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("a.png"))


def test_predictions_equal_the_model_on_preprocessed_pixels(checkpoint, folder):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0, amp=False)
    paths = _images(folder)
    result = predictor.predict(paths)
    assert result.probs.shape == (10, 3) and result.ok.all() and result.computed == 10
    normalise = Normalizer(predictor.config)
    batch = torch.stack([normalise(load_letterboxed(p, 32)) for p in paths])
    with torch.no_grad():
        expected = torch.sigmoid(predictor.model(batch)).numpy()
    np.testing.assert_allclose(result.probs, expected, rtol=1e-5, atol=1e-6)


def test_bf16_on_a_cpu_stays_near_float32_and_is_cached_apart(checkpoint, folder, tmp_path, monkeypatch):
    """Where the CPU computes bf16 natively the engine autocasts to it (forced here, so any CPU runs this):
    probabilities within 0.03 of float32, recorded as the precision, and never served from float32's cache."""
    from cxr_core.infer.engine import cpu_runs_bf16

    monkeypatch.setenv("CXR_CPU_BF16", "0")
    assert not cpu_runs_bf16()
    monkeypatch.setenv("CXR_CPU_BF16", "1")
    paths = _images(folder)
    cache = PredictionCache(tmp_path / "cache.sqlite")
    fp32 = Predictor.from_checkpoint(checkpoint, device="cpu", cache=cache, workers=0, amp=False)
    bf16 = Predictor.from_checkpoint(checkpoint, device="cpu", cache=cache, workers=0)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16") and bf16.amp_dtype == torch.bfloat16
    assert fp32.variant == "plain" and bf16.variant == "plain@bf16"
    exact = fp32.predict(paths)
    fast = bf16.predict(paths)
    assert fast.computed == len(paths)  # float32's cached rows were not taken for bf16 ones
    assert not np.array_equal(fast.probs, exact.probs)  # it did run in bf16
    np.testing.assert_allclose(fast.probs, exact.probs, atol=0.03)
    assert bf16.predict(paths).cached == len(paths) and fp32.predict(paths).cached == len(paths)


@pytest.mark.slow
def test_unreadable_file_reported_and_rest_predicted(checkpoint, folder):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, batch_size=4, workers=1)
    paths = _images(folder) + [str(folder / "s3" / "broken.png")]
    result = predictor.predict(paths)
    assert list(result.errors) == [str(folder / "s3" / "broken.png")]
    assert "broken.png" not in " ".join(result.as_dict())
    assert result.ok.sum() == 10 and np.isnan(result.probs[-1]).all()


@pytest.mark.slow
def test_cpu_thread_decoding_gives_the_dataloader_results(checkpoint, folder):
    """CPU default (decode in threads, in turn with the model) == explicit DataLoader workers, bad file included."""
    images = _images(folder)
    broken = str(folder / "s3" / "broken.png")
    paths = [images[0], broken, *images[1:5], broken, *images[5:]]  # bad files inside batches, not only last
    threads = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, batch_size=4, amp=False).predict(paths)
    loader = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, batch_size=4, workers=1,
                                       amp=False).predict(paths)
    assert list(threads.errors) == list(loader.errors) == [broken]
    assert np.isnan(threads.probs[[1, 6]]).all() and threads.ok.sum() == 10
    np.testing.assert_allclose(threads.probs, loader.probs, rtol=1e-5, atol=1e-6, equal_nan=True)
    reference = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False)  # per-image normalisation
    normalise, size = Normalizer(reference.config), reference.config.input_size
    with torch.no_grad():
        batch = torch.stack([normalise(load_letterboxed(p, size)) for p in paths if p != broken])
        expected = torch.sigmoid(reference.model(batch)).numpy()
    np.testing.assert_allclose(threads.probs[threads.ok], expected, rtol=1e-5, atol=1e-6)
    seen: list[tuple[int, int]] = []
    Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, batch_size=4).predict(
        paths, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_cache_hits_by_content_and_misses_on_new_content(checkpoint, folder, tmp_path):
    cache = PredictionCache(tmp_path / "preds.sqlite")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=cache, workers=0)
    paths = _images(folder)
    first = predictor.predict(paths)
    assert (first.cached, first.computed) == (0, 10)
    again = predictor.predict(paths)
    assert (again.cached, again.computed) == (10, 0)
    np.testing.assert_array_equal(first.probs, again.probs)
    copy = tmp_path / "copy.png"
    shutil.copy(paths[0], copy)  # same content elsewhere: still a hit
    assert predictor.predict([str(copy)]).cached == 1
    Image.fromarray(np.full((40, 36), 7, np.uint8)).save(paths[0])  # edited in place: a miss
    edited = predictor.predict(paths)
    assert (edited.cached, edited.computed) == (9, 1)
    tta = Predictor.from_checkpoint(checkpoint, device="cpu", cache=cache, workers=0, tta=["hflip"])
    assert tta.predict(paths).computed == 10  # another variant is another key
    assert cache.count(fingerprint(checkpoint)) == 10 + 1 + 10


def test_a_damaged_prediction_cache_is_moved_aside_and_started_again(checkpoint, folder, tmp_path):
    from cxr_core.infer import predict_root

    path = tmp_path / "preds.sqlite"
    path.write_bytes(b"this is not a database" * 100)  # a cache, not the user's data: never a dead end
    cache = PredictionCache(path)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("preds.sqlite.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert cache.note is not None and "moved aside" in cache.note
    result = predict_root(Predictor.from_checkpoint(checkpoint, device="cpu", cache=cache, workers=0), folder)
    assert result.computed > 0 and any("prediction cache was damaged" in note for note in result.notes)
    assert cache.note is None  # said once
    with PredictionCache(path) as again:  # the new file is a good cache
        assert again.note is None and again.count(fingerprint(checkpoint)) == result.computed


def test_cancel_stops_before_computing(checkpoint, folder):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, batch_size=2, workers=0)
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= 4:
            cancel.set()

    result = predictor.predict(_images(folder), cancel=cancel, progress=progress)
    assert result.cancelled and result.computed == 4 and np.isnan(result.probs[4:]).all()
    assert seen[0] == 0 and seen[-1] == 4


def test_tta_averages_flip_in_probability_space(checkpoint, folder):
    plain = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0, amp=False)
    tta = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0, tta=["hflip"], amp=False)
    paths = _images(folder)[:3]
    normalise = Normalizer(plain.config)
    batch = torch.stack([normalise(load_letterboxed(p, 32)) for p in paths])
    with torch.no_grad():
        expected = (torch.sigmoid(plain.model(batch)) + torch.sigmoid(plain.model(batch.flip(-1)))) / 2
    np.testing.assert_allclose(tta.predict(paths).probs, expected.numpy(), rtol=1e-5, atol=1e-6)
    scaled = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0, tta=["scale"]).predict(paths)
    assert scaled.ok.all() and not np.allclose(scaled.probs, plain.predict(paths).probs)


def test_flat_predictions_warn():
    assert flat_warning(np.full((32, 3), 0.3, np.float32), LABELS)
    assert not flat_warning(np.random.default_rng(0).random((32, 3)).astype(np.float32), LABELS)


def test_run_directory_resolves_to_best(tmp_path, checkpoint):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for name in ("last.safetensors", "best.safetensors"):
        shutil.copy(checkpoint, tmp_path / "run" / "checkpoints" / name)
    assert resolve_checkpoint(tmp_path / "run").name == "best.safetensors"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_tui", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_predict_cli_writes_rows_with_truth_and_lists_bad_files(checkpoint, folder, tmp_path):
    out = tmp_path / "preds.csv"
    done = _cli("predict", str(folder), "--model", str(checkpoint), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == 10 and summary["unreadable"] == 1
    assert any(path.endswith("broken.png") for path in summary["errors"])
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and set(LABELS) <= set(rows[0]) and "flagged" in rows[0]
    assert {r["truth:Effusion"] for r in rows} == {"0", "1"}
    preds = Predictions.read(out)
    assert preds.has_truth and preds.probs.shape == (10, 3)
    again = json.loads(_cli("predict", str(folder), "--model", str(checkpoint), "--json").stdout)
    assert again["cached"] == 10 and again["computed"] == 0 and len(again["predictions"]) == 10


@pytest.mark.slow
def test_predict_cli_bad_inputs_are_one_line(checkpoint, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    done = _cli("predict", str(bad), "--model", str(checkpoint))
    assert done.returncode == 1 and "x.png" in done.stderr and "Traceback" not in done.stderr
    done = _cli("predict", str(tmp_path), "--model", str(tmp_path / "nope.safetensors"))
    assert done.returncode == 1 and "nope.safetensors" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_torchrun_shards_and_merges(checkpoint, folder, tmp_path):
    out = tmp_path / "preds.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cxr_tui",
               "predict", str(folder), "--model", str(checkpoint), "--out", str(out), "--workers", "0", "--no-cache"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sharded = Predictions.read(out)
    single = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0).predict(_images(folder))
    by_image = {image: row for image, row in zip(sharded.image, sharded.probs, strict=True)}
    assert len(by_image) == 10
    for path, row in zip(_images(folder), single.probs, strict=True):
        np.testing.assert_allclose(by_image[str(Path(path).relative_to(folder))], row, rtol=1e-5, atol=1e-6)


def test_cli_knows_the_engines_augmentations():
    from cxr_core.infer.engine import TTA_CHOICES
    from cxr_tui.cli.options import TTA_CHOICES as CLI_CHOICES

    assert CLI_CHOICES == TTA_CHOICES


@pytest.mark.slow
def test_version_does_not_load_torch():
    code = "import sys, cxr_tui.cli.main; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.slow
def test_models_that_cannot_predict_are_one_line_errors(checkpoint, folder, tmp_path):
    from tests.cli import cxr

    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=LABELS, image_size=32)
    state = model.state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    nan_path = tmp_path / "diverged.safetensors"
    save_checkpoint(nan_path, state, model.cxr_config.to_dict())
    out = cxr("predict", folder, "--model", nan_path, "--out", tmp_path / "p.csv")
    assert out.returncode == 1 and "diverged.safetensors" in out.stderr and "NaN or infinite" in out.stderr
    assert not (tmp_path / "p.csv").exists()
    huge = {**model.cxr_config.to_dict(), "input_size": 100_000}
    big_path = tmp_path / "huge.safetensors"
    save_checkpoint(big_path, model.state_dict(), huge)
    out = cxr("predict", folder, "--model", big_path)
    assert out.returncode == 1 and "input_size must be a whole number from 8 to 4096" in out.stderr
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False)
    predictor.predict_batch = lambda images: np.full((images.shape[0], len(LABELS)), np.nan, np.float32)
    with pytest.raises(CxrError, match="gives NaN or infinite scores"):
        predictor.predict(_images(folder))


@pytest.mark.slow
def test_a_killed_predict_keeps_the_batches_it_finished(folder, tmp_path):
    """The cache is written as batches complete: after SIGKILL mid-run, the next run computes only the rest."""
    import os
    import signal
    import sqlite3
    import time

    from cxr_core.demo import demo_model_path
    from tests.cli import SCRIPT

    root = tmp_path / "many"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(160):
        Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(root / f"i{i:03d}.png")
    home = tmp_path / "home"
    env = {**os.environ, "CXR_HOME": str(home)}
    proc = subprocess.Popen([str(SCRIPT), "predict", str(root), "--model", str(demo_model_path()), "--batch-size", "8"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cached() -> int:
        try:
            with sqlite3.connect(f"file:{home / 'predictions.sqlite'}?mode=ro", uri=True) as conn:
                return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 120
    while cached() < 16 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    kept = cached()
    assert 16 <= kept < 160  # killed mid-run, and what it had finished is kept
    again = subprocess.run([str(SCRIPT), "predict", str(root), "--model", str(demo_model_path()), "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    result = json.loads(again.stdout)
    assert result["images"] == 160 and result["cached"] >= kept and result["computed"] == 160 - result["cached"]


def _with_running_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking BatchNorm statistics (an untrained model's are the identity: folding them proves nothing)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


@pytest.mark.parametrize("name,size", [("tiny_resnet", 32), ("efficientnet_b0", 64)])
def test_batchnorms_folded_into_convolutions_predict_the_same(name, size):
    from cxr_core.infer.engine import fold_batchnorms

    model = _with_running_stats(create_model(name, labels=LABELS, image_size=size))
    folded, count = fold_batchnorms(model, size, 3)
    assert count > 0 and folded is not model
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert norms > 0 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == norms - count
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_batchnorm_whose_convolution_output_is_used_twice_is_not_folded():
    from cxr_core.infer.engine import fold_batchnorms

    class Shared(torch.nn.Module):  # conv -> bn, and the conv's output also added back: folding would change it
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean(dim=(2, 3))

    model = _with_running_stats(Shared())
    folded, count = fold_batchnorms(model, 16, 3)
    assert (folded, count) == (model, 0)


def test_cpu_predictor_folds_a_copy_and_keeps_the_model(checkpoint, folder):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0)
    assert predictor.folded > 0 and predictor.inference_model is not predictor.model
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())  # Grad-CAM's model unchanged


def test_predict_root_reads_the_training_image_cache_and_only_trusted_rows(checkpoint, folder):
    import os

    from cxr_core.data.image_cache import ImageCache, training_cache_pixels
    from cxr_core.infer import predict_root

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0)
    decoded = predict_root(predictor, folder)
    assert decoded.from_image_cache == 0 and not decoded.notes and "pixels" not in decoded.predictions.meta
    rels = list(decoded.predictions.image)
    assert training_cache_pixels(folder, rels, 32) is None  # no cache yet: nothing built by asking
    ImageCache.open_or_build(folder, rels, 32)  # what `cxr-tui train` leaves behind
    assert training_cache_pixels(folder, rels, 64) is None  # another size: another cache
    cached = predict_root(predictor, folder)
    assert cached.from_image_cache == len(rels) == cached.computed
    assert "training image cache" in cached.notes[0] and cached.predictions.meta["pixels"]["images"] == len(rels)
    np.testing.assert_array_equal(cached.predictions.probs, decoded.predictions.probs)
    assert set(cached.errors) == set(decoded.errors)  # the broken file still reported with its reason
    changed = folder / rels[0]  # same size, new content and time: the cache's row is no longer trusted
    Image.fromarray(np.full((40, 36), 9, np.uint8)).save(changed)
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    again = predict_root(predictor, folder)
    assert again.from_image_cache == len(rels) - 1
    fresh = Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0).predict([str(changed)])
    np.testing.assert_allclose(again.predictions.probs[0], fresh.probs[0], rtol=1e-6)
    assert predict_root(predictor, folder, image_cache=False).from_image_cache == 0


def test_cpu_predictor_lets_glibc_keep_freed_memory(checkpoint, monkeypatch):
    import os

    from cxr_core.infer import engine

    Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0)
    if sys.platform.startswith("linux") and not any(os.environ.get(k) for k in engine._MALLOC_ENV):
        assert engine._MALLOC_SET and engine.keep_freed_memory()  # once per process, then a no-op
    monkeypatch.setattr(engine, "_MALLOC_SET", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own setting wins
    assert engine.keep_freed_memory() is False
