"""cxr_core.images.dicom through read_xray: display transforms, frames, colour, decoders, probing, and no PHI leaks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import JPEGLosslessSV1, RLELossless

from cxr_core import privacy
from cxr_core.errors import CorruptImage, ImageTooLarge, MissingDecoder, UnsupportedImage
from cxr_core.images import dicom, probe_xray, read_xray
from cxr_core.images.pixels import stretch_to_uint16
from tests.malformed import PLANTED_ID, PLANTED_IDENTIFIERS, PLANTED_NAME, build_mixed_folder, gradient, write_dicom

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DEEP = gradient(40, 32, np.uint16) >> 4  # 12-bit data in 16-bit words


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path_factory.mktemp("cxr_home")))
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", "ab" * 32)
    monkeypatch.delenv("CXR_MAX_PIXELS", raising=False)


def test_monochrome1_is_inverted_relative_to_monochrome2(tmp_path):
    mono2 = read_xray(write_dicom(tmp_path / "m2.dcm", DEEP, bits_stored=12)).pixels
    mono1 = read_xray(write_dicom(tmp_path / "m1.dcm", DEEP, bits_stored=12, photometric="MONOCHROME1")).pixels
    assert mono2.dtype == mono1.dtype == np.uint16
    assert mono2[0, 0] == 0 and mono2[-1, -1] == 65535  # the ramp, stretched to the full range
    assert np.array_equal(mono1, 65535 - mono2)


def test_rescale_then_window_is_applied(tmp_path):
    raw = np.array([[0, 1000, 2000, 3000]], np.uint16)
    # Rescaled: -1000, 1000, 3000, 5000. The window (centre 2000, width 2000) spans 1000..3000 in those units.
    pixels = read_xray(write_dicom(tmp_path / "w.dcm", raw, rescale=(2.0, -1000.0), window=(2000, 2000))).pixels
    assert pixels.tolist() == [[0, 0, 65535, 65535]]
    # Without the rescale, raw 2000 would sit mid-window: proof that the rescale ran before the window.
    unscaled = read_xray(write_dicom(tmp_path / "u.dcm", raw, window=(2000, 2000))).pixels
    assert 0 < unscaled[0, 2] < 65535


def test_negative_rescale_slope_inverts(tmp_path):
    plain = read_xray(write_dicom(tmp_path / "p.dcm", DEEP, bits_stored=12)).pixels
    negated = read_xray(write_dicom(tmp_path / "n.dcm", DEEP, bits_stored=12, rescale=(-1.0, 4095.0))).pixels
    assert np.abs(negated.astype(int) - (65535 - plain.astype(int))).max() <= 1  # float rounding


def test_8bit_dicom_without_lut_stays_uint8_and_unstretched(tmp_path):
    values = np.array([[10, 20], [30, 40]], np.uint8)
    mono2 = read_xray(write_dicom(tmp_path / "a.dcm", values))
    mono1 = read_xray(write_dicom(tmp_path / "b.dcm", values, photometric="MONOCHROME1"))
    identity = read_xray(write_dicom(tmp_path / "c.dcm", values, rescale=(1.0, 0.0)))
    assert mono2.pixels.dtype == np.uint8 and mono2.pixels.tolist() == values.tolist()
    assert mono1.pixels.tolist() == (255 - values).tolist()
    assert identity.pixels.dtype == np.uint8


def test_multiframe_uses_the_first_frame_and_counts_frames(tmp_path):
    frames = np.stack([DEEP, DEEP[::-1], DEEP // 2])
    xray = read_xray(write_dicom(tmp_path / "mf.dcm", frames, bits_stored=12))
    assert xray.info.frames == 3 and xray.info.dicom["NumberOfFrames"] == "3"
    assert xray.pixels.shape == DEEP.shape
    assert np.array_equal(xray.pixels, read_xray(write_dicom(tmp_path / "one.dcm", DEEP, bits_stored=12)).pixels)


def test_rgb_dicom_gives_luminance(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    xray = read_xray(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert xray.info.mode == "RGB" and xray.pixels.dtype == np.uint8 and xray.pixels[2, 2] == 76


@pytest.mark.skipif(not RLELosslessEncoder.is_available, reason="no RLE encoder to build the file")
def test_rle_compressed_reads_like_the_uncompressed_file(tmp_path):
    plain = read_xray(write_dicom(tmp_path / "plain.dcm", DEEP, bits_stored=12))
    rle = read_xray(write_dicom(tmp_path / "rle.dcm", DEEP, bits_stored=12, transfer_syntax=RLELossless))
    assert rle.info.dicom["TransferSyntaxUID"] == RLELossless
    assert np.array_equal(rle.pixels, plain.pixels)


def _fake_jpeg_lossless(path: Path) -> Path:
    write_dicom(path, DEEP, bits_stored=12)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not really a JPEG \xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    return path


def test_missing_decoder_names_the_syntax_and_the_pip_line(tmp_path, monkeypatch):
    path = _fake_jpeg_lossless(tmp_path / "lossless.dcm")
    with pytest.raises(CorruptImage, match="cannot decode DICOM pixel data"):
        read_xray(path)  # a decoder is installed here, and the data is junk
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})
    expected = "JPEG Lossless (1.2.840.10008.1.2.4.70) needs a decoder: pip install pylibjpeg pylibjpeg-libjpeg"
    for function in (probe_xray, read_xray):
        with pytest.raises(MissingDecoder) as caught:
            function(path)
        assert caught.value.reason == expected


def test_probe_never_decodes_pixels(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", DEEP, bits_stored=12, rescale=(2.0, -1024.0))
    monkeypatch.setattr(dicom, "pixel_array", lambda *a, **k: pytest.fail("probe decoded"))
    info = probe_xray(path)
    assert (info.format, info.width, info.height, info.bits, info.mode) == ("dicom", 32, 40, 12, "MONOCHROME2")


def test_truncated_dicoms_are_caught_by_the_cheap_probe(tmp_path):
    whole = write_dicom(tmp_path / "whole.dcm", DEEP, bits_stored=12).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-100])
    with pytest.raises(CorruptImage, match=r"truncated DICOM pixel data \(2,460 of 2,560 bytes\)"):
        probe_xray(tmp_path / "cut.dcm")
    if RLELosslessEncoder.is_available:
        rle = write_dicom(tmp_path / "rle.dcm", DEEP, bits_stored=12, transfer_syntax=RLELossless).read_bytes()
        (tmp_path / "rle_cut.dcm").write_bytes(rle[:-40])
        with pytest.raises(CorruptImage, match="compressed pixel data has no end marker"):
            probe_xray(tmp_path / "rle_cut.dcm")


def test_pixel_limit_counts_every_frame(tmp_path):
    path = write_dicom(tmp_path / "mf.dcm", np.stack([DEEP] * 3), bits_stored=12)
    assert probe_xray(path, max_pixels=40 * 32 * 3).frames == 3
    with pytest.raises(ImageTooLarge, match="32x40x3 frames = 3,840 pixels"):
        read_xray(path, max_pixels=40 * 32 * 3 - 1)


def test_info_carries_safe_fields_and_a_pseudonym_but_never_identifiers(tmp_path):
    root = tmp_path / "mixed"
    good, _ = build_mixed_folder(root)
    dicoms = [name for name in good if probe_xray(root / name).format == "dicom"]
    assert len(dicoms) >= 4
    planted = [value for value in PLANTED_IDENTIFIERS.values()] + ["Doe", "Janeplanted", "12345"]
    for name in dicoms:
        for info in (probe_xray(root / name), read_xray(root / name).info):
            assert info.dicom["Modality"] == "DX" and info.dicom["ViewPosition"] == "PA"
            assert info.dicom["PatientSex"] == "F" and info.dicom["PatientAge"] == "054Y"
            assert info.dicom["patient_key"] == privacy.pseudonym(PLANTED_ID)
            assert set(info.dicom) <= set(dicom.SAFE_FIELDS) | {"TransferSyntaxUID", "patient_key"}
            for value in planted:
                assert value not in repr(info), (name, value)


def test_same_patient_gets_the_same_key_and_others_a_different_one(tmp_path):
    first = probe_xray(write_dicom(tmp_path / "a.dcm", DEEP)).dicom["patient_key"]
    again = probe_xray(write_dicom(tmp_path / "b.dcm", DEEP)).dicom["patient_key"]
    other = probe_xray(write_dicom(tmp_path / "c.dcm", DEEP, patient_id="PHI-99999")).dicom["patient_key"]
    assert first == again != other


def test_dicom_identifiers_returns_the_planted_phi(tmp_path):
    path = write_dicom(tmp_path / "phi.dcm", DEEP)
    identifiers = dicom.dicom_identifiers(path)
    assert identifiers["PatientName"] == PLANTED_NAME and identifiers["PatientID"] == PLANTED_ID
    assert identifiers == PLANTED_IDENTIFIERS
    (tmp_path / "notes.dcm").write_text("just text")
    with pytest.raises(UnsupportedImage, match="not a DICOM file"):
        dicom.dicom_identifiers(tmp_path / "notes.dcm")


@pytest.mark.parametrize(
    ("name", "dtype", "mode"),
    [
        ("JPGExtended.dcm", np.uint16, "MONOCHROME2"),  # 12-bit JPEG Extended
        ("MR_small_jp2klossless.dcm", np.uint16, "MONOCHROME2"),
        ("SC_ybr_full_422_uncompressed.dcm", np.uint8, "YBR_FULL_422"),
        ("MR_small_bigendian.dcm", np.uint16, "MONOCHROME2"),
    ],
)
def test_pydicom_reference_files(name, dtype, mode):
    path = PYDICOM_TEST_FILES / name
    if not path.exists():
        pytest.skip(f"pydicom's {name} test file is not installed")
    xray = read_xray(path)
    assert (xray.pixels.dtype, xray.info.mode) == (dtype, mode)
    assert xray.pixels.shape == (xray.info.height, xray.info.width)


def test_non_image_dicom_has_no_pixel_data():
    path = PYDICOM_TEST_FILES / "test-SR.dcm"
    if not path.exists():
        pytest.skip("pydicom's test-SR.dcm test file is not installed")
    with pytest.raises(UnsupportedImage, match="DICOM file has no pixel data"):
        probe_xray(path)


def test_malformed_header_values_are_not_quoted_in_warnings_or_logs(tmp_path, caplog):
    path = write_dicom(tmp_path / "odd.dcm", DEEP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = dcmread(path)
        dataset.PatientAge = "54 years"  # not a valid AS: pydicom's validation would quote it
        dataset.PatientSex = "female"
        dataset.save_as(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = read_xray(path).info
    assert not caught and "54 years" not in caplog.text
    assert (info.dicom["PatientAge"], info.dicom["PatientSex"]) == ("54 years", "female")


@pytest.mark.parametrize(
    ("rescale", "window"),
    [((2.0, -1000.0), (1500, 4000)), ((0.5, 100.0), ([900, 400], [1200, 600])), (None, (2047.5, 1.5))],
)
def test_fast_rescale_and_window_match_pydicom(tmp_path, rescale, window):
    raw = np.random.default_rng(1).integers(0, 4096, (64, 48)).astype(np.uint16)
    path = write_dicom(tmp_path / "w.dcm", raw, bits_stored=12, rescale=rescale, window=window)
    dataset = dcmread(path)
    values = apply_modality_lut(dataset.pixel_array, dataset) if rescale else dataset.pixel_array
    reference = stretch_to_uint16(str(path), apply_voi_lut(values, dataset))
    assert np.abs(read_xray(path).pixels.astype(int) - reference).max() <= 1
