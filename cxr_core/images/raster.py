"""PNG and JPEG: header probing without decoding (size, depth, truncation) and decoding to grayscale.

Decoding is Pillow's, and for grey images (8/16-bit grey PNG, 8-bit grey JPEG: what chest X-ray exports are)
Pillow decodes straight into the NumPy array that is returned, instead of into its own buffer that
``np.asarray`` then copies out (1.2 ms per 1024x1024 image measured alone; 1.04-1.07x on a whole decode).
``benchmarks/decoders.py`` measured the alternatives on the real NIH PNGs, one core of a 2-core EPYC: Pillow with
the copy 7.4 ms, without it 7.0, libspng (pyspng) 7.3, OpenCV 7.5, torchvision.io 7.5; zlib's inflate is the cost
and Pillow's wheel has zlib-ng. None is faster, and each would change an error path: pyspng holds the GIL (0.9x on
2 threads, and every decoding path here is threaded) and returns pixels from a PNG whose compressed data is
damaged; OpenCV's libpng/libjpeg print their complaints to the process's stderr (across a TUI's screen);
torchvision.io crashed the process on a damaged PNG. Every error still comes from Pillow, worded as before.
``CXR_IMAGE_DECODER=pillow-copy`` (or :func:`force_decoder`) goes back to ``np.asarray``.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import replace
from typing import BinaryIO

import numpy as np
from PIL import Image

from cxr_core.errors import CorruptImage, DataError, ImageTooLarge, MissingDecoder, UnsupportedImage
from cxr_core.images.pixels import ImageInfo, brief_error, check_pixel_count, stretch_to_uint16

_TAIL_BYTES = 1024

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_PNG_END_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"

JPEG_MAGIC = b"\xff\xd8\xff"

_JPEG_EOI = b"\xff\xd9"

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


def _tail(f: BinaryIO, size: int) -> bytes:
    f.seek(max(0, size - _TAIL_BYTES))
    return f.read(_TAIL_BYTES)


def probe_raster(f: BinaryIO, size: int, path: str, head: bytes, fmt: str, limit: int) -> ImageInfo:
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


DECODER_ENV = "CXR_IMAGE_DECODER"

DECODERS = ("pillow", "pillow-copy")  # the first is the default

_DIRECT_MODES = {"L": np.dtype(np.uint8), "I;16": np.dtype("<u2")}  # Pillow modes it can decode into NumPy

_forced: str | None = None


def available_decoders() -> list[str]:
    """The ways this installation decodes PNG/JPEG, the default first."""
    return list(DECODERS)


def decoder_name() -> str:
    """The way PNG/JPEG files are decoded now: :func:`force_decoder`, else ``CXR_IMAGE_DECODER``, else the default."""
    wanted = _forced or os.environ.get(DECODER_ENV, "").strip().lower() or DECODERS[0]
    if wanted not in DECODERS:
        raise DataError(f"{DECODER_ENV} must be one of {', '.join(DECODERS)}; got {wanted!r}")
    return wanted


def force_decoder(name: str | None) -> str | None:
    """Decode the ``name`` way in this process (None: back to ``CXR_IMAGE_DECODER`` / the default); returns the
    previous setting. For benchmarks and tests."""
    global _forced
    if name is not None and name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r} (choose from {', '.join(DECODERS)})")
    previous, _forced = _forced, name
    return previous


def _into_numpy(image: Image.Image) -> tuple[np.ndarray, object] | None:
    """Point a just-opened grey image's pixel memory at a new NumPy array, so ``load`` decodes into it.

    ``Image.frombuffer`` maps the array as a Pillow image core; ``load`` decodes into the core it finds instead of
    allocating one. Returns (array, core), or None (another mode, or a Pillow that will not take it: the copy then).
    """
    dtype = _DIRECT_MODES.get(image.mode)
    if dtype is None or decoder_name() != "pillow":
        return None
    try:
        width, height = image.size
        pixels = np.empty((height, width), dtype)
        core = Image.frombuffer(image.mode, image.size, pixels, "raw", image.mode, 0, 1).im
        image.im = core
    except Exception:
        return None
    return pixels, core


def decode_raster(f: BinaryIO, path: str, info: ImageInfo) -> tuple[np.ndarray, ImageInfo]:
    if info.format == "jpeg" and info.bits != 8:
        return _decode_deep_jpeg(f, path, info), info
    f.seek(0)
    try:
        image = Image.open(f, formats=[info.format.upper()])
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(path, str(err)) from None
    except Exception as err:
        raise CorruptImage(path, f"damaged {info.format.upper()} data ({brief_error(err)})") from None
    direct = _into_numpy(image)
    try:
        image.load()
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(path, str(err)) from None
    except Exception as err:
        raise CorruptImage(path, f"damaged {info.format.upper()} data ({brief_error(err)})") from None
    decoded = direct[0] if direct is not None and image.im is direct[1] else None  # Pillow kept our memory
    if image.mode == "L":
        pixels = decoded if decoded is not None else np.asarray(image)
    elif image.mode.startswith(("I", "F")) and decoded is not None:
        pixels = stretch_to_uint16(path, decoded)
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
