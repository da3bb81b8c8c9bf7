"""Synthetic chest X-ray phantoms with planted findings and ground-truth boxes.

Deterministic, fast (vectorised drawing, no per-pixel Python) images that look like frontal chest films:
the demo data set, and test data for training, evaluation, Grad-CAM localisation and the TUI.

- :func:`render_phantom` renders one image; it depends only on (seed, index, size), and the same index at
  another size is the same patient with the same findings (boxes scale). ``findings=`` overrides what is
  drawn (``()`` gives the same film without findings), for tests and demos.
- :func:`write_phantoms` writes a set: ``images/<id>.png``, ``labels.csv``, ``BBox_List.csv`` (NIH layout)
  and, last and atomically, ``phantoms.json``. Ids are ``ph<PPPPP>_<NNN>``: ``PPPPP`` is the index of the
  patient's first image (patient ids are unique but not consecutive), ``NNN`` the image's number within the
  patient (a patient has 1-3 consecutive images; follow-ups keep or change the findings).

Findings (the ``phantom`` label space): Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion, Mass,
Nodule, Pneumothorax, each in ~9-15% of images (cardiomegaly, edema and effusion travel together); ~40% of
images have none. Conspicuity varies: most are plain at 128 px, a minority subtle; Nodule is the hardest.
"""

from __future__ import annotations

from cxr_core.phantoms.frame import Box
from cxr_core.phantoms.render import Phantom, render_phantom
from cxr_core.phantoms.spec import FINDINGS
from cxr_core.phantoms.writer import GENERATOR_VERSION, GenerationCancelled, PhantomSet, write_phantoms

__all__ = [
    "FINDINGS",
    "GENERATOR_VERSION",
    "Box",
    "GenerationCancelled",
    "Phantom",
    "PhantomSet",
    "render_phantom",
    "write_phantoms",
]
