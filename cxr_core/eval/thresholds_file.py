"""The thresholds file: per-label thresholds, the metrics at each, and who changed what when.

**File** (:class:`ThresholdsFile`, :func:`load_thresholds`)::

    {"version": 1,
     "labels": {"<label>": {"threshold": 0.42 | null, "mode": "sens=0.8", "reason": null | "no positive cases",
                            "metrics": {"sensitivity", "specificity", "ppv", "npv", "f1", "flagged",
                                        "support", "negatives", "labelled", "tp", "fp", "tn", "fn"}}},
     "predictions": "<file or description of the predictions they were tuned on>",
     "n": <rows in those predictions>,
     "created": "<ISO time>",
     "history": [{"who": "<login>", "when": "<ISO time>", "action": "tune" | "review",
                  "changes": {"<label>": {"from": <old threshold>, "to": <new>, "mode": "..."}}}]}

Written atomically (temp file + rename): a reader sees the old file or the new one. Every save that
changes a threshold appends a history row keeping the previous value.
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

from cxr_core.atomic import atomic_write_text, locked
from cxr_core.errors import DataError
from cxr_core.eval.thresholds import Choice, OperatingPoints, ThresholdStats, json_number
from cxr_core.store.reviews import current_user  # one definition of who is acting

FORMAT_VERSION = 1


@dataclass
class LabelThreshold:
    threshold: float | None
    mode: str
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass
class ThresholdsFile:
    """The thresholds of one model's classes, how each was chosen, its metrics there, and who changed what."""

    labels: dict[str, LabelThreshold] = field(default_factory=dict)
    predictions: str = ""
    n: int = 0
    created: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    @property
    def thresholds(self) -> dict[str, float]:
        """label -> threshold, for the classes that have one (what predict, the worklist and flags use)."""
        return {name: entry.threshold for name, entry in self.labels.items() if entry.threshold is not None}

    def update(self, entries: Mapping[str, LabelThreshold], *, action: str, who: str | None = None,
               when: str | None = None) -> dict[str, dict[str, Any]]:
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
            self.history.append({"who": who or current_user(), "when": when or now_iso(), "action": action,
                                 "changes": changes})
        return changes

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "labels": {name: {"threshold": e.threshold, "mode": e.mode, "reason": e.reason,
                              "metrics": {k: json_number(v) for k, v in e.metrics.items()}}
                       for name, e in self.labels.items()},
            "predictions": self.predictions,
            "n": self.n,
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
            if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t)):
                raise bad(f"label {name!r}: threshold {t!r} is not a finite number")
            metrics = entry.get("metrics") or {}
            if not isinstance(metrics, dict):
                raise bad(f"label {name!r}: metrics is not an object")
            reason = entry.get("reason")
            labels[str(name)] = LabelThreshold(None if t is None else float(t), str(entry.get("mode") or ""),
                                               dict(metrics), None if reason is None else str(reason))
        history = data.get("history") or []
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise bad("'history' is not a list of objects")
        n = data.get("n") or 0
        if not isinstance(n, int) or isinstance(n, bool):
            raise bad(f"n {n!r} is not a whole number")
        return cls(labels, str(data.get("predictions") or ""), n, str(data.get("created") or ""), list(history),
                   Path(path) if path is not None else None)


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


def thresholds_from_choices(choices: Sequence[Choice], predictions: str = "", n: int = 0,
                            previous: ThresholdsFile | None = None, who: str | None = None) -> ThresholdsFile:
    """A thresholds file holding ``choices`` (from :func:`tune`); on top of ``previous`` when given, so the
    history of an existing file is kept and the tuning is recorded as one more history row."""
    out = previous if previous is not None else ThresholdsFile(created=now_iso())
    out.predictions, out.n = predictions or out.predictions, n or out.n
    out.update({c.label: LabelThreshold(c.threshold, c.mode, dict(c.metrics), c.reason) for c in choices},
               action="tune", who=who)
    return out


def save_review(path: str | os.PathLike[str], thresholds: Mapping[str, float | None],
                points: OperatingPoints | None = None, *, mode: str = "manual", who: str | None = None,
                predictions: str = "") -> ThresholdsFile:
    """Record a reviewer's save: set ``thresholds`` (label -> value) in the file at ``path`` and write it.

    Labels not given keep their entries. A changed label gets ``mode`` and its metrics at the new value
    from ``points`` (or no metrics without ``points``, so stale numbers never sit beside a new threshold).
    One history row (who = the login name, when = now) keeps each previous value. If the file does not
    exist it is created; a damaged one raises DataError rather than being overwritten. The read and the
    write happen under an advisory lock, so concurrent savers (two reviewers, two processes) never drop a row.
    """
    path = Path(path)
    for name, value in thresholds.items():
        if value is not None and not math.isfinite(float(value)):
            raise DataError(f"threshold for {name!r} is not a finite number: {value!r}")
    stats = points.at(thresholds) if points is not None else None
    with locked(path):  # read, change and write under one lock: two reviewers saving at once both keep their row
        return _save_locked(path, thresholds, stats, mode=mode, who=who, predictions=predictions,
                            n=points.n if points is not None else 0)


def _save_locked(path: Path, thresholds: Mapping[str, float | None], stats: ThresholdStats | None, *, mode: str,
                 who: str | None, predictions: str, n: int) -> ThresholdsFile:
    if path.exists():
        current = load_thresholds(path)
    else:
        current = ThresholdsFile(created=now_iso(), predictions=predictions, n=n, path=path)
    entries: dict[str, LabelThreshold] = {}
    for name, value in thresholds.items():
        value = None if value is None else float(value)
        old = current.labels.get(name)
        if old is not None and old.threshold == value:
            continue
        metrics = stats.row(name) if stats is not None and name in stats.labels and value is not None else {}
        entries[name] = LabelThreshold(value, mode, metrics, None if value is not None else "cleared by reviewer")
    if current.update(entries, action="review", who=who):
        current.write(path)
    return current


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
