"""Per-class ranking metrics over multi-label predictions, with masks for unknown/uncertain labels.

Hand-written in NumPy (and tested against scikit-learn to 1e-9): the same numbers, without importing
scikit-learn into every process that validates (it pulls in a UI library through its callbacks module, and
the core must not). Only entries whose mask is set count, and only classes with both positives and
negatives there are scored: a class without them is reported as missing (None) and left out of the macro
average, never scored as a silent 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic with tied scores given average ranks."""
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positives and negatives")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    average = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision as scikit-learn defines it: sum over thresholds of (R_i - R_{i-1}) * P_i."""
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not truth.any():
        raise ValueError("average precision needs positives")
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    hits = np.cumsum(truth[order])
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), scores.size - 1]  # last index of each threshold
    tps = hits[last]
    precision = tps / (last + 1.0)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ranking_metrics(y: np.ndarray, p: np.ndarray, mask: np.ndarray | None, labels: Sequence[str]) -> dict[str, Any]:
    """``{"auc": {label: x|None}, "ap": {...}, "auc_macro": x|None, "ap_macro": ..., "support": {label: n_pos}}``."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    mask = np.ones_like(y, dtype=bool) if mask is None else np.asarray(mask) > 0
    auc: dict[str, float | None] = {}
    ap: dict[str, float | None] = {}
    support: dict[str, int] = {}
    for k, label in enumerate(labels):
        keep = mask[:, k]
        truth = y[keep, k] > 0.5
        support[label] = int(truth.sum())
        if truth.all() or not truth.any():
            auc[label] = ap[label] = None
            continue
        auc[label] = roc_auc(truth, p[keep, k])
        ap[label] = average_precision(truth, p[keep, k])
    return {"auc": auc, "ap": ap, "auc_macro": _mean(auc), "ap_macro": _mean(ap), "support": support}


def _mean(values: dict[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None]
    return float(np.mean(present)) if present else None
