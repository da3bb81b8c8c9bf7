"""Chest X-ray image files: PNG, JPEG, DICOM and ``.npz`` members, read as one grayscale array.

The face of the package (``read_xray``, ``probe_xray``, ``XRay``, ...). Inside: :mod:`pixels` (the toolkit every
reader shares), :mod:`raster` (PNG/JPEG), :mod:`dicom`, :mod:`npz`, and :mod:`read` (which dispatches); each
format module depends on the toolkit only, so there is no import circle.
"""

from cxr_core.images.pixels import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageInfo, XRay, open_image_file
from cxr_core.images.read import IMAGE_SUFFIXES, is_single_image, looks_like_image, probe_xray, read_xray, sniff_format

_LAZY = {"dicom_identifiers": "cxr_core.images.dicom", "SAFE_FIELDS": "cxr_core.images.dicom"}
"""DICOM names load pydicom: only when asked for."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxr_core.images' has no attribute {name!r}")


__all__ = [
    "SAFE_FIELDS",
    "dicom_identifiers",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
    "ImageInfo",
    "is_single_image",
    "XRay",
    "looks_like_image",
    "open_image_file",
    "probe_xray",
    "read_xray",
    "sniff_format",
]
