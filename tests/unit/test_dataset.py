"""cxr_core.data.dataset and .augment: tensors, normalisation, cache parity, bad files, augmentation rules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxr_core.data.augment import train_transform
from cxr_core.data.dataset import Item, PredictDataset, PredictPixels, XRayDataset, items_from_studies
from cxr_core.data.image_cache import ImageCache
from cxr_core.data.preprocess import Preprocess
from cxr_core.data.study import Study, StudyImage
from cxr_core.errors import ImageReadError
from cxr_core.labels import LabelSpace, UncertaintyPolicy
from tests.malformed import write_png

SIZE = 16
SPEC = Preprocess(in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, list[Item]]:
    base = tmp_path / "images"
    base.mkdir()
    square = np.zeros((SIZE, SIZE), np.uint8)
    square[3, 5] = 51  # 0.2 after scaling to [0, 1]
    write_png(base / "square.png", square)
    write_png(base / "wide.png", np.random.default_rng(0).integers(0, 256, (20, 50), dtype=np.uint8))
    write_png(base / "tall.png", np.random.default_rng(1).integers(0, 256, (45, 21), dtype=np.uint8))
    target, mask = np.array([1, 0], np.float32), np.array([1, 0], np.float32)
    return base, [Item(name, target, mask) for name in ("square.png", "wide.png", "tall.png")]


def test_item_tensors_and_exact_normalisation(folder):
    base, items = folder
    sample = XRayDataset(items, cache=None, base=base, size=SIZE, preprocess=SPEC)[0]
    image = sample["image"]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    expected = [(0.2 - m) / s for m, s in zip(SPEC.mean, SPEC.std, strict=True)]
    torch.testing.assert_close(image[:, 3, 5], torch.tensor(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([-m / s for m, s in zip(SPEC.mean, SPEC.std, strict=True)]))
    assert sample["target"].dtype == torch.float32 and sample["target"].tolist() == [1.0, 0.0]
    assert sample["mask"].tolist() == [1.0, 0.0] and sample["index"] == 0


def test_one_channel_model_with_a_duck_typed_config(folder):
    base, items = folder
    config = SimpleNamespace(input_size=SIZE, in_chans=1, mean=(0.5,), std=(0.5,), interpolation="bicubic", labels=["a", "b"])
    image = XRayDataset(items, cache=None, base=base, size=SIZE, preprocess=config)[0]["image"]
    assert image.shape == (1, SIZE, SIZE)
    assert image[0, 3, 5].item() == pytest.approx((0.2 - 0.5) / 0.5, abs=1e-6)


def test_mismatched_normalisation_is_refused():
    with pytest.raises(ValueError, match="2 values for 3 channels"):
        PredictDataset([], size=SIZE, preprocess=Preprocess(mean=(0.5, 0.5)))


def test_cached_and_uncached_items_are_identical(folder):
    base, items = folder
    cache = ImageCache.open_or_build(base, [i.relpath for i in items], SIZE)
    cached = XRayDataset(items, cache=cache, base=base, size=SIZE, preprocess=SPEC)
    decoded = XRayDataset(items, cache=None, base=base, size=SIZE, preprocess=SPEC)
    for i in range(len(items)):
        torch.testing.assert_close(cached[i]["image"], decoded[i]["image"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="32 px"):
        XRayDataset(items, cache=cache, base=base, size=32, preprocess=SPEC)


def test_unreadable_training_image_raises_a_clear_error(folder):
    base, items = folder
    (base / "wide.png").write_bytes(b"")
    dataset = XRayDataset(items, cache=None, base=base, size=SIZE, preprocess=SPEC)
    with pytest.raises(ImageReadError, match="empty file"):
        dataset[1]
    cache = ImageCache.open_or_build(base, [i.relpath for i in items], SIZE)
    with pytest.raises(ImageReadError, match="empty file"):
        XRayDataset(items, cache=cache, base=base, size=SIZE, preprocess=SPEC)[1]


@pytest.mark.slow
def test_predict_dataset_reports_bad_files_and_a_loader_batches_through(folder):
    base, _ = folder
    (base / "bad.png").write_bytes(b"not an image at all")
    paths = [base / "square.png", base / "bad.png", base / "missing.png", base / "tall.png", base / "wide.png"]
    dataset = PredictDataset(paths, size=SIZE, preprocess=SPEC)
    bad = dataset[1]
    assert bad["error"] == "not an image (text file)" and bad["image"].shape == (3, SIZE, SIZE)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=2))
    errors = [e for batch in batches for e in batch["error"]]
    assert errors == ["", "not an image (text file)", "file not found", "", ""]
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2, 3, 4]
    assert batches[0]["image"].shape == (2, 3, SIZE, SIZE)


@pytest.mark.slow
def test_predict_dataset_batch_equals_the_loader_batch(folder):
    """The CPU engine's batched decoding (threads, one normalising op) gives the DataLoader's batch exactly."""
    from concurrent.futures import ThreadPoolExecutor

    base, _ = folder
    (base / "bad.png").write_bytes(b"not an image at all")
    paths = [base / "square.png", base / "bad.png", base / "tall.png", base / "wide.png"]
    dataset = PredictDataset(paths, size=SIZE, preprocess=SPEC)
    (expected,) = list(DataLoader(dataset, batch_size=4))
    with ThreadPoolExecutor(2) as pool:
        batch = dataset.batch(range(4), pool.map)
    (loaded,) = list(DataLoader(PredictPixels(dataset), batch_size=4, num_workers=2))  # uint8 through processes
    good = [0, 2, 3]  # the placeholder of a bad file is never used, only its error
    for got in (batch, loaded):
        assert got["error"] == expected["error"] and list(got["path"]) == [str(p) for p in paths]
        assert got["index"].tolist() == [0, 1, 2, 3] and got["pixels"].dtype == torch.uint8
        images = dataset.normalizer.batch(got["pixels"])
        torch.testing.assert_close(images[good], expected["image"][good], rtol=0, atol=1e-6)
    one_channel = PredictDataset(paths[:1], size=SIZE, preprocess=Preprocess(in_chans=1, mean=0.5, std=0.25))
    assert one_channel.normalizer.batch(one_channel.batch([0])["pixels"]).shape == (1, 1, SIZE, SIZE)


def test_items_from_studies_flattens_filters_and_picks_columns():
    space = LabelSpace("t", ("A", "B", "No Finding"), normal="No Finding")
    studies = [
        Study("s1", "p1", (StudyImage("a.png"), StudyImage("b.png")), "1u0", split="train"),
        Study("s2", "p2", (StudyImage("c.png"),), "0.1", split="test"),
        Study("s3", "p3", (), "100", split="train"),
    ]
    items = items_from_studies(studies, space, UncertaintyPolicy.IGNORE, "train")
    assert [i.relpath for i in items] == ["a.png", "b.png"]
    assert items[1].target.tolist() == [1.0, 0.0] and items[1].mask.tolist() == [1.0, 0.0]
    ones = items_from_studies(studies, space, UncertaintyPolicy.ONES, None, labels=["B", "No Finding"])
    assert [(i.relpath, i.target.tolist(), i.mask.tolist()) for i in ones] == [
        ("a.png", [1.0, 0.0], [1.0, 1.0]), ("b.png", [1.0, 0.0], [1.0, 1.0]), ("c.png", [0.0, 1.0], [0.0, 1.0])]
    assert items_from_studies(studies, space, split="val") == []
    with pytest.raises(ValueError, match="Nodule"):
        items_from_studies(studies, space, labels=["Nodule"])


def _half_bright(size: int, axis: int) -> torch.Tensor:
    image = torch.zeros(1, size, size, dtype=torch.uint8)
    if axis == 0:
        image[:, : size // 2] = 230
    else:
        image[:, :, : size // 2] = 230
    return image


def _halves(image: torch.Tensor, axis: int) -> tuple[float, float]:
    first, second = image.float().split(image.shape[axis + 1] // 2, dim=axis + 1)
    return first.mean().item(), second.mean().item()


def test_augmentation_never_flips_vertically():
    transform = train_transform(32, hflip=True, generator=torch.Generator().manual_seed(0))
    top_bright = _half_bright(32, axis=0)
    for _ in range(60):
        top, bottom = _halves(transform(top_bright), axis=0)
        assert top > bottom + 80


def test_augmentation_flips_horizontally_only_when_asked():
    left_bright = _half_bright(32, axis=1)
    plain = train_transform(32, generator=torch.Generator().manual_seed(0))
    assert all(left > right for left, right in (_halves(plain(left_bright), axis=1) for _ in range(40)))
    flipping = train_transform(32, hflip=True, generator=torch.Generator().manual_seed(0))
    assert any(left < right for left, right in (_halves(flipping(left_bright), axis=1) for _ in range(40)))


def test_augmentation_is_reproducible_from_a_seed_and_actually_varies():
    image = torch.randint(0, 256, (1, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    twice = [train_transform(24, generator=torch.Generator().manual_seed(7))(image) for _ in range(2)]
    assert twice[0].dtype == torch.uint8 and twice[0].shape == image.shape
    assert torch.equal(twice[0], twice[1])
    assert not torch.equal(twice[0], train_transform(24, generator=torch.Generator().manual_seed(8))(image))
    assert not torch.equal(twice[0], image)
    with pytest.raises(ValueError, match="uint8 \\(1, 24, 24\\)"):
        train_transform(24)(torch.zeros(1, 16, 16, dtype=torch.uint8))


def test_exposure_jitter_stays_within_its_range():
    flat = torch.full((1, 32, 32), 128, dtype=torch.uint8)
    transform = train_transform(32, generator=torch.Generator().manual_seed(1))
    transform.rotate, transform.translate, transform.scale = 0.0, 0.0, (1.0, 1.0)
    centre = [int(transform(flat)[0, 16, 16]) for _ in range(50)]
    low, high = 255 * (128 / 255 * 0.85) ** 1.15, 255 * min(1.0, 128 / 255 * 1.15) ** 0.85
    assert all(low - 1 <= v <= high + 1 for v in centre) and len(set(centre)) > 10


def test_dataset_applies_the_transform_before_normalising(folder):
    base, items = folder
    seen = []

    def record(image: torch.Tensor) -> torch.Tensor:
        seen.append((image.dtype, tuple(image.shape), int(image.max())))
        return 255 - image

    image = XRayDataset(items, cache=None, base=base, size=SIZE, preprocess=SPEC, transform=record)[0]["image"]
    assert seen == [(torch.uint8, (1, SIZE, SIZE), 51)]
    assert image[0, 3, 5].item() == pytest.approx((204 / 255 - 0.5) / 0.25, abs=1e-6)


def test_raw_items_normalised_as_a_batch_equal_the_normalised_items(folder):
    """The trainer's path (uint8 pixels, augmented, normalised as a batch on its device) == per-item images."""
    base, items = folder
    made = [XRayDataset(items, cache=None, base=base, size=SIZE, preprocess=SPEC, raw=raw,
                        transform=train_transform(SIZE, generator=torch.Generator().manual_seed(4)))
            for raw in (False, True)]
    plain, raw = (list(DataLoader(dataset, batch_size=3)) for dataset in made)
    assert "image" not in raw[0] and raw[0]["pixels"].dtype == torch.uint8 and raw[0]["pixels"].shape == (3, SIZE, SIZE)
    torch.testing.assert_close(made[1].normalizer.batch(raw[0]["pixels"]), plain[0]["image"], rtol=0, atol=1e-6)
    torch.testing.assert_close(raw[0]["target"], plain[0]["target"])
    assert not torch.equal(raw[0]["pixels"][1], torch.from_numpy(made[1].pixels(1)))  # the transform was applied
