"""Predictions as a file: the one table that `predict`, `eval`, `thresholds tune` and the TUI exchange.

CSV (what people open in a spreadsheet) or JSON (what scripts read), chosen by the suffix. One row per
image::

    study, image, patient[, split], <label 1>, ..., <label K>, truth:<label 1>, ..., truth:<label K>, flagged

``split`` (the study's data set split: train / val / test / ...) is there when the rows know it, so whoever
tunes thresholds on the file knows what they were tuned on. ``<label>`` columns are probabilities; ``truth:`` columns are 1 / 0 / blank (blank = unknown or excluded
by the uncertainty policy) and appear only when the predictions were made on labelled data; ``flagged``
lists the labels over their thresholds, ``|``-separated, when thresholds were given. Anyone can recompute
every metric from this file. Text cells (ids, file names) are :func:`cxr_core.text.name_text` (controls and
bytes that are not UTF-8 as escapes, one-to-one; read back to the same names) and a cell a spreadsheet would run
as a formula gets a leading ``'`` (stripped again on reading).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_core.atomic import atomic_write_text
from cxr_core.errors import DataError
from cxr_core.text import name_from_text, name_text, spreadsheet_safe, spreadsheet_text

if TYPE_CHECKING:
    from cxr_core.data import Study

TRUTH_PREFIX = "truth:"
ID_COLUMNS = ("study", "image", "patient")
SPLIT_COLUMN = "split"


@dataclass
class Predictions:
    labels: list[str]
    probs: np.ndarray  # (N, K) float32 in [0, 1]
    study: list[str]
    image: list[str]
    patient: list[str] = field(default_factory=list)
    truth: np.ndarray | None = None  # (N, K) float32: 1, 0 or NaN (unknown)
    meta: dict[str, Any] = field(default_factory=dict)  # model fingerprint, checkpoint, data root, split
    split: list[str] = field(default_factory=list)  # each row's data set split ("" where unknown)

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        self.probs = np.asarray(self.probs, dtype=np.float32).reshape(len(self.study), len(self.labels))
        if not self.patient:
            self.patient = [""] * len(self.study)
        if not self.split:
            self.split = [""] * len(self.study)
        if len(self.split) != len(self.study):
            raise ValueError("predictions: split must have one entry per row")
        if self.truth is not None:
            self.truth = np.asarray(self.truth, dtype=np.float32).reshape(self.probs.shape)
        if not (len(self.study) == len(self.image) == len(self.patient) == self.probs.shape[0]):
            raise ValueError("predictions: study, image, patient and probs must have one row per image")

    def __len__(self) -> int:
        return len(self.study)

    @property
    def has_truth(self) -> bool:
        return self.truth is not None

    @property
    def splits(self) -> dict[str, int]:
        """Rows per known split, in name order (empty when the rows do not say)."""
        counts: dict[str, int] = {}
        for name in self.split:
            if name:
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def rows_by_study(self) -> dict[str, list[int]]:
        """Each study's rows (its images), in row order."""
        rows: dict[str, list[int]] = {}
        for row, study in enumerate(self.study):
            rows.setdefault(study, []).append(row)
        return rows

    def study_scores(self, studies: Sequence[str]) -> np.ndarray:
        """(len(studies), K): a study's score for a label is the highest over its images (NaN-aware; NaN for a
        study without predicted images). The one definition the worklist, flags and agreement all use."""
        position = {study: i for i, study in enumerate(studies)}
        out = np.full((len(studies), len(self.labels)), np.nan, dtype=np.float32)
        codes = np.array([position.get(study, -1) for study in self.study], dtype=np.int64)
        keep = codes >= 0
        np.fmax.at(out, codes[keep], self.probs[keep])
        return out

    def subset(self, rows: np.ndarray) -> Predictions:
        """The rows selected by a boolean mask or an index array (same labels and meta)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        pick = idx.tolist()
        return Predictions(self.labels, self.probs[idx], [self.study[i] for i in pick], [self.image[i] for i in pick],
                           [self.patient[i] for i in pick], None if self.truth is None else self.truth[idx],
                           dict(self.meta), [self.split[i] for i in pick])

    def mask(self) -> np.ndarray:
        """Where the truth is known (1 or 0)."""
        if self.truth is None:
            raise DataError("these predictions carry no labels: evaluate or tune thresholds on labelled data")
        return ~np.isnan(self.truth)

    def flagged(self, thresholds: Mapping[str, float]) -> list[list[str]]:
        """Per row, the labels whose probability reaches their threshold (labels without one never flag)."""
        cols = [(k, float(thresholds[name])) for k, name in enumerate(self.labels) if name in thresholds]
        if not cols:
            return [[] for _ in range(len(self))]
        idx = np.array([k for k, _ in cols])
        over = self.probs[:, idx] >= np.array([t for _, t in cols], dtype=np.float32)
        names = [self.labels[k] for k in idx]
        return [[names[j] for j in np.flatnonzero(row)] for row in over]

    # -- files -------------------------------------------------------------------------------------------

    def write(self, path: str | os.PathLike[str], thresholds: Mapping[str, float] | None = None) -> Path:
        path = Path(path)
        if path.suffix.lower() == ".json":
            atomic_write_text(path, json.dumps(self.to_json(thresholds), indent=1) + "\n", mode=0o644)
        else:
            atomic_write_text(path, self.to_csv(thresholds), mode=0o644)
        return path

    def to_csv(self, thresholds: Mapping[str, float] | None = None) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        with_split = any(self.split)
        header = [*ID_COLUMNS, *([SPLIT_COLUMN] if with_split else []), *map(_text_cell, self.labels)]
        if self.truth is not None:
            header += [_text_cell(TRUTH_PREFIX + name) for name in self.labels]
        if thresholds is not None:
            header.append("flagged")
        writer.writerow(header)
        flags = self.flagged(thresholds) if thresholds is not None else None
        for i in range(len(self)):
            row: list[Any] = [_text_cell(self.study[i]), _text_cell(self.image[i]), _text_cell(self.patient[i])]
            if with_split:
                row.append(_text_cell(self.split[i]))
            row += [_fmt(p) for p in self.probs[i]]
            if self.truth is not None:
                row += ["" if math.isnan(t) else int(t) for t in self.truth[i]]
            if flags is not None:
                row.append("|".join(flags[i]))
            writer.writerow(row)
        return buf.getvalue()

    def to_json(self, thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
        flags = self.flagged(thresholds) if thresholds is not None else None
        rows = []
        for i in range(len(self)):
            row: dict[str, Any] = {"study": self.study[i], "image": self.image[i], "patient": self.patient[i],
                                   "probs": {name: float(self.probs[i, k]) for k, name in enumerate(self.labels)}}
            if self.split[i]:
                row["split"] = self.split[i]
            if self.truth is not None:
                row["truth"] = {name: (None if math.isnan(t) else int(t))
                                for name, t in zip(self.labels, self.truth[i], strict=True)}
            if flags is not None:
                row["flagged"] = flags[i]
            rows.append(row)
        out: dict[str, Any] = {"labels": self.labels, "meta": self.meta, "predictions": rows}
        if thresholds is not None:
            out["thresholds"] = {k: float(v) for k, v in thresholds.items()}
        return out

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Predictions:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise DataError(f"{path}: no such predictions file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read predictions ({err})") from None
        if path.suffix.lower() == ".json":
            return cls._from_json(path, text)
        return cls._from_csv(path, text)

    @classmethod
    def check(cls, path: str | os.PathLike[str]) -> None:
        """That ``path`` looks like a predictions file, from its first line (CSV: the same header check as
        :meth:`read`) or first character (JSON), without reading it all: a front-end says what is wrong in one
        line before it starts, and reads the file later. DataError otherwise."""
        path = Path(path)
        hint = "write one with `cxr-tui predict ROOT --model M --out preds.csv`"
        if not path.exists():
            raise DataError(f"{path}: no such predictions file")
        if not path.is_file():
            raise DataError(f"{path}: not a file ({hint})")
        try:
            with path.open("rb") as file:
                head = file.read(1 << 16)
        except OSError as err:
            raise DataError(f"{path}: cannot read predictions ({err})") from None
        if path.suffix.lower() == ".json":
            if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
                raise DataError(f"{path}: not a cxr predictions JSON ({hint})")
            return
        first = head.decode("utf-8-sig", errors="replace").splitlines()[0] if head.strip() else ""
        try:
            cls._from_csv(path, first + "\n")
        except DataError as err:
            raise DataError(f"{err}: {hint}") from None

    @classmethod
    def from_csv_text(cls, text: str, source: str | os.PathLike[str]) -> Predictions:
        """The rows of predictions CSV ``text`` (as :meth:`read` parses a file; ``source`` names it in errors):
        DataError when it is not one."""
        return cls._from_csv(Path(source), text)

    @classmethod
    def _from_csv(cls, path: Path, text: str) -> Predictions:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        header = None if header is None else [name_from_text(spreadsheet_text(h)) for h in header]
        if not header or header[:2] != ["study", "image"]:
            raise DataError(f"{path}: not a cxr predictions CSV (expected columns study, image, ...)")
        has_patient = len(header) > 2 and header[2] == "patient"
        first = 3 if has_patient else 2
        split_col = first if len(header) > first and header[first] == SPLIT_COLUMN else -1
        first += split_col >= 0
        labels = [h for h in header[first:] if not h.startswith(TRUTH_PREFIX) and h != "flagged"]
        truth_cols = [header.index(TRUTH_PREFIX + name) if TRUTH_PREFIX + name in header else -1 for name in labels]
        prob_cols = [header.index(name) for name in labels]
        if not labels:
            raise DataError(f"{path}: no probability columns")
        has_truth = any(c >= 0 for c in truth_cols)
        study, image, patient, probs, truth, split = [], [], [], [], [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                probs.append([float(row[c]) for c in prob_cols])
                if has_truth:
                    truth.append([_truth(row[c]) if c >= 0 else math.nan for c in truth_cols])
            except (ValueError, IndexError):
                raise DataError(f"{path}: line {line_no}: expected numbers in the probability and truth columns") from None
            study.append(name_from_text(spreadsheet_text(row[0])))
            image.append(name_from_text(spreadsheet_text(row[1])))
            patient.append(name_from_text(spreadsheet_text(row[2])) if has_patient else "")
            split.append(name_from_text(spreadsheet_text(row[split_col])) if split_col >= 0 else "")
        return cls(labels, np.array(probs, dtype=np.float32).reshape(len(study), len(labels)), study, image, patient,
                   np.array(truth, dtype=np.float32).reshape(len(study), len(labels)) if has_truth else None,
                   meta={"source": str(path)}, split=split)

    @classmethod
    def _from_json(cls, path: Path, text: str) -> Predictions:
        try:
            data = json.loads(text)
            labels = list(data["labels"])
            rows = data["predictions"]
            probs = [[float(r["probs"][name]) for name in labels] for r in rows]
            has_truth = bool(rows) and all("truth" in r for r in rows)
            truth = ([[math.nan if r["truth"].get(name) is None else float(r["truth"][name]) for name in labels]
                      for r in rows] if has_truth else None)
            return cls(labels, np.array(probs, dtype=np.float32).reshape(len(rows), len(labels)),
                       [str(r["study"]) for r in rows], [str(r["image"]) for r in rows],
                       [str(r.get("patient", "")) for r in rows],
                       None if truth is None else np.array(truth, dtype=np.float32).reshape(len(rows), len(labels)),
                       meta={**dict(data.get("meta") or {}), "source": str(path)},
                       split=[str(r.get("split") or "") for r in rows])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{path}: not a cxr predictions JSON ({type(err).__name__}: {err})") from None


@dataclass
class RootMatch:
    """A predictions file laid over a data set root (:func:`match_root`): the rows that belong to the root's
    studies, in the root's order (studies, then each study's images), named as the root names them."""

    predictions: Predictions  # the matched rows: study ids and image paths as the root has them
    rows: int  # rows in the file
    unmatched: list[int]  # the file's rows that name no study or image of the root
    studies: int  # the root's studies with at least one matched row
    root_studies: int  # the root's studies with an image
    example: str = ""  # the first unmatched row (study, image), for the summary

    @property
    def matched(self) -> int:
        return len(self.predictions)

    def summary(self, source: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
        """One line: how many rows matched how many of the root's studies, and how many did not."""
        line = (f"{Path(source).name}: {self.matched:,} of {self.rows:,} rows matched {self.studies:,} of the "
                f"{self.root_studies:,} studies of {Path(root).name or root}")
        if self.unmatched:
            line += f"; {len(self.unmatched):,} did not match (e.g. {self.example})"
        return line


