"""The Study record every source produces and every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE", "AP ERECT", "FRONTAL"})


@dataclass(frozen=True, slots=True)
class StudyImage:
    """One image of a study: ``path`` is relative to the data set root (or an archive member ``a.npz::train/7``)."""

    path: str
    view: str = ""


@dataclass(frozen=True, slots=True)
class Study:
    """One study: a patient's images taken together, with labels over the source's label space.

    ``labels`` is an encoded state vector (see :mod:`cxr_core.labels`). ``split`` is the data set's official
    split when it has one (``train_val``/``test`` for NIH), else None until a split is assigned.
    ``meta`` holds what the source knows beyond that: age, sex, report sections, follow-up number.
    """

    id: str
    patient_id: str
    images: tuple[StudyImage, ...]
    labels: str
    view: str = ""
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def image_base(root: Path) -> Path:
    """Study image paths are relative to this: the root, or the folder of a root that is a file."""
    return root if root.is_dir() else root.parent
