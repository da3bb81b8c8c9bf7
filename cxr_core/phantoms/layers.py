"""The rasters a phantom is drawn into, and how they become one film.

Shapes are drawn with PIL (C loops, cost proportional to the shape) into 8-bit channels at half
resolution: soft ones (lung air, body soft tissue, dense soft tissue, extra air), box-blurred, and fine ones
(bone, faint bone, lung vessels), left sharp. They are summed as attenuation at half resolution and the sum
is upsampled bilinearly, which also antialiases the drawing; composing a quarter of the pixels is what
makes >100 images/s possible. At full resolution come only what needs it: the findings' ``opacity`` field
(the share of lung air a lesion replaces; a nodule's spherical profile, an effusion's meniscus), a ``detail``
layer of thin lines made on demand (a pleural line, septal lines), and film grain. A per-image film curve
(a lookup table) turns attenuation into grey levels.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cxr_core.phantoms.frame import Frame
from cxr_core.phantoms.spec import Anatomy, Setup

LUNG, BODY, DENSE, AIR = range(4)  # soft channels
BONE, FAINT, VESSEL = range(3)  # fine channels

# Attenuation of each channel at full value (255), in units of the body's soft-tissue thickness.
AIR_IN_LUNG = 0.60
W_DENSE, W_BONE, W_FAINT, W_VESSEL, W_PTX = 0.10, 0.25, 0.06, 0.14, 0.2
GRAIN, MOTTLE, TEXTURE = 0.016, 0.02, 0.02

_LUT_LO, _LUT_HI, _LUT_N = -0.5, 2.7, 2048
_SHOULDER = 1.5


class Canvas:
    """Drawing surfaces of one phantom; coordinates are canonical (see :mod:`frame`)."""

    def __init__(self, size: int, setup: Setup):
        self.size = size
        self.frame = Frame(size, setup.angle, setup.scale, setup.dx, setup.dy)
        half = (size + 1) // 2
        self.half = Frame(half, setup.angle, setup.scale, setup.dx, setup.dy, extent=size / 2)
        self.soft_images = [Image.new("L", (half, half), 0) for _ in range(4)]
        self.fine_images = [Image.new("L", (half, half), 0) for _ in range(3)]
        self._soft = [ImageDraw.Draw(im) for im in self.soft_images]
        self._fine = [ImageDraw.Draw(im) for im in self.fine_images]
        self.detail: Image.Image | None = None
        self.opacity: np.ndarray | None = None
        self.opacity_window: tuple[int, int, int, int] | None = None
        self.air_used = False
        self.bone_fields: list[tuple[tuple[int, int, int, int], np.ndarray]] = []

    def soft_polygon(self, channel: int, u, v, fill: float) -> None:
        self._soft[channel].polygon(self.half.points(u, v), fill=_level(fill))
        self.air_used |= channel == AIR

    def soft_ellipse(self, channel: int, u: float, v: float, ru: float, rv: float, fill: float) -> None:
        self._soft[channel].ellipse(_ellipse_box(self.half, u, v, ru, rv), fill=_level(fill))

    def soft_line(self, channel: int, u, v, width: float, fill: float) -> None:
        self._soft[channel].line(self.half.points(u, v), fill=_level(fill), width=self._width(width))
        self.air_used |= channel == AIR

    def line(self, channel: int, points: list[float], width: float, fill: float) -> None:
        """A polyline on a fine channel; ``points`` are half-raster pixels (:meth:`Frame.points` of ``half``)."""
        self._fine[channel].line(points, fill=_level(fill), width=self._width(width))

    def polygon(self, channel: int, u, v, fill: float) -> None:
        self._fine[channel].polygon(self.half.points(u, v), fill=_level(fill))

    def ellipse(self, channel: int, u: float, v: float, ru: float, rv: float, fill: float) -> None:
        self._fine[channel].ellipse(_ellipse_box(self.half, u, v, ru, rv), fill=_level(fill))

    def add_bone(self, window: tuple[int, int, int, int], field: np.ndarray) -> None:
        """Add bone (0..1, like the BONE channel) computed as a field on a window of the half raster."""
        self.bone_fields.append((window, field))

    def detail_line(self, u, v, width: float, fill: float) -> None:
        """A thin dense line at full resolution (pleural line, septal lines): too fine for the half raster."""
        if self.detail is None:
            self.detail = Image.new("L", (self.size, self.size), 0)
        px = max(int(round(self.frame.px(width))), 1)
        ImageDraw.Draw(self.detail).line(self.frame.points(u, v), fill=_level(fill), width=px)

    def add_opacity(self, window: tuple[int, int, int, int], values: np.ndarray) -> None:
        """Raise the opacity field to ``values`` inside ``window`` (findings overlap by maximum)."""
        if self.opacity is None:
            self.opacity = np.zeros((self.size, self.size), np.float32)
            self.opacity_window = window
        r0, r1, c0, c1 = window
        np.maximum(self.opacity[r0:r1, c0:c1], values, out=self.opacity[r0:r1, c0:c1])
        a0, a1, b0, b1 = self.opacity_window
        self.opacity_window = (min(a0, r0), max(a1, r1), min(b0, c0), max(b1, c1))

    def _width(self, width: float) -> int:
        return max(int(round(self.half.px(width))), 1)


def _level(fill: float) -> int:
    return int(min(max(fill, 0.0), 1.0) * 255 + 0.5)


def _ellipse_box(frame: Frame, u: float, v: float, ru: float, rv: float) -> list[float]:
    x, y = frame.points([u], [v])
    dx, dy = frame.px(ru), frame.px(rv)
    return [x - dx, y - dy, x + dx, y + dy]


@lru_cache(maxsize=8)
def noise_fields(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Film grain (full resolution), low-frequency mottle and lung texture (half resolution), unit variance.

    Twice as tall as the raster they are added to, so each image cuts its own window. Made once per size from a fixed
    seed: they cost nothing per image and stay identical across runs.
    """
    rng = np.random.default_rng(np.random.SeedSequence([0x5EED, size]))
    grain = rng.standard_normal((2 * size, size), dtype=np.float32)
    half = (size + 1) // 2
    fields = [grain]
    for cells in (4, 64):
        coarse = rng.standard_normal((2 * cells + 3, cells + 3), dtype=np.float32)
        smooth = np.asarray(Image.fromarray(coarse, "F").resize((half, 2 * half), Image.Resampling.BICUBIC))
        fields.append((smooth - smooth.mean()) / smooth.std())
    for field in fields:
        field.flags.writeable = False
    return fields[0], fields[1], fields[2]


