"""Agreement between readers: Cohen's kappa for each pair, Fleiss' kappa for three or more, and the findings
they disagree on (what an adjudicator settles).

Input is the readers' current decisions (``ReviewStore.reviews(root)``: every reader's latest action per
study and finding, with ``reviewer`` and ``role``). A call is accept (positive) or reject (negative);
``uncertain`` and cleared decisions are not calls and are left out, as in :mod:`cxr_core.eval.agreement`.
Adjudicators' decisions never count as a reader's: an accept or reject settles a disagreement; an adjudicator's
``uncertain`` is kept and shown ("unsure") but settles nothing.

Fleiss' kappa needs the same number of raters for every item, so it is computed over the items every reader
called (with two readers it equals Scott's pi, not Cohen's kappa: the pairwise table gives Cohen's).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Protocol

import numpy as np

from cxr_core.eval.agreement import Agreement, _reviewer_call

ADJUDICATOR = "adjudicator"
ALL = "all findings"
"""The key of the table pooled over every finding."""


class _ReaderReview(Protocol):
    study: str
    finding: str
    decision: str
    reviewer: str
    role: str


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa of an (items, categories) table of how many raters put each item in each category; every
    row must sum to the same number of raters (>= 2). None when undefined (no items, or chance agreement 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or not len(counts):
        return None
    raters = counts.sum(axis=1)
    if raters.min() != raters.max() or raters[0] < 2:
        raise ValueError("every item needs the same number of raters, at least two")
    n, items = float(raters[0]), len(counts)
    shares = counts.sum(axis=0) / (items * n)
    per_item = ((counts * counts).sum(axis=1) - n) / (n * (n - 1))
    observed, chance = float(per_item.mean()), float((shares * shares).sum())
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


@dataclass(frozen=True)
class Disagreement:
    """A (study, finding) readers called differently, with each reader's call and any adjudication."""

    study: str
    finding: str
    calls: dict[str, str]
    adjudicated: str | None = None

    @property
    def settled(self) -> bool:
        """True when an adjudicator accepted or rejected it (``uncertain`` leaves it open)."""
        return self.adjudicated in ("accept", "reject")

    @property
    def adjudicated_text(self) -> str:
        """The adjudication as a table shows it: accept, reject, unsure, or an em dash for none."""
        if self.adjudicated is None:
            return "\u2014"
        return "unsure" if self.adjudicated == "uncertain" else self.adjudicated

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "finding": self.finding, "calls": dict(self.calls), "adjudicated": self.adjudicated}


@dataclass(frozen=True)
class ReaderAgreement:
    """Agreement among readers for one finding (or :data:`ALL` of them pooled)."""

    finding: str
    readers: tuple[str, ...]
    pairs: dict[tuple[str, str], Agreement] = field(default_factory=dict)
    """Cohen's 2x2 per pair of readers (first reader as ``model_*`` side), over the items both called."""
    fleiss: float | None = None
    fleiss_items: int = 0
    """Items every reader called (what Fleiss' kappa is computed over)."""
    called: int = 0
    """Items at least two readers called."""
    disagreements: int = 0

    def headline(self) -> tuple[str, float | None, int]:
        """The kappa to show: (``Fleiss`` over the items all read, with three or more readers, else ``Cohen`` of the
        one pair over the items both read), its value (None: undefined) and how many items it covers."""
        if len(self.readers) >= 3 or not self.pairs:
            return "Fleiss", self.fleiss, self.fleiss_items
        pair = next(iter(self.pairs.values()))
        return "Cohen", pair.kappa, pair.n

    def to_dict(self) -> dict[str, Any]:
        return {"finding": self.finding, "readers": list(self.readers), "fleiss_kappa": self.fleiss,
                "fleiss_items": self.fleiss_items, "items": self.called, "disagreements": self.disagreements,
                "pairs": [{"readers": list(pair), "n": table.n, "observed": table.observed, "kappa": table.kappa}
                          for pair, table in self.pairs.items()]}


def _calls(reviews: Iterable[_ReaderReview]) -> tuple[dict[tuple[str, str], dict[str, bool]],
                                                         dict[tuple[str, str], str]]:
    """(study, finding) -> reader -> call, and (study, finding) -> adjudicated decision."""
    calls: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
    settled: dict[tuple[str, str], str] = {}
    for review in reviews:
        call = _reviewer_call(review.decision)
        key = (review.study, review.finding)
        if getattr(review, "role", "reader") == ADJUDICATOR:
            if call is not None or review.decision == "uncertain":
                settled[key] = review.decision  # the latest adjudication (reviews come in action order)
            continue
        if call is not None:
            calls[key][review.reviewer] = call
    return calls, settled


def reader_agreement(reviews: Iterable[_ReaderReview], readers: Sequence[str] | None = None) -> dict[str, ReaderAgreement]:
    """Per finding (name order) and pooled (:data:`ALL`, last): pairwise Cohen's kappa, Fleiss' kappa over the
    items all ``readers`` (default: everyone with a call) called, and how many items they disagree on."""
    calls, _ = _calls(reviews)
    everyone = tuple(sorted(readers if readers is not None else {r for by in calls.values() for r in by}))
    by_finding: dict[str, list[dict[str, bool]]] = defaultdict(list)
    for (_, finding), by_reader in calls.items():
        by_finding[finding].append(by_reader)
    groups = {finding: by_finding[finding] for finding in sorted(by_finding)}
    groups[ALL] = [by for items in by_finding.values() for by in items]
    return {finding: _agreement(finding, items, everyone) for finding, items in groups.items()}


def _agreement(finding: str, items: list[dict[str, bool]], readers: tuple[str, ...]) -> ReaderAgreement:
    pairs = {}
    for a, b in combinations(readers, 2):
        both = [(item[a], item[b]) for item in items if a in item and b in item]
        tally = [0, 0, 0, 0]  # both positive, a only, b only, both negative
        for call_a, call_b in both:
            tally[(0 if call_b else 1) if call_a else (2 if call_b else 3)] += 1
        pairs[(a, b)] = Agreement(finding, *tally)
    complete = [item for item in items if all(r in item for r in readers)]
    fleiss = None
    if len(readers) >= 2 and complete:
        positives = np.array([sum(item[r] for r in readers) for item in complete])
        fleiss = fleiss_kappa(np.stack([positives, len(readers) - positives], axis=1))
    shared = [item for item in items if sum(r in item for r in readers) >= 2]
    split = sum(len({item[r] for r in readers if r in item}) > 1 for item in shared)
    return ReaderAgreement(finding, readers, pairs, fleiss, len(complete), len(shared), split)


def disagreements(reviews: Iterable[_ReaderReview], *, unsettled_only: bool = False) -> list[Disagreement]:
    """Every (study, finding) readers called both ways (accept by one, reject by another), by study then finding,
    with the adjudicated decision where there is one (``unsettled_only``: only those no adjudicator accepted or
    rejected; an adjudicator's ``uncertain`` leaves it unsettled)."""
    calls, settled = _calls(reviews)
    out = []
    for key in sorted(calls):
        by_reader = calls[key]
        if len(set(by_reader.values())) < 2:
            continue
        if unsettled_only and settled.get(key) in ("accept", "reject"):
            continue
        out.append(Disagreement(key[0], key[1], {r: "accept" if c else "reject" for r, c in sorted(by_reader.items())},
                                settled.get(key)))
    return out
