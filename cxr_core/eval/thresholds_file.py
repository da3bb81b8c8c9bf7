"""The thresholds file: per-label thresholds, the metrics at each, and who changed what when.

**File** (:class:`ThresholdsFile`, :func:`load_thresholds`)::

    {"version": 1,
     "labels": {"<label>": {"threshold": 0.42 | null, "mode": "sens=0.8", "reason": null | "no positive cases",
                            "metrics": {"sensitivity", "specificity", "ppv", "npv", "f1", "flagged",
                                        "support", "negatives", "labelled", "tp", "fp", "tn", "fn"}}},
     "predictions": "<file or description of the predictions they were tuned on>",
     "n": <rows in those predictions>,
     "tuned_on": {"split": "val" | "test" | "all" | "train+train_val" | "unknown", "splits": {"val": 60},
                  "root": "<data set root>" | null, "model": "<fingerprint>" | null, "studies": 58,
                  "images": 60, "test_asked": false},
     "created": "<ISO time>",
     "history": [{"who": "<login>", "when": "<ISO time>", "action": "tune" | "review",
                  "changes": {"<label>": {"from": <old threshold>, "to": <new>, "mode": "..."}}}]}

Written atomically (temp file + rename): a reader sees the old file or the new one. Every save that
changes a threshold appends a history row keeping the previous value.

**Research hygiene.** Thresholds are tuned on a split, and evaluating on that same split makes the
thresholded metrics optimistic. :func:`tuning_rows` picks the rows to tune on — the validation split when
the predictions have one, the other non-test splits otherwise, and the test split only when asked — and
:class:`TunedOn` records the choice in the file, so ``eval`` can say when it scores the split the thresholds
were chosen on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.atomic import atomic_write_text, locked
from cxr_core.data.splits import TEST_SPLITS, VAL_SPLITS
from cxr_core.errors import CxrError, DataError
from cxr_core.eval.evaluate import DEFAULT_THRESHOLD
from cxr_core.eval.operating_points import Choice, OperatingPoints, json_number
from cxr_core.paths import data_dir
from cxr_core.predictions import Predictions
from cxr_core.runs import RunDir
from cxr_core.text import visible
from cxr_core.users import current_user  # one definition of who is acting

FORMAT_VERSION = 1


@dataclass
class LabelThreshold:
    threshold: float | None
    mode: str
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and math.isfinite(self.threshold):
            self.threshold = as_written(self.threshold)


def as_written(threshold: float) -> float:
    """A threshold as files hold it: 9 significant digits, as a predictions CSV writes scores.

    A tuned threshold is one of the scores (float32). Written in full (0.06560483574867249) it lies above that
    score's CSV text (0.0656048357), so anyone applying the file to the CSV in float64 (NumPy, pandas, R) lost
    the very positive it was tuned on. 9 digits tell every float32 apart and map back to the same float32, so
    cxr's own float32 comparisons are unchanged and the CSV's text compares the same way in float64.
    """
    return float(f"{float(threshold):.9g}")


ALL_SPLITS = "all"
UNKNOWN_SPLIT = "unknown"


@dataclass
class TunedOn:
    """What a set of thresholds was chosen on: which rows (split), of which data, predicted by which model."""

    split: str = UNKNOWN_SPLIT
    """The selection: a split name, several joined by ``+``, ``all``, or ``unknown`` (rows without splits)."""
    splits: dict[str, int] = field(default_factory=dict)
    """Images per split among the rows used (empty when the predictions did not say)."""
    root: str | None = None
    model: str | None = None
    """The model's fingerprint (hash of its checkpoint file) when known."""
    studies: int = 0
    images: int = 0
    test_asked: bool = False
    """True when the user asked for the test split (it is never chosen by default)."""

    @property
    def includes_test(self) -> bool:
        return any(name.casefold() in TEST_SPLITS for name in self.splits)

    def overlap(self, evaluated: Mapping[str, int]) -> list[str]:
        """Split names both tuned and evaluated on. An unknown tuning split overlaps nothing: callers say
        separately that it is unknown."""
        return sorted(set(self.splits) & {name for name, n in evaluated.items() if n})

    def describe(self) -> str:
        what = self.split if self.split != UNKNOWN_SPLIT else "rows of an unknown split"
        return f"{what} ({self.studies:,} studies, {self.images:,} images)"

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "splits": dict(self.splits), "root": self.root, "model": self.model,
                "studies": self.studies, "images": self.images, "test_asked": self.test_asked}

    @classmethod
    def from_json(cls, data: Any) -> TunedOn | None:
        """Lenient: a value of the wrong type is dropped, never an error (older files have no record at all)."""
        if not isinstance(data, dict):
            return None

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        def whole(key: str) -> int:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        splits = data.get("splits")
        splits = {str(k): v for k, v in splits.items() if isinstance(v, int)} if isinstance(splits, dict) else {}
        return cls(text("split") or UNKNOWN_SPLIT, splits, text("root"), text("model"), whole("studies"),
                   whole("images"), data.get("test_asked") is True)

    @classmethod
    def of(cls, preds: Predictions, split: str, *, test_asked: bool = False) -> TunedOn:
        """The record for tuning on all rows of ``preds`` (already the selected rows) under the name ``split``."""
        return cls(split, preds.splits, preds.meta.get("root") or None, preds.meta.get("fingerprint") or None,
                   len(set(preds.study)), len(preds), test_asked)


