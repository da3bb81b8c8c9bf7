from __future__ import annotations

import numpy as np

from cxr_core.data.sources import SourceOptions, detect_format
from cxr_core.data.sources.base import FileCatalog
from cxr_core.data.sources.medmnist import MedMNISTSource


def test_chestmnist_npz_splits_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = np.zeros((n, 14), np.uint8)
        labels[0, 1] = 1  # cardiomegaly
        labels[0, 12] = 1  # pleural (thickening)
        arrays[f"{split}_labels"] = labels
    path = tmp_path / "chestmnist.npz"
    np.savez_compressed(path, **arrays)
    assert detect_format(path)[0] == "medmnist"
    assert detect_format(tmp_path)[0] == "medmnist"
    result = MedMNISTSource.read(path, FileCatalog(tmp_path, {}), SourceOptions())
    assert len(result.studies) == 11
    first = result.studies[0]
    assert first.images[0].path == "chestmnist.npz::train_images/0" and first.split == "train"
    assert result.space.positives(first.labels) == ["Cardiomegaly", "Pleural_Thickening"]
    assert result.space.positives(result.studies[1].labels) == ["No Finding"]
    assert {s.split for s in result.studies} == {"train", "val", "test"}


def test_a_damaged_or_foreign_npz_root_says_what_it_is(tmp_path):
    import numpy as np
    import pytest

    from cxr_core.data import detect_format
    from cxr_core.errors import DataError

    damaged = tmp_path / "chestmnist.npz"
    damaged.write_bytes(b"PK\x03\x04" + b"\x00" * 50)  # was: "no known data set layout. Looked for: ..."
    with pytest.raises(DataError, match="a damaged .npz"):
        detect_format(damaged)
    foreign = tmp_path / "other.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(DataError, match=r"not a ChestMNIST .npz \(it holds weights; expected train_images"):
        detect_format(foreign)
