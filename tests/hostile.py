"""A hostile data set for tests (a helper module): names and fields that try to act on a terminal, a spreadsheet
or a markup parser, and names that are not UTF-8.

:func:`build_hostile_root` writes phantom chest films (so a model can learn something) into a folder whose
own name holds markup, under file names with escape sequences (OSC title, CSI clear screen, C1 CSI, BEL),
Rich markup, bidi overrides, spreadsheet formulas and bytes that are not UTF-8; a labels CSV whose label
names carry markup, escapes and a formula; a DICOM whose fields carry escapes and markup; and one unreadable
file with an escape in its name. :func:`raw_controls` finds what must never reach a terminal or a file.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import numpy as np

from cxr_core.phantoms import write_phantoms

ROOT_NAME = "data [/i] [old] [bold]x[/bold]"  # "/" makes folders: the path string holds the markup
"""A root folder name that is all Rich markup (was: MarkupError after the index was written, or text eaten)."""

HOSTILE_FILES = [
    "good\x1b]0;PWNED\x07.png",  # OSC 0: sets the terminal title
    "cls\x1b[2J\x1b[H.png",  # CSI: clears the screen
    "c1\u009b31mred.png",  # C1 CSI (one code point)
    "[old].png",
    "Nodule [r-o] [bold]b.png",  # (a file name cannot hold "/", so no closing tags here)
    "=HYPERLINK(\"http---x\",\"y\").png",
    "@SUM(1+1).png",
    "+cmd.png",
    "bidi\u202egnp.png",
    "bell\x07.png",
]
"""File names given to good films (a study each)."""

NON_UTF8_NAME = b"r\xe9sum\xe9.png"
"""A Latin-1 name: not UTF-8, still a name."""

BAD_FILE = "bad\x1b]0;BAD\x07.png"
"""An unreadable file: it must be named (visibly) once, and the rest indexed."""

HOSTILE_LABELS = {
    "Nodule": "Nodule [r/o]",
    "Mass": "[/]",
    "Edema": "Ed\x1b]0;LBL\x07ema",
    "Pneumothorax": "=Pneumothorax",
}
"""Phantom finding -> the name the labels CSV gives it."""

DICOM_VIEW = "PA\x1b[2J"
DICOM_DESCRIPTION = "[b]CHEST[/b] \x1b]0;DCM\x07"
DICOM_PATIENT = "Doe^[Jane [/] \x1b[2J"
CHECKPOINT_LABELS = ["Nodule [r/o]", "[/]", "Eff\x1b]0;CKPT\x07usion", "=Pneumothorax", "Mass"]
"""A checkpoint from elsewhere may name its classes anything: they are shown, never acted on."""

# What must never appear raw: C0 controls but tab/newline/CR, DEL, and C1 controls (as characters).
_RAW = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


def raw_controls(text: str | bytes) -> list[str]:
    """The control characters in ``text`` that would act on a terminal (empty when it is safe)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return [repr(m.group()) for m in _RAW.finditer(text)]


def build_hostile_root(parent: Path, n: int = 80, size: int = 64, seed: int = 0) -> Path:
    """Write the hostile folder data set under ``parent``; returns its root."""
    source = parent / "phantoms"
    write_phantoms(source, n, size, seed)
    root = parent / ROOT_NAME
    (root / "images").mkdir(parents=True)
    with open(source / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = iter(HOSTILE_FILES)
    for i, row in enumerate(rows):
        image = Path(row["image"]).name
        new = next(names, None) if i % 3 == 0 else None
        target = new or image
        shutil.copyfile(source / "images" / image, root / "images" / target)
        row["image"] = f"images/{target}"
        row["labels"] = "|".join(HOSTILE_LABELS.get(label, label) for label in row["labels"].split("|"))
    # A film under a name that is not UTF-8: not in the CSV, so it is indexed as an unlabelled study.
    shutil.copyfile(root / rows[1]["image"], os.path.join(os.fsencode(root / "images"), NON_UTF8_NAME))
    (root / "images" / BAD_FILE).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _hostile_dicom(root / "study-dicom" / "image.dcm", size)
    return root


def _hostile_dicom(path: Path, size: int) -> None:
    from tests.malformed import write_dicom

    path.parent.mkdir(parents=True)
    pixels = (np.random.default_rng(3).random((size, size)) * 255).astype(np.uint8)
    write_dicom(path, pixels, view=DICOM_VIEW)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.StudyDescription = DICOM_DESCRIPTION
    ds.BodyPartExamined = "CHEST [/]"
    ds.PatientName = DICOM_PATIENT  # shown only with --show-phi (was: a crash with exit status 0)
    ds.save_as(path, enforce_file_format=True)
