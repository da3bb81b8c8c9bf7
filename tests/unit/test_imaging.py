"""cxr_core.images: formats by content, deep and colour PNG/JPEG, typed errors, bombs, probing, .npz members."""

from __future__ import annotations

import errno
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from pydicom import dcmread
from pydicom.encaps import generate_frames

from cxr_core import images as imaging
from cxr_core.errors import CorruptImage, DataError, ImageReadError, ImageTooLarge, UnsupportedImage
from cxr_core.images import probe_xray, read_xray
from tests.malformed import build_mixed_folder, crafted_png, gradient, image_bytes, jpeg_bytes, write_dicom, write_png

EXPECTED_ERROR_TYPES = {
    "empty.png": CorruptImage,
    "truncated.png": CorruptImage,
    "notes.dcm": UnsupportedImage,
    "no_pixels.dcm": UnsupportedImage,
    "bomb.png": ImageTooLarge,
    "locked.png": ImageReadError,
    "loop_a.png": ImageReadError,
    "loop_b.png": ImageReadError,
}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path_factory.mktemp("cxr_home")))
    monkeypatch.delenv("CXR_MAX_PIXELS", raising=False)
    monkeypatch.delenv("CXR_PSEUDONYM_KEY", raising=False)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    good, bad = build_mixed_folder(root)
    return root, good, bad


def test_every_good_file_reads_and_probes_the_same(mixed):
    root, good, _ = mixed
    for name in good:
        xray = read_xray(root / name)
        info = probe_xray(root / name)
        assert xray.info == info, name
        assert xray.pixels.shape == (info.height, info.width), name
        assert xray.pixels.dtype in (np.uint8, np.uint16), name
        assert not xray.pixels.flags.writeable, name
        assert xray.path == str(root / name)


def test_every_bad_file_raises_its_typed_error_naming_the_path(mixed):
    root, _, bad = mixed
    assert {"empty.png", "truncated.png", "notes.dcm", "no_pixels.dcm", "bomb.png", "loop_a.png"} <= bad.keys()
    for name, reason in bad.items():
        for function in (read_xray, probe_xray):
            with pytest.raises(EXPECTED_ERROR_TYPES[name]) as caught:
                function(root / name)
            assert reason in caught.value.reason, (name, caught.value.reason)
            assert str(caught.value).startswith(f"{root / name}: "), name


def test_jpeg_named_png_is_read_by_content_with_a_warning(mixed):
    root, good, _ = mixed
    assert "jpeg_named.png" in good
    xray = read_xray(root / "jpeg_named.png")
    assert xray.info.format == "jpeg"
    assert "content is JPEG but the name says .png" in xray.info.warnings
    assert imaging.sniff_format(root / "jpeg_named.png") == "jpeg"


def test_16bit_png_keeps_its_dynamic_range(mixed):
    root, _, _ = mixed
    source = np.asarray(Image.open(root / "gray16_narrow.png")).astype(np.int64)
    pixels = read_xray(root / "gray16_narrow.png").pixels
    assert pixels.dtype == np.uint16
    assert (pixels.min(), pixels.max()) == (0, 65535)
    assert len(np.unique(pixels)) == len(np.unique(source)) > 256
    expected = np.rint((source - source.min()) * 65535 / (source.max() - source.min()))
    assert np.abs(pixels - expected).max() <= 1  # float32 rounding


def test_16bit_png_using_the_full_range_is_unchanged(tmp_path):
    values = np.array([[0, 1, 2, 65533], [65534, 65535, 30000, 40000]], np.uint16)
    pixels = read_xray(write_png(tmp_path / "full.png", values)).pixels
    assert np.array_equal(pixels, values)


def test_flat_16bit_png_stays_flat(tmp_path):
    pixels = read_xray(write_png(tmp_path / "flat.png", np.full((8, 8), 1234, np.uint16))).pixels
    assert pixels.dtype == np.uint16 and np.all(pixels == pixels[0, 0])


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGB", (4, 4), (255, 0, 0)), 76),
        (Image.new("RGBA", (4, 4), (200, 100, 50, 128)), 124),  # alpha dropped, not composited
        (Image.new("LA", (4, 4), (100, 50)), 100),
        (Image.new("1", (4, 4), 1), 255),
    ],
)
def test_colour_and_alpha_pngs_give_luminance(tmp_path, image, expected):
    xray = read_xray(write_png(tmp_path / "x.png", image))
    assert xray.pixels.dtype == np.uint8
    assert xray.pixels[1, 1] == expected


