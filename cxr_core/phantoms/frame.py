"""The canonical chest frame and its mapping to the pixels of one raster.

Anatomy and findings are described in a canonical frame: ``u`` runs left to right across the image,
``v`` top to bottom, both in [-1, 1] for a centred patient (1.0 is half the image width). The patient's
right is image left (``u < 0``), as on a PA film. Positioning (rotation, scale, shift) is a similarity
transform from that frame to the image, so describing a shape once serves every pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Box:
    """A ground-truth box in pixels of the rendered image, as NIH's ``Bbox [x,y,w,h]``."""

    label: str
    x: float
    y: float
    w: float
    h: float


@lru_cache(maxsize=32)
def _axis(pixels: int, extent: float) -> np.ndarray:
    """Pixel-centre coordinates along one axis (cached: every render at a size reuses them)."""
    axis = (np.arange(pixels, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0 / extent) - np.float32(1.0)
    axis.flags.writeable = False
    return axis


class Frame:
    """Canonical frame -> pixel coordinates of a square raster.

    ``extent`` is the image width in this raster's pixels: ``size`` for the full image, ``size / 2`` for the
    half-resolution layers (whose raster has ``ceil(size / 2)`` pixels).
    """

    def __init__(self, pixels: int, angle: float, scale: float, dx: float, dy: float, extent: float | None = None):
        self.size = pixels
        self.extent = float(pixels if extent is None else extent)
        half = self.extent / 2.0
        cos, sin = math.cos(angle), math.sin(angle)
        self._fwd = (half * scale * cos, -half * scale * sin, half * (dx + 1.0),
                     half * scale * sin, half * scale * cos, half * (dy + 1.0))
        self._inv = (cos / scale, sin / scale)
        self._shift = (dx, dy)
        self.unit = half * scale  # pixels per canonical unit

    def points(self, u, v) -> list[float]:
        """Flat ``[x0, y0, x1, y1, ...]`` pixel coordinates, the form PIL's drawing calls take."""
        a, b, c, d, e, f = self._fwd
        if isinstance(u, np.ndarray):
            if u.size > 24:
                x, y = self.xy(u, v)
                return np.column_stack([x.ravel(), y.ravel()]).ravel().tolist()
            u, v = u.tolist(), np.asarray(v).tolist()
        out: list[float] = []
        for x, y in zip(u, v, strict=True):
            out.append(a * x + b * y + c)
            out.append(d * x + e * y + f)
        return out

    def rows(self, u: np.ndarray, v: np.ndarray) -> list[list[float]]:
        """:meth:`points` for each row of 2-D ``u``, ``v``: many polylines transformed at once."""
        x, y = self.xy(u, v)
        flat = np.empty((u.shape[0], 2 * u.shape[1]))
        flat[:, 0::2], flat[:, 1::2] = x, y
        return flat.tolist()

    def xy(self, u, v) -> tuple[np.ndarray, np.ndarray]:
        a, b, c, d, e, f = self._fwd
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        return a * u + b * v + c, d * u + e * v + f

    def px(self, length: float) -> float:
        return length * self.unit

    def window(self, u, v, pad: float = 0.0) -> tuple[int, int, int, int] | None:
        """Pixel rows/cols ``(r0, r1, c0, c1)`` covering canonical points plus ``pad`` units; None if off-image."""
        x, y = self.xy(u, v)
        p = pad * self.unit
        c0, c1 = max(int(x.min() - p), 0), min(int(math.ceil(x.max() + p)) + 1, self.size)
        r0, r1 = max(int(y.min() - p), 0), min(int(math.ceil(y.max() + p)) + 1, self.size)
        return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None

    def grid(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Canonical ``(U, V)`` of the pixel centres in ``window`` (float32, broadcast to 2-D)."""
        r0, r1, c0, c1 = window
        axis = _axis(self.size, self.extent)
        cos, sin = self._inv
        x = axis[c0:c1][None, :] - np.float32(self._shift[0])
        y = axis[r0:r1][:, None] - np.float32(self._shift[1])
        return np.float32(cos) * x + np.float32(sin) * y, np.float32(cos) * y - np.float32(sin) * x

    def box(self, label: str, u, v) -> Box | None:
        """The pixel box around canonical points, clipped to the image and at least a pixel wide and tall;
        None if it falls outside."""
        x, y = self.xy(u, v)
        x0, x1 = max(float(x.min()), 0.0), min(float(x.max()), float(self.size))
        y0, y1 = max(float(y.min()), 0.0), min(float(y.max()), float(self.size))
        if x1 <= 0.0 or y1 <= 0.0 or x0 >= self.size or y0 >= self.size:
            return None
        x0, y0 = min(x0, self.size - 1.0), min(y0, self.size - 1.0)
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        return Box(label, round(x0, 2), round(y0, 2), round(w, 2), round(h, 2))

    def rect(self, label: str, u0: float, u1: float, v0: float, v1: float) -> Box | None:
        """The pixel box around a canonical rectangle (all four corners: the frame may be rotated)."""
        return self.box(label, [u0, u1, u1, u0], [v0, v0, v1, v1])
