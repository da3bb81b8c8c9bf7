"""Per-class thresholds: exact operating points from presorted scores, and tuning.

**Rule.** A case is flagged for a class when ``prob >= threshold``. Thresholds are compared in the dtype of
the scores (float32 for :class:`~cxr_core.predictions.Predictions`), exactly as
``Predictions.flagged`` compares them, so the counts here are the counts of the flags a reader of the
predictions file sees.

**Structure.** :class:`OperatingPoints` sorts each class's scores once, split three ways: rows whose truth
is positive, negative, and unknown (NaN truth or masked out). For a threshold ``t``,
``np.searchsorted(sorted, t, "left")`` is the number of scores below ``t``, so every count is one binary
search per part: ``FN = #pos < t``, ``TN = #neg < t``, ``TP = P - FN``, ``FP = Nneg - TN``,
``flagged = TP + FP + #unknown >= t``. Answering K classes costs O(K log N) and the answer is exact
(integer counts, no binning, no approximation), whatever ties the scores have. Rows whose score is NaN
carry no prediction: they are left out of every count (``missing`` says how many).

**Undefined ratios (0/0) are NaN** in arrays and ``None`` in JSON, never 0, 1 or 0.5:
sensitivity without positives, specificity without negatives, PPV when nothing labelled is flagged,
NPV when everything labelled is flagged, F1 when there are no positives and nothing is flagged.
A NaN threshold flags nothing (``prob >= NaN`` is false), as does a threshold above every score.

**Tuning** (:func:`tune`) is exact over the candidate thresholds: every distinct score of the labelled
rows, plus the next representable number above the highest one ("flag nothing"). Any other threshold
gives the same flags as the smallest candidate at or above it, so nothing better exists between
candidates. Modes (:func:`parse_mode`): ``f1`` (max F1), ``youden`` (max sensitivity + specificity - 1),
``sens=X`` (the highest threshold whose sensitivity >= X), ``spec=X`` (the lowest threshold whose
specificity >= X) and ``fixed=X``. Ties in ``f1`` and ``youden`` go to the highest threshold (fewest
flags). The data-driven modes need both positives and negatives among the labelled rows; a class without
them gets threshold ``None`` and a reason, never a silent default.

The thresholds file (what a tuning or a reviewer saves) is :mod:`cxr_core.eval.thresholds_file`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cxr_core.errors import CxrError, DataError
from cxr_core.eval.metrics import roc_auc
from cxr_core.predictions import Predictions

METRIC_KEYS = ("sensitivity", "specificity", "ppv", "npv", "f1", "flagged", "support", "negatives", "labelled",
               "tp", "fp", "tn", "fn")

ModeKind = Literal["f1", "youden", "sens", "spec", "fixed"]
Thresholds = Mapping[str, float | None] | Sequence[float | None] | np.ndarray  # one per class


# -- operating points ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdStats:
    """Every class's confusion counts and rates at one vector of thresholds (arrays of shape (K,))."""

    labels: list[str]
    threshold: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray
    flagged: np.ndarray  # rows with prob >= threshold among all rows with a score, labelled or not
    support: np.ndarray  # labelled positives
    negatives: np.ndarray  # labelled negatives
    labelled: np.ndarray  # support + negatives
    sensitivity: np.ndarray
    specificity: np.ndarray
    ppv: np.ndarray
    npv: np.ndarray
    f1: np.ndarray

    def row(self, label: int | str) -> dict[str, Any]:
        """One class as JSON-ready numbers (NaN -> None), keys :data:`METRIC_KEYS`."""
        k = self.labels.index(label) if isinstance(label, str) else int(label)
        return {key: json_number(getattr(self, key)[k]) for key in METRIC_KEYS}

    def rows(self) -> dict[str, dict[str, Any]]:
        return {name: self.row(k) for k, name in enumerate(self.labels)}