def tuning_choices(preds: Predictions) -> list[str]:
    """The selections a user can tune on, the default first: validation, the other non-test splits, all, test."""
    splits = list(preds.splits)
    if not splits:
        return [UNKNOWN_SPLIT]
    val = [s for s in splits if s.casefold() in VAL_SPLITS]
    test = [s for s in splits if s.casefold() in TEST_SPLITS]
    other = [s for s in splits if s not in val and s not in test]
    default = val[:1] or (["+".join(other)] if other else [])
    rest = [s for s in val[1:] + other if s not in default]
    return default + rest + [ALL_SPLITS] + test


def tuning_rows(preds: Predictions, split: str | None = None) -> tuple[Predictions, TunedOn]:
    """The rows to tune thresholds on, and the record of that choice.

    ``split=None`` takes the default of :func:`tuning_choices` (validation; else every non-test split); the test
    split only when asked by name (``"test"``) or with ``"all"``. Predictions whose rows carry no split are
    used whole (``split`` must then be None or ``all``). A CxrError names what is available otherwise.
    """
    source = preds.meta.get("source") or "predictions"
    available = preds.splits
    if not available:
        if split not in (None, ALL_SPLITS):
            raise CxrError(f"{source}: the rows do not say which split they are in, so split {split!r} cannot be "
                           "chosen (`cxr-tui predict` on an indexed data set writes a split column)")
        return preds, TunedOn.of(preds, UNKNOWN_SPLIT)
    if split is None:
        default = tuning_choices(preds)[0]
        if default == ALL_SPLITS:  # only test rows
            raise CxrError(f"{source}: every row is in the test split; thresholds tuned on the test set make its "
                           "evaluation optimistic. Tune on validation predictions, or ask for it with --split test")
        split = default
    if split == ALL_SPLITS:
        return preds, TunedOn.of(preds, ALL_SPLITS, test_asked=True)
    wanted = set(split.split("+"))
    missing = sorted(wanted - set(available))
    if missing:
        raise CxrError(f"{source}: no rows in split {', '.join(missing)} "
                       f"(splits here: {', '.join(f'{k} {v:,}' for k, v in available.items())})")
    rows = np.array([name in wanted for name in preds.split], dtype=bool)
    chosen = preds.subset(rows)
    return chosen, TunedOn.of(chosen, split, test_asked=any(s.casefold() in TEST_SPLITS for s in wanted))


