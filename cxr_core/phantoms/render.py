"""Rendering one phantom: spec -> anatomy (adjusted by its findings) -> layers -> film."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cxr_core.phantoms.anatomy import Chest, draw_anatomy
from cxr_core.phantoms.findings import REGISTRY, lesion_plan
from cxr_core.phantoms.frame import Box
from cxr_core.phantoms.layers import Canvas, compose
from cxr_core.phantoms.spec import FINDINGS, SPACE, make_spec, vessel_rng

MIN_SIZE = 32


@dataclass(frozen=True)
class Phantom:
    """One rendered phantom with its ground truth. ``image_id`` names its file (``<image_id>.png``)."""

    image: np.ndarray  # (size, size) uint8
    findings: tuple[str, ...]  # phantom label-space names in label order; empty for a normal image
    boxes: tuple[Box, ...]  # one or more per finding present
    patient_id: str
    view: str  # "PA" or "AP"
    age: int
    sex: str  # "M" or "F"
    image_id: str = ""


def _chosen(findings: Iterable[str]) -> tuple[str, ...]:
    names = set()
    for raw in findings:
        name = SPACE.canonical(raw)
        if name is None or name not in FINDINGS:
            raise ValueError(f"{raw!r} is not a phantom finding (known: {', '.join(FINDINGS)})")
        names.add(name)
    return tuple(name for name in FINDINGS if name in names)


def render_phantom(seed: int, index: int, size: int = 256, *, findings: Iterable[str] | None = None) -> Phantom:
    """Phantom ``index`` of the set ``seed`` at ``size`` x ``size`` pixels; deterministic in (seed, index, size).

    ``findings`` replaces the drawn findings (``()`` renders the same image of the same patient with none):
    tests compare a finding's box with and without it, and demos can ask for a particular finding.
    """
    if size < MIN_SIZE:
        raise ValueError(f"phantom size must be at least {MIN_SIZE} pixels, got {size}")
    spec = make_spec(seed, index)
    present = spec.findings if findings is None else _chosen(findings)
    plans = {name: lesion_plan(spec, name) for name in present}
    anatomy = spec.anatomy
    for name in present:
        anatomy = REGISTRY[name].adjust(anatomy, plans[name])
    setup = spec.setup
    chest = Chest(anatomy, setup)
    canvas = Canvas(size, setup)
    haze = REGISTRY["Edema"].haze(plans["Edema"]) if "Edema" in plans else 0.0
    draw_anatomy(canvas, chest, vessel_rng(spec), haze)
    boxes: list[Box] = []
    for name in present:
        boxes.extend(box for box in REGISTRY[name].paint(canvas, chest, plans[name], setup.severity[name]) if box)
    image = compose(canvas, anatomy, setup)
    return Phantom(image, present, tuple(boxes), spec.patient_id, setup.view, anatomy.age, anatomy.sex, spec.image_id)
