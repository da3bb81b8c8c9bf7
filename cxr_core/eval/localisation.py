"""Does a CAM point at the finding? NIH box files, the pointing game, CAM/box IoU and a per-label table.

Box files use NIH's ``BBox_List_2017.csv`` layout (phantom sets write the same)::

    Image Index,Finding Label,Bbox [x,y,w,h],,,
    00013118_008.png,Atelectasis,225.08,547.01,86.77,79.18

Coordinates are pixels of the original image (1024 x 1024 for NIH), x to the right, y down, so they apply
directly to a map from :func:`cxr_core.infer.cam.cam_for_image` (which is in the original geometry); use
:func:`rescale_boxes` for a resized copy of the images. A pixel (row r, column c) is inside a box when its
centre (c + 0.5, r + 0.5) is, edges included.

Metrics per (image, finding), over all boxes of that finding on that image:

* pointing game (Zhang et al. 2016): the CAM's maximum lies in a box (or within ``tolerance`` pixels of one);
* IoU of the CAM thresholded at ``threshold`` x its maximum with the union of the boxes.

A map with no positive value (nothing highlighted) scores a miss and an IoU of 0.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cxr_core.data.study import image_base
from cxr_core.errors import CxrError
from cxr_core.images import read_xray
from cxr_core.labels import LabelSpace

if TYPE_CHECKING:
    from cxr_core.infer.engine import Predictor
    from cxr_core.predictions import Predictions

HEADER = ("Image Index", "Finding Label")


class Box(NamedTuple):
    """One box of a finding: ``label`` and x, y, width, height in pixels of the original image."""

    label: str
    x: float
    y: float
    w: float
    h: float


class LocalisationResult(NamedTuple):
    """The two localisation scores of one finding on one image (``image`` is informational)."""

    label: str
    hit: bool
    iou: float
    image: str = ""


Rect = tuple[float, float, float, float]

# The pointing game's usual tolerance (Zhang et al., "Top-down neural attention by excitation backprop"):
# 15 pixels at a 224-pixel input, i.e. this fraction of the image side.
POINTING_TOLERANCE = 15 / 224


def read_boxes(path: str | os.PathLike[str], *, space: LabelSpace | None = None) -> dict[str, list[Box]]:
    """``{image name: [Box(label, x, y, w, h), ...]}`` from an NIH-format box file, in file order.

    With ``space``, labels are mapped to its names (NIH's box file says ``Infiltrate`` for the label space's
    ``Infiltration``), and a label the space does not know is an error. Any malformed row raises
    :class:`CxrError` naming the file, the line and what is wrong: a box file is small and hand-made
    mistakes in it would silently skew every metric.
    """
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise CxrError(f"{path}: cannot read box file ({err.strerror or err})") from None
    boxes: dict[str, list[Box]] = {}
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None or tuple(field.strip() for field in header[:2]) != HEADER:
                raise CxrError(f"{path}: line 1: expected the NIH box header "
                               "'Image Index,Finding Label,Bbox [x,y,w,h]'")
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                try:
                    name, box = _parse_row(row, space)
                except ValueError as err:
                    raise CxrError(f"{path}: line {reader.line_num}: {err}") from None
                boxes.setdefault(name, []).append(box)
        except (csv.Error, UnicodeDecodeError) as err:
            raise CxrError(f"{path}: near line {reader.line_num + 1}: not readable as CSV ({err})") from None
    return boxes


def _parse_row(row: list[str], space: LabelSpace | None) -> tuple[str, Box]:
    """(image name, box) of one data row; ValueError with the reason when it is malformed."""
    fields = [field.strip() for field in row]
    if len(fields) < 6:
        raise ValueError(f"expected 6 fields (image, finding, x, y, w, h), found {len(fields)}")
    if any(fields[6:]):
        raise ValueError(f"unexpected extra values after the box: {','.join(fields[6:])}")
    name, label = fields[0], fields[1]
    if not name or not label:
        raise ValueError("image name and finding label must not be empty")
    try:
        x, y, w, h = (float(value) for value in fields[2:6])
    except ValueError:
        raise ValueError(f"box values must be numbers, got {','.join(fields[2:6])}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError("box values must be finite")
    if w <= 0 or h <= 0:
        raise ValueError(f"box width and height must be positive, got w={w:g}, h={h:g}")
    if space is not None:
        canonical = space.canonical(label)
        if canonical is None:
            raise ValueError(f"finding {label!r} is not in the {space.name} label space")
        label = canonical
    return name, Box(label, x, y, w, h)


def rescale_boxes(boxes: Sequence[Box], sx: float, sy: float | None = None) -> list[Box]:
    """Boxes for an image resized by ``sx`` horizontally and ``sy`` (default ``sx``) vertically."""
    sy = sx if sy is None else sy
    return [Box(b.label, b.x * sx, b.y * sy, b.w * sx, b.h * sy) for b in boxes]


def _rect(box: Box | Sequence[float]) -> Rect:
    """(x, y, w, h) of a :class:`Box` or of a plain 4-tuple."""
    if isinstance(box, Box):
        return box.x, box.y, box.w, box.h
    if len(box) == 5:  # (label, x, y, w, h) as a plain tuple
        return float(box[1]), float(box[2]), float(box[3]), float(box[4])
    x, y, w, h = box
    return float(x), float(y), float(w), float(h)


def _rects(boxes: Iterable[Box | Sequence[float]]) -> list[Rect]:
    rects = [_rect(box) for box in boxes]
    if not rects:
        raise ValueError("no boxes given")
    return rects


def box_mask(shape: tuple[int, int], boxes: Iterable[Box | Sequence[float]]) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in any of the boxes (edges included; parts outside are ignored)."""
    height, width = shape
    mask = np.zeros((height, width), bool)
    for x, y, w, h in _rects(boxes):
        c0, c1 = max(0, math.ceil(x - 0.5)), min(width, math.floor(x + w - 0.5) + 1)
        r0, r1 = max(0, math.ceil(y - 0.5)), min(height, math.floor(y + h - 0.5) + 1)
        if c0 < c1 and r0 < r1:
            mask[r0:r1, c0:c1] = True
    return mask


