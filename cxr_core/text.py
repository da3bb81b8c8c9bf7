"""Text from outside (file and folder names, CSV cells, DICOM fields, label names) made safe to show and store.

Hospital data is other people's: a file can be named ``good\\x1b]0;PWNED\\x07.png`` (an OSC sequence that sets
the terminal's title), a DICOM field can hold ``\\x1b[2J`` (clear screen), a name can be bytes that are not
UTF-8, and a cell can start with ``=HYPERLINK(...)``. This module is the one place that turns such text into:

* :func:`visible` — display text: every control character (C0, DEL, C1), bidirectional override and other
  invisible format character is written as an escape (``\\x1b``, ``\\u202e``), and a byte that was not UTF-8
  (kept by Python as a surrogate escape, PEP 383) as ``\\xe9``. Nothing is dropped, and a name that is not UTF-8
  is still a name. ``visible`` is idempotent (safe to apply again at every printer); :func:`name_text` is its
  one-to-one form for names and ids (a backslash that would read as an escape doubled), so two different names
  never look the same, and :func:`name_from_text` reads one back. Printers and screens show only ``visible`` text.
  (Markup is the front-end's business: the CLI and the TUI never parse outside text as markup.)
* :func:`spreadsheet_safe` / :func:`spreadsheet_text` — a CSV cell a spreadsheet would run as a formula gets a
  leading ``'`` (and reading strips exactly that ``'`` again), for every CSV cxr writes.
* :func:`fs_text` / :func:`db_value` — file names through SQLite and hashes: a name with undecodable bytes is
  stored and hashed as its bytes, and comes back as the same ``str``.
"""

from __future__ import annotations

import json
import os
import re

_KEEP_IN_LINES = frozenset("\n\t")
"""Python counts every "Other" and "Separator" character as not printable (the ASCII space excepted): controls,
surrogates, bidi overrides, zero-width and non-ASCII spaces are all escaped, so look-alike names stay apart."""
_ESCAPE_NEXT = frozenset("xuU\\")
"""What follows the backslash of an escape :func:`visible` writes."""
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SURROGATE = re.compile("[\ud800-\udfff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet evaluates at the start of a cell (OWASP "CSV injection")."""


def as_text(value: object) -> str:
    """``str`` of a name in any form: bytes and byte paths are decoded with surrogate escapes (never an error)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


def visible(value: object, *, lines: bool = False) -> str:
    """``value`` as display text: controls and invisible format characters escaped, nothing dropped.

    ``lines=True`` keeps newlines and tabs (a multi-line message of ours); names and cells use the default,
    so a name with a newline cannot forge a second line of output.
    """
    text = as_text(value)
    if text.isprintable():  # the common case: nothing to do (Python counts the ASCII space as printable)
        return text
    out = []
    for ch in text:
        if ch.isprintable() or (lines and ch in _KEEP_IN_LINES):
            out.append(ch)
            continue
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as Python keeps it (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80:  # (0x80 and above as \\u00NN: \\x85 is the byte 0x85 that was not UTF-8, not U+0085)
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def name_text(value: object) -> str:
    """A name or id as text that stands for it alone (CSV cells, worklist rows): :func:`visible`, and one-to-one.

    ``visible`` is idempotent (printers apply it again to lines built from its output), so a file literally named
    ``\\x1b[31mred.png`` shows as the file named ESC ``[31mred.png``. Here a backslash that would read as the
    start of an escape (before ``x``, ``u``, ``U``, another backslash, or a character shown escaped) is doubled,
    so no two names give the same text, and :func:`name_from_text` gives the name back. Any other backslash
    (``ORIGINAL\\PRIMARY``) stays as it is, and a clean name without backslashes is itself.
    """
    text = as_text(value)
    if "\\" not in text:
        return visible(text)
    out = [visible(ch) for ch in text]
    for k in range(len(out) - 1):
        if out[k] == "\\" and out[k + 1][0] in _ESCAPE_NEXT:
            out[k] = "\\\\"
    return "".join(out)


def name_from_text(text: str) -> str:
    """The name :func:`name_text` (or :func:`visible`, for a name without a literal backslash before an escape) was
    given: escapes read back, a byte that was not UTF-8 as its surrogate escape (PEP 383)."""
    if "\\" not in text:
        return text
    return _ESCAPE.sub(_unescape, text)


def _unescape(match: re.Match[str]) -> str:
    escape = match.group(1)
    if escape == "\\":
        return "\\"
    code = int(escape[1:], 16)
    return chr(0xDC00 + code) if escape[0] == "x" and code >= 0x80 else chr(code)


def is_clean(value: str) -> bool:
    """True when ``value`` shows as itself (no control, format or undecodable character)."""
    return visible(value) == value


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would evaluate it as a formula; anything else unchanged.

    A text that already starts with ``'`` before a formula character gets one more, so
    :func:`spreadsheet_text` gives back exactly what was written.
    """
    return "'" + text if text.startswith(_FORMULA_START) or _quoted(text) else text


def spreadsheet_text(cell: str) -> str:
    """The text :func:`spreadsheet_safe` was given: one leading ``'`` removed where it added one."""
    return cell[1:] if _quoted(cell) else cell


def _quoted(text: str) -> bool:
    return text.startswith("'") and text[1:].startswith(("'", *_FORMULA_START))


def fs_bytes(value: str) -> bytes:
    """The bytes of a name (what the file system holds): UTF-8, undecodable bytes restored."""
    return value.encode("utf-8", "surrogateescape")


def db_value(value: str | None) -> str | bytes | None:
    """A name as SQLite can take it: ``str`` when it is valid UTF-8 (the usual case, stored as TEXT), else its
    bytes (a BLOB), which :func:`fs_text` turns back into the same ``str``."""
    if value is None or not isinstance(value, str) or value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return fs_bytes(value)
    return value


def fs_text(value: str | bytes | None) -> str | None:
    """The inverse of :func:`db_value`: a name read back from SQLite."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value



def json_compact(data: object) -> str:
    """Compact JSON keeping non-ASCII text readable, with lone surrogates (undecodable bytes of a name) escaped
    as ``\\udcXX`` so the text can be stored as UTF-8 and ``json.loads`` gives back the same name."""
    text = _COMPACT(data)
    return text if text.isascii() else _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def filename_part(value: object, limit: int = 80) -> str:
    """Outside text made into part of a file name cxr chooses (``IMAGE-cam-FINDING.png``): letters, digits, ``.``,
    ``-`` and ``_`` kept, anything else (a ``/`` in ``Nodule [r/o]``, controls, undecodable bytes) as ``_``."""
    text = "".join(ch if (ch.isalnum() and ch.isprintable()) or ch in "._-" else "_" for ch in as_text(value))
    text = re.sub("_+", "_", text).strip("._") or "_"
    return text[:limit]
