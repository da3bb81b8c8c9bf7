"""What a data set holds: the numbers `cxr-tui data index/stats` print and scripts read (``--json``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cxr_core.data.sources.base import Problem
from cxr_core.data.study import Study
from cxr_core.labels import LabelSpace

EXAMPLES = 20


@dataclass
class DatasetReport:
    """Counts over a data set. For NIH, ``studies`` counts label rows and ``images`` the images present.

    ``labels`` counts studies with each label; ``labels_by_image`` counts the images of those studies,
    present or not (what per-image papers report, e.g. IU's 7,470 images from 3,955 reports).
    """

    format: str
    root: str
    label_space: str
    studies: int
    images: int
    images_missing: int
    unreadable: int
    patients: int
    labels: dict[str, int]
    splits: dict[str, int]
    split_source: str | None = None
    labels_by_image: dict[str, int] = field(default_factory=dict)
    labels_uncertain: dict[str, int] = field(default_factory=dict)
    label_fraction: dict[str, float] = field(default_factory=dict)
    imbalance_ratio: float | None = None
    labels_without_positives: list[str] = field(default_factory=list)
    studies_present: int | None = None
    """Studies with at least one image on disk (a partial NIH download: far fewer than the table's rows)."""
    labels_present: dict[str, int] = field(default_factory=dict)
    """``labels`` counted over the studies present only (what training on this copy actually sees)."""
    unreadable_files: list[dict[str, str]] = field(default_factory=list)
    missing_examples: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetReport:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def label_matrix(vectors: Sequence[str], width: int) -> np.ndarray:
    """(studies x labels) array of state codes (``b"1"``, ``b"0"``, ``b"u"``, ``b"."``)."""
    if not vectors:
        return np.zeros((0, width), dtype="S1")
    return np.frombuffer("".join(vectors).encode("ascii"), dtype="S1").reshape(len(vectors), width)


def summarise(
    fmt: str,
    root: str,
    space: LabelSpace,
    studies: Sequence[Study],
    present: Collection[str],
    unreadable: dict[str, str],
    problems: Sequence[Problem],
    split_source: str | None,
    notes: dict[str, Any],
) -> DatasetReport:
    """Count studies, images (present and readable), missing and unreadable files, labels and splits."""
    splits: Counter[str] = Counter()
    images = missing = 0
    missing_examples: list[str] = []
    has_image = np.zeros(len(studies), dtype=bool)
    for i, study in enumerate(studies):
        for image in study.images:
            if image.path in present:
                images += 1
                has_image[i] = True
                splits[study.split or "unassigned"] += 1
            elif image.path not in unreadable:
                missing += 1
                if len(missing_examples) < EXAMPLES:
                    missing_examples.append(image.path)
    table = label_matrix([s.labels for s in studies], len(space))
    positive = table == b"1"
    positives = positive.sum(axis=0)
    positives_present = positive[has_image].sum(axis=0)
    images_per_study = np.fromiter((len(s.images) for s in studies), dtype=np.int64, count=len(studies))
    by_image = (positive * images_per_study[:, None]).sum(axis=0)
    uncertain = (table == b"u").sum(axis=0)
    labels = {label: int(n) for label, n in zip(space.labels, positives, strict=True)}
    findings = [labels[f] for f in space.findings]
    nonzero = [n for n in findings if n > 0]
    return DatasetReport(
        format=fmt,
        root=root,
        label_space=space.name,
        studies=len(studies),
        images=images,
        images_missing=missing,
        unreadable=len(unreadable),
        patients=len({s.patient_id for s in studies}),
        labels=labels,
        splits=dict(sorted(splits.items())),
        split_source=split_source,
        labels_by_image={label: int(n) for label, n in zip(space.labels, by_image, strict=True)},
        labels_uncertain={label: int(n) for label, n in zip(space.labels, uncertain, strict=True) if n},
        label_fraction={label: (n / len(studies) if studies else 0.0) for label, n in labels.items()},
        imbalance_ratio=(max(nonzero) / min(nonzero)) if nonzero else None,
        labels_without_positives=[f for f in space.findings if labels[f] == 0],
        studies_present=int(has_image.sum()),
        labels_present={label: int(n) for label, n in zip(space.labels, positives_present, strict=True)},
        unreadable_files=[{"path": p, "reason": r} for p, r in sorted(unreadable.items())],
        missing_examples=missing_examples,
        problems=[{"path": p.path, "reason": p.reason, "severity": p.severity} for p in problems],
        notes=notes,
    )