def test_palette_png_gives_the_luminance_of_the_palette_colour(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    assert read_xray(write_png(tmp_path / "p.png", image)).pixels[0, 0] == 150  # 0.587 * 255


@pytest.mark.parametrize(("cmyk", "expected"), [((0, 0, 0, 0), 255), ((0, 0, 0, 255), 0), ((255, 0, 0, 0), 179)])
def test_adobe_cmyk_jpeg_gives_luminance(tmp_path, cmyk, expected):
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(jpeg_bytes(Image.new("CMYK", (16, 16), cmyk)))
    xray = read_xray(path)
    assert xray.info.mode == "CMYK"
    assert abs(int(xray.pixels[8, 8]) - expected) <= 3


def test_12bit_jpeg_goes_through_libjpeg_and_keeps_its_depth(tmp_path):
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "JPGExtended.dcm"
    if not source.exists():
        pytest.skip("pydicom's JPGExtended.dcm test file is not installed")
    libjpeg = pytest.importorskip("libjpeg")
    path = tmp_path / "deep.jpg"
    path.write_bytes(next(generate_frames(dcmread(source).PixelData)))
    stored = libjpeg.decode(path.read_bytes())
    assert stored.max() > 255  # the file really uses more than 8 bits
    xray = read_xray(path)
    assert (xray.info.bits, xray.info.mode, xray.pixels.dtype) == (12, "I;16", np.uint16)
    assert (xray.pixels.min(), xray.pixels.max()) == (0, 65535)
    assert len(np.unique(xray.pixels)) == len(np.unique(stored))


def test_truncated_jpeg_is_corrupt_but_trailing_padding_is_fine(tmp_path):
    whole = jpeg_bytes(gradient())
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) - 200])
    (tmp_path / "padded.jpg").write_bytes(whole + b"\0" * 300)
    with pytest.raises(CorruptImage, match="truncated JPEG"):
        probe_xray(tmp_path / "cut.jpg")
    assert read_xray(tmp_path / "padded.jpg").pixels.shape == (48, 64)


def test_bytes_after_png_end_are_a_warning(tmp_path):
    path = tmp_path / "trailing.png"
    path.write_bytes(image_bytes(Image.fromarray(gradient()), "PNG") + b"junk")
    assert read_xray(path).info.warnings == ("4 bytes after the PNG end chunk",)


def test_bomb_is_refused_from_the_header_without_decoding(mixed, monkeypatch):
    root, _, _ = mixed
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded a bomb"))
    assert (root / "bomb.png").stat().st_size < 2000
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"30000x30000 = 900,000,000 pixels, over the limit of 67,108,864"):
        read_xray(root / "bomb.png")
    assert time.perf_counter() - started < 0.05


def test_pixel_limit_per_call_and_from_the_environment(tmp_path, monkeypatch):
    path = write_png(tmp_path / "small.png", gradient())  # 64x48 = 3072 pixels
    assert read_xray(path, max_pixels=3072).pixels.shape == (48, 64)
    with pytest.raises(ImageTooLarge, match="3,072 pixels, over the limit of 3,071"):
        read_xray(path, max_pixels=3071)
    monkeypatch.setenv("CXR_MAX_PIXELS", "1000")
    with pytest.raises(ImageTooLarge):
        probe_xray(path)
    monkeypatch.setenv("CXR_MAX_PIXELS", "lots")
    with pytest.raises(DataError, match="CXR_MAX_PIXELS"):
        probe_xray(path)


def test_probe_reads_headers_only_and_verify_decodes(tmp_path, mixed, monkeypatch):
    garbage = tmp_path / "garbage_idat.png"
    garbage.write_bytes(crafted_png(64, 64, b"definitely not zlib data" * 4))
    assert probe_xray(garbage).width == 64
    with pytest.raises(CorruptImage, match="damaged PNG data"):
        probe_xray(garbage, verify=True)
    with pytest.raises(CorruptImage):
        read_xray(garbage)

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("probe decoded"))
    root, good, _ = mixed
    for name in good:
        probe_xray(root / name)


