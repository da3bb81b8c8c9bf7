"""Stable pseudonyms for patient identifiers, so studies can be grouped by patient without showing who.

A plain hash of a patient ID is not a pseudonym: IDs are short (a hospital record number has perhaps ten
million possible values), so anyone holding the hash can hash every possible ID and read the match back in
seconds. A keyed hash (HMAC-SHA256) cannot be enumerated without the key, and the key never leaves this
installation: 32 random bytes in ``data_dir()/secret.key``, created owner-only (0600) on first use.
``CXR_PSEUDONYM_KEY`` (hex) overrides the file, for reproducible tests or to share one mapping between
machines. Deleting the key only means that new pseudonyms no longer match old ones.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from cxr_core.errors import DataError
from cxr_core.paths import data_dir

KEY_ENV = "CXR_PSEUDONYM_KEY"
KEY_FILE_NAME = "secret.key"
KEY_BYTES = 32
MIN_ENV_KEY_BYTES = 16
PSEUDONYM_HEX_CHARS = 12
_PREFIXES = {"patient": "pt", "study": "st"}
_KEY_WRITE_WAIT_S = 2.0


def pseudonym(value: str, *, kind: str = "patient") -> str:
    """``"pt-3f9a1c2b7d4e"``: the first 12 hex characters of HMAC-SHA256(key, value), prefixed by kind.

    Surrounding whitespace is ignored (DICOM pads values), so " PHI-1 " and "PHI-1" are one patient.
    """
    digest = hmac.new(_key(), value.strip().encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    return f"{_PREFIXES.get(kind, kind)}-{digest[:PSEUDONYM_HEX_CHARS]}"


def _key() -> bytes:
    text = os.environ.get(KEY_ENV)
    if text:
        return _key_from_hex(text)
    return _key_from_file(str(data_dir() / KEY_FILE_NAME))


@functools.lru_cache(maxsize=4)
def _key_from_hex(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) < MIN_ENV_KEY_BYTES:
        raise DataError(
            f"{KEY_ENV} must be at least {MIN_ENV_KEY_BYTES} bytes of hex; "
            "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


@functools.lru_cache(maxsize=4)
def _key_from_file(path: str) -> bytes:
    """Create the key atomically (O_EXCL: of two concurrent creators exactly one wins), else read it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        os.write(fd, key)
        os.fsync(fd)
    except OSError:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return key


def _read_key(path: str) -> bytes:
    """Read the key, waiting briefly while a concurrent creator is still writing it."""
    deadline = time.monotonic() + _KEY_WRITE_WAIT_S
    while True:
        key = Path(path).read_bytes()
        if len(key) == KEY_BYTES:
            return key
        if len(key) > KEY_BYTES or time.monotonic() > deadline:
            raise DataError(
                f"{path} is not a pseudonym key ({len(key)} bytes, expected {KEY_BYTES}); "
                "deleting it makes a new key, and pseudonyms made before will no longer match"
            )
        time.sleep(0.01)
