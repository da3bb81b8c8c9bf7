"""Images stored inside a NumPy ``.npz`` archive (MedMNIST), addressed as ``file.npz::array/index``.

Part of :mod:`cxr_core.images.read`, which calls :func:`parse_ref`, :func:`probe` and :func:`read`; kept apart because
reaching one image inside a zip member (memory-mapped when stored, inflated and cached when compressed) is its
own problem. Object arrays are refused before anything is loaded: cxr never unpickles.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from cxr_core.errors import CorruptImage, ImageReadError, UnsupportedImage
from cxr_core.images.pixels import (
    ImageInfo,
    brief_error,
    check_pixel_count,
    gray_from_channels,
    open_image_file,
    os_error,
)

SEPARATOR = "::"
# A compressed .npz member must be inflated whole to reach one image; past this size, refuse instead.
_MAX_COMPRESSED_NPZ_ARRAY_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class NpzRef:
    archive: str
    array: str
    index: int


def parse_ref(name: str) -> NpzRef | None:
    """Parse ``"<file>.npz::<array>/<index>"``; None when ``name`` is an ordinary path."""
    archive, separator, member = name.rpartition(SEPARATOR)
    if not separator or not archive.lower().endswith(".npz"):
        return None
    array, slash, index = member.rpartition("/")
    if not (slash and array and index.isascii() and index.isdigit()):
        raise UnsupportedImage(name, "archive member must look like 'file.npz::array/index'")
    return NpzRef(archive, array, int(index))


@contextlib.contextmanager
def _npz_member(label: str, archive: str, array: str) -> Iterator[tuple[BinaryIO, zipfile.ZipFile, zipfile.ZipInfo]]:
    with open_image_file(archive, label) as (f, _):
        try:
            zipped = zipfile.ZipFile(f)
        except Exception as err:
            raise CorruptImage(label, f"not a valid .npz archive ({brief_error(err)})") from None
        with zipped:
            try:
                member = zipped.getinfo(f"{array}.npy")
            except KeyError:
                arrays = ", ".join(n.removesuffix(".npy") for n in zipped.namelist()) or "none"
                raise ImageReadError(label, f"no array {array!r} in the archive (arrays: {arrays})") from None
            yield f, zipped, member


def _npy_header(label: str, open_stream: Callable[[], BinaryIO]) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        with open_stream() as stream:
            version = np.lib.format.read_magic(stream)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read(stream)
    except Exception as err:
        raise CorruptImage(label, f"damaged .npz member ({brief_error(err)})") from None
    if dtype.hasobject:
        raise UnsupportedImage(label, "array holds pickled Python objects, which cxr never loads")
    return shape, fortran_order, dtype


def probe(name: str, ref: NpzRef, limit: int) -> ImageInfo:
    with _npz_member(name, ref.archive, ref.array) as (_, zipped, member):
        shape, _, dtype = _npy_header(name, lambda: zipped.open(member))
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 2, 3, 4)):
        raise UnsupportedImage(name, f"array {ref.array!r} has shape {shape}, expected (N, H, W) or (N, H, W, C)")
    if ref.index >= shape[0]:
        raise ImageReadError(name, f"index {ref.index} out of range (array {ref.array!r} holds {shape[0]} images)")
    check_pixel_count(name, shape[2], shape[1], 1, limit)
    mode = "L" if len(shape) == 3 or shape[3] <= 2 else ("RGB", "RGBA")[shape[3] - 3]
    return ImageInfo("npz", shape[2], shape[1], bits=dtype.itemsize * 8, mode=mode)


def read(name: str, ref: NpzRef, limit: int) -> tuple[np.ndarray, ImageInfo]:
    info = probe(name, ref, limit)  # also refuses object arrays before anything is loaded
    try:
        status = os.stat(ref.archive)
        array = _load_npz_array(ref.archive, status.st_mtime_ns, status.st_size, ref.array)
    except OSError as err:
        raise os_error(name, err, ref.archive) from None
    except ImageReadError as err:
        raise type(err)(name, err.reason) from None
    image = np.array(array[ref.index])  # a copy: detached from the cache and from any memory map
    return gray_from_channels(name, image), info


@functools.lru_cache(maxsize=8)
def _load_npz_array(archive: str, mtime_ns: int, size: int, array: str) -> np.ndarray:
    """Memory-map a stored (``np.savez``) member so one image costs a page read; inflate a compressed one.

    Keyed by mtime and size so that a rewritten archive is loaded again.
    """
    label = f"{archive}{SEPARATOR}{array}"
    with _npz_member(label, archive, array) as (f, zipped, member):
        if member.compress_type == zipfile.ZIP_STORED and not member.flag_bits & 0x1:
            f.seek(member.header_offset)
            local_header = f.read(30)
            if len(local_header) < 30 or local_header[:4] != b"PK\x03\x04":
                raise CorruptImage(label, "damaged .npz archive (bad local file header)")
            name_length, extra_length = struct.unpack("<HH", local_header[26:30])
            f.seek(member.header_offset + 30 + name_length + extra_length)
            shape, fortran_order, dtype = _npy_header(label, lambda: contextlib.nullcontext(f))
            try:
                return np.memmap(archive, dtype, "r", f.tell(), shape, "F" if fortran_order else "C")
            except (OSError, ValueError) as err:
                raise CorruptImage(label, f"cannot map the .npz member ({brief_error(err)})") from None
        if member.file_size > _MAX_COMPRESSED_NPZ_ARRAY_BYTES:
            gib = member.file_size / 1024**3
            raise UnsupportedImage(label, f"compressed array of {gib:.1f} GiB; store it uncompressed (np.savez)")
        try:
            with zipped.open(member) as stream:
                return np.lib.format.read_array(stream, allow_pickle=False)
        except Exception as err:
            raise CorruptImage(label, f"damaged .npz member ({brief_error(err)})") from None