@dataclass(frozen=True)
class Curve:
    """One class's ROC and PR points, by threshold from high to low.

    The first point is the "flag nothing" threshold (the next number above the highest score):
    ``fpr = tpr = recall = 0`` and precision undefined (NaN). Then one point per distinct labelled score
    ``t``, with everything ``>= t`` flagged. ``fpr`` is NaN without negatives, ``tpr``/``recall`` NaN
    without positives. Empty arrays when the class has no labelled rows.
    """

    thresholds: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray

    @property
    def recall(self) -> np.ndarray:
        return self.tpr

    def downsample(self, max_points: int) -> Curve:
        """At most ``max_points`` points, evenly spaced along the curve's order, keeping both ends."""
        n = self.thresholds.size
        if max_points < 2:
            raise ValueError("a curve needs at least 2 points")
        if n <= max_points:
            return self
        keep = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.intp))
        return Curve(self.thresholds[keep], self.fpr[keep], self.tpr[keep], self.precision[keep])


class OperatingPoints:
    """Presorted per-class scores answering "what happens at these thresholds" exactly, in O(K log N).

    Build once (O(K N log N)) from ``probs`` (N, K), ``truth`` (N, K: 1 / 0 / NaN) and an optional
    ``mask`` (N, K, true where the truth counts, e.g. ``Predictions.mask()``). Then :meth:`at` answers a
    whole vector of thresholds with 3 binary searches per class; nothing is rescanned.
    """

    def __init__(self, probs: np.ndarray, truth: np.ndarray | None, mask: np.ndarray | None = None,
                 labels: Sequence[str] | None = None):
        probs = np.asarray(probs)
        if probs.ndim != 2:
            raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
        if probs.dtype not in (np.float32, np.float64):
            probs = probs.astype(np.float64)
        n, k = probs.shape
        self.labels = list(labels) if labels is not None else [str(i) for i in range(k)]
        if len(self.labels) != k:
            raise ValueError(f"{len(self.labels)} labels for {k} probability columns")
        self.dtype = probs.dtype
        self.n = n  # rows, labelled or not
        if truth is None:
            known = np.zeros((n, k), dtype=bool)
            positive = known
        else:
            truth = np.asarray(truth, dtype=np.float64)
            if truth.shape != probs.shape:
                raise ValueError(f"truth shape {truth.shape} differs from probs shape {probs.shape}")
            known = ~np.isnan(truth)
            positive = known & (truth > 0.5)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != probs.shape:
                raise ValueError(f"mask shape {mask.shape} differs from probs shape {probs.shape}")
            known = known & mask
        has_score = ~np.isnan(probs)
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []
        self._unk: list[np.ndarray] = []
        for c in range(k):
            col, ok, kn, po = probs[:, c], has_score[:, c], known[:, c], positive[:, c]
            self._pos.append(np.sort(col[ok & kn & po]))
            self._neg.append(np.sort(col[ok & kn & ~po]))
            self._unk.append(np.sort(col[ok & ~kn]))
        self.support = np.array([a.size for a in self._pos], dtype=np.int64)
        self.negatives = np.array([a.size for a in self._neg], dtype=np.int64)
        self.unlabelled = np.array([a.size for a in self._unk], dtype=np.int64)
        self.missing = n - self.support - self.negatives - self.unlabelled  # rows whose score is NaN

    @classmethod
    def from_predictions(cls, preds: Predictions) -> OperatingPoints:
        """From a :class:`~cxr_core.predictions.Predictions` that carries truth (DataError otherwise)."""
        return cls(preds.probs, preds.truth, preds.mask(), preds.labels)

    @property
    def labelled(self) -> np.ndarray:
        return self.support + self.negatives

    def index(self, label: int | str) -> int:
        if isinstance(label, str):
            try:
                return self.labels.index(label)
            except ValueError:
                raise DataError(f"unknown label {label!r}; labels are {', '.join(self.labels)}") from None
        return int(label)

    def threshold_vector(self, thresholds: Thresholds) -> np.ndarray:
        """(K,) float64 thresholds; a label missing from a mapping, or None, is NaN (flags nothing)."""
        if isinstance(thresholds, np.ndarray) and thresholds.dtype.kind in "fiu":
            values = thresholds.astype(np.float64).reshape(-1)
        else:
            if isinstance(thresholds, Mapping):
                items = [thresholds.get(name) for name in self.labels]
            else:
                items = list(thresholds)
            values = np.array([np.nan if v is None else float(v) for v in items], dtype=np.float64)
        if values.size != len(self.labels):
            raise ValueError(f"{values.size} thresholds for {len(self.labels)} classes")
        return values

    def at(self, thresholds: Thresholds) -> ThresholdStats:
        """Every class's counts and rates at ``thresholds`` (one per class): 3 binary searches per class.

        The thresholds are compared in the scores' dtype (rounded to float32 for float32 scores, as
        ``Predictions.flagged`` does); ``ThresholdStats.threshold`` keeps the values as given.
        """
        given = self.threshold_vector(thresholds)
        with np.errstate(over="ignore"):
            t = given.astype(self.dtype)
        k = len(self.labels)
        fn = np.empty(k, dtype=np.int64)
        tn = np.empty(k, dtype=np.int64)
        unk_flagged = np.zeros(k, dtype=np.int64)
        search = np.searchsorted
        for c in range(k):
            fn[c] = search(self._pos[c], t[c], "left")
            tn[c] = search(self._neg[c], t[c], "left")
            unk = self._unk[c]
            if unk.size:
                unk_flagged[c] = unk.size - search(unk, t[c], "left")
        tp = self.support - fn
        fp = self.negatives - tn
        return _stats(self.labels, given, tp, fp, tn, fn, tp + fp + unk_flagged)

    def candidates(self, label: int | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One class's candidate thresholds (ascending: distinct labelled scores, then "flag nothing") with
        the false negatives and true negatives below each; the basis of :func:`tune` and :meth:`curve`."""
        c = self.index(label)
        pos, neg = self._pos[c], self._neg[c]
        scores = np.unique(np.concatenate([pos, neg]))
        if scores.size == 0:
            return scores, np.zeros(0, np.int64), np.zeros(0, np.int64)
        above = np.nextafter(scores[-1], np.array(np.inf, dtype=self.dtype))
        cand = np.concatenate([scores, np.array([above], dtype=self.dtype)])
        fn = np.searchsorted(pos, cand, "left").astype(np.int64)
        tn = np.searchsorted(neg, cand, "left").astype(np.int64)
        return cand, fn, tn

    def auc(self, label: int | str) -> float | None:
        """ROC AUC of one class over its labelled rows (:func:`cxr_core.eval.metrics.roc_auc`); None without both
        outcomes."""
        c = self.index(label)
        pos, neg = self._pos[c], self._neg[c]
        if not pos.size or not neg.size:
            return None
        truth = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
        return roc_auc(truth, np.concatenate([pos, neg]))

    def curve(self, label: int | str, max_points: int | None = None) -> Curve:
        """ROC (fpr, tpr) and PR (recall, precision) points of one class; optionally at most ``max_points``."""
        c = self.index(label)
        cand, fn, tn = self.candidates(c)
        cand, fn, tn = cand[::-1], fn[::-1], tn[::-1]
        p, q = int(self.support[c]), int(self.negatives[c])
        tp, fp = p - fn, q - tn
        with np.errstate(divide="ignore", invalid="ignore"):
            tpr = tp / p if p else np.full(cand.size, np.nan)
            fpr = fp / q if q else np.full(cand.size, np.nan)
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        out = Curve(cand.astype(np.float64), np.asarray(fpr, np.float64), np.asarray(tpr, np.float64),
                    precision.astype(np.float64))
        return out.downsample(max_points) if max_points is not None else out


def _stats(labels: list[str], t: np.ndarray, tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray,
           flagged: np.ndarray) -> ThresholdStats:
    p, q = tp + fn, tn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(p > 0, tp / p, np.nan)
        spec = np.where(q > 0, tn / q, np.nan)
        ppv = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
        f1_den = 2 * tp + fp + fn
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, np.nan)
    return ThresholdStats(list(labels), t, tp, fp, tn, fn, flagged, p, q, p + q, sens, spec, ppv, npv, f1)


# -- tuning ------------------------------------------------------------------------------------------------

_MODE_HELP = "expected f1, youden, sens=X, spec=X or fixed=X (0 <= X <= 1)"


@dataclass(frozen=True)
class Mode:
    """How a threshold is chosen; ``str(mode)`` is the canonical text (``"sens=0.8"``) that files store."""

    kind: ModeKind
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value!r}"


def parse_mode(text: str | Mode) -> Mode:
    """``"f1"``, ``"youden"``, ``"sens=0.8"``, ``"spec=0.9"``, ``"fixed=0.5"`` -> Mode; CxrError otherwise."""
    if isinstance(text, Mode):
        return text
    raw = str(text)
    m = re.fullmatch(r"\s*([a-z0-9]+)\s*(?:=\s*(\S+)\s*)?", raw.lower())
    if not m:
        raise CxrError(f"bad threshold mode {raw!r}: {_MODE_HELP}")
    kind, arg = m.group(1), m.group(2)
    if kind in ("f1", "youden"):
        if arg is not None:
            raise CxrError(f"bad threshold mode {raw!r}: {kind} takes no value ({_MODE_HELP})")
        return Mode(kind)  # type: ignore[arg-type]
    if kind not in ("sens", "spec", "fixed"):
        raise CxrError(f"bad threshold mode {raw!r}: {_MODE_HELP}")
    if arg is None:
        raise CxrError(f"bad threshold mode {raw!r}: {kind} needs a value, e.g. {kind}=0.8")
    try:
        value = float(arg)
    except ValueError:
        raise CxrError(f"bad threshold mode {raw!r}: {arg!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # a threshold is a probability too (-3 would flag everything); NaN fails
        raise CxrError(f"bad threshold mode {raw!r}: {_MODE_HELP}")
    return Mode(kind, value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Choice:
    """One class's tuned threshold (None with a ``reason`` when the mode cannot be applied) and its metrics."""

    label: str
    mode: str
    threshold: float | None
    metrics: dict[str, Any]
    reason: str | None = None


def tune(points: OperatingPoints, mode: str | Mode, labels: Iterable[str] | None = None) -> list[Choice]:
    """Choose each class's threshold by ``mode``, exactly, over its candidate thresholds (module docstring).

    ``f1``/``youden``: the maximum, ties to the highest threshold (F1 compared as correctly rounded
    quotients, Youden's J as the exact integer ``TP*Nneg + TN*P``). ``sens=X``: the highest candidate with
    ``TP/P >= X``. ``spec=X``: the lowest candidate with ``TN/Nneg >= X``. ``fixed=X``: X as given.
    The chosen threshold is a candidate, i.e. a score value (or "flag nothing"), stored exactly.
    """
    mode = parse_mode(mode)
    names = list(points.labels) if labels is None else list(labels)
    chosen: dict[str, float | None] = {}
    reasons: dict[str, str | None] = {}
    for name in names:
        chosen[name], reasons[name] = _tune_one(points, points.index(name), mode)
    stats = points.at(chosen)
    return [Choice(name, str(mode), chosen[name], _metrics_or_none(stats.row(name), chosen[name]), reasons[name])
            for name in names]


def _tune_one(points: OperatingPoints, c: int, mode: Mode) -> tuple[float | None, str | None]:
    if mode.kind == "fixed":
        return float(mode.value), None  # type: ignore[arg-type]
    p, q = int(points.support[c]), int(points.negatives[c])
    if p == 0 and q == 0:
        return None, "no labelled cases"
    if p == 0:
        return None, f"no positive cases among {q} labelled"
    if q == 0:
        return None, f"no negative cases among {p} labelled"
    cand, fn, tn = points.candidates(c)  # ascending thresholds
    tp, fp = p - fn, q - tn
    if mode.kind == "f1":
        score = 2 * tp / (2 * tp + fp + fn)  # denominator >= P > 0
        i = _last_max(score)
    elif mode.kind == "youden":
        i = _last_max(tp * q + tn * p)  # (J + 1) * P * Nneg, exact in integers
    elif mode.kind == "sens":
        ok = np.flatnonzero(tp / p >= mode.value)  # nonincreasing in the threshold; the lowest candidate has 1
        i = int(ok[-1])
    else:  # spec
        ok = np.flatnonzero(tn / q >= mode.value)  # nondecreasing; "flag nothing" has 1
        i = int(ok[0])
    return float(cand[i]), None


def _last_max(values: np.ndarray) -> int:
    """Index of the maximum; among equal maxima the last (= highest threshold, as candidates ascend)."""
    return int(values.size - 1 - np.argmax(values[::-1]))


def _metrics_or_none(row: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    if threshold is not None:
        return row
    return {key: (row[key] if key in ("support", "negatives", "labelled") else None) for key in METRIC_KEYS}


# -- the thresholds file -------------------------------------------------------------------------------------


def json_number(value: Any) -> Any:
    """NumPy scalars -> Python numbers, NaN -> None (JSON has no NaN)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        value = float(value)
        return None if math.isnan(value) else value
    return value