def split_check(tuned_on: TunedOn | None, evaluated: Mapping[str, int], *, allowed: bool = False) -> str | None:
    """One line when an evaluation scores rows of the split its thresholds were tuned on (None otherwise).

    ``allowed``: the user said so (``eval --allow-same-split``); the line then records that instead of warning.
    """
    overlap = tuned_on.overlap(evaluated) if tuned_on is not None else []
    if not overlap:
        return None
    which = " and ".join(overlap)
    what = (f"the thresholds were tuned on the {which} split this evaluation scores, so its sensitivity, "
            "specificity, PPV, NPV and F1 are optimistic")
    return f"{what} (allowed with --allow-same-split)" if allowed else what


@dataclass
class ThresholdsFile:
    """The thresholds of one model's classes, how each was chosen, its metrics there, and who changed what."""

    labels: dict[str, LabelThreshold] = field(default_factory=dict)
    predictions: str = ""
    n: int = 0
    created: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    tuned_on: TunedOn | None = None
    """What the current thresholds were tuned on (None in files written before cxr recorded it)."""

    @property
    def thresholds(self) -> dict[str, float]:
        """label -> threshold, for the classes that have one (what predict, the worklist and flags use)."""
        return {name: entry.threshold for name, entry in self.labels.items() if entry.threshold is not None}

    def update(self, entries: Mapping[str, LabelThreshold], *, action: str, who: str | None = None,
               when: str | None = None, split: str | None = None) -> dict[str, dict[str, Any]]:
        """Set ``entries``; append one history row with each changed label's previous and new value.

        Returns the changes (empty, and no history row, when nothing changed).
        """
        changes: dict[str, dict[str, Any]] = {}
        for name, new in entries.items():
            old = self.labels.get(name)
            if old is None or old.threshold != new.threshold or old.mode != new.mode:
                changes[name] = {"from": None if old is None else old.threshold, "to": new.threshold,
                                 "mode": new.mode}
            self.labels[name] = new
        if changes:
            row = {"who": who or current_user(), "when": when or now_iso(), "action": action, "changes": changes}
            if split is not None:
                row["split"] = split
            self.history.append(row)
        return changes

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "labels": {name: {"threshold": e.threshold, "mode": e.mode, "reason": e.reason,
                              "metrics": {k: json_number(v) for k, v in e.metrics.items()}}
                       for name, e in self.labels.items()},
            "predictions": self.predictions,
            "n": self.n,
            "tuned_on": None if self.tuned_on is None else self.tuned_on.to_json(),
            "created": self.created,
            "history": self.history,
        }

    def write(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write atomically (the old file stays whole if anything fails) to ``path`` or where it was read."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path to write the thresholds to")
        text = json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        try:
            atomic_write_text(target, text, mode=0o644)
        except OSError as err:
            raise DataError(f"{target}: cannot write thresholds ({err.strerror or err})") from None
        self.path = target
        return target

    @classmethod
    def from_json(cls, data: Any, path: str | os.PathLike[str] | None = None) -> ThresholdsFile:
        where = str(path) if path is not None else "thresholds"

        def bad(reason: str) -> DataError:
            return DataError(f"{where}: not a cxr thresholds file ({reason})")

        if not isinstance(data, dict) or "version" not in data or "labels" not in data:
            raise bad("expected a JSON object with 'version' and 'labels'")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad(f"version {version!r} is not a number")
        if version > FORMAT_VERSION:
            raise DataError(f"{where}: thresholds file version {version} is newer than this cxr reads "
                            f"({FORMAT_VERSION}); upgrade cxr")
        if version < 1:
            raise bad(f"unknown version {version}")
        labels_data = data["labels"]
        if not isinstance(labels_data, dict):
            raise bad("'labels' is not an object")
        labels: dict[str, LabelThreshold] = {}
        for name, entry in labels_data.items():
            if not isinstance(entry, dict) or "threshold" not in entry:
                raise bad(f"label {name!r} has no threshold")
            t = entry["threshold"]
            if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0):
                raise bad(f"label {name!r}: threshold {t!r} is not a number from 0 to 1")
            metrics = entry.get("metrics") or {}
            if not isinstance(metrics, dict):
                raise bad(f"label {name!r}: metrics is not an object")
            reason = entry.get("reason")
            labels[str(name)] = LabelThreshold(None if t is None else float(t), str(entry.get("mode") or ""),
                                               dict(metrics), None if reason is None else str(reason))
        history = data.get("history") or []
        if not isinstance(history, list) or not all(
                isinstance(h, dict) and isinstance(h.get("changes", {}), dict) for h in history):
            raise bad("'history' is not a list of objects with 'changes' objects")
        n = data.get("n") or 0
        if not isinstance(n, int) or isinstance(n, bool):
            raise bad(f"n {n!r} is not a whole number")
        return cls(labels, str(data.get("predictions") or ""), n, str(data.get("created") or ""), list(history),
                   Path(path) if path is not None else None, TunedOn.from_json(data.get("tuned_on")))


