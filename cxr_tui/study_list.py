"""The worklist's data: one row per study as NumPy columns, and a view (filter + sort) as an index array.

The table widget renders only the rows on screen, so this list is what has to scale: 112,120 NIH studies
are re-sorted, re-filtered and re-flagged in tens of milliseconds because every operation is a NumPy pass
over the columns (at worst one ``lexsort``), never a Python loop over rows. It imports neither Textual nor
Rich, so it is tested and benchmarked on its own.

**Columns.** Study id, patient, view and split are fixed when the model is built. Predictions arrive later
(:meth:`StudyList.update_predictions`): the (N, K) probabilities are kept, and the flags (``prob >=
threshold``, compared in the scores' dtype with NaN thresholds flagging nothing, as in
:mod:`cxr_core.eval.operating_points`), the number flagged and the maximum probability are derived from them.
A row with no prediction (all NaN) has ``max_prob`` NaN and is never flagged. Rows are grouped by their
distinct flag pattern (``np.unique`` over the packed bits), and the "findings" text of a pattern
("Effusion, Mass", in label order) is built when a row with it is first shown, never once per row.

**View.** ``_order`` is every row in sort order (ties broken by study id, ascending, so the order is
deterministic); the view is ``_order`` restricted to the rows the filter keeps. A filter change is a mask
(O(N)); a sort change is one ``lexsort``; both keep the other. Positions (``pos``) index the view; rows
(``row``) index the columns. Every method that changes data re-applies the current sort and filter, so the
view is always consistent; a caller holding a cursor re-finds its study with :meth:`position_of`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, get_args

import numpy as np

from cxr_core.text import name_text, visible

if TYPE_CHECKING:
    from cxr_core.data import Study

SortKey = Literal["max_prob", "n_flagged", "study", "patient", "view", "split", "findings", "status", "finding",
                  "uncertain", "entropy", "disagreement"]
"""``finding``: one finding's probability (:meth:`StudyList.sort` names which); ``uncertain`` / ``entropy``: how
unsure the model is (:mod:`cxr_core.eval.uncertainty`, what to review next); ``disagreement``: how much its answers
move across views of the image (:meth:`StudyList.update_disagreement`); the others are columns."""
LEARNING_ORDERS = ("uncertain", "entropy", "disagreement")
"""Sort keys that score how much a study's review would teach the next model (higher = sooner)."""
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
REVIEW_STATES: tuple[str, ...] = ("", "partial", "uncertain", "reviewed", "missing")
"""Review status of a study: not started, some findings reviewed, a finding left uncertain, every finding
reviewed; ``missing`` marks a labelled study whose image is not on disk (a partial NIH download)."""

NOT_PREDICTED = "–"
"""Shown for the number flagged and the maximum probability of a study without predictions."""


@dataclass(frozen=True, slots=True)
class StudyFilter:
    """Which rows the view keeps; the default keeps every row."""

    flagged_only: bool = False
    finding: str | None = None
    unreviewed_only: bool = False
    split: str | None = None
    with_image_only: bool = False
    """Hide studies whose image is not on disk (labels only: a partial download)."""


class RowText(NamedTuple):
    """One row as display strings (``status`` is one of :data:`REVIEW_STATES`)."""

    study: str
    patient: str
    view: str
    split: str
    n_flagged: str
    max_prob: str
    findings: str
    status: str
    known: str = ""


