"""Evaluation of multi-label predictions: ranking, threshold and calibration metrics with patient-level CIs.

Everything is computed per class over the rows whose truth is known (1 or 0; NaN = unknown is left out),
in NumPy, with the same definitions as scikit-learn (tests/unit/test_evaluate.py checks them to 1e-9):

* **AUC** (ROC) and **AP** (average precision, ``sum (R_i - R_{i-1}) P_i`` over distinct thresholds) per
  class. A class without positives or without negatives among its labelled rows has no AUC (None), is
  listed in ``excluded`` with the reason and left out of the macro averages: never a silent 0.5.
  *Macro* = unweighted mean over the classes that have a value; *micro* = one AUC/AP over every labelled
  (row, class) cell pooled, as scikit-learn's ``average="micro"`` (cells of excluded classes count there).
* **Threshold metrics** per class at its threshold (``prob >= threshold``, compared in float32 like
  :meth:`Predictions.flagged`; 0.5 where none is given): TP/FP/TN/FN, sensitivity, specificity, PPV, NPV,
  F1. A ratio whose denominator is 0 is None. Macro = mean over non-excluded classes of the values that
  exist (F1 as scikit-learn's macro F1: the mean of per-class F1); micro = the same ratios of the counts
  summed over all labelled cells.
* **Calibration**: reliability bins of equal width on [0, 1] (bin ``b`` holds ``edges[b] < p <= edges[b+1]``,
  the first also ``p = 0``, as scikit-learn's ``calibration_curve(strategy="uniform")``), each with its count,
  mean predicted probability and observed positive fraction, and the expected calibration error
  ``ECE = sum_b (n_b / n) * |mean_predicted_b - observed_b|``. Per class over its labelled rows, and pooled
  over all labelled cells.
* **Confidence intervals**: percentile bootstrap (2.5th and 97.5th percentiles, linear interpolation) that
  resamples *patients*, not images: each resample draws as many patients as there are, with replacement,
  and takes all of each drawn patient's images (a patient drawn twice counts twice). Images of one patient
  are correlated, so resampling them independently would make the intervals too narrow. Rows with an
  empty patient id are each their own patient. A resample in which a class has no positive or no negative
  is skipped for that class (``n_boot_used`` says how many were used); the macro AUC/AP of a resample is
  used only when every non-excluded class has a value in it.

The bootstrap never materialises resampled data: a resample is a vector of integer weights (how many
times each row was drawn), and AUC/AP are computed as weighted statistics from each class's sort order,
computed once, for a block of resamples at a time (see :func:`weighted_auc_ap`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr_core.errors import DataError
from cxr_core.eval.metrics import average_precision, roc_auc
from cxr_core.predictions import Predictions

DEFAULT_THRESHOLD = 0.5
CI_LEVEL = 0.95
_BLOCK_CELLS = 4_000_000  # patients x resamples held at once by the bootstrap (~32 MB of float64)


# -- public entry point ------------------------------------------------------------------------------------


def evaluate(preds: Predictions, thresholds: Mapping[str, float | None] | None = None, *, n_boot: int = 1000,
             seed: int = 0, n_bins: int = 10) -> dict[str, Any]:
    """All metrics of labelled predictions as JSON-ready numbers (None where a value is undefined).

    Keys: ``labels``, ``n_images``, ``n_patients``, ``n_labelled`` / ``support`` (labelled rows / positives
    per class), ``excluded`` ({label: reason}), ``auc``, ``auc_macro``, ``auc_micro``, ``ap``, ``ap_macro``,
    ``ap_micro``, ``ci`` ({label: [lo, hi]} for AUC), ``ci_ap``, ``ci_auc_macro``, ``ci_ap_macro``,
    ``ci_level``, ``n_boot``, ``n_boot_used`` ({label: resamples used}), ``n_boot_used_macro``, ``seed``,
    ``thresholds`` (the threshold used per class), ``threshold_source`` ({label: "given" | "default"}),
    ``threshold_metrics`` ({label: {...}}), ``threshold_macro``, ``threshold_micro``, ``calibration``
    ({label: {ece, bins}}), ``calibration_pooled``, ``ece`` (pooled), ``ece_macro`` (mean over classes with
    labelled rows), ``n_bins``. A class whose threshold is missing, None or NaN is scored at 0.5 (source
    "default"); thresholds for labels the predictions do not have are ignored.
    Raises :class:`cxr_core.errors.DataError` when the predictions carry no truth or have NaN probabilities.
    """
    known = preds.mask()
    assert preds.truth is not None
    if np.isnan(preds.probs).any():
        raise DataError("predictions contain missing (NaN) probabilities: cannot evaluate them")
    labels = preds.labels
    positive = preds.truth > 0.5
    probs = preds.probs  # float32
    thresholds = dict(thresholds or {})

    out: dict[str, Any] = {"labels": list(labels), "n_images": len(preds)}
    codes = patient_codes(preds.patient)
    out["n_patients"] = int(codes.max()) + 1 if codes.size else 0

    n_labelled: dict[str, int] = {}
    support: dict[str, int] = {}
    excluded: dict[str, str] = {}
    auc: dict[str, float | None] = {}
    ap: dict[str, float | None] = {}
    used_thresholds: dict[str, float] = {}
    source: dict[str, str] = {}
    per_class: dict[str, dict[str, Any]] = {}
    calibration: dict[str, dict[str, Any]] = {}
    for k, label in enumerate(labels):
        rows = known[:, k]
        truth, scores = positive[rows, k], probs[rows, k]
        n_labelled[label], support[label] = int(truth.size), int(truth.sum())
        reason = exclusion_reason(truth)
        if reason:
            excluded[label] = reason
            auc[label] = ap[label] = None
        else:
            auc[label] = roc_auc(truth, scores)
            ap[label] = average_precision(truth, scores)
        value = thresholds.get(label)
        given = value is not None and not np.isnan(value)
        used_thresholds[label] = float(value) if given else DEFAULT_THRESHOLD
        source[label] = "given" if given else "default"
        per_class[label] = threshold_metrics(truth, scores, used_thresholds[label])
        calibration[label] = reliability(truth, scores, n_bins)

    included = [label for label in labels if label not in excluded]
    cells_truth, cells_scores = positive[known], probs[known]
    micro_ok = exclusion_reason(cells_truth) is None
    out.update(
        n_labelled=n_labelled, support=support, excluded=excluded,
        auc=auc, auc_macro=_mean(auc[label] for label in included),
        auc_micro=roc_auc(cells_truth, cells_scores) if micro_ok else None,
        ap=ap, ap_macro=_mean(ap[label] for label in included),
        ap_micro=average_precision(cells_truth, cells_scores) if micro_ok else None,
    )
    flagged = probs >= np.array([used_thresholds[label] for label in labels], dtype=np.float32)
    out.update(bootstrap(positive, probs, known, codes, labels,
                         [k for k, label in enumerate(labels) if label not in excluded], n_boot=n_boot, seed=seed,
                         flagged=flagged))

    micro_counts = {key: sum(per_class[label][key] for label in labels) for key in ("tp", "fp", "tn", "fn")}
    out.update(
        thresholds=used_thresholds, threshold_source=source, threshold_metrics=per_class,
        threshold_macro={key: _mean(per_class[label][key] for label in included)
                         for key in ("sensitivity", "specificity", "ppv", "npv", "f1")},
        threshold_micro={**micro_counts, **ratios(**micro_counts)},
    )
    pooled = reliability(cells_truth, cells_scores, n_bins)
    out.update(calibration=calibration, calibration_pooled=pooled, ece=pooled["ece"],
               ece_macro=_mean(calibration[label]["ece"] for label in labels), n_bins=n_bins)
    return out


# -- pieces ------------------------------------------------------------------------------------------------


def exclusion_reason(truth: np.ndarray) -> str | None:
    """Why a class cannot be ranked on these labelled rows (None when it can)."""
    if truth.size == 0:
        return "no labelled images"
    if not truth.any():
        return "no positives"
    if truth.all():
        return "no negatives"
    return None


def patient_codes(patients: Sequence[str]) -> np.ndarray:
    """Integer code per row (0 .. n_patients - 1), one per distinct patient id; every row with an empty id is
    its own patient."""
    codes = np.empty(len(patients), dtype=np.int64)
    seen: dict[str, int] = {}
    n = 0
    for i, pid in enumerate(patients):
        if pid and pid in seen:
            codes[i] = seen[pid]
            continue
        if pid:
            seen[pid] = n
        codes[i] = n
        n += 1
    return codes


def ratios(tp: int, fp: int, tn: int, fn: int) -> dict[str, float | None]:
    """Sensitivity, specificity, PPV, NPV and F1 of a confusion matrix; None where the denominator is 0."""
    return {"sensitivity": _div(tp, tp + fn), "specificity": _div(tn, tn + fp), "ppv": _div(tp, tp + fp),
            "npv": _div(tn, tn + fn), "f1": _div(2 * tp, 2 * tp + fp + fn)}


def threshold_metrics(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts and ratios of ``scores >= threshold`` (in float32) against boolean ``truth``."""
    truth = np.asarray(truth, dtype=bool)
    flagged = np.asarray(scores, dtype=np.float32) >= np.float32(threshold)
    tp = int(np.count_nonzero(flagged & truth))
    fp = int(np.count_nonzero(flagged & ~truth))
    fn = int(np.count_nonzero(~flagged & truth))
    tn = int(truth.size - tp - fp - fn)
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn, **ratios(tp, fp, tn, fn),
            "support": tp + fn, "n": int(truth.size)}


