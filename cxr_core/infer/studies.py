"""Predictions for the studies of a data set: index it, predict every present image, attach the truth.

What ``cxr-tui predict``, ``cxr-tui eval`` and the TUI worklist share. The data set is indexed (incrementally)
so study ids, patients and splits are the worklist's own; the model's labels are matched to the data set's
label space by name (aliases included), and a model label the data set does not know gets no truth (its
column is blank, and evaluation reports it as unlabelled rather than inventing negatives).

When training left an image cache for the root at the model's input size (:mod:`cxr_core.data.image_cache`: every
image letterboxed by the same function prediction uses), the images it holds are taken from it and not decoded at
all: only rows whose file still has the (size, mtime_ns) the cache recorded, exactly the rows training itself
trusts; the rest are decoded as usual. ``RootPredictions.from_image_cache`` counts them, its ``notes`` say so and
``Predictions.meta["pixels"]`` records it.

When the checkpoint carries statistics of its training images, ``RootPredictions.ood`` says how far the predicted
images lie from them (:class:`~cxr_core.ood.OodReport`, per-image distances in the predictions' row order), its
summary is ``Predictions.meta["ood"]``, and when they lie far its message is one of the warnings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.data.image_cache import training_cache_pixels
from cxr_core.data.sources import SourceOptions
from cxr_core.data.study import image_base
from cxr_core.errors import CxrError
from cxr_core.images import is_single_image
from cxr_core.infer.engine import Predictor, Progress
from cxr_core.labels import LabelSpace, UncertaintyPolicy, targets
from cxr_core.ood import OodReport
from cxr_core.predictions import Predictions
from cxr_core.store.index import IndexedRoot, StudyIndex


@dataclass
class RootPredictions:
    predictions: Predictions  # the images that were predicted
    errors: dict[str, str] = field(default_factory=dict)  # relpath -> reason (unreadable at index or predict time)
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    warnings: list[str] = field(default_factory=list)
    unmatched_labels: list[str] = field(default_factory=list)  # model labels the data set does not label
    ood: OodReport | None = None  # distance from the training images (None: the checkpoint has no stats)
    from_image_cache: int = 0  # images whose pixels came from the training image cache (not decoded)
    notes: list[str] = field(default_factory=list)  # what a user may want to know that is not a warning
    premade: int = 0  # computed images whose pixels the caller gave (``pixels=``: decoded while the model loaded)


def truth_columns(model_labels: list[str], space: LabelSpace) -> list[int | None]:
    """For each model label, its column in the data set's label vector (None when the data set lacks it)."""
    out: list[int | None] = []
    for name in model_labels:
        canonical = space.canonical(name) if len(space) else None
        out.append(space.index(canonical) if canonical else None)
    return out


