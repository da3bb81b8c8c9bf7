"""Label spaces and label states.

A study's labels are a vector over a label space, one state per label. The four states stay distinct all
the way from the source file to training, where an uncertainty policy turns them into targets and a mask:

=========  ====  ==========================================================
state      code  meaning
=========  ====  ==========================================================
POSITIVE   ``1``  the finding is present
NEGATIVE   ``0``  the finding is absent
UNCERTAIN  ``u``  the report is uncertain (CheXpert ``-1``)
UNKNOWN    ``.``  not mentioned / not labelled (CheXpert blank)
=========  ====  ==========================================================

Vectors are stored as short strings of those codes (``"10u.0"``), cheap to keep for 112k studies and
readable and filterable in SQL (``substr(labels, k, 1) = '1'``).
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np

from cxr_core.errors import DataError


class LabelState(enum.Enum):
    POSITIVE = "1"
    NEGATIVE = "0"
    UNCERTAIN = "u"
    UNKNOWN = "."


class UncertaintyPolicy(enum.Enum):
    """How uncertain labels become training targets (Irvin et al., CheXpert 2019)."""

    ONES = "ones"  # uncertain -> 1
    ZEROS = "zeros"  # uncertain -> 0
    IGNORE = "ignore"  # uncertain -> masked out of the loss


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of label names with aliases; ``labels`` fixes the vector order."""

    name: str
    labels: tuple[str, ...]
    title: str = ""
    normal: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lookup: dict[str, str] = {}
        for label in self.labels:
            lookup[_normalise(label)] = label
        for alias, target in self.aliases.items():
            if target not in self.labels:
                raise ValueError(f"label space {self.name}: alias {alias!r} points at unknown {target!r}")
            lookup.setdefault(_normalise(alias), target)
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "_index", {label: i for i, label in enumerate(self.labels)})

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def findings(self) -> tuple[str, ...]:
        """The labels other than the normal one (what a classifier usually predicts)."""
        return tuple(label for label in self.labels if label != self.normal)

    def canonical(self, name: str) -> str | None:
        """The label of this space that ``name`` (any spelling or alias) means, or None."""
        return self._lookup.get(_normalise(name))  # type: ignore[attr-defined]

    def index(self, label: str) -> int:
        return self._index[label]  # type: ignore[attr-defined]

    def all_unknown(self) -> str:
        return LabelState.UNKNOWN.value * len(self.labels)

    def encode(self, states: Mapping[str, LabelState], default: LabelState = LabelState.UNKNOWN) -> str:
        """Encode a {label: state} mapping (canonical names) as a state string."""
        codes = [default.value] * len(self.labels)
        for label, state in states.items():
            codes[self._index[label]] = state.value  # type: ignore[attr-defined]
        return "".join(codes)

    def from_positives(self, names: Iterable[str]) -> tuple[str, list[str]]:
        """A fully-labelled vector (NIH style: listed means positive, the rest negative).

        Returns the encoded vector and the names that are not in this space. The normal label is
        positive exactly when no finding is.
        """
        codes = [LabelState.NEGATIVE.value] * len(self.labels)
        unmapped: list[str] = []
        for raw in names:
            label = self.canonical(raw)
            if label is None:
                unmapped.append(raw)
                continue
            codes[self._index[label]] = LabelState.POSITIVE.value  # type: ignore[attr-defined]
        if self.normal is not None:
            n = self._index[self.normal]  # type: ignore[attr-defined]
            any_finding = any(c == "1" for i, c in enumerate(codes) if i != n)
            codes[n] = LabelState.NEGATIVE.value if any_finding else LabelState.POSITIVE.value
        return "".join(codes), unmapped

    def decode(self, vector: str) -> dict[str, LabelState]:
        return {label: LabelState(code) for label, code in zip(self.labels, vector, strict=True)}

    def positives(self, vector: str) -> list[str]:
        return [label for label, code in zip(self.labels, vector, strict=True) if code == "1"]

    def to_dict(self) -> dict:
        return {"name": self.name, "labels": list(self.labels), "normal": self.normal, "title": self.title}


@cache
def _builtin() -> dict[str, LabelSpace]:
    text = resources.files(__package__).joinpath("spaces.toml").read_text(encoding="utf-8")
    spaces = {}
    for name, spec in tomllib.loads(text).items():
        spaces[name] = LabelSpace(
            name=name,
            labels=tuple(spec["labels"]),
            title=spec.get("title", ""),
            normal=spec.get("normal"),
            aliases=dict(spec.get("aliases", {})),
        )
    return spaces


def builtin_spaces() -> dict[str, LabelSpace]:
    return dict(_builtin())


def get_space(name: str) -> LabelSpace:
    try:
        return _builtin()[name]
    except KeyError:
        known = ", ".join(sorted(_builtin()))
        raise DataError(f"unknown label space {name!r} (known: {known})") from None


def custom_space(labels: Iterable[str], normal_names: Iterable[str] = ("No Finding", "Normal")) -> LabelSpace:
    """A label space for labels that match no built-in one (e.g. a hospital's own labels CSV)."""
    names = sorted(set(labels), key=str.casefold)
    normals = {_normalise(n) for n in normal_names}
    normal = next((n for n in names if _normalise(n) in normals), None)
    if normal is not None:
        names = [n for n in names if n != normal] + [normal]
    return LabelSpace(name="custom", labels=tuple(names), title="labels found in the data", normal=normal)


def space_for_names(names: Iterable[str]) -> LabelSpace:
    """The first of NIH, CheXpert, IU that knows every name, or a custom space of those names."""
    wanted = {n for n in names if n}
    for name in ("nih", "chexpert", "iu"):
        space = _builtin()[name]
        if all(space.canonical(n) is not None for n in wanted):
            return space
    return custom_space(wanted)


def targets(vectors: Iterable[str], policy: UncertaintyPolicy = UncertaintyPolicy.IGNORE) -> tuple[np.ndarray, np.ndarray]:
    """Training targets and a mask (1 = counts in the loss) from encoded vectors.

    Unknown labels are masked out; uncertain ones follow ``policy``.
    """
    table = np.array([list(v) for v in vectors], dtype="<U1")
    if table.size == 0:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    y = (table == "1").astype(np.float32)
    mask = ((table == "1") | (table == "0")).astype(np.float32)
    uncertain = table == "u"
    if policy is UncertaintyPolicy.ONES:
        y[uncertain] = 1.0
        mask[uncertain] = 1.0
    elif policy is UncertaintyPolicy.ZEROS:
        mask[uncertain] = 1.0
    return y, mask