def _check_cam(cam: np.ndarray) -> np.ndarray:
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0)
    if cam.ndim != 2:
        raise ValueError(f"expected a (H, W) map, got shape {cam.shape}")
    return cam


def pointing_game(cam: np.ndarray, boxes: Iterable[Box | Sequence[float]], *, tolerance: float = 0.0) -> bool:
    """True when the map's maximum (first one, row-major) lies in a box, or within ``tolerance`` pixels of one.

    ``boxes`` are those of the finding the map explains, (x, y, w, h) or :class:`Box`. A map whose maximum
    is not positive highlights nothing and misses.
    """
    cam = _check_cam(cam)
    rects = _rects(boxes)
    if cam.size == 0 or cam.max() <= 0:
        return False
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    px, py = col + 0.5, row + 0.5
    for x, y, w, h in rects:
        dx = max(x - px, 0.0, px - (x + w))
        dy = max(y - py, 0.0, py - (y + h))
        if math.hypot(dx, dy) <= tolerance:
            return True
    return False


def cam_iou(cam: np.ndarray, boxes: Iterable[Box | Sequence[float]], threshold: float = 0.5) -> float:
    """IoU of ``cam >= threshold * cam.max()`` with the union of the boxes (0.0 for a map with no positive value)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    cam = _check_cam(cam)
    truth = box_mask(cam.shape, boxes)
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0:
        return 0.0
    predicted = cam >= threshold * peak
    union = np.count_nonzero(predicted | truth)
    return float(np.count_nonzero(predicted & truth) / union) if union else 0.0


def score_image(cams: Mapping[str, np.ndarray], boxes: Sequence[Box], image: str = "", *,
                threshold: float = 0.5, tolerance: float = 0.0) -> list[LocalisationResult]:
    """One result per finding that has both boxes on this image and a map in ``cams`` (label -> map)."""
    by_label: dict[str, list[Box]] = defaultdict(list)
    for box in boxes:
        by_label[box.label].append(box)
    return [LocalisationResult(label, pointing_game(cams[label], group, tolerance=tolerance),
                               cam_iou(cams[label], group, threshold), image)
            for label, group in by_label.items() if label in cams]


def localisation_table(results: Iterable[LocalisationResult | tuple[str, bool, float]]) -> dict[str, dict[str, float]]:
    """``{label: {"pointing_game": hits / n, "iou": mean IoU, "n": n}}``, labels sorted by name."""
    hits: dict[str, int] = defaultdict(int)
    ious: dict[str, list[float]] = defaultdict(list)
    for result in results:
        label, hit, iou = result[0], result[1], result[2]
        hits[label] += bool(hit)
        ious[label].append(float(iou))
    return {label: {"pointing_game": hits[label] / len(ious[label]), "iou": float(np.mean(ious[label])),
                    "n": len(ious[label])} for label in sorted(ious)}


def overall_pointing(table: dict | None) -> float | None:
    """Hits over all boxed findings (each finding weighted by its number of boxed images)."""
    if not table:
        return None
    n = sum(v["n"] for v in table.values())
    return sum(v["pointing_game"] * v["n"] for v in table.values()) / n if n else None


def localise(predictor: Predictor, preds: Predictions, root: Path, boxes_path: Path, progress=None) -> dict:
    """Grad-CAM of each boxed finding on each predicted image it boxes: pointing game and IoU per finding."""
    from cxr_core.infer.cam import cam_for_image

    boxes = read_boxes(boxes_path)
    base = image_base(root)
    known = {label.casefold(): label for label in preds.labels}
    jobs = []
    for image in dict.fromkeys(preds.image):
        found = [b._replace(label=known[b.label.casefold()]) for b in boxes.get(Path(image).name, [])
                 if b.label.casefold() in known]
        if found:
            jobs.append((image, found))
    if not jobs:
        raise CxrError(f"{boxes_path}: no box names an image and a finding of this evaluation")
    results = []
    for done, (image, found) in enumerate(jobs, start=1):
        pixels = read_xray(base / image).as_uint8()
        cams = {label: cam_for_image(predictor.model, predictor.config, pixels, label)
                for label in dict.fromkeys(b.label for b in found)}
        results += score_image(cams, found, image, tolerance=POINTING_TOLERANCE * max(pixels.shape))
        if progress:
            progress(done, len(jobs))
    return localisation_table(results)
