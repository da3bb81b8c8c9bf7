"""Patient-level splits, k-fold by patient, and subsets that keep the label imbalance.

Every function here works on plain arrays (patient ids, label matrices) so it can be tested on the real
NIH table and reused by training without touching the index. No patient ever lands in two parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from cxr_core.errors import DataError

DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
TRAIN_SPLITS = ("train", "train_val")
VAL_SPLITS = ("val", "valid", "validate", "validation")
TEST_SPLITS = ("test",)
"""Split names as sources write them (compared case-blind): what training learns from, what it validates and
tunes on, and what only evaluation may see."""


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")


def patient_unit(patient_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, patient): a patient's place never depends on others."""
    digest = hashlib.blake2b(f"{seed}\x1f{patient_id}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def patient_split(
    patient_ids: Sequence[str], fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> np.ndarray:
    """Assign each item the split of its patient, by a seeded hash of the patient id.

    Hashing (rather than shuffling the patient list) keeps every existing patient where it was when
    images or patients are added later, so a growing data set never leaks a patient across splits.
    Fractions hold over patients, in expectation.
    """
    _check_fractions(fractions)
    names = list(fractions)
    edges = np.cumsum([fractions[n] for n in names])
    edges[-1] = 1.0
    unique, inverse = np.unique(np.asarray(patient_ids, dtype=object).astype(str), return_inverse=True)
    units = np.fromiter((patient_unit(p, seed) for p in unique), dtype=np.float64, count=len(unique))
    part = np.searchsorted(edges, units, side="right")
    return np.asarray(names, dtype=object)[part][inverse]


def kfold_by_patient(patient_ids: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per item; patients shuffled by ``seed``, folds balanced by image count."""
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    unique, inverse, counts = np.unique(
        np.asarray(patient_ids, dtype=object).astype(str), return_inverse=True, return_counts=True
    )
    if len(unique) < k:
        raise DataError(f"{k}-fold split needs at least {k} patients, found {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    # Largest patients first, then greedy into the lightest fold: folds differ by at most one patient.
    order = order[np.argsort(-counts[order], kind="stable")]
    load = np.zeros(k, dtype=np.int64)
    fold_of_patient = np.empty(len(unique), dtype=np.int64)
    for p in order:
        f = int(np.argmin(load))
        fold_of_patient[p] = f
        load[f] += counts[p]
    return fold_of_patient[inverse]


def stratified_subset(positives: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` items whose label frequencies match the whole set's.

    ``positives`` is a boolean (items x labels) matrix. Items are grouped by their rarest positive label
    (all-negative items form one group) and each group is sampled in proportion to its size (largest
    remainder rounding), so a label at 0.2% stays near 0.2% instead of vanishing by chance.
    """
    positives = np.asarray(positives, dtype=bool)
    total = positives.shape[0]
    if not 0 < n <= total:
        raise DataError(f"subset size must be between 1 and {total}, got {n}")
    freq = positives.sum(axis=0)
    rank = np.where(freq > 0, freq, np.iinfo(np.int64).max)
    masked = np.where(positives, rank[None, :], np.iinfo(np.int64).max)
    group = np.where(positives.any(axis=1), masked.argmin(axis=1), -1)
    groups, inverse, sizes = np.unique(group, return_inverse=True, return_counts=True)
    exact = sizes * (n / total)
    take = np.floor(exact).astype(np.int64)
    short = n - int(take.sum())
    if short:
        take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(inverse == g), size=int(take[g]), replace=False) for g in range(len(groups))
    ]
    return np.sort(np.concatenate(chosen))
