"""Reviewers' decisions as training labels: the data set's labels overlaid with what readers decided.

For each (study, finding) with decisions, one label: the latest **adjudicated** decision when there is one; else
the **majority** of the readers' current decisions; a tie goes to the **latest** decision. ``accept`` is positive,
``reject`` negative, ``uncertain`` masks the finding (it is left out of the loss, whatever the source said). A
study-level "normal" is stored as a reject of every finding, so it needs nothing special here.

Only decisions up to one action id are used (the run fixes it when it is created), so a resumed or repeated run
trains on the same labels. Studies in a test split never take labels from reviews, and the run says how many
such decisions it left out.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cxr_core.data.splits import TEST_SPLITS
from cxr_core.data.study import Study
from cxr_core.labels import LabelSpace

ADJUDICATOR = "adjudicator"
STATE = {"accept": "1", "reject": "0", "uncertain": "."}
"""Decision -> label state code (``.``: unknown, masked in the loss)."""
POLICY = "adjudicated, then the readers' majority, then the latest decision"


class _Action(Protocol):
    id: int
    study: str
    finding: str
    decision: str
    reviewer: str
    role: str
    kind: str


@dataclass
class ReviewLabels:
    """What the overlay did, for the run's record (reviews.json, the log, the report)."""

    upto: int
    policy: str = POLICY
    labels: int = 0
    """(study, finding) labels that came from reviews."""
    changed: int = 0
    """Of those, labels that differ from the data set's own."""
    studies: int = 0
    by_reader: dict[str, int] = field(default_factory=dict)
    """Decisions each reader contributed to the labels used (adjudications under ``adjudicated``)."""
    by_source: dict[str, int] = field(default_factory=dict)
    """How each label was settled: adjudicated, majority, latest, single."""
    test_left_out: int = 0
    unknown_findings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        readers = ", ".join(f"{name} {n}" for name, n in sorted(self.by_reader.items())) or "none"
        text = (f"{self.labels} labels from reviews on {self.studies} studies ({self.changed} differ from the data "
                f"set's), decisions up to action {self.upto} ({readers}; {self.policy})")
        if self.test_left_out:
            text += f"; {self.test_left_out} decisions on test-split studies not used"
        return text


def current_decisions(actions: Iterable[_Action], upto: int) -> dict[tuple[str, str], list[_Action]]:
    """(study, finding) -> each reader's (and adjudicator's) last decision with an id <= ``upto``."""
    last: dict[tuple[str, str, str, str], _Action] = {}
    for action in actions:
        if action.id > upto or action.kind != "decision":
            continue
        key = (action.study, action.finding, action.reviewer, action.role)
        if key not in last or action.id > last[key].id:
            last[key] = action
    grouped: dict[tuple[str, str], list[_Action]] = {}
    for action in last.values():
        if action.decision != "clear":
            grouped.setdefault((action.study, action.finding), []).append(action)
    return grouped


def consensus(decisions: Sequence[_Action]) -> tuple[str, str, list[_Action]]:
    """(decision, how it was settled, the decisions that made it) for one (study, finding)."""
    adjudicated = [d for d in decisions if d.role == ADJUDICATOR]
    if adjudicated:
        chosen = max(adjudicated, key=lambda d: d.id)
        return chosen.decision, "adjudicated", [chosen]
    readers = [d for d in decisions if d.role != ADJUDICATOR]
    if len(readers) == 1:
        return readers[0].decision, "single", readers
    votes = Counter(d.decision for d in readers)
    (top, n), *rest = votes.most_common()
    if not rest or rest[0][1] < n:
        return top, "majority", [d for d in readers if d.decision == top]
    latest = max(readers, key=lambda d: d.id)
    return latest.decision, "latest", [latest]


def overlay(studies: Sequence[Study], space: LabelSpace, actions: Iterable[_Action], upto: int
            ) -> tuple[list[Study], ReviewLabels]:
    """The studies with reviewers' decisions written into their label vectors (test-split studies untouched)."""
    summary = ReviewLabels(upto=upto)
    decided = current_decisions(actions, upto)
    by_study: dict[str, list[tuple[str, list[_Action]]]] = {}
    for (study, finding), decisions in decided.items():
        by_study.setdefault(study, []).append((finding, decisions))
    unknown: set[str] = set()
    readers: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    out = []
    for study in studies:
        findings = by_study.get(study.id)
        if not findings:
            out.append(study)
            continue
        if (study.split or "").casefold() in TEST_SPLITS:
            summary.test_left_out += sum(len(d) for _, d in findings)
            out.append(study)
            continue
        vector = list(study.labels or "." * len(space))
        used = 0
        for finding, decisions in findings:
            label = space.canonical(finding)
            if label is None:
                unknown.add(finding)
                continue
            decision, how, makers = consensus(decisions)
            state = STATE.get(decision)
            if state is None:
                continue
            k = space.index(label)
            summary.changed += vector[k] != state
            vector[k] = state
            used += 1
            sources[how] += 1
            for maker in makers:
                readers["adjudicated" if maker.role == ADJUDICATOR else maker.reviewer] += 1
        summary.labels += used
        summary.studies += bool(used)
        out.append(dataclasses.replace(study, labels="".join(vector)))
    summary.by_reader = dict(readers)
    summary.by_source = dict(sources)
    summary.unknown_findings = sorted(unknown)
    return out, summary
