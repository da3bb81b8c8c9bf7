"""What a command may write over: only a file (or fill only a folder) that it recognises as its own.

``predict --out``, ``cam --out``, ``reviews export --out`` and ``eval --out`` replace their target; pointed at
a user's file by mistake (the data set's ``labels.csv``, the X-ray itself, a spreadsheet, a folder of notes)
they would destroy it. Each ``check_*_out`` here runs before any work and raises a one-line CxrError naming
the file and the reason unless the existing target is one cxr wrote (a predictions file, a reviews export, a
PNG that ``cam`` marked, an ``eval`` report folder), is empty, or the user passed ``--force``. A missing target
is always fine (the first write). The input image of ``cam`` is never written over, even with ``--force``.

Torch-free and UI-free: Pillow is imported only to read or write a cam PNG.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from cxr_core.atomic import atomic_path
from cxr_core.errors import CxrError, DataError
from cxr_core.predictions import ID_COLUMNS, Predictions
from cxr_core.store.reviews import EXPORT_COLUMNS
from cxr_core.text import spreadsheet_text, visible

FORCE_HINT = "choose another --out or pass --force"
CAM_SOFTWARE = "cxr cam"
"""The ``Software`` text chunk of every PNG ``cam`` writes: how a later ``cam --out`` knows the file is its own."""
EXPORT_MIN_COLUMNS = 10
"""A reviews export header is ``EXPORT_COLUMNS`` or, from an older cxr, its first 10 or more columns."""
EVAL_CSV_HEAD = ("label", "n", "support", "auc")
"""How ``per_class.csv`` of an ``eval`` report begins (cxr_core.eval.report.CSV_COLUMNS, not imported: it loads torch)."""
EVAL_REPORT = "report.md"
EVAL_TABLE = "per_class.csv"
_HEAD_BYTES = 1 << 16  # enough of a file to read its header and first row


def refusal(path: str | os.PathLike[str], reason: str, hint: str = FORCE_HINT) -> CxrError:
    return CxrError(f"{visible(path)}: {reason}; {hint}")


def _occupied(path: Path) -> bool:
    """Whether writing ``path`` would destroy something: it exists (through a link) and is not an empty file.
    A dangling link or an empty file (``mktemp``'s) holds nothing to lose."""
    try:
        st = path.stat()
    except OSError:
        return False
    return not (path.is_file() and st.st_size == 0)


def _head(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            data = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    return data.decode("utf-8-sig", errors="replace")


def _csv_rows(text: str, n: int) -> list[list[str]]:
    rows = []
    try:
        for row in csv.reader(io.StringIO(text)):
            if row:
                rows.append([spreadsheet_text(cell) for cell in row])
            if len(rows) >= n:
                break
    except csv.Error:
        pass
    return rows


# -- predictions ---------------------------------------------------------------------------------------------


def is_predictions_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a predictions file cxr writes (``Predictions.write``): a JSON object with a list of
    ``labels`` and a list of ``predictions`` rows, or a CSV whose header starts with ``study, image, patient``
    and whose first row has numbers in its probability columns."""
    path = Path(path)
    if not path.is_file():
        return False
    head = _head(path)
    if head is None:
        return False
    if head.lstrip(" \t\r\n").startswith("{"):
        return _is_predictions_json(path)
    rows = _csv_rows(head, 1)
    if not rows or rows[0][:len(ID_COLUMNS)] != list(ID_COLUMNS):
        return False
    try:  # the header and the first row, parsed as `Predictions.read` parses them
        Predictions.from_csv_text("".join(head.splitlines(keepends=True)[:2]), path)
    except DataError:
        return False
    return True


def _is_predictions_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list) \
            or not isinstance(data.get("predictions"), list):
        return False
    rows = data["predictions"]
    return not rows or (isinstance(rows[0], dict) and {"study", "image", "probs"} <= rows[0].keys())


def check_predictions_out(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """``predict --out``: raise unless ``path`` is new, empty, a predictions file, or ``force``."""
    path = Path(path).expanduser()
    if not force and _occupied(path) and not is_predictions_file(path):
        raise refusal(path, "exists and is not a predictions file")
    return path


# -- reviews export ------------------------------------------------------------------------------------------


def is_reviews_export(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a CSV ``reviews export`` wrote: its header is ``EXPORT_COLUMNS`` (or an older, shorter
    form of it)."""
    path = Path(path)
    head = _head(path) if path.is_file() else None
    rows = _csv_rows(head, 1) if head else []
    if not rows:
        return False
    header = tuple(rows[0])
    return len(header) >= EXPORT_MIN_COLUMNS and header == EXPORT_COLUMNS[:len(header)]


def check_reviews_out(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """``reviews export --out``: raise unless ``path`` is new, empty, a reviews export, or ``force``."""
    path = Path(path).expanduser()
    if not force and _occupied(path) and not is_reviews_export(path):
        raise refusal(path, "exists and is not a reviews export")
    return path


# -- cam -----------------------------------------------------------------------------------------------------


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file (through links, hard or symbolic); False when either is missing."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def is_cam_png(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a PNG that ``cam`` wrote (its ``Software`` text chunk is :data:`CAM_SOFTWARE`)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == CAM_SOFTWARE
    except Exception:  # not an image, damaged, unreadable: not cam's  # noqa: BLE001
        return False


def check_cam_out(path: str | os.PathLike[str], image: str | os.PathLike[str], *, force: bool = False,
                  named: bool = True) -> Path:
    """``cam``'s overlay target: never the input ``image`` (not even with ``force``); a ``.png`` name when the
    user ``named`` it; an existing file only when ``cam`` wrote it, it is empty, or ``force``."""
    path = Path(path).expanduser()
    if same_file(path, image):
        raise refusal(path, "is the input image; the overlay never replaces it", "choose another --out")
    if named and path.suffix.lower() != ".png":
        raise CxrError(f"{visible(path)}: the overlay is written as PNG; give --out a name ending in .png")
    if not force and _occupied(path) and not is_cam_png(path):
        raise refusal(path, "exists and is not an overlay cxr cam wrote")
    return path


def write_cam_png(path: str | os.PathLike[str], rgb) -> Path:
    """Write the overlay ``rgb`` (H, W, 3 uint8) as a PNG marked as cam's, atomically (mode 0644)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", CAM_SOFTWARE)
    target = Path(path)
    with atomic_path(target, 0o644) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", pnginfo=info)
    return target


# -- eval ----------------------------------------------------------------------------------------------------


def is_eval_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a report ``eval`` wrote: ``report.md`` beside a ``per_class.csv`` with its header."""
    folder = Path(folder)
    if not (folder / EVAL_REPORT).is_file() or not (folder / EVAL_TABLE).is_file():
        return False
    head = _head(folder / EVAL_TABLE)
    rows = _csv_rows(head, 1) if head else []
    return bool(rows) and tuple(rows[0][:len(EVAL_CSV_HEAD)]) == EVAL_CSV_HEAD


def check_eval_out(folder: str | os.PathLike[str], *, force: bool = False) -> Path:
    """``eval --out``: raise unless ``folder`` is new, empty, an earlier eval report's folder, or ``force``. (A
    path that is not a folder is :func:`cxr_core.atomic.check_writable_dir`'s to refuse.)"""
    folder = Path(folder).expanduser()
    if force or not folder.is_dir() or is_eval_folder(folder):
        return folder
    try:
        with os.scandir(folder) as entries:
            empty = next(entries, None) is None
    except OSError:
        return folder  # unreadable: check_writable_dir, or the write, says so
    if not empty:
        raise refusal(folder, "is a folder that is not empty and holds no cxr eval report")
    return folder
