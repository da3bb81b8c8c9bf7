from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_core.eval.metrics import average_precision, ranking_metrics, roc_auc


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 300), st.integers(0, 10_000), st.sampled_from([2, 5, 1000]))
def test_auc_and_ap_match_scikit_learn(n, seed, levels):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.3
    truth[0], truth[1] = True, False
    scores = rng.integers(0, levels, n) / levels  # few levels: many ties
    assert roc_auc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-9)
    assert average_precision(truth, scores) == pytest.approx(average_precision_score(truth, scores), abs=1e-9)


def test_classes_without_both_outcomes_are_missing_not_half():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    p = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.4], [0.8, 0.1, 0.9], [0.1, 0.7, 0.5]])
    out = ranking_metrics(y, p, None, ["a", "b", "c"])
    assert out["auc"] == {"a": 1.0, "b": None, "c": None}
    assert out["auc_macro"] == 1.0 and out["support"] == {"a": 2, "b": 0, "c": 4}


def test_mask_leaves_entries_out():
    y = np.array([[1], [0], [1], [0]])
    p = np.array([[0.9], [0.2], [0.1], [0.3]])
    full = ranking_metrics(y, p, None, ["a"])["auc"]["a"]
    masked = ranking_metrics(y, p, np.array([[1], [1], [0], [1]]), ["a"])["auc"]["a"]
    assert full == 0.5 and masked == 1.0
