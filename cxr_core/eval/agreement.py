"""Agreement between the model's flags and the reviewer's decisions, per finding.

The model says positive (flagged) or negative; the reviewer says accept (positive) or reject (negative).
``uncertain`` (and a cleared decision) is not a call either way and is left out of the table, but counted.
For each finding: the 2x2 table, the observed agreement and Cohen's kappa (agreement beyond chance), which is
undefined — ``None`` — when there is nothing to compare or when chance agreement is already perfect (both
raters used one and the same category throughout).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cxr_core.errors import CxrError

if TYPE_CHECKING:
    from cxr_core.predictions import Predictions

POSITIVE, NEGATIVE = "accept", "reject"
EXCLUDED = ("uncertain", "clear")


class _ReviewLike(Protocol):
    study: str
    finding: str
    decision: str
    flagged: bool | None


@dataclass(frozen=True)
class Agreement:
    """The 2x2 table of model flag x reviewer decision for one finding, and the statistics it gives."""

    finding: str
    both_positive: int = 0
    model_only: int = 0
    reviewer_only: int = 0
    both_negative: int = 0
    excluded: int = 0
    """Decisions left out: uncertain or cleared, or (by finding) no model flag known."""

    @property
    def n(self) -> int:
        """Pairs compared (the table's total)."""
        return self.both_positive + self.model_only + self.reviewer_only + self.both_negative

    @property
    def observed(self) -> float | None:
        """Fraction of pairs where model and reviewer agree (None without pairs)."""
        return (self.both_positive + self.both_negative) / self.n if self.n else None

    @property
    def expected(self) -> float | None:
        """Agreement expected by chance from the two raters' marginal rates (None without pairs)."""
        if not self.n:
            return None
        model_pos, model_neg = self.both_positive + self.model_only, self.reviewer_only + self.both_negative
        review_pos, review_neg = self.both_positive + self.reviewer_only, self.model_only + self.both_negative
        return (model_pos * review_pos + model_neg * review_neg) / (self.n * self.n)

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa, ``1 - observed disagreement / chance disagreement``; None where undefined."""
        n = self.n
        if not n:
            return None
        model_pos, model_neg = self.both_positive + self.model_only, self.reviewer_only + self.both_negative
        review_pos, review_neg = self.both_positive + self.reviewer_only, self.model_only + self.both_negative
        # Disagreement expected by chance, times n (integers until the one division: exact, as sklearn's).
        chance = (model_pos * review_neg + model_neg * review_pos) / n
        if chance == 0:
            return None
        return 1.0 - (self.model_only + self.reviewer_only) / chance

    def to_dict(self) -> dict[str, Any]:
        """Counts and statistics as plain values (for JSON and tables)."""
        return {"finding": self.finding, "both_positive": self.both_positive, "model_only": self.model_only,
                "reviewer_only": self.reviewer_only, "both_negative": self.both_negative, "n": self.n,
                "excluded": self.excluded, "observed": self.observed, "expected": self.expected, "kappa": self.kappa}


def _reviewer_call(decision: str) -> bool | None:
    value = str(decision).strip().lower()
    if value == POSITIVE:
        return True
    if value == NEGATIVE:
        return False
    if value in EXCLUDED:
        return None
    raise CxrError(f"unknown review decision {decision!r}: expected accept, reject, uncertain or clear")


def agreement(model_flags: Sequence[bool], decisions: Sequence[str], finding: str = "") -> Agreement:
    """The agreement table of paired model flags and reviewer decisions (same order, same length)."""
    if len(model_flags) != len(decisions):
        raise ValueError(f"{len(model_flags)} model flags but {len(decisions)} decisions")
    counts = [0, 0, 0, 0, 0]  # both positive, model only, reviewer only, both negative, excluded
    for flag, decision in zip(model_flags, decisions, strict=True):
        call = _reviewer_call(decision)
        if call is None:
            counts[4] += 1
        elif bool(flag):
            counts[0 if call else 1] += 1
        else:
            counts[2 if call else 3] += 1
    return Agreement(finding, *counts)


def agreement_by_finding(
    reviews: Iterable[_ReviewLike],
    flags: Mapping[tuple[str, str], bool] | None = None,
) -> dict[str, Agreement]:
    """Per finding, agreement over ``reviews`` (e.g. ``ReviewStore.reviews(root)``: current decisions).

    The model's side is ``flags[(study, finding)]`` when ``flags`` is given (today's thresholds), else the flag
    stored with the review (what the model showed when the reviewer decided). A review without a model flag
    counts as excluded. Findings come out in name order.
    """
    pairs: dict[str, tuple[list[bool], list[str]]] = {}
    missing: dict[str, int] = {}
    for review in reviews:
        flag = flags.get((review.study, review.finding)) if flags is not None else review.flagged
        if flag is None:
            missing[review.finding] = missing.get(review.finding, 0) + 1
            continue
        model_side, reviewer_side = pairs.setdefault(review.finding, ([], []))
        model_side.append(bool(flag))
        reviewer_side.append(review.decision)
    result: dict[str, Agreement] = {}
    for finding in sorted(set(pairs) | set(missing)):
        model_side, reviewer_side = pairs.get(finding, ([], []))
        table = agreement(model_side, reviewer_side, finding)
        extra = missing.get(finding, 0)
        result[finding] = Agreement(finding, table.both_positive, table.model_only, table.reviewer_only,
                                    table.both_negative, table.excluded + extra)
    return result


@dataclass(frozen=True)
class ReviewedStudies:
    """The reviewer's current decisions, paired with what the model says about each reviewed study.

    ``max_prob`` is (S, K): per reviewed study present in the predictions, the highest probability of any of
    its images (NaN when none has a score), so "the model flags the study" is ``max_prob >= threshold``.
    ``by_finding`` maps a label to the row of each decision in ``max_prob`` and the decisions themselves;
    ``unmatched`` counts decisions whose study has no score for that label (excluded from the table).
    """

    max_prob: np.ndarray
    by_finding: dict[str, tuple[np.ndarray, list[str]]]
    unmatched: dict[str, int]
    total: int

    @classmethod
    def empty(cls, n_labels: int) -> ReviewedStudies:
        """No decisions (yet): every agreement table is empty."""
        return cls(np.zeros((0, n_labels), np.float32), {}, {}, 0)

    @classmethod
    def build(cls, preds: Predictions, reviews: Iterable[_ReviewLike]) -> ReviewedStudies:
        reviews = list(reviews)
        predicted = set(preds.study)
        studies = [study for study in dict.fromkeys(r.study for r in reviews) if study in predicted]
        position = {study: s for s, study in enumerate(studies)}
        max_prob = preds.study_scores(studies)
        column = {label: k for k, label in enumerate(preds.labels)}
        pairs: dict[str, tuple[list[int], list[str]]] = defaultdict(lambda: ([], []))
        unmatched: dict[str, int] = defaultdict(int)
        for review in reviews:
            s, k = position.get(review.study), column.get(review.finding)
            if s is None or k is None or np.isnan(max_prob[s, k]):
                unmatched[review.finding] += 1
                continue
            index, decisions = pairs[review.finding]
            index.append(s)
            decisions.append(review.decision)
        by_finding = {label: (np.array(index, dtype=np.intp), decisions) for label, (index, decisions) in pairs.items()}
        return cls(max_prob, by_finding, dict(unmatched), len(reviews))

    def agreement(self, label: str, k: int, threshold: float) -> Agreement:
        """The model's study flags at ``threshold`` against the decisions on ``label`` (column ``k``)."""
        index, decisions = self.by_finding.get(label, (np.zeros(0, np.intp), []))
        flags = self.max_prob[index, k] >= np.asarray(threshold, dtype=self.max_prob.dtype)
        table = agreement(flags.tolist(), decisions, label)
        extra = self.unmatched.get(label, 0)
        return Agreement(label, table.both_positive, table.model_only, table.reviewer_only, table.both_negative,
                         table.excluded + extra)
