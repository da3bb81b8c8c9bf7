"""Read any chest X-ray file cxr supports (PNG, JPEG, DICOM, ``.npz`` members) as one grayscale array.

A folder of thousands of files always holds a few bad ones, so every way a file can be wrong becomes an
:class:`~cxr_core.errors.ImageReadError` subclass with a short reason, and the caller moves on. The format is
decided by the first bytes, never by the name. Pixel counts are checked from the header before anything is
decoded, so a decompression bomb costs a header read, not gigabytes of memory.

Decoders (Pillow, libjpeg, pydicom) are third-party code fed untrusted bytes: any exception they raise while
parsing or decoding is a property of the input and is mapped to :class:`CorruptImage`. The ``try`` blocks
around them hold only the decoder call, so bugs in this module still raise normally.

Returned pixels are read-only (``XRay`` is immutable and ``.npz`` members may come from a shared cache): copy
them before modifying in place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr_core.errors import CorruptImage, CxrError, ImageReadError, UnsupportedImage
from cxr_core.images.pixels import ImageInfo, XRay, open_image_file, pixel_limit
from cxr_core.images.raster import JPEG_MAGIC, PNG_MAGIC, decode_raster, probe_raster

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})

_FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom", ".dicom": "dicom"}

_HEAD_BYTES = 512

_DICOM_MAGIC_OFFSET = 128

_OTHER_FORMATS = (
    (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "RIFF/WebP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"%PDF", "PDF"),
    (b"\x93NUMPY", "NumPy .npy"), (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "ZIP archive; name .npz members as 'file.npz::array/index'"),
)  # fmt: skip

_NPZ_SEPARATOR = "::"


def looks_like_image(path: str | os.PathLike[str], skip: Callable[[os.stat_result], bool] | None = None) -> bool:
    """By suffix; a name with no suffix, or a numeric one as in UID-named DICOMs, by the DICOM magic.

    ``skip(stat)`` True means: never open this file to look (a database this process holds open).
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix and not suffix[1:].isdigit():
        return False
    try:
        if skip is not None and skip(os.stat(path)):
            return False
    except OSError:
        pass
    try:
        with open_image_file(os.fspath(path)) as (f, _):
            head = f.read(_DICOM_MAGIC_OFFSET + 4)
    except ImageReadError:
        return False
    return head[_DICOM_MAGIC_OFFSET:] == b"DICM"


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    """``"png"``, ``"jpeg"``, ``"dicom"`` from the first bytes, or None. Unreadable files raise ImageReadError."""
    with open_image_file(os.fspath(path)) as (f, _):
        return _format_of_head(f.read(_HEAD_BYTES))


def probe_xray(path: str | os.PathLike[str], *, max_pixels: int | None = None, verify: bool = False) -> ImageInfo:
    """Header plus a cheap completeness check (PNG IEND, JPEG EOI, DICOM pixel data length), no decoding.

    ``verify=True`` decodes fully, to also catch damage inside the compressed data.
    """
    return _inspect(os.fspath(path), pixel_limit(max_pixels), decode=verify)[1]


def read_xray(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> XRay:
    """Decode to a grayscale array; the same checks as :func:`probe_xray` run first.

    Colour becomes ITU-R 601-2 luma. Alpha (LA, RGBA, transparent palettes) is dropped, not composited:
    in X-ray exports alpha is an artefact of the exporting tool, and the stored gray values are the data.
    """
    name = os.fspath(path)
    pixels, info = _inspect(name, pixel_limit(max_pixels), decode=True)
    assert pixels is not None
    pixels.flags.writeable = False
    return XRay(name, pixels, info)


def _inspect(name: str, limit: int, *, decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """The one path behind probe and read, so that a file the probe accepts passes the same checks on read."""
    if _NPZ_SEPARATOR in name:
        from cxr_core.images import npz

        if ref := npz.parse_ref(name):
            return npz.read(name, ref, limit) if decode else (None, npz.probe(name, ref, limit))
    pixels = None
    with open_image_file(name) as (f, size):
        head = f.read(_HEAD_BYTES)
        fmt = _require_format(name, head)
        if fmt == "dicom":
            from cxr_core.images import dicom  # pydicom only when a DICOM is read

            if decode:
                pixels, info = dicom.read_dicom(f, size, name, limit)
            else:
                info = dicom.probe_dicom(f, size, name, limit)
        else:
            info = probe_raster(f, size, name, head, fmt, limit)
            if decode:
                pixels, info = decode_raster(f, name, info)
    return pixels, _with_name_warning(info, name)


def _format_of_head(head: bytes) -> str | None:
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return None


def _require_format(path: str, head: bytes) -> str:
    if fmt := _format_of_head(head):
        return fmt
    if not head:
        raise CorruptImage(path, "empty file (0 bytes)")
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            raise UnsupportedImage(path, f"unsupported format ({name}); cxr reads PNG, JPEG and DICOM")
    if _looks_like_text(head):
        raise UnsupportedImage(path, "not an image (text file)")
    raise UnsupportedImage(path, "not an image (unrecognised content)")


def _looks_like_text(head: bytes) -> bool:
    if any(byte < 32 and byte not in b"\t\n\r\f" for byte in head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.reason == "unexpected end of data"  # a multi-byte character cut by the head's end
    return True


def _with_name_warning(info: ImageInfo, path: str) -> ImageInfo:
    suffix = os.path.splitext(path)[1].lower()
    claimed = _FORMAT_OF_SUFFIX.get(suffix)
    if claimed is None or claimed == info.format:
        return info
    return replace(info, warnings=(*info.warnings, f"content is {info.format.upper()} but the name says {suffix}"))


def is_single_image(path: Path) -> bool:
    """Whether ``path`` is one image file to predict on its own, rather than a data set (a folder, an archive)."""
    if not path.is_file() or path.suffix.lower() in (".tgz", ".npz", ".csv", ".gz", ".xml"):
        return False
    try:
        probe_xray(path)
    except CxrError:
        return path.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm", ".dicom")  # unreadable: say why, as one
    return True
