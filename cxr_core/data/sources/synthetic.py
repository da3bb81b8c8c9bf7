"""Phantom sets written by :func:`cxr_core.phantoms.write_phantoms`, read like any labelled folder.

The manifest ``phantoms.json`` marks the layout and fixes the label space (``phantom``); the labels CSV and
the NIH-format box file are the same files a real data set would have, so nothing downstream knows the
difference.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr_core.data.sources.base import FileCatalog, SourceOptions, SourceResult
from cxr_core.data.sources.folder import read_folder
from cxr_core.errors import DataError
from cxr_core.labels import get_space

MANIFEST = "phantoms.json"
BOXES = "BBox_List.csv"


def read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == "cxr.phantoms" else None


class SyntheticSource:
    name = "synthetic"
    looked_for = f"synthetic: a phantom set ({MANIFEST} written by `cxr-tui data synth`)"

    @staticmethod
    def detect(root: Path) -> str | None:
        return f"found {MANIFEST}" if root.is_dir() and read_manifest(root) is not None else None

    @staticmethod
    def read(root: Path, catalog: FileCatalog, options: SourceOptions) -> SourceResult:
        manifest = read_manifest(root)
        if manifest is None:
            raise DataError(f"{root / MANIFEST}: missing or not a cxr phantom manifest")
        result = read_folder(root, catalog, options, space=get_space(manifest.get("label_space", "phantom")), fmt="synthetic")
        result.inputs.append(root / MANIFEST)
        result.notes.update({"seed": manifest.get("seed"), "size": manifest.get("size")})
        if (root / BOXES).is_file():
            result.notes["boxes"] = BOXES
        return result
