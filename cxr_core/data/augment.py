"""Training augmentation for chest X-rays: small geometric and exposure changes a real film could show.

What is left out matters as much as what is in:

* never a vertical flip: lungs are never upside down on a film, and "up" carries meaning (apices, fluid
  levels, free air under the diaphragm);
* no horizontal flip by default: dextrocardia and situs inversus are labels in some sets, the heart's side
  is what cardiomegaly is read against, and laterality markers ("L", "R") become lies; ``hflip=True``
  turns it on for label spaces where it is harmless;
* no colour or hue changes (the image is grayscale) and no large crops (findings sit at the edges:
  costophrenic angles, apices).

It works on the uint8 image, before normalisation, because that is where it is cheap: the affine is
Pillow's (through torchvision's v2 functional API), ~10x faster than a float ``grid_sample`` on CPU, and
brightness, contrast and gamma fold into one 256-entry lookup table. Augmentation runs in DataLoader
workers for every image of every epoch, so its cost decides how many workers keep a GPU fed.

Random parameters come from a ``torch.Generator`` when one is given (reproducible, for tests), else from
torch's global generator, which DataLoader seeds per worker from its own generator: seeding the DataLoader
(``generator=torch.Generator().manual_seed(seed)``) makes a run's augmentation reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

_LEVELS = np.arange(256, dtype=np.float64) / 255.0


class ChestAugment(torch.nn.Module):
    """Random affine, optional horizontal flip, then brightness, contrast and gamma jitter.

    Input and output: a uint8 (1, S, S) tensor. Pixels the affine moves in from outside are 0, like the
    letterbox padding.
    """

    def __init__(self, size: int, *, rotate: float = 7.0, translate: float = 0.06,
                 scale: tuple[float, float] = (0.9, 1.1), brightness: float = 0.15, contrast: float = 0.15,
                 gamma: float = 0.15, hflip: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.size = size
        self.rotate = rotate
        self.translate = translate
        self.scale = scale
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = gamma
        self.hflip = hflip
        self.generator = generator

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or tuple(image.shape) != (1, self.size, self.size):
            raise ValueError(f"augmentation built for uint8 (1, {self.size}, {self.size}) images got "
                             f"{image.dtype} {tuple(image.shape)}")
        shift = self.translate * self.size
        picture = F.affine(
            Image.fromarray(image[0].numpy()),
            angle=self._uniform(-self.rotate, self.rotate),
            translate=[round(self._uniform(-shift, shift)), round(self._uniform(-shift, shift))],
            scale=self._uniform(*self.scale),
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=0,
        )
        if self.hflip and self._uniform(0.0, 1.0) < 0.5:
            picture = F.horizontal_flip(picture)
        picture = picture.point(self._exposure_table(np.array(picture.histogram(), dtype=np.float64)))
        return torch.from_numpy(np.array(picture)).unsqueeze(0)

    def _exposure_table(self, counts: np.ndarray) -> list[int]:
        """Lookup table for brightness x b, contrast c about the mean, then gamma g (rounded once).

        ``counts`` is the image's 256-bin histogram, which gives the mean after brightness exactly.
        """
        b = self._uniform(1 - self.brightness, 1 + self.brightness)
        c = self._uniform(1 - self.contrast, 1 + self.contrast)
        g = self._uniform(1 - self.gamma, 1 + self.gamma)
        bright = np.clip(_LEVELS * b, 0.0, 1.0)
        mean = float(counts @ bright) / max(float(counts.sum()), 1.0)
        contrasted = np.clip(mean + c * (bright - mean), 0.0, 1.0)
        return np.rint(255.0 * contrasted**g).astype(np.uint8).tolist()


def train_transform(size: int, *, hflip: bool = False, generator: torch.Generator | None = None) -> ChestAugment:
    """The default training augmentation for ``size x size`` images: rotate +-7 deg, shift +-6 %,
    scale 0.9-1.1, brightness/contrast/gamma +-15 %, horizontal flip only when asked, never a vertical one."""
    return ChestAugment(size, hflip=hflip, generator=generator)