def test_probe_is_much_cheaper_than_a_decode(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    path = write_png(tmp_path / "noise.png", noise)
    started = time.perf_counter()
    for _ in range(100):
        probe_xray(path)
    assert time.perf_counter() - started < 0.1  # one decode of this file alone takes ~10 ms


def test_filesystem_failures_are_typed(tmp_path, monkeypatch):
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    cases = {"folder.png": "is a directory", "pipe.png": "not a regular file", "dangling.png": "broken symlink",
             "absent.png": "file not found"}  # fmt: skip
    for name, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason):
            read_xray(tmp_path / name)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ImageReadError, match="permission denied"):
        probe_xray(tmp_path / "any.png")


def test_other_formats_and_binary_junk_are_unsupported(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"II*\x00" + bytes(100))
    (tmp_path / "junk.jpg").write_bytes(bytes(range(256)) * 2)
    with pytest.raises(UnsupportedImage, match=r"unsupported format \(TIFF\)"):
        read_xray(tmp_path / "scan.png")
    with pytest.raises(UnsupportedImage, match="unrecognised content"):
        read_xray(tmp_path / "junk.jpg")


def test_sniff_and_looks_like_image(tmp_path, mixed):
    root, _, _ = mixed
    assert [imaging.sniff_format(root / n) for n in ("gray8.png", "photo.jpg", "IM000123", "notes.dcm")] == [
        "png", "jpeg", "dicom", None,
    ]  # fmt: skip
    (tmp_path / "README").write_text("not a dicom")
    (tmp_path / "1.2.840.113619.2.55").write_bytes((root / "IM000123").read_bytes())
    assert imaging.looks_like_image(tmp_path / "CHEST.PNG")
    assert imaging.looks_like_image(root / "IM000123")
    assert imaging.looks_like_image(tmp_path / "1.2.840.113619.2.55")
    assert not imaging.looks_like_image(tmp_path / "README")
    assert not imaging.looks_like_image(tmp_path / "labels.csv")


def test_as_float_and_as_uint8_scale_without_clipping(tmp_path):
    deep = read_xray(write_png(tmp_path / "deep.png", np.array([[0, 256, 65535]], np.uint16)))
    assert deep.as_float().dtype == np.float32
    assert deep.as_float().tolist() == [[0.0, pytest.approx(256 / 65535), 1.0]]
    assert deep.as_uint8().tolist() == [[0, 1, 255]]
    flat8 = read_xray(write_png(tmp_path / "eight.png", np.array([[0, 255]], np.uint8)))
    assert flat8.as_uint8() is flat8.pixels
    assert flat8.as_float().tolist() == [[0.0, 1.0]]


