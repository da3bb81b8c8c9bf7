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

import contextlib
import errno
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np
from PIL import Image

from cxr_core.errors import CorruptImage, DataError, ImageReadError, ImageTooLarge, MissingDecoder, UnsupportedImage

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
MAX_PIXELS_ENV = "CXR_MAX_PIXELS"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})

_FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom", ".dicom": "dicom"}
_HEAD_BYTES = 512
_TAIL_BYTES = 1024
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_DICOM_MAGIC_OFFSET = 128
_OTHER_FORMATS = (
    (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "RIFF/WebP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"%PDF", "PDF"),
    (b"\x93NUMPY", "NumPy .npy"), (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "ZIP archive; name .npz members as 'file.npz::array/index'"),
)  # fmt: skip
# (bit depth, colour type) -> the mode Pillow opens it as; a pair missing here is not valid PNG.
_PNG_MODES = {
    (1, 0): "1", (2, 0): "L", (4, 0): "L", (8, 0): "L", (16, 0): "I;16",
    (8, 2): "RGB", (16, 2): "RGB",
    (1, 3): "P", (2, 3): "P", (4, 3): "P", (8, 3): "P",
    (8, 4): "LA", (16, 4): "RGBA",
    (8, 6): "RGBA", (16, 6): "RGBA",
}  # fmt: skip
_JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_JPEG_MAX_SEGMENTS = 1000  # real files have a few dozen before the frame header
_NPZ_SEPARATOR = "::"
_OS_REASONS = {
    errno.ENOENT: "file not found", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
    errno.ELOOP: "symlink loop", errno.EISDIR: "is a directory", errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "file not found (a parent is not a directory)", errno.EIO: "I/O error (disk or network failure)",
}  # fmt: skip


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about an image. ``dicom`` holds only non-identifying DICOM fields."""

    format: str
    width: int
    height: int
    frames: int = 1
    bits: int = 8
    mode: str = ""
    warnings: tuple[str, ...] = ()
    dicom: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class XRay:
    """A decoded image: ``pixels`` is (H, W), uint8 for 8-bit sources, else uint16 spanning 0..65535."""

    path: str
    pixels: np.ndarray
    info: ImageInfo

    def as_float(self) -> np.ndarray:
        """float32 in [0, 1]."""
        return self.pixels / np.float32(np.iinfo(self.pixels.dtype).max)

    def as_uint8(self) -> np.ndarray:
        """uint8; deep images keep their top 8 bits (a scaling, never a clip)."""
        if self.pixels.dtype == np.uint8:
            return self.pixels
        return (self.pixels >> 8).astype(np.uint8)


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
    return _inspect(os.fspath(path), _pixel_limit(max_pixels), decode=verify)[1]


def read_xray(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> XRay:
    """Decode to a grayscale array; the same checks as :func:`probe_xray` run first.

    Colour becomes ITU-R 601-2 luma. Alpha (LA, RGBA, transparent palettes) is dropped, not composited:
    in X-ray exports alpha is an artefact of the exporting tool, and the stored gray values are the data.
    """
    name = os.fspath(path)
    pixels, info = _inspect(name, _pixel_limit(max_pixels), decode=True)
    assert pixels is not None
    pixels.flags.writeable = False
    return XRay(name, pixels, info)


@contextlib.contextmanager
def open_image_file(path: str, label: str | None = None) -> Iterator[tuple[BinaryIO, int]]:
    """Open a regular file for reading and yield ``(file, size)``; OS failures become ImageReadError.

    Errors name ``label`` (default ``path``). ``O_NONBLOCK`` keeps a FIFO with an image name from hanging a scan.
    """
    label = path if label is None else label
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise os_error(label, err, path) from None
    try:
        status = os.fstat(fd)
    except OSError as err:
        os.close(fd)
        raise os_error(label, err, path) from None
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise ImageReadError(label, "is a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            yield f, status.st_size
        except OSError as err:
            raise os_error(label, err, path) from None


def check_pixel_count(path: str, width: int, height: int, frames: int, limit: int) -> None:
    """Raise ImageTooLarge when the header announces more pixels than ``limit``."""
    count = width * height * frames
    if count > limit:
        shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise ImageTooLarge(path, f"{shape} = {count:,} pixels, over the limit of {limit:,} ({MAX_PIXELS_ENV})")


def stretch_to_uint16(path: str, values: np.ndarray) -> np.ndarray:
    """Map the actual min..max linearly onto 0..65535 (a flat image becomes all zeros), never clipping."""
    low, high = values.min(), values.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise CorruptImage(path, "pixel values are not finite numbers")
    if low == high:
        return np.zeros(values.shape, np.uint16)
    if values.dtype == np.uint16 and low == 0 and high == 65535:
        return values
    precise = values.dtype.itemsize > 4 or (values.dtype.kind != "f" and values.dtype.itemsize > 2)
    work = values.astype(np.float64 if precise else np.float32)
    work -= work.dtype.type(low)
    work *= work.dtype.type(65535.0 / (float(high) - float(low)))
    np.rint(work, out=work)
    return work.astype(np.uint16)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of (..., 3+) data, Pillow's "L" weights; uint8 stays uint8, else float32."""
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., :3])).convert("L"))
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def brief_error(err: BaseException) -> str:
    """The first line of an exception's message (decoders can be verbose), for a one-line reason."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def _inspect(name: str, limit: int, *, decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """The one path behind probe and read, so that a file the probe accepts passes the same checks on read."""
    if _NPZ_SEPARATOR in name:
        from cxr_core import npz_images

        if ref := npz_images.parse_ref(name):
            return npz_images.read(name, ref, limit) if decode else (None, npz_images.probe(name, ref, limit))
    pixels = None
    with open_image_file(name) as (f, size):
        head = f.read(_HEAD_BYTES)
        fmt = _require_format(name, head)
        if fmt == "dicom":
            from cxr_core import dicom

            if decode:
                pixels, info = dicom.read_dicom(f, size, name, limit)
            else:
                info = dicom.probe_dicom(f, size, name, limit)
        else:
            info = _probe_raster(f, size, name, head, fmt, limit)
            if decode:
                pixels, info = _decode_raster(f, name, info)
    return pixels, _with_name_warning(info, name)


def _pixel_limit(max_pixels: int | None) -> int:
    if max_pixels is not None:
        return max_pixels
    text = os.environ.get(MAX_PIXELS_ENV)
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise DataError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {text!r}")
    return limit


def os_error(label: str, err: OSError, path: str) -> ImageReadError:
    reason = _OS_REASONS.get(err.errno or 0, f"cannot read file ({err.strerror or err})")
    if err.errno == errno.ENOENT and os.path.islink(path):
        reason = "broken symlink"
    return ImageReadError(label, reason)


def _format_of_head(head: bytes) -> str | None:
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
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


def _tail(f: BinaryIO, size: int) -> bytes:
    f.seek(max(0, size - _TAIL_BYTES))
    return f.read(_TAIL_BYTES)


def _probe_raster(f: BinaryIO, size: int, path: str, head: bytes, fmt: str, limit: int) -> ImageInfo:
    info = _png_header(path, head) if fmt == "png" else _jpeg_header(f, path)
    check_pixel_count(path, info.width, info.height, 1, limit)
    tail = _tail(f, size)
    if fmt == "jpeg":
        if _JPEG_EOI not in tail:
            raise CorruptImage(path, "truncated JPEG (no end-of-image marker)")
        return info
    end = tail.rfind(_PNG_END_CHUNK)
    if end < 0:
        raise CorruptImage(path, "truncated PNG (no IEND chunk)")
    trailing = len(tail) - end - len(_PNG_END_CHUNK)
    if trailing:
        return replace(info, warnings=(f"{trailing} bytes after the PNG end chunk",))
    return info


def _png_header(path: str, head: bytes) -> ImageInfo:
    if len(head) < 33:
        raise CorruptImage(path, "truncated PNG (incomplete header)")
    length, chunk_type = struct.unpack(">I4s", head[8:16])
    if length != 13 or chunk_type != b"IHDR":
        raise CorruptImage(path, "invalid PNG header (first chunk is not IHDR)")
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        raise CorruptImage(path, "invalid PNG header (IHDR checksum mismatch)")
    width, height, depth, color_type = struct.unpack(">IIBB", head[16:26])
    mode = _PNG_MODES.get((depth, color_type))
    if mode is None:
        raise CorruptImage(path, f"invalid PNG header (bit depth {depth} with colour type {color_type})")
    if width == 0 or height == 0:
        raise CorruptImage(path, "invalid PNG header (zero width or height)")
    return ImageInfo("png", width, height, bits=8 if mode == "P" else depth, mode=mode)


def _jpeg_header(f: BinaryIO, path: str) -> ImageInfo:
    """Walk the marker segments to the frame header (SOFn), seeking over the others (EXIF, ICC...)."""
    f.seek(2)
    for _ in range(_JPEG_MAX_SEGMENTS):
        marker = f.read(2)
        if len(marker) < 2:
            raise CorruptImage(path, "truncated JPEG (no frame header)")
        if marker[0] != 0xFF:
            raise CorruptImage(path, "damaged JPEG (bad marker structure)")
        code = marker[1]
        while code == 0xFF:  # fill bytes
            fill = f.read(1)
            if not fill:
                raise CorruptImage(path, "truncated JPEG (no frame header)")
            code = fill[0]
        if code in _JPEG_STANDALONE_MARKERS:
            continue
        if code in (0xD9, 0xDA):
            raise CorruptImage(path, "damaged JPEG (image data before any frame header)")
        length_bytes = f.read(2)
        if len(length_bytes) < 2 or int.from_bytes(length_bytes, "big") < 2:
            raise CorruptImage(path, "truncated JPEG (no frame header)")
        if code in _JPEG_SOF_MARKERS:
            frame = f.read(6)
            if len(frame) < 6:
                raise CorruptImage(path, "truncated JPEG (incomplete frame header)")
            precision, height, width, components = struct.unpack(">BHHB", frame)
            break
        f.seek(int.from_bytes(length_bytes, "big") - 2, os.SEEK_CUR)
    else:
        raise CorruptImage(path, f"damaged JPEG (no frame header in the first {_JPEG_MAX_SEGMENTS} segments)")
    if height == 0:
        raise UnsupportedImage(path, "JPEG whose height is set by a DNL marker is not supported")
    if width == 0 or components not in _JPEG_MODES:
        raise CorruptImage(path, f"invalid JPEG frame header ({width}x{height}, {components} components)")
    mode = "I;16" if precision > 8 and components == 1 else _JPEG_MODES[components]
    return ImageInfo("jpeg", width, height, bits=precision, mode=mode)


def _decode_raster(f: BinaryIO, path: str, info: ImageInfo) -> tuple[np.ndarray, ImageInfo]:
    if info.format == "jpeg" and info.bits != 8:
        return _decode_deep_jpeg(f, path, info), info
    f.seek(0)
    try:
        image = Image.open(f, formats=[info.format.upper()])
        image.load()
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(path, str(err)) from None
    except Exception as err:
        raise CorruptImage(path, f"damaged {info.format.upper()} data ({brief_error(err)})") from None
    if image.mode == "L":
        pixels = np.asarray(image)
    elif image.mode.startswith(("I", "F")):
        pixels = stretch_to_uint16(path, np.asarray(image))
    else:
        pixels = np.asarray(image.convert("L"))
    if info.bits > 8 and image.mode in ("RGB", "RGBA"):
        info = replace(info, warnings=(*info.warnings, "16-bit colour reduced to 8 bits per channel by Pillow"))
    return pixels, info


def _decode_deep_jpeg(f: BinaryIO, path: str, info: ImageInfo) -> np.ndarray:
    """Pillow only decodes 8-bit JPEG; 12/16-bit (and lossless) go through pylibjpeg's libjpeg."""
    try:
        from libjpeg import decode
    except ImportError:
        raise MissingDecoder(path, f"{info.bits}-bit JPEG needs a decoder: pip install pylibjpeg-libjpeg") from None
    if info.mode != "I;16":
        raise UnsupportedImage(path, f"{info.bits}-bit colour JPEG is not supported")
    f.seek(0)
    try:
        decoded = decode(f.read())
    except Exception as err:
        raise CorruptImage(path, f"damaged JPEG data ({brief_error(err)})") from None
    return decoded if decoded.dtype == np.uint8 else stretch_to_uint16(path, decoded)


def gray_from_channels(path: str, image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) array to grayscale, dropping alpha like :func:`read_xray`."""
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] in (1, 2) else luminance(image)
    if image.dtype == np.uint8:
        return image
    return stretch_to_uint16(path, image)
