"""Errors a user can cause and fix. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations

from pathlib import Path


class CxrError(Exception):
    """Base of every error caused by input or configuration rather than by a bug."""


class DataError(CxrError):
    """A data set root, labels file or option is not usable; the message says which and why."""


class ImageReadError(CxrError):
    """An image file could not be read. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedImage(ImageReadError):
    """The file is not an image format cxr reads (or not an image at all)."""


class CorruptImage(ImageReadError):
    """The file claims a supported format but its content is damaged or incomplete."""


class ImageTooLarge(ImageReadError):
    """The header announces more pixels than the configured limit (a decompression bomb guard)."""


class MissingDecoder(ImageReadError):
    """The image needs an optional decoder that is not installed; the reason says what to install."""
