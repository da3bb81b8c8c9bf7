"""From a TrainConfig to training and validation items: index the root, pick labels, resolve the split.

Splits are always by patient. The data set's own validation split is used when it has one; otherwise
validation patients are carved out of the training part with ``val_fraction`` and ``split_seed`` (NIH's
official ``train_val``, or the index's generated ``train``). The test split is never touched by training.
The study ids of each part are saved in the run (``split.json``), so a run's split can always be audited.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.atomic import atomic_write_text
from cxr_core.data.dataset import Item, items_from_studies
from cxr_core.data.sources import SourceOptions
from cxr_core.data.splits import (
    TEST_SPLITS,
    TRAIN_SPLITS,
    VAL_SPLITS,
    kfold_by_patient,
    patient_split,
    stratified_subset,
)
from cxr_core.data.study import Study, image_base
from cxr_core.labels import LabelSpace, UncertaintyPolicy
from cxr_core.store.index import StudyIndex
from cxr_core.text import visible
from cxr_core.train.config import ConfigError, TrainConfig
from cxr_core.train.reviewed_labels import ReviewLabels, overlay


@dataclass
class TrainData:
    root: Path
    base: Path
    space: LabelSpace
    labels: list[str]
    train: list[Item]
    val: list[Item]
    split: dict[str, list[str]] = field(default_factory=dict)
    split_note: str = ""
    reviews: ReviewLabels | None = None
    """With --with-reviews: what the reviewers' decisions contributed (the run keeps it as reviews.json)."""

    def save_split(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({"note": self.split_note, **self.split}) + "\n")


def resolve_labels(space: LabelSpace, wanted: list[str]) -> list[str]:
    if not wanted:
        return list(space.findings)
    labels, unknown = [], []
    for name in wanted:
        label = space.canonical(name)
        (labels if label else unknown).append(label or name)
    if unknown:
        raise ConfigError(f"labels not in the {space.name} label space: {', '.join(unknown)} "
                          f"(known: {', '.join(space.labels)})")
    return labels


def split_studies(studies: list[Study], val_fraction: float, seed: int, source: str = "",
                  fold: tuple[int, int] | None = None) -> tuple[list[Study], list[Study], str]:
    """(train, val, how): the data set's val split if any, else val patients carved from the training part.

    ``fold=(k, n)`` is cross-validation: every non-test study is split into ``n`` folds by patient and fold
    ``k`` validates.
    """
    val = [s for s in studies if (s.split or "").casefold() in VAL_SPLITS]
    train = [s for s in studies if (s.split or "").casefold() in TRAIN_SPLITS]
    if fold is not None:
        pool = train + val
        k, n = fold
        folds = kfold_by_patient([s.patient_id for s in pool], n, seed)
        return ([s for s, f in zip(pool, folds, strict=True) if f != k],
                [s for s, f in zip(pool, folds, strict=True) if f == k],
                f"cross-validation fold {k + 1} of {n} by patient (seed {seed})")
    if val:
        return train, val, f"train / val splits of the data set ({source or 'official'})"
    if not train:
        raise ConfigError("no training studies: the data set has no 'train' or 'train_val' split with images present")
    if val_fraction <= 0:
        return train, [], "no validation split (val_fraction 0)"
    parts = patient_split([s.patient_id for s in train], {"train": 1 - val_fraction, "val": val_fraction}, seed)
    carved = [s for s, p in zip(train, parts, strict=True) if p == "val"]
    kept = [s for s, p in zip(train, parts, strict=True) if p == "train"]
    return kept, carved, f"val carved from '{train[0].split}' by patient: fraction {val_fraction:g}, seed {seed}"


def source_options(config: TrainConfig) -> SourceOptions:
    """How the training data set is read (what its index is scanned with)."""
    return SourceOptions(labels_csv=Path(config.labels_csv) if config.labels_csv else None,
                         uncertainty=UncertaintyPolicy(config.uncertainty), iu_mapping=config.iu_mapping)


def prepare_data(config: TrainConfig, index: StudyIndex | None = None) -> TrainData:
    options = source_options(config)
    own = index is None
    index = index or StudyIndex()
    try:
        scan = index.scan(config.data, config.format, options)
        root = Path(scan.report.root)
        space = index.label_space(root)
        studies = index.studies(root, present_only=True)
    finally:
        if own:
            index.close()
    if not len(space):
        raise ConfigError(f"{root}: the data set has no labels to train on (add a labels CSV)")
    labels = resolve_labels(space, config.labels)
    fold = (config.cv_fold, config.cv) if config.cv_fold is not None else None
    train_studies, val_studies, note = split_studies(studies, config.val_fraction, config.split_seed,
                                                     scan.report.split_source or "", fold)
    known = {*TRAIN_SPLITS, *VAL_SPLITS, *TEST_SPLITS}
    unused = Counter(visible(s.split or "(none)") for s in studies if (s.split or "").casefold() not in known)
    if unused and fold is None:  # never silently: a hospital's "validation2" or "holdout" is not trained on
        note += (f"; {sum(unused.values())} studies not used, their split is not train, val or test: "
                 + ", ".join(f"{name} ({n})" for name, n in unused.most_common(5)))
    reviewed = None
    if config.with_reviews:
        train_studies, val_studies, reviewed = _with_reviews(config, root, space, train_studies, val_studies, studies)
        note += "; " + reviewed.line()
    policy = UncertaintyPolicy(config.uncertainty)
    train = items_from_studies(train_studies, space, policy, labels=labels)
    val = items_from_studies(val_studies, space, policy, labels=labels)
    if config.subset and config.subset < len(train):
        chosen = stratified_subset(np.stack([i.target for i in train]) > 0.5, config.subset, config.split_seed)
        train = [train[i] for i in chosen]
        note += f"; training subset of {config.subset} images (label-stratified, seed {config.split_seed})"
    if not train:
        raise ConfigError(f"{root}: no training images present on disk")
    split = {"train": [s.id for s in train_studies], "val": [s.id for s in val_studies]}
    return TrainData(root, image_base(root), space, labels, train, val, split, note, reviewed)


def _with_reviews(config: TrainConfig, root: Path, space: LabelSpace, train: list[Study], val: list[Study],
                  every: list[Study]) -> tuple[list[Study], list[Study], ReviewLabels]:
    """Overlay the reviewers' decisions (up to the run's action id) on the train and val studies; count the ones on
    test studies, which are never used."""
    from cxr_core.store.reviews import ReviewStore

    with ReviewStore(Path(config.reviews_db) if config.reviews_db else None) as store:
        upto = config.reviews_upto if config.reviews_upto is not None else store.last_action_id()
        actions = store.reviews(root, history=True)
    test = [s for s in every if (s.split or "").casefold() in TEST_SPLITS]
    studies, summary = overlay([*train, *val, *test], space, actions, upto)
    return studies[:len(train)], studies[len(train):len(train) + len(val)], summary