class StudyList:
    """Studies as columns plus a filtered, sorted view over them; see the module docstring."""

    def __init__(self, study_ids: Sequence[str], patients: Sequence[str] | None = None,
                 views: Sequence[str] | None = None, splits: Sequence[str | None] | None = None,
                 labels: Sequence[str] = (), known: Sequence[str] | None = None) -> None:
        """Build from parallel sequences (one item per study); study ids must be unique.

        ``labels`` names the finding columns before any predictions arrive (so a finding filter can be
        offered); :meth:`update_predictions` may replace them. ``known`` is each study's positive labels from
        the data set as text ("Effusion, Mass"; "" when none or unlabelled).
        """
        ids = np.asarray(list(study_ids), dtype=str)
        n = ids.size
        self._ids = ids.reshape(n)
        self._id_order = np.argsort(self._ids, kind="stable")
        self._sorted_ids = self._ids[self._id_order]
        if n > 1 and np.any(self._sorted_ids[1:] == self._sorted_ids[:-1]):
            raise ValueError("study ids must be unique")
        self._id_rank = np.empty(n, dtype=np.int64)
        self._id_rank[self._id_order] = np.arange(n)
        self._patients = _column(patients, n, "patients")
        self._views, self._view_codes = _categories(_column(views, n, "views"))
        self._splits, self._split_codes = _categories(_column(splits, n, "splits"))
        self._status = np.zeros(n, dtype=np.int8)
        self._known = np.asarray([visible(k) for k in known], dtype=object) if known is not None else None
        if self._known is not None and self._known.size != n:
            raise ValueError(f"known has {self._known.size} items for {n} studies")
        self._sort_finding: str | None = None
        self.labels: list[str] = list(labels)
        self._probs = np.full((n, len(self.labels)), np.nan, dtype=np.float32)
        self._information = np.full((n, len(self.labels)), np.nan, dtype=np.float32)  # NaN: not measured
        self._thresholds = np.full(len(self.labels), np.nan, dtype=np.float32)
        self._flags = np.zeros((n, len(self.labels)), dtype=bool)
        self._n_flagged = np.zeros(n, dtype=np.int16)
        self._max_prob = np.full(n, np.nan, dtype=np.float32)
        self._pattern = np.zeros(n, dtype=np.int64)
        self._pattern_bits = np.zeros((1, len(self.labels)), dtype=bool)
        self._pattern_text: dict[int, str] = {}
        self._ids_lower: np.ndarray | None = None
        self._patient_rank: np.ndarray | None = None
        self._sort_key: SortKey = "study"
        self._descending = False
        self._filter = StudyFilter()
        self._order = self._id_order
        self._keep = np.ones(n, dtype=bool)
        self._view = self._order

    @classmethod
    def from_studies(cls, studies: Iterable[Study], labels: Sequence[str] = (),
                     findings: Sequence[str] | None = None) -> StudyList:
        """A model over index records (:class:`cxr_core.data.study.Study`), in the order given. ``findings``
        (the label space's names) decodes each study's known labels; without it none are shown."""
        ids, patients, views, splits, known = [], [], [], [], []
        texts: dict[str, str] = {}
        for study in studies:
            ids.append(study.id)
            patients.append(study.patient_id)
            views.append(study.view)
            splits.append(study.split or "")
            if findings is not None:
                code = study.labels or ""
                if code not in texts:
                    texts[code] = ", ".join(name for name, state in zip(findings, code, strict=False) if state == "1")
                known.append(texts[code])
        has_known = findings is not None and any(known)
        return cls(ids, patients, views, splits, labels, known if has_known else None)

    @property
    def has_known(self) -> bool:
        """Whether the data set gave any study a positive label (the worklist then shows them)."""
        return self._known is not None

    @property
    def sort_finding(self) -> str | None:
        """The finding whose probability orders the view (sort key ``finding``)."""
        return self._sort_finding if self._sort_key == "finding" else None

    # -- reading --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Rows in the view."""
        return int(self._view.size)

    @property
    def total(self) -> int:
        """Rows in the model, filtered or not."""
        return int(self._ids.size)

    @property
    def sort_key(self) -> SortKey:
        return self._sort_key

    @property
    def descending(self) -> bool:
        return self._descending

    @property
    def splits(self) -> list[str]:
        """Distinct split names (for a filter menu)."""
        return [s for s in self._splits if s]

    @property
    def predicted(self) -> bool:
        """Whether any row has a prediction."""
        return bool(np.any(~np.isnan(self._max_prob)))

    @property
    def id_width(self) -> int:
        """Characters in the longest study id (from the array's dtype: free)."""
        return self._ids.dtype.itemsize // np.dtype("U1").itemsize

    @property
    def patient_width(self) -> int:
        """Characters in the longest patient id."""
        return self._patients.dtype.itemsize // np.dtype("U1").itemsize

    @property
    def split_width(self) -> int:
        """Characters in the longest split name."""
        return max((len(s) for s in self._splits), default=0)

    @property
    def flags(self) -> np.ndarray:
        """(N, K) flags over all rows, in row order (read-only)."""
        flags = self._flags.view()
        flags.flags.writeable = False
        return flags

    @property
    def n_flagged(self) -> np.ndarray:
        """Number of findings flagged per row, in row order (read-only)."""
        values = self._n_flagged.view()
        values.flags.writeable = False
        return values

    @property
    def max_prob(self) -> np.ndarray:
        """Highest probability per row (NaN: not predicted), in row order (read-only)."""
        values = self._max_prob.view()
        values.flags.writeable = False
        return values

    @property
    def findings(self) -> np.ndarray:
        """The flagged findings of each row as text ("Effusion, Mass"), in row order."""
        return np.asarray(self._all_pattern_texts(), dtype=object)[self._pattern]

    @property
    def has_disagreement(self) -> bool:
        """Whether the disagreement of any study has been measured (:meth:`update_disagreement`)."""
        return bool(np.isfinite(self._information).any())

    def most_informative(self, order: str = "uncertain") -> str | None:
        """The unreviewed study with an image (in the whole list, not only the view) the model is least sure of
        (``order``: one of :data:`LEARNING_ORDERS`)."""
        score = self._informativeness(order)
        open_ = ((self._status == REVIEW_STATES.index("")) | (self._status == REVIEW_STATES.index("partial"))) \
            & ~np.isnan(score)
        if not open_.any():
            return None
        best = np.flatnonzero(open_)[np.argmax(score[open_])]
        return str(self._ids[best])

    def study_at(self, pos: int) -> str:
        """Study id at a view position (IndexError outside the view)."""
        return str(self._ids[self._view[self._check(pos)]])

    def index_at(self, pos: int) -> int:
        """Row index (into the columns, stable across sorts and filters) of a view position."""
        return int(self._view[self._check(pos)])

    def max_prob_at(self, pos: int) -> float:
        """Highest probability of the study at a view position (NaN: not predicted)."""
        return float(self._max_prob[self._view[self._check(pos)]])

    def shown_prob_at(self, pos: int) -> float:
        """The probability the row shows: the sorted finding's when sorting by one, else the highest."""
        i = self._view[self._check(pos)]
        finding = self.sort_finding
        if finding is not None and finding in self.labels:
            return float(self._probs[i, self.labels.index(finding)])
        return float(self._max_prob[i])

    def status_at(self, pos: int) -> str:
        """Review status of the study at a view position."""
        return REVIEW_STATES[self._status[self._view[self._check(pos)]]]

    def row(self, pos: int) -> RowText:
        """Display strings of the study at a view position."""
        i = int(self._view[self._check(pos)])
        prob = self._max_prob[i]
        predicted = not np.isnan(prob)
        shown = self.shown_prob_at(pos)
        return RowText(  # outside text shown, never acted on (an ESC in a file name is drawn as \x1b)
            study=name_text(str(self._ids[i])),  # one-to-one: two files never one row name
            patient=name_text(str(self._patients[i])),
            view=visible(self._views[self._view_codes[i]]),
            split=visible(self._splits[self._split_codes[i]]),
            n_flagged=str(self._n_flagged[i]) if predicted else NOT_PREDICTED,
            max_prob=f"{shown:.2f}" if not np.isnan(shown) else NOT_PREDICTED,
            findings=self._text_of(int(self._pattern[i])),
            status=REVIEW_STATES[self._status[i]],
            known=str(self._known[i]) if self._known is not None else "",
        )

    def row_index(self, study_id: str) -> int | None:
        """Row (not view position) of a study, or None if the model has no such study."""
        found = int(np.searchsorted(self._sorted_ids, study_id))
        if found < self._sorted_ids.size and self._sorted_ids[found] == study_id:
            return int(self._id_order[found])
        return None

    def position_of(self, study_id: str) -> int | None:
        """View position of a study, or None when it is not in the model or filtered out."""
        row = self.row_index(study_id)
        if row is None or not self._keep[row]:
            return None
        return int(np.flatnonzero(self._view == row)[0])

    def search(self, text: str, start: int = 0) -> int | None:
        """First view position at or after ``start`` whose study id starts with ``text``; failing that, the
        first whose id contains it (case-insensitive); wrapping round to the top; None when none matches."""
        if not text or not len(self):
            return None
        if self._ids_lower is None:
            self._ids_lower = np.char.lower(self._ids)
        needle = text.lower()
        start = min(max(start, 0), len(self) - 1)
        for test in (np.char.startswith, lambda ids, s: np.char.find(ids, s) >= 0):
            found = np.flatnonzero(test(self._ids_lower, needle)[self._view])
            if found.size:
                after = found[found >= start]
                return int(after[0] if after.size else found[0])
        return None

    # -- view -----------------------------------------------------------------------------------------------

    def sort(self, key: SortKey | str, descending: bool = False, finding: str | None = None) -> None:
        """Order the view by a column (ties: study id ascending), or with key ``finding`` by that finding's
        probability; rows without predictions sort last by ``max_prob``, ``n_flagged`` and ``finding`` whichever
        the direction. Keeps the filter."""
        if key not in SORT_KEYS:
            raise ValueError(f"unknown sort key {key!r}; choose from {', '.join(SORT_KEYS)}")
        if key == "finding" and finding not in self.labels:
            raise ValueError(f"unknown finding {finding!r}; labels are {', '.join(self.labels) or 'none yet'}")
        self._sort_finding = finding if key == "finding" else None
        self._sort_key, self._descending = key, descending  # type: ignore[assignment]
        self._resort()

    def filter(self, flagged_only: bool = False, finding: str | None = None, unreviewed_only: bool = False,
               split: str | None = None, with_image_only: bool = False) -> None:
        """Keep the rows that pass every given condition (replacing the previous filter). Keeps the sort.

        ``finding`` keeps rows where that label is flagged; ``split`` rows of that split;
        ``unreviewed_only`` rows not fully reviewed.
        """
        if finding is not None and finding not in self.labels:
            raise ValueError(f"unknown finding {finding!r}; labels are {', '.join(self.labels) or 'none yet'}")
        self._filter = StudyFilter(flagged_only, finding, unreviewed_only, split, with_image_only)
        self._refilter()

    def _resort(self) -> None:
        key, descending = self._sort_key, self._descending
        if key == "study":
            self._order = self._id_order[::-1] if descending else self._id_order
        else:
            primary = self._sort_values(key)
            if descending:
                primary = -primary
            if key in ("max_prob", "n_flagged", "finding", *LEARNING_ORDERS):
                # Unpredicted rows last in both directions: NaN sorts last, and -NaN is NaN.
                primary = np.where(np.isnan(self._max_prob), np.nan, primary.astype(np.float64))
            self._order = np.lexsort((self._id_rank, primary))
        self._view = self._order[self._keep[self._order]]

    def _sort_values(self, key: str) -> np.ndarray:
        if key in LEARNING_ORDERS:  # higher = review sooner
            return self._informativeness(key)
        if key == "finding":
            if self._sort_finding not in self.labels:  # new predictions without it: back to the highest
                return self._max_prob.astype(np.float64)
            return self._probs[:, self.labels.index(self._sort_finding)].astype(np.float64)
        if key == "max_prob":
            return self._max_prob.astype(np.float64)
        if key == "n_flagged":
            return self._n_flagged.astype(np.int64)
        if key == "view":
            return self._view_codes.astype(np.int64)
        if key == "split":
            return self._split_codes.astype(np.int64)
        if key == "status":
            return self._status.astype(np.int64)
        if key == "findings":
            texts = np.asarray(self._all_pattern_texts(), dtype=str)
            rank = np.empty(texts.size, dtype=np.int64)
            rank[np.argsort(texts, kind="stable")] = np.arange(texts.size)
            return rank[self._pattern]
        if self._patient_rank is None:
            _, self._patient_rank = np.unique(self._patients, return_inverse=True)
        return self._patient_rank.astype(np.int64).reshape(-1)

    def _informativeness(self, order: str) -> np.ndarray:
        from cxr_core.eval import informativeness

        if order == "disagreement" and not self._information.shape[1]:
            return np.full(self._ids.size, np.nan)
        return informativeness(self._probs, self._thresholds, order,
                               self._information if order == "disagreement" else None)

    def _refilter(self) -> None:
        self._keep = self._mask()
        self._view = self._order[self._keep[self._order]]

    def _mask(self) -> np.ndarray:
        f, n = self._filter, self._ids.size
        keep = np.ones(n, dtype=bool)
        if f.flagged_only:
            keep &= self._n_flagged > 0
        if f.finding is not None:
            keep &= self._flags[:, self.labels.index(f.finding)]
        if f.unreviewed_only:
            keep &= (self._status != REVIEW_STATES.index("reviewed")) & (self._status != REVIEW_STATES.index("missing"))
        if f.with_image_only:
            keep &= self._status != REVIEW_STATES.index("missing")
        if f.split is not None:
            code = self._splits.index(f.split) if f.split in self._splits else -1
            keep &= self._split_codes == code
        return keep

    # -- updates --------------------------------------------------------------------------------------------

    def update_predictions(self, probs: np.ndarray, thresholds: Mapping[str, float | None],
                           labels: Sequence[str] | None = None) -> None:
        """Take (N, K) probabilities in row order (NaN rows: not predicted) and per-label thresholds, and
        recompute flags, number flagged, maximum probability and findings text. ``labels`` (default: the
        model's) names the K columns; a label missing from ``thresholds``, or None, flags nothing."""
        probs = np.asarray(probs)
        if probs.dtype.kind != "f":
            probs = probs.astype(np.float32)
        names = list(self.labels if labels is None else labels)
        if probs.shape != (self._ids.size, len(names)):
            raise ValueError(f"probabilities of shape {probs.shape}; expected ({self._ids.size}, {len(names)})")
        if self._filter.finding is not None and self._filter.finding not in names:
            self._filter = StudyFilter(self._filter.flagged_only, None, self._filter.unreviewed_only,
                                       self._filter.split, self._filter.with_image_only)
        if names != self.labels or self._information.shape != probs.shape:
            self._information = np.full(probs.shape, np.nan, dtype=np.float32)  # other findings: measure again
        self.labels, self._probs = names, probs
        self._max_prob = (np.fmax.reduce(probs, axis=1).astype(np.float32) if names
                          else np.full(self._ids.size, np.nan, dtype=np.float32))
        self._reflag(thresholds)
        self._keep = self._mask()
        self._resort()

    def update_disagreement(self, information: np.ndarray) -> None:
        """Take (N, K) mutual information of each study under the model's views, in row order and the columns of
        the current predictions (NaN: not measured; :func:`cxr_core.infer.study_disagreement`)."""
        information = np.asarray(information, dtype=np.float32)
        if information.shape != self._probs.shape:
            raise ValueError(f"disagreement of shape {information.shape}; expected {self._probs.shape}")
        self._information = information
        if self._sort_key == "disagreement":
            self._resort()

    def update_thresholds(self, thresholds: Mapping[str, float | None]) -> None:
        """Re-flag the stored probabilities at new thresholds (arithmetic only; nothing is re-run). The order
        is recomputed only when the sort depends on the flags (``n_flagged``, ``findings``)."""
        self._reflag(thresholds)
        if self._sort_key in ("n_flagged", "findings", "uncertain"):
            self._keep = self._mask()
            self._resort()
        else:
            self._refilter()

    def _reflag(self, thresholds: Mapping[str, float | None]) -> None:
        values = [thresholds.get(name) for name in self.labels]
        self._thresholds = np.array([np.nan if v is None else v for v in values], dtype=self._probs.dtype)
        self._flags = self._probs >= self._thresholds
        self._n_flagged = np.count_nonzero(self._flags, axis=1).astype(np.int16)
        self._pattern, self._pattern_bits = _patterns(self._flags)
        self._pattern_text = {}

    def update_status(self, study: str | Mapping[str, str], status: str | None = None) -> int:
        """Set the review status of one study (``update_status(id, "reviewed")``) or of many
        (``update_status({id: status})``); ids not in the model are ignored. Returns rows changed."""
        items: Mapping[str, str] = {study: status or ""} if isinstance(study, str) else study
        if not items:
            return 0
        codes = np.array([_status_code(value) for value in items.values()], dtype=np.int8)
        keys = np.asarray(list(items.keys()), dtype=str)
        found = np.searchsorted(self._sorted_ids, keys).clip(0, max(self._sorted_ids.size - 1, 0))
        known = (self._sorted_ids[found] == keys) if self._sorted_ids.size else np.zeros(keys.size, bool)
        rows = self._id_order[found[known]]
        changed = int(np.count_nonzero(self._status[rows] != codes[known]))
        self._status[rows] = codes[known]
        if changed and self._sort_key == "status":
            self._resort()
        if changed and self._filter.unreviewed_only:
            self._refilter()
        return changed

    def _text_of(self, pattern: int) -> str:
        """Findings text of a flag pattern, built the first time a row with it is shown."""
        text = self._pattern_text.get(pattern)
        if text is None:
            text = ", ".join(visible(self.labels[k]) for k in np.flatnonzero(self._pattern_bits[pattern]))
            self._pattern_text[pattern] = text
        return text

    def _all_pattern_texts(self) -> list[str]:
        return [self._text_of(p) for p in range(self._pattern_bits.shape[0])]

    def _check(self, pos: int) -> int:
        if not -len(self) <= pos < len(self):
            raise IndexError(f"position {pos} outside a view of {len(self)} rows")
        return pos


