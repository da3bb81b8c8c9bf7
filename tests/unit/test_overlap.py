"""Prediction with the model loading on a thread while the root is indexed and its first images decoded."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_core.checkpoint import save_checkpoint
from cxr_core.data.preprocess import load_letterboxed
from cxr_core.errors import CxrError
from cxr_core.infer import Predictor, predict_root
from cxr_core.infer.overlap import BackgroundLoad, decode_ahead, predict_root_loading
from cxr_core.models import create_model
from cxr_core.store import StudyIndex

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
    for i in range(12):
        (root / f"s{i:02d}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 36), dtype=np.uint8)).save(root / f"s{i:02d}" / "a.png")
        rows.append(f"s{i:02d}/a.png,{'Effusion' if i % 2 else 'Cardiomegaly'},p{i // 2}")
    (root / "s03" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _slow_loader(delay: float):
    def make(path: Path) -> Predictor:
        time.sleep(delay)  # a model that takes a while to import and build, as efficientnet_b0 does here
        return Predictor.from_checkpoint(path, device="cpu", cache=False, workers=0)
    return make


def test_images_decoded_while_the_model_loads_predict_exactly_as_decoded_after(checkpoint, folder, tmp_path):
    reference = predict_root(Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0), folder)
    with StudyIndex(tmp_path / "index.sqlite") as index:
        predictor, result = predict_root_loading(checkpoint, _slow_loader(1.0), folder, index=index,
                                                         processes=False)
    assert predictor.loaded.path == checkpoint
    assert result.premade == result.computed == 12  # every readable image was ready before the model
    np.testing.assert_array_equal(result.predictions.probs, reference.predictions.probs)
    assert list(result.predictions.image) == list(reference.predictions.image)
    assert set(result.errors) == set(reference.errors) == {"s03/broken.png"}  # still reported, with its reason
    assert "broken.png" not in " ".join(result.notes)


def test_a_model_that_loads_at_once_decodes_nothing_ahead(checkpoint, folder, tmp_path):
    with StudyIndex(tmp_path / "index.sqlite") as index:
        _, result = predict_root_loading(checkpoint, _slow_loader(0.0), folder, index=index, processes=False)
    assert result.computed == 12 and result.premade <= 12


def test_a_bad_checkpoint_is_the_loaders_one_line_error(folder, tmp_path):
    with StudyIndex(tmp_path / "index.sqlite") as index, pytest.raises(CxrError, match="nope.safetensors"):
        predict_root_loading(tmp_path / "nope.safetensors", _slow_loader(0.0), folder, index=index,
                             processes=False)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\0" * 64)
    loading = BackgroundLoad(garbage, _slow_loader(0.0))
    assert loading.input_size() is None
    with pytest.raises(CxrError, match="garbage.safetensors"):
        loading.result()


def test_decode_ahead_keeps_order_skips_bad_files_and_stops_when_told(folder):
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    never = threading.Event()
    made = decode_ahead(paths, 32, never, threads=2)
    assert set(made) == {p for p in paths if not p.endswith("broken.png")}
    for path, pixels in made.items():
        np.testing.assert_array_equal(pixels, load_letterboxed(path, 32))
    assert len(decode_ahead(paths, 32, never, threads=1, max_bytes=3 * 32 * 32)) == 3  # first three, in order
    assert list(decode_ahead(paths, 32, never, threads=1, max_bytes=3 * 32 * 32)) == paths[:3]
    done = threading.Event()
    done.set()
    assert decode_ahead(paths, 32, done, threads=2) == {}


def test_nothing_is_decoded_ahead_when_the_training_cache_holds_the_root(checkpoint, folder, tmp_path):
    from cxr_core.data.image_cache import ImageCache

    rels = [f"s{i:02d}/a.png" for i in range(12)]
    ImageCache.open_or_build(folder, rels, 32)
    with StudyIndex(tmp_path / "index.sqlite") as index:
        _, result = predict_root_loading(checkpoint, _slow_loader(0.5), folder, index=index, processes=False)
    assert result.premade == 0 and result.from_image_cache == 12 and "training image cache" in result.notes[0]


def test_single_image_files_are_predicted_as_before(checkpoint, folder):
    predictor, result = predict_root_loading(checkpoint, _slow_loader(0.0), folder / "s00" / "a.png", processes=False)
    assert list(result.predictions.study) == ["a"] and result.computed == 1


@pytest.mark.slow
def test_indexing_and_decoding_ahead_import_neither_torch_nor_timm():
    import subprocess
    import sys

    code = ("import sys, cxr_core.infer.overlap, cxr_core.data.image_cache, cxr_core.data.preprocess, cxr_core.store, "
            "cxr_core.images; from cxr_core.models.config import ModelConfig; "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_helper_processes_decode_ahead_the_same_pixels(checkpoint, folder, tmp_path):
    from cxr_core.infer.overlap import AheadDecoder

    paths = sorted(str(p) for p in folder.rglob("*.png"))
    with AheadDecoder(2) as decoder:
        made = decoder.decode(paths, 32, threading.Event())
    assert set(made) == {p for p in paths if not p.endswith("broken.png")}
    for path, pixels in made.items():
        np.testing.assert_array_equal(pixels, load_letterboxed(path, 32))
    reference = predict_root(Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0), folder)
    with StudyIndex(tmp_path / "index.sqlite") as index:
        _, result = predict_root_loading(checkpoint, _slow_loader(3.0), folder, index=index)
    assert result.premade == 12
    np.testing.assert_array_equal(result.predictions.probs, reference.predictions.probs)


def _die(*_: object) -> None:
    os._exit(9)  # a helper killed mid-image (the OOM killer, a user's kill)


@pytest.mark.slow
def test_a_helper_that_dies_costs_only_the_head_start(checkpoint, folder, tmp_path, monkeypatch):
    from cxr_core.infer import overlap

    monkeypatch.setattr(overlap, "_letterboxed", _die)  # pickled by name: the spawned helpers run _die
    reference = predict_root(Predictor.from_checkpoint(checkpoint, device="cpu", cache=False, workers=0), folder)
    with StudyIndex(tmp_path / "index.sqlite") as index:
        _, result = predict_root_loading(checkpoint, _slow_loader(3.0), folder, index=index)
    assert result.premade == 0 and len(result.predictions) == len(reference.predictions)
    np.testing.assert_array_equal(result.predictions.probs, reference.predictions.probs)



def test_the_input_size_is_read_from_the_checkpoint_header(checkpoint, tmp_path):
    from cxr_core.infer.overlap import peek_input_size

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.safetensors").write_bytes(checkpoint.read_bytes())
    assert peek_input_size(checkpoint) == 32 and peek_input_size(run) == 32
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    for odd in ("junk.safetensors", "short.safetensors", "missing.safetensors"):
        assert peek_input_size(tmp_path / odd) is None  # the loader's own reading says what is wrong
    assert peek_input_size("a-run-id") is None and peek_input_size(tmp_path) is None


@pytest.mark.slow
def test_reading_the_input_size_imports_no_torch(checkpoint):
    """Decoding ahead starts before torch is imported: the size comes from the safetensors header alone."""
    import subprocess
    import sys

    code = ("import sys; from cxr_core.infer.overlap import peek_input_size; "
            f"print(peek_input_size({str(checkpoint)!r}), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["32", "False"]