def field_window(field: np.ndarray, offset: float, shape: tuple[int, int]) -> np.ndarray:
    """A ``shape`` window of a noise field, ``offset`` (0..1) of the way down; whole rows stay contiguous."""
    r = int(offset * (field.shape[0] - shape[0]))
    return field[r : r + shape[0], : shape[1]]


def film_lut(setup: Setup) -> np.ndarray:
    """Attenuation -> grey level: the exposure window, gamma and a film's shoulder (dense parts compress)."""
    lo, hi = setup.window
    a = np.linspace(_LUT_LO, _LUT_HI, _LUT_N, dtype=np.float64)
    x = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    t = ((1.0 - np.exp(-_SHOULDER * x)) / (1.0 - math.exp(-_SHOULDER))) ** setup.gamma
    return np.round(t * 255.0).astype(np.uint8)


def upsample2(a: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling with pixel-centre alignment and edge clamping (numpy: faster than PIL's float
    resize). Output pixel ``2i`` is ``0.75 a[i] + 0.25 a[i-1]``, ``2i+1`` is ``0.75 a[i] + 0.25 a[i+1]``."""
    h, w = a.shape
    rows = np.empty((2 * h, w), np.float32)
    near = 0.75 * a
    rows[0], rows[-1] = a[0], a[-1]
    np.add(near[1:], 0.25 * a[:-1], out=rows[2::2])
    np.add(near[:-1], 0.25 * a[1:], out=rows[1:-1:2])
    out = np.empty((2 * h, 2 * w), np.float32)
    near = 0.75 * rows
    out[:, 0], out[:, -1] = rows[:, 0], rows[:, -1]
    np.add(near[:, 1:], 0.25 * rows[:, :-1], out=out[:, 2::2])
    np.add(near[:, :-1], 0.25 * rows[:, 1:], out=out[:, 1:-1:2])
    return out


def compose(canvas: Canvas, anatomy: Anatomy, setup: Setup) -> np.ndarray:
    """Sum the layers as attenuation and develop the film; returns a (size, size) uint8 image."""
    size, half = canvas.size, canvas.half.size
    soft = np.asarray(Image.merge("RGBX", canvas.soft_images).filter(ImageFilter.BoxBlur(0.6)))
    lung, body, dense, air = soft.transpose(2, 0, 1).astype(np.float32)
    bone, faint, vessel = (np.asarray(im, dtype=np.float32) for im in canvas.fine_images[:3])
    _, mottle, texture = noise_fields(size)
    sigma = 255.0 * setup.noise

    u, v = canvas.half.grid((0, half, 0, half))
    # Path length through an elliptical trunk: thin at the sides, thickest at the midline and shoulders.
    half_w = anatomy.thorax + 0.15 + 0.08 * anatomy.habitus
    path = np.sqrt(np.clip(1.0 - (u * u) * (1.0 / (half_w * half_w)), 0.0, 1.0))
    att = body * (anatomy.tissue * (0.45 + 0.6 * path) + 0.3 * np.clip(-0.45 - v, 0.0, 0.5))
    att += W_DENSE * dense + W_BONE * bone + W_FAINT * faint
    for (r0, r1, c0, c1), field in canvas.bone_fields:
        att[r0:r1, c0:c1] += (W_BONE * 255.0) * field
    att += (MOTTLE * sigma) * field_window(mottle, setup.offsets[1], (half, half))
    air_share = lung * (0.4 + 0.6 * path) * (1.0 / 255.0)  # share of a full lung's air at each pixel
    lung_term = W_VESSEL * vessel + (TEXTURE * 255.0) * field_window(texture, setup.offsets[2], (half, half))
    lung_term -= AIR_IN_LUNG * 255.0
    att += air_share * lung_term
    if canvas.air_used:
        att -= W_PTX * air * (lung * (1.0 / 255.0))

    scale = (_LUT_N - 1) / (_LUT_HI - _LUT_LO) / 255.0
    att *= scale
    att += -_LUT_LO * (_LUT_N - 1) / (_LUT_HI - _LUT_LO)
    full = upsample2(att)[:size, :size]
    if canvas.opacity is not None:
        r0, r1, c0, c1 = canvas.opacity_window
        h0, w0 = max(r0 // 2 - 1, 0), max(c0 // 2 - 1, 0)
        share = upsample2(air_share[h0 : (r1 + 1) // 2 + 1, w0 : (c1 + 1) // 2 + 1])
        share = share[r0 - 2 * h0 : r1 - 2 * h0, c0 - 2 * w0 : c1 - 2 * w0]
        full[r0:r1, c0:c1] += (AIR_IN_LUNG * 255.0 * scale) * share * canvas.opacity[r0:r1, c0:c1]
    if canvas.detail is not None:
        full += (W_BONE * scale) * np.asarray(canvas.detail, dtype=np.float32)
    full += (GRAIN * sigma * scale) * field_window(noise_fields(size)[0], setup.offsets[0], (size, size))
    np.clip(full, 0, _LUT_N - 1, out=full)
    return film_lut(setup)[full.astype(np.uint16)]