def _column(values: Sequence[str | None] | None, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=str)
    column = np.asarray(["" if v is None else v for v in values], dtype=str)
    if column.size != n:
        raise ValueError(f"{column.size} {name} for {n} studies")
    return column.reshape(n)


def _categories(column: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sorted distinct values and each row's code (its rank, so codes sort like the values)."""
    names, codes = np.unique(column, return_inverse=True)
    return [str(name) for name in names], codes.reshape(-1).astype(np.int32)


def _patterns(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's flag pattern as an index into the distinct patterns, and those patterns as (P, K) bools."""
    k = flags.shape[1]
    if not k:
        return np.zeros(flags.shape[0], dtype=np.int64), np.zeros((1, 0), dtype=bool)
    packed = np.packbits(flags, axis=1, bitorder="little")
    if packed.shape[1] <= 8:
        padded = np.zeros((packed.shape[0], 8), dtype=np.uint8)
        padded[:, : packed.shape[1]] = packed
        distinct, pattern = np.unique(padded.view("<u8").reshape(-1), return_inverse=True)
        bits = np.unpackbits(distinct.astype("<u8").view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    else:
        distinct, pattern = np.unique(packed, axis=0, return_inverse=True)
        bits = np.unpackbits(distinct, axis=1, bitorder="little")
    return pattern.reshape(-1).astype(np.int64), bits[:, :k].astype(bool)


def _status_code(status: str) -> int:
    try:
        return REVIEW_STATES.index(status)
    except ValueError:
        raise ValueError(f"unknown review status {status!r}; use one of {REVIEW_STATES}") from None
