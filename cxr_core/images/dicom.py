"""The DICOM path of :mod:`cxr_core.images.read`: cheap header probing, pixel decoding and display transforms.

:mod:`cxr_core.images.read` imports this module only when it meets a DICOM file, because importing pydicom
costs about a third of a second and most data sets are PNG.

Header fields are split in two. :data:`SAFE_FIELDS` travel in :attr:`ImageInfo.dicom`, which is indexed, shown
and exported; the patient appears there only as a keyed pseudonym (``patient_key``, see
:mod:`cxr_core.privacy`). :data:`IDENTIFYING_FIELDS` are returned by :func:`dicom_identifiers` alone, for an
explicit request such as ``--show-phi``.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from cxr_core import privacy
from cxr_core.errors import CorruptImage, ImageReadError, MissingDecoder, UnsupportedImage
from cxr_core.images.pixels import (
    ImageInfo,
    brief_error,
    check_pixel_count,
    luminance,
    open_image_file,
    stretch_to_uint16,
)

SAFE_FIELDS = (
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "PhotometricInterpretation",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientSex",
    "PatientAge",
    "BitsStored",
    "NumberOfFrames",
)
IDENTIFYING_FIELDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
)
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
# Transfer syntax -> (short name, what to pip install when no installed plugin decodes it).
_DECODERS = {
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline", _LIBJPEG),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended", _LIBJPEG),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", _LIBJPEG),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless", _LIBJPEG),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", _LIBJPEG),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near Lossless", _LIBJPEG),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", _OPENJPEG),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", _OPENJPEG),
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", _OPENJPEG),
    "1.2.840.10008.1.2.4.202": ("HTJ2K Lossless RPCL", _OPENJPEG),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", _OPENJPEG),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "pylibjpeg pylibjpeg-rle"),
}
_SUPPORTED_PHOTOMETRIC = frozenset(
    {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420",
     "PALETTE COLOR"}
)  # fmt: skip
# Explicit VR is told from implicit by the bytes, not the transfer syntax, because some writers mislabel it
# (pydicom does the same). Unambiguous: as an implicit length these bytes would be odd, which DICOM forbids.
_PIXEL_DATA_VRS = frozenset({b"OB", b"OW", b"UN"})
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_TAIL_BYTES = 1024
_NO_PIXELS = "DICOM file has no pixel data"
_T = TypeVar("_T")

# pydicom warns and logs each malformed value it meets, quoting it ("Invalid value for VR DA: '2019.01.01'"):
# noise over thousands of hospital files, and header values do not belong in logs. Decoding is unaffected.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


@dataclass(frozen=True)
class _Header:
    """The header values the probe and the decoder need, read once under one error guard."""

    syntax: UID
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    fields: dict[str, str]
    patient_id: str

    @property
    def native_pixel_bytes(self) -> int | None:
        """Bytes of uncompressed pixel data the header implies; None where subsampling makes it vary."""
        if self.photometric.endswith(("_422", "_420")):
            return None
        samples = self.rows * self.columns * self.frames * self.samples
        return (samples * self.bits_allocated + 7) // 8

    def info(self) -> ImageInfo:
        fields = dict(self.fields)
        if self.patient_id:
            fields["patient_key"] = privacy.pseudonym(self.patient_id)
        return ImageInfo(
            "dicom", self.columns, self.rows, self.frames, self.bits_stored, self.photometric, dicom=fields
        )


def probe_dicom(f: BinaryIO, size: int, path: str, limit: int) -> ImageInfo:
    """Header and pixel-data framing only: pixel bytes are skipped, never read or decoded."""
    return _probe(f, size, path, limit).info()


def read_dicom(f: BinaryIO, size: int, path: str, limit: int) -> tuple[np.ndarray, ImageInfo]:
    """First frame, through Modality LUT/rescale, VOI LUT/window, MONOCHROME1 inversion, to uint8/uint16."""
    header = _probe(f, size, path, limit)
    info = header.info()
    dataset = _read_dataset(f, path, stop_before_pixels=False)
    dataset.file_meta.TransferSyntaxUID = header.syntax
    try:
        frame = pixel_array(dataset, index=0)
    except BaseException as err:  # pylibjpeg-rle is Rust: bad input makes it panic, which is no Exception
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise CorruptImage(path, f"cannot decode DICOM pixel data ({brief_error(err)})") from None
    return _display_pixels(path, dataset, frame, header), info


def dicom_identifiers(path: str | os.PathLike[str]) -> dict[str, str]:
    """The identifying header fields (name, IDs, dates, institution, staff) present in a DICOM file.

    Only for an explicit user request to see them: nothing else in cxr shows, logs or exports these.
    """
    name = os.fspath(path)
    with open_image_file(name) as (f, _):
        if f.read(132)[128:] != b"DICM":
            raise UnsupportedImage(name, "not a DICOM file")
        dataset = _read_dataset(f, name, stop_before_pixels=True)
    return _guarded_header(name, lambda: _text_fields(dataset, IDENTIFYING_FIELDS))


def _probe(f: BinaryIO, size: int, path: str, limit: int) -> _Header:
    """Pixel data first, so that a structured report or RT plan is "no pixel data", not "lacks Rows"."""
    dataset = _read_dataset(f, path, stop_before_pixels=True)
    syntax = _guarded_header(path, lambda: _transfer_syntax(path, dataset))
    if syntax == DeflatedExplicitVRLittleEndian:  # a zlib-compressed dataset: no cheap look at the pixels
        if "PixelData" not in _read_dataset(f, path, stop_before_pixels=False):
            raise UnsupportedImage(path, _NO_PIXELS)
        pixel_bytes = None
    else:
        pixel_bytes = _pixel_data_length(f, size, path, syntax)
    header = _guarded_header(path, lambda: _header(path, dataset, syntax))
    expected = header.native_pixel_bytes
    if pixel_bytes is not None and expected is not None and pixel_bytes < expected:
        shortfall = f"{pixel_bytes:,} of {expected:,} bytes"
        raise CorruptImage(path, f"DICOM pixel data is shorter than its header says ({shortfall})")
    check_pixel_count(path, header.columns, header.rows, header.frames, limit)
    _require_decoder(path, syntax)
    return header


def _read_dataset(f: BinaryIO, path: str, *, stop_before_pixels: bool) -> Dataset:
    f.seek(0)
    try:
        return pydicom.dcmread(f, stop_before_pixels=stop_before_pixels)
    except Exception as err:
        raise CorruptImage(path, f"unreadable DICOM header ({brief_error(err)})") from None


def _guarded_header(path: str, read: Callable[[], _T]) -> _T:
    """pydicom converts raw header values lazily, so a malformed value raises on first access."""
    try:
        return read()
    except ImageReadError:
        raise
    except Exception as err:
        raise CorruptImage(path, f"bad DICOM header value ({brief_error(err)})") from None


def _header(path: str, dataset: Dataset, syntax: UID) -> _Header:
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if dataset.get(keyword) in (None, "", 0):
            raise CorruptImage(path, f"DICOM header lacks {keyword}")
    photometric = str(dataset.PhotometricInterpretation).strip().upper()
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise UnsupportedImage(path, f"DICOM photometric interpretation {photometric!r} is not supported")
    bits_allocated = int(dataset.BitsAllocated)
    fields = {"TransferSyntaxUID": str(syntax), **_text_fields(dataset, SAFE_FIELDS)}
    return _Header(
        syntax=syntax,
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
        frames=max(1, int(dataset.get("NumberOfFrames") or 1)),
        samples=int(dataset.get("SamplesPerPixel") or 1),
        bits_allocated=bits_allocated,
        bits_stored=int(dataset.get("BitsStored") or bits_allocated),
        photometric=photometric,
        fields=fields,
        patient_id=str(dataset.get("PatientID") or "").strip(),
    )


def _transfer_syntax(path: str, dataset: Dataset) -> UID:
    """The file meta's transfer syntax, or for files without one, the encoding pydicom detected."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if not syntax:
        implicit_vr, little_endian = dataset.original_encoding
        if implicit_vr:
            return ImplicitVRLittleEndian
        return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    syntax = UID(str(syntax).strip())
    if syntax not in AllTransferSyntaxes:
        # Never echo the value unless it is a UID: a damaged length can make it swallow the whole header,
        # patient identifiers included (found by tests/unit/test_fuzz.py).
        shown = str(syntax) if re.fullmatch(r"[0-9.]{1,64}", str(syntax)) else "(not a UID: damaged file meta header?)"
        raise UnsupportedImage(path, f"unknown DICOM transfer syntax {shown}")
    return syntax


