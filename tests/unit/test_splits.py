from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from cxr_core.data.splits import kfold_by_patient, patient_split, stratified_subset
from cxr_core.errors import DataError


def _no_patient_in_two(patients, parts) -> None:
    seen = defaultdict(set)
    for p, s in zip(patients, parts, strict=True):
        seen[p].add(s)
    assert all(len(v) == 1 for v in seen.values())


def test_patient_split_is_seeded_and_never_splits_a_patient():
    patients = [f"p{i // 3}" for i in range(3000)]
    a = patient_split(patients, seed=1)
    assert (a == patient_split(patients, seed=1)).all()
    assert (a != patient_split(patients, seed=2)).any()
    _no_patient_in_two(patients, a)
    counts = {k: int((a == k).sum()) for k in ("train", "val", "test")}
    assert abs(counts["train"] / 3000 - 0.7) < 0.05 and abs(counts["test"] / 3000 - 0.2) < 0.05


def test_adding_patients_never_moves_existing_ones():
    before = [f"p{i}" for i in range(500)]
    after = before + [f"new{i}" for i in range(500)]
    assert (patient_split(before, seed=0) == patient_split(after, seed=0)[:500]).all()


def test_bad_fractions_are_refused():
    with pytest.raises(DataError, match="sum to 1"):
        patient_split(["a"], {"train": 0.5, "test": 0.2})


def test_kfold_balances_folds_and_keeps_patients_whole():
    rng = np.random.default_rng(0)
    patients = [f"p{p}" for p in rng.integers(0, 400, size=2000)]
    folds = kfold_by_patient(patients, 5, seed=3)
    _no_patient_in_two(patients, folds)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= max(np.unique(patients, return_counts=True)[1])
    with pytest.raises(DataError, match="at least 5 patients"):
        kfold_by_patient(["a", "b"], 5)


def test_stratified_subset_keeps_a_rare_label():
    rng = np.random.default_rng(0)
    n = 20000
    positives = np.zeros((n, 3), bool)
    positives[:, 0] = rng.random(n) < 0.3
    positives[:, 1] = rng.random(n) < 0.05
    positives[rng.choice(n, 40, replace=False), 2] = True  # 0.2 %
    chosen = stratified_subset(positives, 2000, seed=0)
    assert len(chosen) == 2000 and len(set(chosen.tolist())) == 2000
    sub = positives[chosen].mean(axis=0)
    full = positives.mean(axis=0)
    assert abs(sub[2] - full[2]) <= 0.0006  # 4 of 2000, give or take one
    assert np.allclose(sub[:2], full[:2], atol=0.01)


@pytest.mark.real_data
def test_real_nih_table_30805_patients_split_without_leak(real_data):
    table = real_data / "nih-sample" / "Data_Entry_2017.csv"
    with table.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        rows = [(r[0], r[1], r[3]) for r in reader]
    patients = [r[2] for r in rows]
    assert len(set(patients)) == 30805
    parts = patient_split(patients, seed=0)
    _no_patient_in_two(patients, parts)
    folds = kfold_by_patient(patients, 5, seed=0)
    _no_patient_in_two(patients, folds)
    hernia = np.array(["Hernia" in r[1] for r in rows])
    chosen = stratified_subset(hernia[:, None], 10000, seed=0)
    assert abs(hernia[chosen].mean() - hernia.mean()) < 0.0002
