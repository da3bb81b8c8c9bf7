"""ChestMNIST (MedMNIST v2): one ``.npz`` holding ``{train,val,test}_images`` and ``_labels``.

Images stay inside the archive; each study's image path is an archive member reference
(``chestmnist.npz::train_images/17``) that :func:`cxr_core.images.read_xray` reads. ChestMNIST carries no
patient ids (each image is its own patient) but keeps NIH's official patient-level split.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cxr_core.data.sources.base import FileCatalog, Problem, SourceOptions, SourceResult
from cxr_core.data.study import Study, StudyImage
from cxr_core.errors import DataError
from cxr_core.labels import LabelState, get_space

# MedMNIST's INFO["chestmnist"]["label"], in column order.
CHESTMNIST_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
SPLITS = ("train", "val", "test")


def _archive(root: Path) -> Path | None:
    if root.is_file() and root.suffix == ".npz":
        return root
    if root.is_dir():
        found = sorted(root.glob("chestmnist*.npz"))
        return found[0] if found else None
    return None


def _members(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return {name.removesuffix(".npy") for name in zf.namelist()}
    except (OSError, zipfile.BadZipFile):
        return set()


class MedMNISTSource:
    name = "medmnist"
    looked_for = "medmnist: a ChestMNIST .npz (train_images, train_labels, ...) or a folder holding chestmnist*.npz"

    @staticmethod
    def detect(root: Path) -> str | None:
        archive = _archive(root)
        if archive is None or "train_images" not in _members(archive):
            return None
        return f"found {archive.name}"

    @staticmethod
    def read(root: Path, catalog: FileCatalog, options: SourceOptions) -> SourceResult:
        archive = _archive(root)
        if archive is None:
            raise DataError(f"{root}: no ChestMNIST .npz ({MedMNISTSource.looked_for})")
        space = get_space("nih")
        columns = [space.index(space.canonical(name)) for name in CHESTMNIST_LABELS]
        normal = space.index(space.normal)
        base = archive.name
        studies: list[Study] = []
        problems: list[Problem] = []
        try:
            data = np.load(archive, allow_pickle=False)
            for split in SPLITS:
                if f"{split}_images" not in data.files:
                    continue
                n = data[f"{split}_images"].shape[0]
                labels = np.asarray(data[f"{split}_labels"]) if f"{split}_labels" in data.files else None
                if labels is None or labels.shape != (n, len(CHESTMNIST_LABELS)):
                    problems.append(Problem(f"{archive}::{split}_labels", f"missing or not ({n}, 14); {split} left unlabelled"))
                    labels = None
                for i in range(n):
                    codes = [LabelState.UNKNOWN.value] * len(space)
                    if labels is not None:
                        for col, value in zip(columns, labels[i], strict=True):
                            codes[col] = "1" if value else "0"
                        codes[normal] = "0" if labels[i].any() else "1"
                    study_id = f"{split}-{i:06d}"
                    studies.append(Study(study_id, study_id, (StudyImage(f"{base}::{split}_images/{i}", "PA"),),
                                         "".join(codes), "PA", split, {}))
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{archive}: cannot read ChestMNIST archive ({exc})") from None
        return SourceResult(
            format="medmnist", space=space, studies=studies, problems=problems, inputs=[archive],
            split_source="official (MedMNIST train/val/test)",
            notes={"archive": base, "patients": "ChestMNIST has no patient ids: each image is its own patient"},
        )
