"""Evaluating a model on a data set: the whole workflow, for ``cxr-tui eval``, the TUI and ``python -m cxr_core.eval``.

:func:`evaluate_run` predicts the split (cache first), scores it at the model's thresholds with patient
bootstrap CIs, optionally scores Grad-CAM localisation against boxes, says when the thresholds were tuned on
the split it scores, says when the images lie far from the model's training images (when its checkpoint carries
their statistics), and writes the report folder. The front-ends only choose the arguments and show the
:class:`Evaluation` it returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_core.atomic import check_writable_dir
from cxr_core.data.sources import SourceOptions
from cxr_core.data.splits import TRAIN_SPLITS
from cxr_core.errors import CxrError
from cxr_core.eval.evaluate import evaluate
from cxr_core.eval.localisation import localise, overall_pointing
from cxr_core.eval.report import write_report
from cxr_core.eval.thresholds_file import (
    ThresholdsFile,
    load_thresholds,
    split_check,
    threshold_values,
    thresholds_path_for,
)
from cxr_core.infer.engine import Predictor
from cxr_core.infer.studies import predict_root
from cxr_core.ood import OodReport
from cxr_core.predictions import Predictions
from cxr_core.runs import RunDir, detach
from cxr_core.text import filename_part, fs_bytes

if TYPE_CHECKING:
    from cxr_core.store.index import StudyIndex

Progress = Callable[[str, int, int], None]
"""``(stage, done, total)``: ``predicting`` then, with boxes, ``Grad-CAM``."""


@dataclass
class Evaluation:
    """What an evaluation found and wrote."""

    metrics: dict[str, Any]
    predictions: Predictions
    out: Path
    files: list[Path]
    model: Path
    thresholds: Path | None
    thresholds_file: ThresholdsFile | None
    same_split: str | None
    """The caveat when the thresholds were tuned on the split evaluated (None otherwise)."""
    allowed_same_split: bool = False
    localisation: dict[str, Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    unmatched_labels: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ood: OodReport | None = None
    """Distance of the evaluated images from the training images (None: the checkpoint has no stats)."""

    def to_json(self) -> dict[str, Any]:
        tuned = self.thresholds_file.tuned_on if self.thresholds_file else None
        return {**self.metrics, "localisation": self.localisation,
                "pointing_game_overall": overall_pointing(self.localisation), "unreadable": self.errors,
                "unlabelled_findings": self.unmatched_labels, "warnings": self.warnings,
                "thresholds": None if self.thresholds is None else str(self.thresholds),
                "thresholds_tuned_on": tuned.to_json() if tuned else None, "same_split": self.same_split,
                "files": [str(f) for f in self.files], "out": str(self.out), "model": str(self.model),
                **({"ood": self.ood.to_json()} if self.ood is not None else {})}


def default_out(checkpoint: Path, split: str, root: str | Path | None = None) -> Path:
    """A run's ``eval/<split>/`` for the data set it trained on; for any other data set ``eval/<split>-<name>-<hash>``
    (named by that root, so evaluating on a second data set never replaces the first one's report); outside a run
    ``./cxr-eval/`` with the same names."""
    run = RunDir.of_checkpoint(checkpoint)
    name = split
    if root is not None and not _trained_on(run, root):
        real = _real(root)
        digest = hashlib.sha1(fs_bytes(real)).hexdigest()[:6]
        name = f"{split}-{filename_part(Path(real).name, 40)}-{digest}"
    return run.eval_dir(name) if run is not None else Path("cxr-eval") / name


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _trained_on(run: RunDir | None, root: str | Path) -> bool:
    """Whether ``root`` is the data set ``run`` trained on (its config.toml's ``data``); False without a run."""
    trained_on = run.settings().get("data") if run is not None else None
    return isinstance(trained_on, str) and bool(trained_on) and _real(trained_on) == _real(root)


def evaluate_run(predictor: Predictor, data: str | Path, *, split: str = "test", fmt: str | None = None,
                 options: SourceOptions = SourceOptions(), out: Path | None = None, thresholds: Path | None = None,
                 allow_same_split: bool = False, boxes: Path | None = None, n_boot: int = 1000, seed: int = 0,
                 index: StudyIndex | None = None, progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> Evaluation | None:
    """Evaluate ``predictor``'s model on ``split`` (``all``: every split) of the data set at ``data``.

    ``thresholds`` defaults to the model's own (:func:`thresholds_path_for`), else 0.5. Returns None on the
    ranks of a torchrun job other than the first (they only predict their share).
    """
    if n_boot < 0:
        raise CxrError(f"bootstrap resamples must be 0 or more, got {n_boot}")
    if out is not None:  # an unwritable report folder is said now, not after every image was predicted
        check_writable_dir(out, "report folder")
    checkpoint = predictor.loaded.path
    result = predict_root(predictor, data, fmt=fmt, split=None if split == "all" else split, options=options,
                          index=index, cancel=cancel,
                          progress=(lambda d, t: progress("predicting", d, t)) if progress else None)
    preds = result.predictions
    if not predictor.dist.is_main:
        return None
    if not preds.has_truth:
        raise CxrError(f"{data}: the data set labels none of the model's findings ({', '.join(preds.labels)})")
    if thresholds is None:
        candidate = thresholds_path_for(checkpoint, predictor.fingerprint)
        thresholds = candidate if candidate.is_file() else None
    tuned = load_thresholds(thresholds) if thresholds is not None else None
    values = threshold_values(tuned, preds.labels)
    same_split = split_check(tuned.tuned_on if tuned else None, preds.splits, allowed=allow_same_split)
    metrics = evaluate(preds, values, n_boot=n_boot, seed=seed)
    localisation = None
    if boxes is not None:
        localisation = localise(predictor, preds, Path(preds.meta["root"]), boxes,
                                (lambda d, t: progress("Grad-CAM", d, t)) if progress else None)
    target = out or default_out(checkpoint, split, preds.meta.get("root") or data)
    target.mkdir(parents=True, exist_ok=True)
    preds.meta["thresholds"] = str(thresholds) if thresholds else "0.5 for every label"
    if tuned is not None:
        preds.meta["thresholds_tuned_on"] = tuned.tuned_on.describe() if tuned.tuned_on else "not recorded"
    warnings = list(result.warnings)  # with the out-of-distribution message when the images lie far
    if same_split and not allow_same_split:
        warnings.insert(0, same_split)
    caveats = [same_split] if same_split else []
    if result.ood is not None and result.ood.far:
        caveats.append(result.ood.message)
    run = RunDir.of_checkpoint(checkpoint)
    seen = _trained_on_these(run, preds)
    if seen:
        warnings.insert(0, seen)
        caveats.insert(0, seen)
    few = few_positive_patients(preds)
    if few:
        caveats.append(few)
    reviews = _trained_with_reviews(run)
    if reviews:  # the labels' provenance belongs beside the numbers they produced
        preds.meta["trained_with_reviews"] = reviews
    title = f"{run.id if run else checkpoint.name} on {Path(preds.meta['root']).name} ({split})"
    files = [preds.write(target / "predictions.csv", values)]
    files += write_report(metrics, preds, target, title=title, localisation=localisation,
                          caveats=caveats, ood=result.ood)
    return Evaluation(metrics, preds, target, files, checkpoint, thresholds, tuned, same_split, allow_same_split,
                      localisation, result.errors, result.unmatched_labels, warnings, result.ood)


FEW_PATIENTS = 5
"""Positives from fewer patients than this: the by-patient bootstrap has almost nothing to resample."""


def few_positive_patients(preds: Predictions) -> str | None:
    """A caveat naming the findings whose positives come from fewer than :data:`FEW_PATIENTS` patients (their
    intervals resample only the negatives, so they look tighter than the evidence is), or None."""
    if preds.truth is None:
        return None
    patients = np.asarray(preds.patient, dtype=object)
    few = []
    for k, label in enumerate(preds.labels):
        positive = preds.truth[:, k] == 1
        n = int(positive.sum())
        if n:
            people = len(set(patients[positive].tolist()))
            if people < FEW_PATIENTS:
                few.append(f"{label} ({n} positive{'s' if n != 1 else ''} from {people} "
                           f"patient{'s' if people != 1 else ''})")
    if not few:
        return None
    return ("positives from fewer than 5 patients, so their confidence intervals mostly resample the negatives and "
            "look tighter than the evidence: " + ", ".join(few))


def _trained_on_these(run: RunDir | None, preds: Predictions) -> str | None:
    """A caveat when the evaluated images include the training split of the data set the run trained on: the model
    has seen them, so the metrics are optimistic (None otherwise, or when the run is not known)."""
    seen = sum(n for name, n in preds.splits.items() if name in TRAIN_SPLITS)
    if not seen or not preds.meta.get("root") or not _trained_on(run, preds.meta["root"]):
        return None
    return (f"{seen:,} of the {len(preds):,} images are in the training split of the data set {run.id} trained on: "
            "the model has seen them, so these metrics are optimistic")


def _trained_with_reviews(run: RunDir | None) -> str | None:
    """One line from the run's reviews.json (training with --with-reviews), or None."""
    if run is None:
        return None
    try:
        record = json.loads((run.path / "reviews.json").read_text(encoding="utf-8"))
        readers = ", ".join(f"{name} {n}" for name, n in sorted(record.get("by_reader", {}).items())) or "none"
        return (f"{record['labels']} labels from reviewers' decisions up to action {record['upto']} ({readers}; "
                f"{record.get('policy', '')})")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def evaluation_command(run: RunDir, split: str = "test") -> list[str]:
    """The process that evaluates ``run``'s best checkpoint on ``split`` of the data set it was trained on."""
    settings = run.settings()
    data = settings.get("data")
    if not isinstance(data, str) or not data:
        raise CxrError(f"{run.path}: its config.toml names no data set to evaluate on")
    command = [sys.executable, "-m", "cxr_core.eval", str(run.path), "--data", data, "--split", split]
    for key, flag in (("format", "--format"), ("labels_csv", "--labels")):
        if isinstance(settings.get(key), str) and settings[key]:
            command += [flag, settings[key]]
    return command


def launch_evaluation(run: RunDir, split: str = "test") -> tuple[int, Path]:
    """Evaluate ``run`` in a detached process (it outlives the terminal, like training); returns its pid and the
    log it writes (``<run>/eval/eval.log``). The report lands in ``<run>/eval/<split>/``."""
    if not run.best_checkpoint.is_file():
        raise CxrError(f"run {run.id} has no checkpoint to evaluate yet")
    command = evaluation_command(run, split)
    log_path = run.path / "eval" / "eval.log"
    log_path.parent.mkdir(mode=0o700, exist_ok=True)
    return detach(command, log_path), log_path
