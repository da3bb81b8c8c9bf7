"""The shared toolkit of every image reader: what a read returns, pixel limits, safe opening, depth conversions.

Every format module (:mod:`raster`, :mod:`dicom`, :mod:`npz`) builds on this one; :mod:`read` dispatches between
them. Nothing here knows a file format.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image

from cxr_core.errors import CorruptImage, DataError, ImageReadError, ImageTooLarge

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

MAX_PIXELS_ENV = "CXR_MAX_PIXELS"

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


def pixel_limit(max_pixels: int | None) -> int:
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


def gray_from_channels(path: str, image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) array to grayscale, dropping alpha like :func:`read_xray`."""
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] in (1, 2) else luminance(image)
    if image.dtype == np.uint8:
        return image
    return stretch_to_uint16(path, image)