def match_root(preds: Predictions, studies: Sequence[Study], base: Path | None = None,
               source: str | os.PathLike[str] = "predictions", root: str | os.PathLike[str] = "the root") -> RootMatch:
    """Lay ``preds`` (read from a file, made elsewhere: ``cxr-tui predict --out``) over a root's studies.

    A row matches by its image path (relative to the root; or absolute under ``base``, the root's image base),
    else by its study id (then to the study's image of the same file name, else after the study's images). The
    matched rows come back in the root's order with the root's study ids and image paths, and each row's split
    and patient filled from the study where the file left them blank. A file none of whose rows match (the
    predictions of another data set) is one :class:`DataError`, not an empty worklist."""
    if not len(preds):
        raise DataError(f"{source}: no prediction rows")
    at_path: dict[str, tuple[int, int]] = {}
    by_id: dict[str, int] = {}
    for i, study in enumerate(studies):
        by_id.setdefault(study.id, i)
        for j, image in enumerate(study.images):
            at_path.setdefault(image.path, (i, j))
    keyed: list[tuple[int, int, int]] = []
    unmatched: list[int] = []
    for row, (study_id, image) in enumerate(zip(preds.study, preds.image, strict=True)):
        hit = at_path.get(image)
        if hit is None and base is not None and os.path.isabs(image):
            try:
                hit = at_path.get(PurePath(image).relative_to(base).as_posix())
            except ValueError:
                hit = None
        if hit is None and study_id in by_id:
            i = by_id[study_id]
            name = PurePath(image).name
            images = studies[i].images
            hit = (i, next((j for j, im in enumerate(images) if PurePath(im.path).name == name), len(images)))
        if hit is None:
            unmatched.append(row)
        else:
            keyed.append((*hit, row))
    if not keyed:
        made_on = preds.meta.get("root")
        raise DataError(f"{source}: none of its {len(preds):,} rows match a study or image of {root} "
                        f"(first row: study {preds.study[0]!r}, image {preds.image[0]!r})"
                        + (f"; they were made on {made_on}" if made_on else "")
                        + ": predictions of another data set?")
    keyed.sort()
    out = preds.subset(np.array([row for _, _, row in keyed], dtype=np.int64))
    for k, (i, j, _) in enumerate(keyed):
        study = studies[i]
        out.study[k] = study.id
        if j < len(study.images):
            out.image[k] = study.images[j].path
        out.split[k] = out.split[k] or study.split or ""
        out.patient[k] = out.patient[k] or study.patient_id
    example = f"study {preds.study[unmatched[0]]!r}, image {preds.image[unmatched[0]]!r}" if unmatched else ""
    return RootMatch(out, len(preds), unmatched, len({i for i, _, _ in keyed}),
                     sum(1 for s in studies if s.images), example)


def _text_cell(value: str) -> str:
    """An id or name as a CSV cell: controls and undecodable bytes shown as escapes (one-to-one, read back by
    :func:`~cxr_core.text.name_from_text`), formulas neutralised."""
    return spreadsheet_safe(name_text(value))


def _fmt(value: float) -> str:
    return f"{float(value):.9g}"  # 9 significant digits round-trip float32 exactly: metrics recompute to the bit


def _truth(cell: str) -> float:
    cell = cell.strip()
    if cell == "":
        return math.nan
    value = float(cell)
    if value not in (0.0, 1.0):
        raise ValueError(cell)
    return value