def _text_fields(dataset: Dataset, keywords: tuple[str, ...]) -> dict[str, str]:
    fields = {}
    for keyword in keywords:
        value = dataset.get(keyword)
        if isinstance(value, MultiValue):
            value = "\\".join(str(item) for item in value)
        text = "" if value is None else str(value).strip()
        if text:
            fields[keyword] = text
    return fields


def _pixel_data_length(f: BinaryIO, size: int, path: str, syntax: UID) -> int | None:
    """Check the pixel data element's framing, where ``dcmread(stop_before_pixels=True)`` left the file,
    without reading the pixels: a partly copied file is caught for the cost of two small reads.

    Returns the length of native pixel data, None for compressed (encapsulated) data.
    """
    start = f.tell()
    element = f.read(12)
    if len(element) < 8:
        raise UnsupportedImage(path, _NO_PIXELS)
    order = "<" if syntax.is_little_endian else ">"
    group, number = struct.unpack(order + "HH", element[:4])
    if group == 0x7FE0 and number in (0x0008, 0x0009):
        raise UnsupportedImage(path, "DICOM float pixel data is not supported")
    if (group, number) != (0x7FE0, 0x0010):
        raise CorruptImage(path, f"damaged DICOM (unreadable data element at byte {start})")
    if element[4:6] in _PIXEL_DATA_VRS:
        if len(element) < 12:
            raise CorruptImage(path, "truncated DICOM pixel data")
        (length,), value_start = struct.unpack(order + "I", element[8:12]), start + 12
    else:
        (length,), value_start = struct.unpack(order + "I", element[4:8]), start + 8
    if length == 0xFFFFFFFF:
        f.seek(max(0, size - _TAIL_BYTES))
        if _SEQUENCE_DELIMITER not in f.read(_TAIL_BYTES):
            raise CorruptImage(path, "truncated DICOM (compressed pixel data has no end marker)")
        return None
    if length == 0:
        raise UnsupportedImage(path, _NO_PIXELS)
    if value_start + length > size:
        raise CorruptImage(path, f"truncated DICOM pixel data ({max(0, size - value_start):,} of {length:,} bytes)")
    return length


