"""cxr_core.data.image_cache: build, reuse, incremental re-decode, failures, letterbox geometry, crash safety."""

from __future__ import annotations

import os
import pickle
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from cxr_core.data import image_cache as cache_mod
from cxr_core.data.image_cache import CacheBuildCancelled, ImageCache
from cxr_core.data.preprocess import letterbox, load_letterboxed
from cxr_core.errors import ImageReadError
from tests.malformed import write_png

SIZE = 32
SHAPES = [(40, 30), (30, 40), (32, 32), (64, 20), (20, 64), (48, 48), (33, 17), (17, 33), (50, 25), (25, 50), (64, 64)]


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, list[str]]:
    """Eleven readable PNGs of different shapes (most not square) and one truncated one."""
    base = tmp_path / "images"
    (base / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (h, w) in enumerate(SHAPES):
        name = f"sub/img{i:02d}.png" if i % 3 == 0 else f"img{i:02d}.png"
        write_png(base / name, rng.integers(1, 256, (h, w), dtype=np.uint8))
        names.append(name)
    good = (base / names[0]).read_bytes()
    (base / "broken.png").write_bytes(good[: len(good) // 2])
    return base, [*names, "broken.png"]


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the cache decoded an image it already had")

    from cxr_core.data import preprocess

    monkeypatch.setattr(preprocess, "read_xray", fail)  # what load_letterboxed, the cache's decoder, calls


def _rewrite(path: Path, pixels: np.ndarray) -> None:
    before = path.stat().st_mtime_ns
    write_png(path, pixels)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # coarse file system clocks must still see a change


def test_build_records_failures_and_reopens_without_decoding(folder, monkeypatch):
    base, names = folder
    cache = ImageCache.open_or_build(base, names, SIZE)
    assert cache.decoded == len(names)
    assert len(cache) == len(names) - 1 and "broken.png" not in cache
    assert "truncated" in cache.failures["broken.png"]
    assert cache.row("broken.png") is None
    with pytest.raises(ImageReadError, match="truncated"):
        cache.get("broken.png")
    with pytest.raises(KeyError):
        cache.get("never-asked.png")
    first = {name: cache.get(name).copy() for name in names[:-1]}

    _forbid_decoding(monkeypatch)
    again = ImageCache.open_or_build(base, names, SIZE)
    assert again.decoded == 0
    assert again.failures == cache.failures
    for name, pixels in first.items():
        got = again.get(name)
        assert got.shape == (SIZE, SIZE) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, pixels)


def test_cache_pixels_equal_uncached_decode(folder):
    base, names = folder
    cache = ImageCache.open_or_build(base, names, SIZE)
    for name in names[:-1]:
        np.testing.assert_array_equal(cache.get(name), load_letterboxed(base / name, SIZE))


def test_touched_file_is_decoded_again_and_only_it(folder, monkeypatch):
    base, names = folder
    ImageCache.open_or_build(base, names, SIZE)
    new = np.full((32, 32), 77, np.uint8)
    _rewrite(base / names[2], new)
    cache = ImageCache.open_or_build(base, names, SIZE)
    assert cache.decoded == 1
    np.testing.assert_array_equal(cache.get(names[2]), new)
    _forbid_decoding(monkeypatch)
    assert ImageCache.open_or_build(base, names, SIZE).decoded == 0


def test_failure_is_not_retried_until_the_file_changes(folder):
    base, names = folder
    ImageCache.open_or_build(base, names, SIZE)
    assert ImageCache.open_or_build(base, names, SIZE).decoded == 0
    _rewrite(base / "broken.png", np.full((10, 20), 9, np.uint8))
    fixed = ImageCache.open_or_build(base, names, SIZE)
    assert fixed.decoded == 1 and fixed.failures == {}
    assert fixed.get("broken.png")[SIZE // 2, SIZE // 2] == 9


def test_missing_file_is_a_failure_not_a_crash(folder):
    base, names = folder
    cache = ImageCache.open_or_build(base, [*names, "gone.png"], SIZE)
    assert cache.failures["gone.png"] == "file not found"


@pytest.mark.parametrize(("height", "width"), [(20, 40), (40, 20)])
def test_letterbox_keeps_aspect_centres_and_pads_with_zero(height, width):
    out = letterbox(np.full((height, width), 200, np.uint8), SIZE)
    assert out.shape == (SIZE, SIZE)
    short = SIZE * min(height, width) // max(height, width)  # 16
    start = (SIZE - short) // 2
    along = out if height < width else out.T  # make the padded axis the first one
    assert (along[:start] == 0).all() and (along[start + short :] == 0).all()
    assert (along[start : start + short] == 200).all()


def test_letterbox_downscales_and_centres_content():
    pixels = np.zeros((60, 120), np.uint8)
    pixels[:, :60] = 255  # left half bright: stays left, vertically centred after halving
    out = letterbox(pixels, 60)
    assert (out[:15] == 0).all() and (out[45:] == 0).all()
    assert out[15:45, :26].min() == 255 and out[15:45, 34:].max() == 0


def test_letterbox_of_a_square_image_of_the_right_size_is_identity():
    pixels = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    np.testing.assert_array_equal(letterbox(pixels, SIZE), pixels)


def test_crash_before_the_index_write_leaves_nothing_that_reads_as_valid(folder, monkeypatch):
    base, names = folder

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(cache_mod, "_write_index", crash)
        with pytest.raises(RuntimeError):
            ImageCache.open_or_build(base, names, SIZE)
    assert ImageCache.open_or_build(base, names, SIZE).decoded == len(names)

    new = np.full((16, 16), 33, np.uint8)
    _rewrite(base / names[1], new)
    with monkeypatch.context() as patch:
        patch.setattr(cache_mod, "_write_index", crash)
        with pytest.raises(RuntimeError):
            ImageCache.open_or_build(base, names, SIZE)
    cache = ImageCache.open_or_build(base, names, SIZE)
    assert cache.decoded == 1
    np.testing.assert_array_equal(cache.get(names[1]), np.full((SIZE, SIZE), 33, np.uint8))


def test_a_truncated_pixel_file_invalidates_the_index(folder):
    base, names = folder
    cache = ImageCache.open_or_build(base, names, SIZE)
    os.truncate(cache.directory / "pixels.u8", SIZE * SIZE)
    assert ImageCache.open_or_build(base, names, SIZE).decoded == len(names)


def test_rows_are_shared_between_calls_with_different_relpaths(folder, monkeypatch):
    base, names = folder
    first = ImageCache.open_or_build(base, names[:5], SIZE)
    second = ImageCache.open_or_build(base, names[3:], SIZE)
    assert second.decoded == len(names) - 5
    assert second.row(names[0]) == first.row(names[0])
    _forbid_decoding(monkeypatch)
    assert ImageCache.open_or_build(base, names, SIZE).decoded == 0


def test_cancel_keeps_finished_rows(folder, monkeypatch):
    base, names = folder
    monkeypatch.setattr(cache_mod, "_CHUNK", 4)
    cancel = threading.Event()

    def progress(done, total):
        if done >= 4:
            cancel.set()

    with pytest.raises(CacheBuildCancelled, match="4 of 12"):
        ImageCache.open_or_build(base, names, SIZE, progress=progress, cancel=cancel)
    assert ImageCache.open_or_build(base, names, SIZE).decoded == len(names) - 4


def test_parallel_build_matches_serial(folder, tmp_path):
    base, names = folder
    seen = []
    parallel = ImageCache.open_or_build(base, names, SIZE, workers=2, root=tmp_path / "p",
                                        progress=lambda done, total: seen.append((done, total)))
    serial = ImageCache.open_or_build(base, names, SIZE, root=tmp_path / "s")
    assert seen[-1] == (len(names), len(names))
    assert parallel.failures == serial.failures
    for name in names[:-1]:
        np.testing.assert_array_equal(parallel.get(name), serial.get(name))


def test_pickles_without_pixels_and_is_private(folder, cxr_home):
    base, names = folder
    cache = ImageCache.open_or_build(base, names, SIZE)
    cache.get(names[0])
    payload = pickle.dumps(cache)
    assert len(payload) < SIZE * SIZE * 4
    np.testing.assert_array_equal(pickle.loads(payload).get(names[4]), cache.get(names[4]))
    for path in (cxr_home / "cache", cache.directory.parent, cache.directory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for name in ("pixels.u8", "index.json"):
        assert stat.S_IMODE((cache.directory / name).stat().st_mode) == 0o600