def reliability(truth: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability bins and expected calibration error of probabilities ``scores`` for outcomes ``truth``.

    ``bins``: ``edges`` (n_bins + 1, equal width on [0, 1]) and per bin ``count``, ``mean_predicted`` and
    ``observed`` (positive fraction; None for an empty bin). ``ece = sum_b count_b / n * |mean_b - observed_b|``
    (None without rows).
    """
    truth = np.asarray(truth, dtype=np.float64)
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], scores)  # (lo, hi]; 0 falls in the first bin
    count = np.bincount(ids, minlength=n_bins)
    pred_sum = np.bincount(ids, weights=scores, minlength=n_bins)
    true_sum = np.bincount(ids, weights=truth, minlength=n_bins)
    filled = count > 0
    mean_pred = np.divide(pred_sum, count, out=np.zeros(n_bins), where=filled)
    observed = np.divide(true_sum, count, out=np.zeros(n_bins), where=filled)
    ece = float(np.sum(count * np.abs(mean_pred - observed)) / truth.size) if truth.size else None
    return {"ece": ece, "bins": {
        "edges": [float(e) for e in edges], "count": [int(c) for c in count],
        "mean_predicted": [float(m) if f else None for m, f in zip(mean_pred, filled, strict=True)],
        "observed": [float(o) if f else None for o, f in zip(observed, filled, strict=True)]}}


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, starting at (0, 0)."""
    tps, fps = _cumulative_counts(truth, scores)
    return np.r_[0.0, fps / max(fps[-1], 1)], np.r_[0.0, tps / max(tps[-1], 1)]


def pr_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, from the highest score down."""
    tps, fps = _cumulative_counts(truth, scores)
    return tps / max(tps[-1], 1), tps / np.maximum(tps + fps, 1)


def _cumulative_counts(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), scores.size - 1]
    tps = np.cumsum(truth[order])[last].astype(np.float64)
    return tps, (last + 1) - tps


# -- bootstrap ---------------------------------------------------------------------------------------------


class RankedClass:
    """One class's labelled rows in ascending score order, prepared for weighted AUC/AP of many resamples.

    A resample gives each patient a weight (how many times it was drawn); a row's weight is its patient's.
    With ``P`` / ``N`` the total weight of the positives / negatives, ``Cn(i)`` the weight of the negatives
    scoring below positive ``i``, ``Tn(i)`` that of the negatives tied with it and ``Cp(i)`` that of the
    positives scoring below it::

        AUC = sum_i w_i (Cn(i) + Tn(i) / 2) / (P N)                               (Mann-Whitney, ties 1/2)
        AP  = sum_i (w_i / P) * (P - Cp(i)) / (P + N - Cp(i) - Cn(i))             (recall step x precision)

    the second being scikit-learn's ``sum (R_t - R_{t-1}) P_t``: the precision at the threshold of ``i``'s
    score, i.e. among everything scoring at least as high. With integer weights both equal the metric of
    the data set that repeats each row that many times. Only the negatives' cumulative weights at the
    positives' tie boundaries are needed, so the negatives are summed per segment between boundaries with
    one sparse (segments x patients) product per block of resamples.
    """

    def __init__(self, truth: np.ndarray, scores: np.ndarray, codes: np.ndarray, n_codes: int) -> None:
        from scipy.sparse import csr_matrix  # scikit-learn's dependency; loaded only to bootstrap

        truth = np.asarray(truth, dtype=bool)
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(scores, kind="mergesort")
        ordered, is_pos = scores[order], truth[order]
        new_group = np.r_[True, ordered[1:] != ordered[:-1]]
        starts = np.flatnonzero(new_group)
        group = np.cumsum(new_group) - 1
        ends = np.r_[starts[1:], scores.size]
        neg_before = np.r_[0, np.cumsum(~is_pos)]  # negatives among the first j rows
        pos_before = np.r_[0, np.cumsum(is_pos)]
        start, end = starts[group[is_pos]], ends[group[is_pos]]
        neg_lo, neg_hi = neg_before[start], neg_before[end]
        self.pos_codes = codes[order][is_pos]
        self.pos_lo = pos_before[start]
        # negatives by segment: segment m holds the negatives j with bounds[m-1] <= j < bounds[m]
        bounds = np.unique(np.r_[neg_lo, neg_hi])
        neg_codes = codes[order][~is_pos]
        segment = np.searchsorted(bounds, np.arange(neg_codes.size), side="right")
        self.segments = csr_matrix((np.ones(neg_codes.size), (segment, neg_codes)), shape=(bounds.size + 1, n_codes))
        self.lo, self.hi = np.searchsorted(bounds, neg_lo), np.searchsorted(bounds, neg_hi)

    def auc_ap(self, counts_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AUC and AP for each column of ``counts_t`` (patients x resamples); NaN where undefined."""
        pos_w = counts_t[self.pos_codes]  # (positives, B)
        seg = self.segments @ counts_t  # (segments, B)
        below = np.cumsum(seg, axis=0)  # below[m] = weight of negatives before bounds[m]
        cp = np.cumsum(pos_w, axis=0) - pos_w  # weight of the positives before each positive
        p_tot, n_tot = pos_w.sum(axis=0), below[-1]
        cn_lo, cn_hi = below[self.lo], below[self.hi]
        ok = (p_tot > 0) & (n_tot > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = np.einsum("ij,ij->j", pos_w, cn_lo + cn_hi) / (2 * p_tot * n_tot)
            above_pos = p_tot - cp[self.pos_lo]
            above_all = above_pos + n_tot - cn_lo
            precision = np.divide(above_pos, above_all, out=np.zeros_like(above_pos), where=above_all > 0)
            ap = np.einsum("ij,ij->j", pos_w, precision) / p_tot
        return np.where(ok, auc, np.nan), np.where(ok, ap, np.nan)


def weighted_auc_ap(truth: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and AP with non-negative sample weights, one pair per row of ``weights`` (shape (B, n) or (n,)).

    With integer weights this equals the metric of the data set that repeats each row ``weight`` times.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n = weights.shape[1]
    return RankedClass(truth, scores, np.arange(n), n).auc_ap(np.ascontiguousarray(weights.T))


def patient_resamples(codes: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_patients, n_boot) draw counts: each column draws n_patients patients uniformly with replacement."""
    n_pat = int(codes.max()) + 1 if codes.size else 0
    draws = rng.integers(0, n_pat, size=(n_boot, n_pat)) * n_boot + np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_pat * n_boot).reshape(n_pat, n_boot).astype(np.float64)


def bootstrap(positive: np.ndarray, probs: np.ndarray, known: np.ndarray, codes: np.ndarray,
              labels: Sequence[str], included: Sequence[int], *, n_boot: int = 1000,
              seed: int = 0, flagged: np.ndarray | None = None) -> dict[str, Any]:
    """Percentile-bootstrap CIs by patient for AUC and AP of the ``included`` classes and their macro means,
    and, given ``flagged`` (N, K: the rows each class's threshold flags), for the sensitivity and specificity of
    every class at that operating point — from the same resamples.

    Returns ``ci`` / ``ci_ap`` ({label: [lo, hi] | None}), ``ci_auc_macro``, ``ci_ap_macro``,
    ``ci_sensitivity`` / ``ci_specificity`` ({label: [lo, hi] | None}), ``n_boot``, ``n_boot_used`` ({label: n}),
    ``n_boot_used_macro``, ``seed``, ``ci_level``.
    """
    out: dict[str, Any] = {"ci": {label: None for label in labels}, "ci_ap": {label: None for label in labels},
                           "ci_auc_macro": None, "ci_ap_macro": None, "ci_level": CI_LEVEL, "n_boot": int(n_boot),
                           "ci_sensitivity": {label: None for label in labels},
                           "ci_specificity": {label: None for label in labels},
                           "n_boot_used": {label: 0 for label in labels}, "n_boot_used_macro": 0, "seed": seed}
    if n_boot <= 0 or codes.size == 0 or (not included and flagged is None):
        return out
    n_pat = int(codes.max()) + 1
    ranked = [RankedClass(positive[known[:, k], k], probs[known[:, k], k], codes[known[:, k]], n_pat)
              for k in included]
    confusion = None if flagged is None else _confusion_by_patient(positive, flagged, known, codes, n_pat)
    aucs = np.full((n_boot, len(included)), np.nan)
    aps = np.full_like(aucs, np.nan)
    sens = np.full((n_boot, len(labels)), np.nan)
    spec = np.full_like(sens, np.nan)
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _BLOCK_CELLS // n_pat))
    for first in range(0, n_boot, block):
        counts = patient_resamples(codes, min(block, n_boot - first), rng)
        for j, r in enumerate(ranked):
            auc, ap = r.auc_ap(counts)
            aucs[first:first + len(auc), j], aps[first:first + len(ap), j] = auc, ap
        if confusion is not None:
            tp, fn, tn, fp = (np.einsum("pk,pb->bk", c, counts) for c in confusion)  # (B, K) weighted counts
            with np.errstate(divide="ignore", invalid="ignore"):
                sens[first:first + counts.shape[1]] = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
                spec[first:first + counts.shape[1]] = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
    if confusion is not None:
        for k, label in enumerate(labels):
            out["ci_sensitivity"][label] = _percentile_interval(sens[:, k])
            out["ci_specificity"][label] = _percentile_interval(spec[:, k])
    if not included:
        return out
    for j, k in enumerate(included):
        label = labels[k]
        out["n_boot_used"][label] = int(np.count_nonzero(~np.isnan(aucs[:, j])))
        out["ci"][label] = _percentile_interval(aucs[:, j])
        out["ci_ap"][label] = _percentile_interval(aps[:, j])
    complete = ~np.isnan(aucs).any(axis=1)
    out["n_boot_used_macro"] = int(complete.sum())
    out["ci_auc_macro"] = _percentile_interval(aucs[complete].mean(axis=1))
    out["ci_ap_macro"] = _percentile_interval(aps[complete].mean(axis=1))
    return out


def _confusion_by_patient(positive: np.ndarray, flagged: np.ndarray, known: np.ndarray, codes: np.ndarray,
                          n_pat: int) -> tuple[np.ndarray, ...]:
    """Per patient and class, how many of its labelled images are TP, FN, TN, FP: four (patients, K) arrays.

    A resample's weighted confusion counts are then one product with its draw counts.
    """
    cells = {"tp": positive & flagged, "fn": positive & ~flagged, "tn": ~positive & ~flagged, "fp": ~positive & flagged}
    out = []
    for name in ("tp", "fn", "tn", "fp"):
        table = np.zeros((n_pat, positive.shape[1]))
        np.add.at(table, codes, (cells[name] & known).astype(np.float64))
        out.append(table)
    return tuple(out)


def _percentile_interval(values: np.ndarray) -> list[float] | None:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - CI_LEVEL) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _div(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _mean(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