def _require_decoder(path: str, syntax: UID) -> None:
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedImage(path, f"DICOM transfer syntax {syntax.name} ({syntax}) is not supported") from None
    if not decoder.is_available:
        name, packages = _DECODERS.get(syntax, (syntax.name, f"{_LIBJPEG} pylibjpeg-openjpeg"))
        raise MissingDecoder(path, f"{name} ({syntax}) needs a decoder: pip install {packages}")


def _display_pixels(path: str, dataset: Dataset, frame: np.ndarray, header: _Header) -> np.ndarray:
    """Stored values -> what a radiologist sees: bone bright, at the window the modality chose."""
    if header.photometric == "PALETTE COLOR":
        frame = _apply_lut(path, apply_color_lut, frame, dataset)
    if frame.ndim == 3:
        gray = luminance(frame)
        return gray if gray.dtype == np.uint8 else stretch_to_uint16(path, gray)
    values = _apply_lut(path, _modality_lut, frame, dataset)
    values = _apply_lut(path, _voi_lut, values, dataset)
    if values is frame and frame.dtype == np.uint8 and header.bits_stored == 8:
        pixels, brightest = frame, 255
    else:
        pixels, brightest = stretch_to_uint16(path, values), 65535
    if header.photometric == "MONOCHROME1":
        pixels = brightest - pixels
    return pixels


def _modality_lut(frame: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Rescale in float32 (pydicom's float64 doubles the memory traffic); a Modality LUT table goes through
    pydicom. An identity rescale is skipped, so that 8-bit data stays 8-bit."""
    if "ModalityLUTSequence" in dataset:
        return apply_modality_lut(frame, dataset)
    slope = _first_number(dataset.get("RescaleSlope"), 1.0)
    intercept = _first_number(dataset.get("RescaleIntercept"), 0.0)
    if slope == 1.0 and intercept == 0.0:
        return frame
    values = frame.astype(np.float32)
    values *= np.float32(slope)
    values += np.float32(intercept)
    return values


def _voi_lut(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """The usual linear window in float32: pydicom's ``np.piecewise`` takes ~120 ms on a 5-megapixel film.
    VOI LUT tables, sigmoid and exact-linear windows go through pydicom. The result spans 0..1; the caller
    stretches it anyway."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    function = str(dataset.get("VOILUTFunction") or "LINEAR").strip().upper()
    if "VOILUTSequence" in dataset or center is None or width is None or function != "LINEAR":
        return apply_voi_lut(values, dataset)
    center, width = _first_number(center, 0.0), _first_number(width, 0.0)
    if width <= 1:
        return apply_voi_lut(values, dataset)
    windowed = values.astype(np.float32)  # DICOM PS3.3 C.11.2.1.2.1, with y from 0 to 1
    windowed -= np.float32(center - 0.5)
    windowed *= np.float32(1 / (width - 1))
    windowed += np.float32(0.5)
    return np.clip(windowed, 0, 1, out=windowed)


def _first_number(value: object, default: float) -> float:
    """A DS value as float; a multi-valued one (several windows) gives its first, as pydicom's index 0 does."""
    if value is None or value == "":
        return default
    return float(value[0] if isinstance(value, MultiValue) else value)


def _apply_lut(
    path: str, transform: Callable[[np.ndarray, Dataset], np.ndarray], values: np.ndarray, dataset: Dataset
) -> np.ndarray:
    try:
        return transform(values, dataset)
    except Exception as err:
        raise CorruptImage(path, f"bad DICOM lookup table or window ({brief_error(err)})") from None
