"""Torch datasets: letterboxed grayscale images, normalised the way a model's config says.

Datasets know nothing about models (the timm habit): they take a small preprocessing spec, anything with
``in_chans``, ``mean`` and ``std`` (a ``ModelConfig`` fits, or :class:`Preprocess`). Mean and std are on
the [0, 1] scale, one value per channel or a single value for all. Grayscale is replicated to ``in_chans``
channels, because ImageNet/CLIP backbones expect three.

Pixels come from the :class:`~cxr_core.data.image_cache.ImageCache` when one is given, else they are decoded
on the spot by the same :func:`~cxr_core.data.preprocess.load_letterboxed`, so both paths give identical
tensors. Augmentation (``transform``, e.g. :func:`~cxr_core.data.augment.train_transform`) sees the
uint8 (1, S, S) tensor before scaling and normalisation, where it is cheapest, and returns the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_core.data.image_cache import ImageCache
from cxr_core.data.preprocess import Normalizer, PreprocessSpec, load_letterboxed
from cxr_core.data.study import Study
from cxr_core.errors import ImageReadError
from cxr_core.labels import LabelSpace, UncertaintyPolicy, targets


class Item(NamedTuple):
    """One training image: path relative to the image base, targets and loss mask over the model's labels."""

    relpath: str
    target: np.ndarray
    mask: np.ndarray


class XRayDataset(Dataset):
    """Labelled images for training and evaluation: ``{"image", "target", "mask", "index"}`` per item.

    With ``raw=True`` an item carries ``"pixels"`` (uint8 (S, S), augmented) instead of ``"image"``, and the
    consumer normalises whole batches on its device with :attr:`normalizer` (the trainer does: 12x fewer
    bytes through DataLoader workers and pinned memory to the GPU).

    An image that cannot be read (recorded as a failure in the cache, or broken since it was indexed when
    there is no cache) raises :class:`~cxr_core.errors.ImageReadError` from ``__getitem__``: silently
    skipping or zero-filling a training image would bias the data, so the trainer decides (drop the item
    and warn, or stop). Build the cache first and pass ``[i for i in items if i.relpath in cache]`` to
    train only on readable files.
    """

    def __init__(self, items: Sequence[tuple[str, np.ndarray, np.ndarray]], *, cache: ImageCache | None,
                 base: str | Path, size: int, preprocess: PreprocessSpec, transform: Any = None, raw: bool = False):
        if cache is not None and cache.size != size:
            raise ValueError(f"the image cache holds {cache.size} px images, the dataset wants {size} px")
        self.items = list(items)
        self.cache = cache
        self.base = Path(base)
        self.size = size
        self.raw = raw
        self._normalize = Normalizer(preprocess, transform)
        self._batch_normalize = Normalizer(preprocess)

    @property
    def normalizer(self) -> Normalizer:
        """Normalises ``raw`` items' pixels as a batch (``normalizer.batch``), where the model runs."""
        return self._batch_normalize

    def __len__(self) -> int:
        return len(self.items)

    def pixels(self, index: int) -> np.ndarray:
        """The letterboxed uint8 image of item ``index`` (from the cache when there is one)."""
        relpath = self.items[index][0]
        if self.cache is not None:
            return self.cache.get(relpath)
        return load_letterboxed(self.base / relpath, self.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        _, target, mask = self.items[index]
        if self.raw:  # uint8 (S, S), augmented: S*S bytes to hand over instead of C*S*S floats
            picture = {"pixels": self._normalize.augment(self.pixels(index))[0]}
        else:
            picture = {"image": self._normalize(self.pixels(index))}
        return {
            **picture,
            "target": torch.as_tensor(target, dtype=torch.float32),
            "mask": torch.as_tensor(mask, dtype=torch.float32),
            "index": index,
        }


class PredictDataset(Dataset):
    """Unlabelled images by path, for inference: ``{"image", "index", "path", "error"}`` per item.

    An unreadable file never raises: it yields an all-zero placeholder image and its reason in ``error``
    (``""`` when fine), so one bad file cannot kill a DataLoader batch. Every item has the same keys and
    shapes, so torch's default collate batches them; drop the rows whose ``error`` is set.
    """

    def __init__(self, paths: Sequence[str | Path], *, size: int, preprocess: PreprocessSpec):
        self.paths = [str(p) for p in paths]
        self.size = size
        self._normalize = Normalizer(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image, error = self._normalize(load_letterboxed(path, self.size)), ""
        except ImageReadError as err:
            image, error = torch.zeros(self._normalize.channels, self.size, self.size), err.reason
        return {"image": image, "index": index, "path": path, "error": error}

    def pixels(self, index: int) -> tuple[np.ndarray, str]:
        """The letterboxed uint8 image and ``""``, or a zero placeholder and the reason it could not be read.

        NumPy and Pillow only (no torch op), so it can run in plain threads beside a model's own threads.
        """
        try:
            return load_letterboxed(self.paths[index], self.size), ""
        except ImageReadError as err:
            return np.zeros((self.size, self.size), np.uint8), err.reason

    @property
    def normalizer(self) -> Normalizer:
        return self._normalize

    def batch(self, indices: Sequence[int], load: Callable[..., Iterable[tuple[np.ndarray, str]]] = map) -> dict[str, Any]:
        """Items ``indices`` as a :class:`PredictPixels` batch, decoded through ``load`` (e.g. a pool's ``map``)."""
        loaded = list(load(self.pixels, indices))
        return {"pixels": torch.from_numpy(np.stack([pixels for pixels, _ in loaded])),
                "index": torch.as_tensor(list(indices), dtype=torch.long),
                "path": [self.paths[i] for i in indices], "error": [error for _, error in loaded]}


class PredictPixels(Dataset):
    """A :class:`PredictDataset`'s items as un-normalised uint8: ``{"pixels" (S, S), "index", "path", "error"}``.

    For DataLoader workers feeding a GPU: the consumer normalises whole batches on its device
    (``dataset.normalizer.batch``), so each image crosses processes and the bus as S*S bytes, not 3*S*S floats.
    """

    def __init__(self, dataset: PredictDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels, error = self.dataset.pixels(index)
        return {"pixels": torch.from_numpy(pixels), "index": index, "path": self.dataset.paths[index], "error": error}


def items_from_studies(
    studies: Iterable[Study],
    space: LabelSpace,
    policy: UncertaintyPolicy = UncertaintyPolicy.IGNORE,
    split: str | None = None,
    *,
    labels: Sequence[str] | None = None,
) -> list[Item]:
    """One :class:`Item` per image of the studies in ``split`` (all splits when None); images share their study's labels.

    ``labels`` picks and orders the target columns (default: the space's findings, without the normal
    label, as the training config does). Pass studies from ``StudyIndex.studies(root, present_only=True)``
    so that only images present on disk are listed; studies left with no image are skipped.
    """
    wanted = list(space.findings if labels is None else labels)
    unknown = [name for name in wanted if name not in space.labels]
    if unknown:
        raise ValueError(f"labels not in the {space.name} label space: {', '.join(unknown)}")
    columns = [space.index(name) for name in wanted]
    chosen = [s for s in studies if s.images and (split is None or s.split == split)]
    if not chosen:
        return []
    y, mask = targets([s.labels for s in chosen], policy)
    y, mask = y[:, columns], mask[:, columns]
    return [Item(image.path, y[i], mask[i]) for i, study in enumerate(chosen) for image in study.images]
