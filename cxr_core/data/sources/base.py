"""What a data set source is: something that turns a root on disk into Study records.

The study index (:mod:`cxr_core.store.index`) walks the root and probes image files itself, incrementally,
and hands the result to the source as a :class:`FileCatalog`; a source only reads its label/metadata files
and matches them with the catalog. ``inputs`` tells the index which files to watch: when none of them and
no image file changed, a re-scan does not call the source at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Protocol

from cxr_core.data.study import Study
from cxr_core.labels import LabelSpace, UncertaintyPolicy


@dataclass(frozen=True, slots=True)
class Problem:
    """A file or row that could not be used (``error``) or was used with a caveat (``warning``)."""

    path: str
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One image-like file under a root, as probed by the index (``relpath`` uses ``/``)."""

    relpath: str
    size: int
    mtime_ns: int
    ok: bool
    reason: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)


class FileCatalog(Mapping[str, FileInfo]):
    """The image files found under a root, keyed by relative path, with lookups sources need."""

    def __init__(self, root: Path, files: Mapping[str, FileInfo]):
        self.root = root
        self._files = dict(files)
        self._by_name: dict[str, str] | None = None
        self._by_stem: dict[str, str] | None = None
        self.duplicates: list[str] = []

    def __getitem__(self, relpath: str) -> FileInfo:
        return self._files[relpath]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def _build_name_maps(self) -> None:
        by_name: dict[str, str] = {}
        by_stem: dict[str, str] = {}
        for rel in sorted(self._files):
            pure = PurePosixPath(rel)
            if pure.name in by_name:
                self.duplicates.append(rel)
                continue
            by_name[pure.name] = rel
            by_stem.setdefault(pure.stem, rel)
        self._by_name, self._by_stem = by_name, by_stem

    def find_name(self, name: str) -> str | None:
        """The relative path of the file called ``name`` anywhere below the root (first in sorted order)."""
        if self._by_name is None:
            self._build_name_maps()
        return self._by_name.get(name)  # type: ignore[union-attr]

    def find_stem(self, stem: str) -> str | None:
        """Like :meth:`find_name`, ignoring the extension (``CXR1_1_IM-0001-3001`` -> ``....png``)."""
        if self._by_stem is None:
            self._build_name_maps()
        return self._by_stem.get(stem)  # type: ignore[union-attr]


@dataclass(frozen=True)
class SourceOptions:
    """Options a user can give a source; every source ignores the ones it has no use for."""

    labels_csv: Path | None = None
    uncertainty: UncertaintyPolicy = UncertaintyPolicy.IGNORE
    allow_outside_root: bool = False
    iu_mapping: str = "published"


@dataclass
class SourceResult:
    format: str
    space: LabelSpace
    studies: list[Study]
    problems: list[Problem] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    split_source: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """A data set layout. ``detect`` says why a root looks like this layout (or None)."""

    name: ClassVar[str]
    looked_for: ClassVar[str]

    @staticmethod
    def detect(root: Path) -> str | None: ...

    @staticmethod
    def read(root: Path, catalog: FileCatalog, options: SourceOptions) -> SourceResult: ...
