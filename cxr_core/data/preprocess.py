"""From a decoded film to what a model takes: the letterbox (aspect kept, zero padding) and the normalisation.

The one place both live, so training (the uint8 cache, :mod:`cxr_core.data.image_cache`), inference
(:mod:`cxr_core.infer.engine`) and Grad-CAM (which undoes the letterbox) agree to the pixel. What a model expects
(``in_chans``, ``mean``, ``std``) comes from its config, or :class:`Preprocess` for callers without one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from cxr_core.images import read_xray

if TYPE_CHECKING:  # the letterbox is NumPy and Pillow: decoding ahead while torch loads needs no torch
    import torch

RESIZE_METHOD = "letterbox-bicubic-rg2-v1"  # part of the cache key: change it whenever letterbox() changes



def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, inner height, inner width) of an (H, W) image inside its ``size`` letterbox."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w



def letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """Fit a (H, W) uint8 image into ``size x size``: aspect ratio kept, centred, padded with 0.

    Chest films are rarely square (NIH originals are 2500x2048, portable films vary): a centre crop to a
    square can cut the costophrenic angles or apices, where effusions and pneumothoraces show, and a
    stretch distorts the cardiothoracic ratio that cardiomegaly is read from. Zero padding looks like the
    collimated border a film already has. Downscaling is Pillow's antialiased bicubic, preceded by an
    integer box reduction (``reducing_gap=2``) that halves its cost at 1024 -> 224 with no visible change.
    """
    height, width = pixels.shape
    top, left, new_h, new_w = letterbox_geometry(height, width, size)
    if (new_h, new_w) != (height, width):
        resized = Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=2.0)
        pixels = np.asarray(resized)
    out = np.zeros((size, size), np.uint8)
    out[top : top + new_h, left : left + new_w] = pixels
    return out



def load_letterboxed(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode and letterbox one image: the one function behind both the cache and uncached datasets."""
    return letterbox(read_xray(path).as_uint8(), size)


IMAGENET_MEAN = (0.485, 0.456, 0.406)

IMAGENET_STD = (0.229, 0.224, 0.225)



class PreprocessSpec(Protocol):
    in_chans: int
    mean: Sequence[float]
    std: Sequence[float]



@dataclass(frozen=True)
class Preprocess:
    """The preprocessing a model expects, for callers without a model config at hand."""

    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD



class Normalizer:
    """uint8 (S, S) -> float (C, S, S): optional transform (on uint8), to [0, 1], replicate, (x - mean) / std."""

    def __init__(self, spec: PreprocessSpec, transform: Any = None):
        channels = int(spec.in_chans)
        if channels < 1:
            raise ValueError(f"in_chans must be >= 1, got {channels}")
        self.channels = channels
        self.mean = _per_channel(spec.mean, channels, "mean")
        self.std = _per_channel(spec.std, channels, "std")
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {tuple(spec.std)}")
        self.transform = transform
        self._device_stats: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def augment(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (S, S) -> uint8 (1, S, S), a copy, through the transform when there is one."""
        import torch

        image = torch.from_numpy(np.array(pixels, dtype=np.uint8)).unsqueeze(0)
        return image if self.transform is None else self.transform(image)

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        image = self.augment(pixels).float().div_(255.0)
        size = image.shape[-2:]
        return (image.expand(self.channels, *size) - self.mean) / self.std

    def batch(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S) -> float (B, C, S, S) in one vectorised pass, on the device ``pixels`` is on.

        No transform (inference only). Normalising whole batches where the model runs means the decoders hand
        over uint8 (a twelfth of float RGB: less to pickle between processes and to copy to a GPU).
        """
        if self.transform is not None:
            raise ValueError("Normalizer.batch does not apply a transform; call the normalizer per image")
        import torch

        if not isinstance(pixels, torch.Tensor):
            pixels = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
        images = pixels.unsqueeze(1).float().div_(255.0)
        mean, std = self._on(images.device)
        return (images.expand(-1, self.channels, -1, -1) - mean) / std

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std on ``device``, copied there once (not a small host-to-device copy every batch)."""
        if device.type == "cpu":
            return self.mean, self.std
        if self._device_stats is None or self._device_stats[0] != device:
            self._device_stats = (device, self.mean.to(device), self.std.to(device))
        return self._device_stats[1], self._device_stats[2]



def _per_channel(values: Sequence[float] | float, channels: int, name: str) -> torch.Tensor:
    import torch

    tensor = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if tensor.numel() == 1:
        tensor = tensor.expand(channels)
    if tensor.numel() != channels:
        raise ValueError(f"{name} has {tensor.numel()} values for {channels} channels")
    return tensor.clone().reshape(channels, 1, 1)
