"""A realistic folder of good and malformed image files for tests (a helper module, not a test file).

:func:`build_mixed_folder` writes the folder; the small builders (``write_png``, ``crafted_png``,
``jpeg_bytes``, ``write_dicom``) are reused by the unit tests to make one-off files. Every DICOM carries
planted identifiers (:data:`PLANTED_NAME`, :data:`PLANTED_ID`...) so tests can check they never leak.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, RLELossless, generate_uid

PLANTED_NAME = "Doe^Janeplanted"
PLANTED_ID = "PHI-12345"
PLANTED_IDENTIFIERS = {
    "PatientName": PLANTED_NAME,
    "PatientID": PLANTED_ID,
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-PLANTED-77",
    "InstitutionName": "Planted General Hospital",
    "ReferringPhysicianName": "Referrer^Planted",
    "OperatorsName": "Operator^Planted",
    "StudyDate": "20240102",
    "StudyTime": "101112",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def gradient(height: int = 48, width: int = 64, dtype: type = np.uint8) -> np.ndarray:
    """A ramp over the dtype's whole range: distinct rows, so flips and inversions show."""
    top = np.iinfo(dtype).max
    return np.linspace(0, top, height * width).reshape(height, width).astype(dtype)


def image_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write_png(path: Path, image: Image.Image | np.ndarray) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path.write_bytes(image_bytes(image, "PNG"))
    return path


def jpeg_bytes(image: Image.Image | np.ndarray, quality: int = 95) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image_bytes(image, "JPEG", quality=quality)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png(width: int, height: int, idat: bytes, *, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG whose header says anything we like (valid CRCs), with arbitrary IDAT bytes and an IEND."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    transfer_syntax: UID | None = None,
    with_pixels: bool = True,
    patient_id: str = PLANTED_ID,
    study_uid: str | None = None,
    view: str = "PA",
) -> Path:
    """A DX DICOM (explicit VR little endian, or compressed by pydicom's own encoder) with planted PHI.

    ``pixels`` is (H, W), (frames, H, W), or (H, W, 3) with ``photometric="RGB"``.
    """
    color = photometric == "RGB"
    frames = pixels.shape[0] if pixels.ndim == (3 if not color else 4) else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for keyword, value in PLANTED_IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.PatientID = patient_id
    ds.Modality = "DX"
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if color else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if transfer_syntax and transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def build_mixed_folder(root: Path) -> tuple[list[str], dict[str, str]]:
    """Write good and malformed files into ``root``.

    Returns the names that must read (and index) fine, and for each bad name a substring of its reason.
    Every file written is in exactly one of the two. The permission-denied file is only written when
    ``chmod 000`` actually stops this process reading (not as root, which reads anything): otherwise it
    would be a good file pretending to be a bad one.
    """
    root.mkdir(parents=True, exist_ok=True)
    good: list[str] = []
    bad: dict[str, str] = {}

    def add_good(name: str, content: bytes | None = None) -> Path:
        path = root / name
        if content is not None:
            path.write_bytes(content)
        good.append(name)
        return path

    gray = gradient()
    rgb = np.dstack([gray, gray[::-1], np.full_like(gray, 40)])
    add_good("gray8.png", image_bytes(Image.fromarray(gray), "PNG"))
    narrow = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    add_good("gray16_narrow.png", image_bytes(Image.fromarray(narrow), "PNG"))
    add_good("rgb.png", image_bytes(Image.fromarray(rgb), "PNG"))
    add_good("rgba.png", image_bytes(Image.fromarray(np.dstack([rgb, np.full_like(gray, 200)])), "PNG"))
    add_good("palette.png", image_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    add_good("la.png", image_bytes(Image.fromarray(np.dstack([gray, np.full_like(gray, 255)])), "PNG"))
    add_good("photo.jpg", jpeg_bytes(gray))
    add_good("cmyk.jpg", jpeg_bytes(Image.fromarray(np.dstack([gray] * 4), "CMYK")))
    add_good("tórax ñ 1.png", image_bytes(Image.fromarray(gray), "PNG"))
    add_good("jpeg_named.png", jpeg_bytes(gray))

    deep = gradient(40, 32, np.uint16) >> 4  # 12 bits stored
    write_dicom(add_good("mono2_rescale.dcm"), deep, bits_stored=12, rescale=(2.0, -1024.0))
    write_dicom(add_good("mono1.dcm"), deep, bits_stored=12, photometric="MONOCHROME1")
    write_dicom(add_good("multiframe.dcm"), np.stack([deep, deep[::-1], deep // 2]), bits_stored=12)
    write_dicom(add_good("IM000123"), deep, bits_stored=12)
    if RLELosslessEncoder.is_available:
        write_dicom(add_good("rle.dcm"), deep, bits_stored=12, transfer_syntax=RLELossless)

    def add_bad(name: str, reason: str, content: bytes | None = None) -> Path:
        path = root / name
        if content is not None:
            path.write_bytes(content)
        bad[name] = reason
        return path

    add_bad("empty.png", "empty file (0 bytes)", b"")
    whole = image_bytes(Image.fromarray(gray), "PNG")
    add_bad("truncated.png", "truncated PNG (no IEND chunk)", whole[: len(whole) // 2])
    add_bad("notes.dcm", "not an image (text file)", b"Patient notes: chest film to follow.\n")
    write_dicom(add_bad("no_pixels.dcm", "DICOM file has no pixel data"), deep, with_pixels=False)
    add_bad("bomb.png", "30000x30000", crafted_png(30000, 30000, zlib.compress(b"\0" * 1024)))
    locked = add_bad("locked.png", "permission denied", whole)
    locked.chmod(0)
    if os.access(locked, os.R_OK):
        locked.chmod(0o600)
        locked.unlink()
        del bad["locked.png"]
    (root / "loop_a.png").symlink_to("loop_b.png")
    (root / "loop_b.png").symlink_to("loop_a.png")
    bad["loop_a.png"] = bad["loop_b.png"] = "symlink loop"
    return good, bad