@pytest.fixture
def archives(tmp_path):
    images = np.stack([gradient(28, 28) // (i + 1) for i in range(5)])
    stored = tmp_path / "chestmnist.npz"
    np.savez(stored, train_images=images, train_labels=np.arange(5))
    compressed = tmp_path / "packed.npz"
    np.savez_compressed(compressed, rgb=np.stack([np.full((8, 8, 3), (255, 0, 0), np.uint8)] * 2))
    return images, stored, compressed


def test_npz_members_read_and_probe(archives):
    images, stored, compressed = archives
    xray = read_xray(f"{stored}::train_images/3")
    assert np.array_equal(xray.pixels, images[3])
    assert not xray.pixels.flags.writeable
    assert probe_xray(f"{stored}::train_images/4") == imaging.ImageInfo("npz", 28, 28, mode="L")
    assert read_xray(f"{compressed}::rgb/1").pixels[0, 0] == 76
    assert probe_xray(f"{compressed}::rgb/0").mode == "RGB"


def test_npz_cache_follows_a_rewritten_archive(archives):
    _, stored, _ = archives
    before = read_xray(f"{stored}::train_images/0").pixels.copy()
    np.savez(stored, train_images=np.zeros((1, 28, 28), np.uint8))
    os.utime(stored, ns=(time.time_ns() + 10**9,) * 2)
    assert before.any() and not read_xray(f"{stored}::train_images/0").pixels.any()


def test_npz_errors_are_typed(archives, tmp_path):
    _, stored, _ = archives
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, objects=np.array([[None]], dtype=object).reshape(1, 1, 1))
    cases = {
        f"{stored}::train_images/5": (ImageReadError, "index 5 out of range"),
        f"{stored}::test_images/0": (ImageReadError, "no array 'test_images'"),
        f"{stored}::train_labels/0": (UnsupportedImage, "expected (N, H, W)"),
        f"{stored}::train_images": (UnsupportedImage, "file.npz::array/index"),
        f"{tmp_path}/missing.npz::x/0": (ImageReadError, "file not found"),
        f"{pickled}::objects/0": (UnsupportedImage, "pickled Python objects"),
    }
    for ref, (error_type, reason) in cases.items():
        for function in (read_xray, probe_xray):
            with pytest.raises(error_type) as caught:
                function(ref)
            assert reason in caught.value.reason and str(caught.value).startswith(ref + ": ")


def _seed_files(tmp_path_factory) -> list[tuple[str, bytes]]:
    folder = tmp_path_factory.mktemp("seeds")
    dicom = write_dicom(folder / "seed.dcm", gradient(8, 8, np.uint16), rescale=(1.5, -10.0), window=(100, 50))
    return [
        (".png", image_bytes(Image.fromarray(gradient(8, 8)), "PNG")),
        (".png", image_bytes(Image.fromarray(gradient(8, 8, np.uint16)), "PNG")),
        (".jpg", jpeg_bytes(gradient(8, 8))),
        (".dcm", dicom.read_bytes()),
    ]


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz"), _seed_files(tmp_path_factory)


@st.composite
def damaged_files(draw, seeds):
    suffix, seed = draw(st.sampled_from(seeds))
    kind = draw(st.sampled_from(["random", "truncate", "overwrite", "insert"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=600))
    data = bytearray(seed)
    position = draw(st.integers(0, len(data)))
    if kind == "truncate":
        return suffix, bytes(data[:position])
    patch = draw(st.binary(min_size=1, max_size=16))
    if kind == "overwrite":
        data[position : position + len(patch)] = patch
    else:
        data[position:position] = patch
    return suffix, bytes(data)


def test_damaged_bytes_only_ever_raise_image_read_errors(fuzz_setup):
    folder, seeds = fuzz_setup

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(damaged_files(seeds))
    def check(case):
        suffix, content = case
        path = folder / f"case{suffix}"
        path.write_bytes(content)
        for function in (probe_xray, read_xray):
            try:
                function(path, max_pixels=1_000_000)
            except ImageReadError as err:
                assert str(path) in str(err)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every odd value it meets
        check()


@pytest.mark.real_data
def test_real_nih_pngs_read_as_1024_square_uint8(real_data):
    paths = sorted((real_data / "nih-sample" / "images_001" / "images").glob("*.png"))[:3]
    if not paths:
        pytest.skip(f"no NIH sample PNGs under {real_data}")
    for path in paths:
        xray = read_xray(path)
        assert (xray.pixels.shape, xray.pixels.dtype) == ((1024, 1024), np.uint8)
        assert probe_xray(path) == xray.info
        assert xray.pixels.std() > 10  # a real radiograph, not a flat fill



@pytest.fixture()
def decoders():
    """cxr_core.images.raster with its decoder choice restored afterwards."""
    from cxr_core.images import raster

    previous = raster.force_decoder(None)
    yield raster
    raster.force_decoder(previous)


def _plain_grey_files(folder: Path) -> list[Path]:
    """Grey files as exports come (8/16-bit grey PNG, 8-bit grey JPEG), and relatives decoded the other way."""
    rng = np.random.default_rng(3)
    noisy = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    twelve = (gradient(70, 90, np.uint16) >> 4) + rng.integers(0, 16, (70, 90), dtype=np.uint16)  # 12 bits stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": the stored pixels are the data, as Pillow reads them
    with_alpha = Image.fromarray(noisy).convert("LA")
    files = {
        "grey8.png": image_bytes(Image.fromarray(noisy), "PNG"),
        "grey8_smooth.png": image_bytes(Image.fromarray(gradient(70, 90)), "PNG", optimize=True),
        "grey8_transparent.png": image_bytes(Image.fromarray(noisy), "PNG", transparency=7),
        "grey16_12bit.png": image_bytes(Image.fromarray(twelve), "PNG"),
        "grey16_full.png": image_bytes(Image.fromarray(gradient(70, 90, np.uint16)), "PNG"),
        "grey16_flat.png": image_bytes(Image.fromarray(np.full((20, 30), 700, np.uint16)), "PNG"),
        "grey.jpg": jpeg_bytes(noisy),
        "progressive.jpg": image_bytes(Image.fromarray(gradient(70, 90)), "JPEG", progressive=True, quality=80),
        "exif_rotated.jpg": image_bytes(Image.fromarray(noisy), "JPEG", quality=90, exif=exif),
        "grey_alpha.png": image_bytes(with_alpha, "PNG"),
        "palette.png": image_bytes(Image.fromarray(noisy).convert("P"), "PNG"),
        "colour.jpg": jpeg_bytes(Image.fromarray(noisy).convert("RGB")),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def test_decoding_into_numpy_gives_the_copys_pixels(tmp_path, decoders):
    files = _plain_grey_files(tmp_path)
    decoders.force_decoder("pillow-copy")
    expected = {path.name: read_xray(path) for path in files}
    assert decoders.available_decoders()[0] == "pillow"
    for name in decoders.available_decoders():
        decoders.force_decoder(name)
        assert decoders.decoder_name() == name
        for path in files:
            got = read_xray(path)
            assert got.pixels.dtype == expected[path.name].pixels.dtype, (name, path.name)
            np.testing.assert_array_equal(got.pixels, expected[path.name].pixels, err_msg=f"{name} {path.name}")
            assert got.info == expected[path.name].info, (name, path.name)
            assert not got.pixels.flags.writeable, (name, path.name)


def test_grey_files_are_decoded_into_the_returned_array(tmp_path, decoders, monkeypatch):
    """No copy: the array Pillow decoded into is the one returned (8-bit as is; 16-bit goes to the stretch)."""
    made = []
    real = decoders._into_numpy
    monkeypatch.setattr(decoders, "_into_numpy", lambda image: made.append(real(image)) or made[-1])
    decoders.force_decoder(None)
    for path in _plain_grey_files(tmp_path):
        pixels = read_xray(path).pixels
        target = made[-1]
        if path.name.startswith("grey8") or path.name.endswith("grey.jpg"):
            assert target is not None and np.shares_memory(pixels, target[0]), path.name
        elif path.name.startswith(("grey_alpha", "palette", "colour")):
            assert target is None, path.name  # other modes: Pillow's own buffer, converted
    assert sum(t is not None for t in made) == 9  # 3 grey PNGs + 3 16-bit PNGs + 3 grey JPEGs


def test_damaged_files_get_the_same_verdict_either_way(tmp_path, decoders):
    data = bytearray(image_bytes(Image.fromarray(gradient(64, 64)), "PNG"))
    data[60] ^= 0xFF  # inside the compressed pixels; header and IEND intact
    (tmp_path / "damaged.png").write_bytes(bytes(data))
    deep = bytearray(image_bytes(Image.fromarray(gradient(64, 64, np.uint16)), "PNG"))
    deep[70] ^= 0xFF
    (tmp_path / "damaged16.png").write_bytes(bytes(deep))
    whole = image_bytes(Image.fromarray(gradient(64, 64)), "PNG")
    (tmp_path / "short_idat.png").write_bytes(whole[:-40] + whole[-12:])  # pixel data cut, IEND kept
    reasons: dict[str, set[str]] = {}
    for name in decoders.available_decoders():
        decoders.force_decoder(name)
        for path in sorted(tmp_path.iterdir()):
            with pytest.raises(CorruptImage) as caught:
                read_xray(path)
            reasons.setdefault(path.name, set()).add(caught.value.reason)
    assert all(len(found) == 1 for found in reasons.values()), reasons
    assert all(next(iter(found)).startswith("damaged PNG data") for found in reasons.values()), reasons


def test_decoder_can_be_chosen_by_environment(tmp_path, decoders, monkeypatch):
    path = write_png(tmp_path / "a.png", gradient())
    monkeypatch.setenv(decoders.DECODER_ENV, "pillow-copy")
    assert decoders.decoder_name() == "pillow-copy"
    assert read_xray(path).pixels.shape == (48, 64)
    monkeypatch.setenv(decoders.DECODER_ENV, "fastest-please")
    with pytest.raises(DataError, match="CXR_IMAGE_DECODER must be"):
        read_xray(path)
    with pytest.raises(ValueError):
        decoders.force_decoder("fastest-please")


@pytest.mark.real_data
def test_real_nih_pngs_decode_the_same_either_way(real_data, decoders):
    paths = sorted((real_data / "nih-sample" / "images_001" / "images").glob("*.png"))[:4]
    if not paths:
        pytest.skip(f"no NIH sample PNGs under {real_data}")
    decoders.force_decoder("pillow-copy")
    expected = [read_xray(p).pixels for p in paths]
    for name in decoders.available_decoders():
        decoders.force_decoder(name)
        for path, pixels in zip(paths, expected, strict=True):
            np.testing.assert_array_equal(read_xray(path).pixels, pixels, err_msg=f"{name} {path.name}")
