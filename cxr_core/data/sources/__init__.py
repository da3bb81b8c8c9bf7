"""Data set sources by name, and detection of a root's layout."""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.sources.base import FileCatalog, FileInfo, Problem, Source, SourceOptions, SourceResult
from cxr_core.data.sources.chexpert import CheXpertSource
from cxr_core.data.sources.folder import FolderSource
from cxr_core.data.sources.iu import IUSource
from cxr_core.data.sources.medmnist import MedMNISTSource
from cxr_core.data.sources.nih import NIHSource
from cxr_core.data.sources.synthetic import SyntheticSource
from cxr_core.errors import DataError

# Detection order: specific markers first, the generic folder last.
SOURCES: dict[str, type[Source]] = {
    s.name: s for s in (SyntheticSource, NIHSource, IUSource, CheXpertSource, MedMNISTSource, FolderSource)
}

__all__ = ["SOURCES", "FileCatalog", "FileInfo", "Problem", "Source", "SourceOptions", "SourceResult",
           "detect_format", "get_source"]


def get_source(name: str) -> type[Source]:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown data set format {name!r} (known: {', '.join(SOURCES)})") from None


def detect_format(root: Path) -> tuple[str, str]:
    """(format name, why) for ``root``; DataError listing everything looked for when nothing matches."""
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    for name, source in SOURCES.items():
        reason = source.detect(root)
        if reason:
            return name, reason
    if root.is_file() and root.suffix.lower() == ".npz":  # the one file a root can be that is not an archive of ours
        import zipfile

        try:
            with zipfile.ZipFile(root) as zf:
                members = ", ".join(sorted(n.removesuffix(".npy") for n in zf.namelist())[:6]) or "nothing"
        except (OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"{root}: a damaged .npz (not a readable zip archive: {exc})") from None
        raise DataError(f"{root}: not a ChestMNIST .npz (it holds {members}; expected train_images, train_labels, ...)")
    looked = "; ".join(s.looked_for for s in SOURCES.values())
    raise DataError(f"{root}: no known data set layout. Looked for: {looked}")