def load_thresholds(path: str | os.PathLike[str]) -> ThresholdsFile:
    """Read a thresholds file; DataError (a CxrError) naming the file and the reason if it is missing,
    damaged, foreign, or from a newer cxr."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such thresholds file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a thresholds file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read thresholds ({err})") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        reason = f"invalid JSON at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else "invalid JSON"
        raise DataError(f"{path}: not a cxr thresholds file ({reason})") from None
    return ThresholdsFile.from_json(data, path)


def thresholds_path_for(checkpoint: str | os.PathLike[str], fingerprint: str | None = None) -> Path:
    """Where a model's thresholds live, for every reader and writer (TUI, ``eval``).

    Beside the run for a run's checkpoint (``<run>/checkpoints/x.safetensors`` -> ``<run>/thresholds.json``);
    otherwise in the data dir, named by the model's fingerprint (the checkpoint's stem without one), so a
    model file outside a run (the demo model, a downloaded checkpoint) keeps its thresholds too.
    """
    run = RunDir.of_checkpoint(checkpoint)
    if run is not None:
        return run.thresholds_path
    return data_dir() / "thresholds" / f"{fingerprint or Path(checkpoint).stem}.json"


def threshold_values(file: ThresholdsFile | None, labels: Sequence[str]) -> dict[str, float]:
    """label -> the threshold in force: the file's where it has one, 0.5 otherwise (and without a file)."""
    values = file.thresholds if file is not None else {}
    return {label: values.get(label, DEFAULT_THRESHOLD) for label in labels}