def predict_root(predictor: Predictor, root: str | os.PathLike[str] | IndexedRoot, *, fmt: str | None = None,
                 split: str | None = None, options: SourceOptions = SourceOptions(), index: StudyIndex | None = None,
                 cancel: threading.Event | None = None, progress: Progress | None = None,
                 use_cache: bool = True, image_cache: bool = True,
                 pixels: Mapping[str, np.ndarray] | None = None) -> RootPredictions:
    """Predict every present image of a data set root, or of one image file (a study of its own).

    ``root`` may be an :class:`IndexedRoot` the caller already loaded (the TUI has one): it is not scanned again.
    ``image_cache=False`` decodes every file even where the training image cache holds it. ``pixels``: images
    already letterboxed at the model's size, by absolute path (:mod:`cxr_core.infer.overlap` decodes the first
    ones while the model loads); used when the training image cache holds none of the root.
    """
    if not isinstance(root, IndexedRoot) and fmt is None and is_single_image(Path(root)):
        return predict_file(predictor, Path(root), progress=progress, use_cache=use_cache)
    dist = predictor.dist
    if isinstance(root, IndexedRoot):
        indexed = root
        studies = [s for s in indexed.studies if split is None or s.split == split]
    else:
        if dist.enabled and not dist.is_main:
            dist.barrier()  # rank 0 indexes first; the others then find the index up to date
        own = index is None
        index = index or StudyIndex()
        try:
            indexed = index.load(root, fmt, options, split=split)
        finally:
            if own:
                index.close()
            if dist.enabled and dist.is_main:
                dist.barrier()
        studies = indexed.studies
    resolved, scan, space = indexed.root, indexed.scan, indexed.space
    if split is not None and not studies:
        raise CxrError(f"{resolved}: no studies with images in split {split!r} "
                       f"(splits here: {', '.join(sorted(scan.report.splits)) or 'none'})")
    base = image_base(resolved)
    rows = [(s, image.path) for s in studies for image in s.images]
    made = training_cache_pixels(base, [rel for _, rel in rows], predictor.config.input_size) if image_cache else None
    result = predictor.predict([str(base / rel) for _, rel in rows], cancel=cancel, progress=progress,
                               use_cache=use_cache, pixels=made if made is not None else pixels)
    ok = result.ok
    errors = {item["path"]: item["reason"] for item in scan.report.unreadable_files}
    for path, reason in result.errors.items():
        errors[os.path.relpath(path, base)] = reason
    kept = [r for r, good in zip(rows, ok, strict=True) if good]
    labels = predictor.labels
    columns = truth_columns(labels, space)
    truth = None
    if any(c is not None for c in columns) and kept:
        y, mask = targets([s.labels for s, _ in kept], UncertaintyPolicy.IGNORE)
        truth = np.full((len(kept), len(labels)), np.nan, dtype=np.float32)
        for k, column in enumerate(columns):
            if column is not None:
                truth[:, k] = np.where(mask[:, column] > 0, y[:, column], np.nan)
    predictions = Predictions(labels, result.probs[ok], [s.id for s, _ in kept], [rel for _, rel in kept],
                              [s.patient_id for s, _ in kept], truth,
                              meta={"model": str(predictor.loaded.path), "fingerprint": predictor.fingerprint,
                                    "root": str(resolved), "format": scan.report.format, "split": split,
                                    "variant": predictor.variant, "compute_dtype": predictor.precision},
                              split=[s.split or "" for s, _ in kept])
    ood = _with_ood(predictions, result.ood.subset(ok) if result.ood is not None else None, result.warnings)
    notes, used = [], result.premade
    cache = predictor.cache
    if cache is not None and cache.note:  # a damaged cache was moved aside: said once
        notes.append(cache.note)
        cache.note = None
    if made is not None and used:
        notes.append(f"{used:,} of {result.computed:,} computed images read from the training image cache "
                     f"({made.size} px, {made.directory}): not decoded")
        predictions.meta["pixels"] = {"image_cache": str(made.directory), "images": used}
    return RootPredictions(predictions, errors, result.cached, result.computed, result.seconds, result.cancelled,
                           result.warnings, [name for name, c in zip(labels, columns, strict=True) if c is None], ood,
                           used if made is not None else 0, notes, used if made is None else 0)


def _with_ood(predictions: Predictions, ood: OodReport | None, warnings: list[str]) -> OodReport | None:
    """Record the report in the predictions' meta and, when the images lie far, its message among the warnings."""
    if ood is None or ood.n_images == 0:
        return None
    predictions.meta["ood"] = ood.to_json()
    if ood.far:
        warnings.append(ood.message)
    return ood


def predict_file(predictor: Predictor, path: Path, *, progress: Progress | None = None,
                 use_cache: bool = True) -> RootPredictions:
    """One image as one study (its stem as the id); an unreadable file is a CxrError with the reason."""
    result = predictor.predict([str(path)], progress=progress, use_cache=use_cache)
    if result.errors:
        raise CxrError(f"{path}: {next(iter(result.errors.values()))}")
    preds = Predictions(predictor.labels, result.probs, [path.stem], [str(path)],
                        meta={"model": str(predictor.loaded.path), "fingerprint": predictor.fingerprint})
    ood = _with_ood(preds, result.ood, result.warnings)
    return RootPredictions(preds, {}, result.cached, result.computed, result.seconds, result.cancelled,
                           result.warnings, ood=ood)