def threshold_mismatch(file: ThresholdsFile | None, labels: Sequence[str], source: object = "") -> str | None:
    """What does not fit between a thresholds file and the findings it is applied to, as one warning (None when
    it fits): findings of the file the model does not have (another model's file?), and the model's findings the
    file leaves at 0.5. A file none of whose findings fit would otherwise be ignored without a word."""
    if file is None or not file.thresholds:
        return None
    have, want = list(file.thresholds), list(labels)
    unknown = [name for name in have if name not in want]
    missing = [name for name in want if name not in file.thresholds]
    if not unknown and not missing:
        return None
    where = f"{visible(source)}: " if source else "thresholds file: "
    if len(unknown) == len(have):
        return (where + f"none of its findings ({_names(unknown)}) is one of the model's ({_names(want)}); "
                f"{DEFAULT_THRESHOLD} used for every finding")
    parts = []
    if unknown:
        parts.append(f"findings the model does not have: {_names(unknown)} (ignored)")
    if missing:
        parts.append(f"no threshold for {_names(missing)} ({DEFAULT_THRESHOLD} used)")
    return where + "; ".join(parts)


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(visible(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def thresholds_from_choices(choices: Sequence[Choice], predictions: str = "", n: int = 0,
                            previous: ThresholdsFile | None = None, who: str | None = None,
                            tuned_on: TunedOn | None = None) -> ThresholdsFile:
    """A thresholds file holding ``choices`` (from :func:`tune`); on top of ``previous`` when given, so the
    history of an existing file is kept and the tuning is recorded as one more history row."""
    out = previous if previous is not None else ThresholdsFile(created=now_iso())
    out.predictions, out.n = predictions or out.predictions, n or out.n
    out.tuned_on = tuned_on or out.tuned_on
    out.update({c.label: LabelThreshold(c.threshold, c.mode, dict(c.metrics), c.reason) for c in choices},
               action="tune", who=who, split=None if tuned_on is None else tuned_on.split)
    return out


def save_thresholds(path: str | os.PathLike[str], entries: Mapping[str, LabelThreshold], *, action: str,
                    who: str | None = None, predictions: str = "", n: int = 0,
                    tuned_on: TunedOn | None = None) -> ThresholdsFile:
    """The one way a thresholds file is written (``thresholds tune --out``, the TUI's save).

    Read, change and write happen under an advisory lock, so two savers at once (two reviewers, a reviewer and a
    script) both keep their history row. Labels not in ``entries`` keep theirs; an entry equal to the stored one
    is no change; one history row (who, when, which split) keeps every previous value. A missing file is
    created; a damaged one raises DataError rather than being overwritten.
    """
    path = Path(path)
    with locked(path):
        if path.exists():
            try:
                current = load_thresholds(path)
            except DataError as err:
                raise DataError(f"{err}; not overwriting it (choose another file)") from None
        else:
            current = ThresholdsFile(created=now_iso(), predictions=predictions, n=n, path=path)
        if current.update(entries, action=action, who=who, split=None if tuned_on is None else tuned_on.split) \
                or not path.exists():
            if tuned_on is not None:
                current.tuned_on = tuned_on
            current.predictions, current.n = predictions or current.predictions, n or current.n
            current.write(path)
    return current


def save_review(path: str | os.PathLike[str], thresholds: Mapping[str, float | None],
                points: OperatingPoints | None = None, *, mode: str | Mapping[str, str] = "manual",
                who: str | None = None, predictions: str = "", tuned_on: TunedOn | None = None) -> ThresholdsFile:
    """Record a reviewer's save: set ``thresholds`` (label -> value) in the file at ``path`` and write it.

    ``mode`` is how the values were chosen (one for all, or per label). A changed label gets its metrics at the
    new value from ``points`` (or none without ``points``, so stale numbers never sit beside a new threshold).
    """
    for name, value in thresholds.items():
        if value is not None and not 0.0 <= float(value) <= 1.0:  # NaN fails this too
            raise DataError(f"threshold for {name!r} must be a number from 0 to 1, got {value!r}")
    stats = points.at(thresholds) if points is not None else None
    entries: dict[str, LabelThreshold] = {}
    for name, value in thresholds.items():
        value = None if value is None else float(value)
        metrics = stats.row(name) if stats is not None and name in stats.labels and value is not None else {}
        label_mode = mode if isinstance(mode, str) else mode.get(name, "manual")
        entries[name] = LabelThreshold(value, label_mode, metrics, None if value is not None else "cleared by reviewer")
    return save_thresholds(path, _changed(path, entries), action="review", who=who, predictions=predictions,
                           n=points.n if points is not None else 0, tuned_on=tuned_on)


def _changed(path: Path | str | os.PathLike[str], entries: dict[str, LabelThreshold]) -> dict[str, LabelThreshold]:
    """A review records only the labels whose threshold moved (a re-save keeps the tuned mode and metrics)."""
    try:
        stored = load_thresholds(path).labels if Path(path).exists() else {}
    except DataError:
        return entries  # save_thresholds refuses the damaged file with the reason
    return {name: e for name, e in entries.items() if name not in stored or stored[name].threshold != e.threshold}


def save_tuning(path: str | os.PathLike[str], choices: Sequence[Choice], *, predictions: str = "", n: int = 0,
                tuned_on: TunedOn | None = None, who: str | None = None) -> ThresholdsFile:
    """Record a tuning (``thresholds tune --out``): every choice with its mode, metrics and reason."""
    return save_thresholds(path, {c.label: LabelThreshold(c.threshold, c.mode, dict(c.metrics), c.reason)
                                  for c in choices}, action="tune", who=who, predictions=predictions, n=n,
                           tuned_on=tuned_on)


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
