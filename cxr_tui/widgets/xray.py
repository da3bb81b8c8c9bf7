"""The X-ray, inline: window/level, invert, zoom and pan, with an optional Grad-CAM overlay.

The picture is composed here at exactly the size the terminal shows it, then drawn by textual-image in
whatever the terminal speaks: kitty's graphics protocol, sixel, or half-cell blocks (plain tmux). The protocol
is chosen once per app (``--image-protocol``), because textual-image detects it before Textual takes the
terminal; the colour system is chosen before the app starts too (:mod:`cxr_tui.terminal`).

* **Size and aspect.** :func:`fit` places the view in the widget's cells using the terminal's cell size in
  pixels (textual-image's, the one it scales with), so the film keeps its aspect at any size (a half-cell
  block is one pixel wide and two tall), and the picture handed over is already the size textual-image draws:
  its own resize is then an identity, so nothing is resampled twice. kitty and sixel get the full
  resolution of their cells (``cells x cell pixels``), cut from the full-resolution film (up to
  :data:`SOURCE_MAX`), so zooming in shows real detail.
* **Grey levels.** Windowing is arithmetic on a float resample of the film (continuous ``center`` / ``width``,
  no 8-bit look-up table), so narrow windows do not band. In 256 colours rich turns a grey into one of the
  palette's 26 greys (``Color.downgrade``); :func:`quantise` dithers the half-cell picture onto exactly those
  levels with an 8x8 Bayer matrix first (and the CAM's colours onto the 6x6x6 cube), so the eye sees the
  steps between them. In truecolor the picture goes as it is.
* **Grad-CAM.** :func:`cam_tint` colours only where the map is high (the tint's weight ramps from 0 at
  :data:`CAM_LOW`), and only the chroma: the film's luminance, and so its structure, is kept under the colour.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image as PILImage
from rich.color import EIGHT_BIT_PALETTE, STANDARD_PALETTE, Color, ColorSystem
from textual import events
from textual.app import ComposeResult
from textual.containers import Container
from textual.widget import Widget
from textual.widgets import Static

# Imported here, before any App runs, on purpose: importing textual_image.widget asks the terminal for its
# cell size and graphics support. Asked while Textual owns the terminal, the late answer is read as key
# presses (a stray "?" opened the help screen in tmux tests).
from textual_image import widget as tiw
from textual_image._terminal import get_cell_size  # the cell size textual-image scales with (cached)
from textual_image.renderable.halfcell import Image as HalfcellRenderable
from textual_image.renderable.unicode import Image as UnicodeRenderable

from cxr_core.text import visible

SOURCE_MAX = 4096  # the film is kept at up to this many pixels on its long side (full resolution for X-rays)
ZOOM_STEP = 1.25  # one key press or one wheel notch
ZOOM_MAX = 16.0
PAN_STEP = 0.25  # of the visible extent, per key press

# Window presets on the 8-bit display scale (name, center, width): full range, lungs, mediastinum, bone.
WINDOWS: tuple[tuple[str, float, float], ...] = (("full", 128.0, 256.0), ("lung", 100.0, 150.0),
                                                 ("mediastinum", 150.0, 110.0), ("bone", 180.0, 120.0))
WIDTH_RANGE = (2.0, 512.0)
CENTER_RANGE = (-64.0, 320.0)

CAM_LOW = 0.35  # CAM values at or under this leave the film grey
CAM_HIGH = 0.85  # the tint reaches its full weight here
_CAM_COLD = np.array([1.0, 0.85, 0.0], dtype=np.float32)  # yellow where the map is just over CAM_LOW ...
_CAM_HOT = np.array([1.0, 0.05, 0.0], dtype=np.float32)  # ... red at its maximum
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# textual-image's rasters: pixels per cell are (1, 2) for half-cell blocks, (1, 1) for characters, the cell's
# pixel size for kitty and sixel.
HALFCELL, TEXT, PIXELS = "halfcell", "text", "pixels"


def image_widget_class(protocol: str) -> type[Widget]:
    """The textual-image widget class for ``auto | kitty | sixel | halfcell | unicode``."""
    classes = {"auto": tiw.Image, "kitty": tiw.TGPImage, "tgp": tiw.TGPImage, "sixel": tiw.SixelImage,
               "halfcell": tiw.HalfcellImage, "unicode": tiw.UnicodeImage}
    if protocol not in classes:
        raise ValueError(f"unknown image protocol {protocol!r} (choose from {', '.join(sorted(classes))})")
    return classes[protocol]


def raster_of(widget_class: type[Widget]) -> str:
    """How a textual-image widget class draws: :data:`HALFCELL`, :data:`TEXT` or :data:`PIXELS`."""
    if isinstance(widget_class, type) and issubclass(widget_class, tiw.SixelImage):
        return PIXELS
    renderable = getattr(widget_class, "_Renderable", None)
    if renderable is HalfcellRenderable:
        return HALFCELL
    if renderable is UnicodeRenderable:
        return TEXT
    return PIXELS


@dataclass(frozen=True)
class ViewState:
    center: float = WINDOWS[0][1]  # window level, on the 8-bit display scale
    width: float = WINDOWS[0][2]  # window width
    invert: bool = False
    zoom: float = 1.0  # 1 = the whole film fits
    cx: float = 0.5  # centre of the view, as a fraction of width / height
    cy: float = 0.5
    cam: bool = False
    alpha: float = 0.8  # the CAM tint's full weight

    @property
    def window_name(self) -> str:
        for name, center, width in WINDOWS:
            if abs(center - self.center) < 0.5 and abs(width - self.width) < 0.5:
                return name
        return f"W{self.width:.0f} L{self.center:.0f}"


# -- geometry -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Where the film goes: ``cells`` (w, h) of the image widget, the ``pixels`` (w, h) of the picture handed
    to textual-image, the ``box`` (left, top, right, bottom) of the film it shows, in film pixels."""

    cells: tuple[int, int]
    pixels: tuple[int, int]
    box: tuple[float, float, float, float]

    @property
    def visible(self) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return right - left, bottom - top


def pixels_per_cell(raster: str, cell: tuple[int, int]) -> tuple[int, int]:
    return {HALFCELL: (1, 2), TEXT: (1, 1)}.get(raster, (max(1, cell[0]), max(1, cell[1])))


def fit(film: tuple[int, int], area: tuple[int, int], cell: tuple[int, int], raster: str = HALFCELL,
        zoom: float = 1.0, cx: float = 0.5, cy: float = 0.5) -> Geometry:
    """The view of a ``film`` (w, h pixels) in an ``area`` (columns, rows) of cells ``cell`` (w, h) pixels big.

    At zoom 1 the whole film fits the area, its aspect kept to within a cell; zoomed, the film is ``zoom``
    times bigger and the view shows as much of it as the area holds, centred on (cx, cy) and kept inside it.
    """
    film_w, film_h = max(1, film[0]), max(1, film[1])
    cell_w, cell_h = max(1, cell[0]), max(1, cell[1])
    columns, rows = max(1, area[0]), max(1, area[1])
    scale = min(columns * cell_w / film_w, rows * cell_h / film_h) * max(1.0, zoom)  # screen px per film px
    visible_w = min(film_w, columns * cell_w / scale)
    visible_h = min(film_h, rows * cell_h / scale)
    width = int(np.clip(round(visible_w * scale / cell_w), 1, columns))
    height = int(np.clip(round(visible_h * scale / cell_h), 1, rows))
    left = float(np.clip(cx * film_w - visible_w / 2, 0, film_w - visible_w))
    top = float(np.clip(cy * film_h - visible_h / 2, 0, film_h - visible_h))
    per_w, per_h = pixels_per_cell(raster, cell)
    return Geometry((width, height), (width * per_w, height * per_h), (left, top, left + visible_w, top + visible_h))


# -- colours --------------------------------------------------------------------------------------------------------

_BAYER2 = np.array([[0, 2], [3, 1]])


def bayer(n: int = 8) -> np.ndarray:
    """The n x n ordered-dither thresholds, in (0, 1)."""
    matrix = _BAYER2
    while matrix.shape[0] < n:
        matrix = np.block([[4 * matrix, 4 * matrix + 2], [4 * matrix + 3, 4 * matrix + 1]])
    return ((matrix + 0.5) / matrix.size).astype(np.float32)


_THRESHOLDS = bayer(8)


@dataclass(frozen=True)
class Palette:
    """The greys a colour system shows (``shown``, ascending) and, for each, the grey value to hand rich so that
    its downgrade lands on it (``code``); ``cube`` likewise for colours (the 256-colour 6x6x6 cube's steps)."""

    shown: np.ndarray
    code: np.ndarray
    cube: np.ndarray | None = None


def _palette(system: ColorSystem) -> Palette:
    """Read off rich's own downgrade, so the levels are exactly the ones it emits."""
    table = EIGHT_BIT_PALETTE if system == ColorSystem.EIGHT_BIT else STANDARD_PALETTE
    best: dict[int, int] = {}  # shown grey -> the input grey closest to it that lands there
    for value in range(256):
        number = Color.from_rgb(value, value, value).downgrade(system).number
        red, green, blue = table[number]
        if red == green == blue and (red not in best or abs(value - red) < abs(best[red] - red)):
            best[red] = value
    shown = np.array(sorted(best), dtype=np.float32)
    code = np.array([best[int(level)] for level in shown], dtype=np.uint8)
    cube = np.array([0, 95, 135, 175, 215, 255], dtype=np.float32) if system == ColorSystem.EIGHT_BIT else None
    return Palette(shown, code, cube)


PALETTES = {"256": _palette(ColorSystem.EIGHT_BIT), "16": _palette(ColorSystem.STANDARD)}


def _dither(values: np.ndarray, levels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index into ``levels`` (ascending) for each value: the level under it, or the one over it where the
    value's place between them passes the threshold."""
    values = np.clip(values, levels[0], levels[-1])
    low = np.clip(np.searchsorted(levels, values, side="right") - 1, 0, len(levels) - 2)
    fraction = (values - levels[low]) / (levels[low + 1] - levels[low])
    return low + (fraction > thresholds)


def _thresholds(shape: tuple[int, int]) -> np.ndarray:
    reps = (-(-shape[0] // 8), -(-shape[1] // 8))
    return np.tile(_THRESHOLDS, reps)[: shape[0], : shape[1]]


def _lightness(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HLS lightness and saturation (0..1), as rich computes them to decide that a colour is a grey."""
    high, low = rgb.max(axis=2) / 255.0, rgb.min(axis=2) / 255.0
    lightness = (high + low) / 2
    spread = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        saturation = np.where(lightness <= 0.5, spread / (high + low), spread / (2.0 - high - low))
    return lightness, np.nan_to_num(saturation)


def quantise(rgb: np.ndarray, colors: str) -> np.ndarray:
    """``rgb`` (H, W, 3) float 0..255 as uint8 values that rich's downgrade to ``colors`` ("256" or "16")
    maps onto the palette levels an ordered dither chose: greys (rich's rule: HLS saturation under 15%) onto
    the grey ramp by their lightness, colours channel by channel onto the 256-colour cube (in 16 colours rich
    picks the nearest colour itself)."""
    palette = PALETTES[colors]
    thresholds = _thresholds(rgb.shape[:2])
    lightness, saturation = _lightness(rgb)
    grey = saturation < 0.15
    out = np.repeat(palette.code[_dither(lightness * 255.0, palette.shown, thresholds)][..., None], 3, axis=2)
    coloured = ~grey
    if coloured.any():
        if palette.cube is None:
            out[coloured] = np.clip(np.rint(rgb[coloured]), 0, 255).astype(np.uint8)
            return out
        cube = palette.cube.astype(np.uint8)
        picked = np.stack([cube[_dither(rgb[..., c], palette.cube, thresholds)] for c in range(3)], axis=2)
        flat = (picked[..., 0] == picked[..., 1]) & (picked[..., 1] == picked[..., 2])  # a cube grey: rich
        picked[flat] = palette.code[np.abs(palette.shown[:, None] - picked[flat][:, 0]).argmin(axis=0)][:, None]
        out[coloured] = picked[coloured]  # would send it down the grey ramp: hand it the ramp's nearest level
    return out


def cam_tint(grey: np.ndarray, cam: np.ndarray, strength: float = 0.8) -> np.ndarray:
    """The film ``grey`` (H, W, 0..255) with ``cam`` (H, W, 0..1) shown as colour where it is high: the tint
    weighs 0 up to :data:`CAM_LOW`, ``strength`` from :data:`CAM_HIGH`, yellow to red; only its chroma is added
    (as much as the RGB cube holds at that grey), so the film's luminance, its structure, stays. (H, W, 3)
    float."""
    cam = np.nan_to_num(cam.astype(np.float32))
    ramp = np.clip((cam - CAM_LOW) / (CAM_HIGH - CAM_LOW), 0.0, 1.0)
    weight = strength * ramp * ramp * (3 - 2 * ramp)  # smoothstep: no edge where the tint starts
    heat = np.clip((cam - CAM_LOW) / (1.0 - CAM_LOW), 0.0, 1.0)[..., None]
    tint = _CAM_COLD * (1 - heat) + _CAM_HOT * heat
    chroma = (tint - (tint @ _LUMA)[..., None]) * (weight[..., None] * 255.0)
    # As much of the chroma as fits the RGB cube at this grey: near black or white the colour fades, the
    # luminance never moves.
    base = grey[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(chroma > 0, (255.0 - base) / chroma, np.where(chroma < 0, base / -chroma, np.inf))
    fits = np.clip(np.nan_to_num(room.min(axis=2), posinf=1.0), 0.0, 1.0)
    return base + fits[..., None] * chroma


def render(film: PILImage.Image, state: ViewState, geometry: Geometry, cam: PILImage.Image | None = None,
           colors: str | None = None) -> PILImage.Image:
    """The picture for ``geometry``: the film (mode F) resampled to its pixels, windowed, inverted, the CAM
    (mode F, any size) tinted over it, dithered for ``colors`` ("256" / "16"; None or "truecolor": as is)."""
    size, box = geometry.pixels, geometry.box
    shown = np.asarray(film.resize(size, PILImage.Resampling.LANCZOS, box=box, reducing_gap=2.0), dtype=np.float32)
    low = state.center - state.width / 2
    shown = np.clip((shown - low) * (255.0 / max(state.width, 1e-3)), 0.0, 255.0)
    if state.invert:
        shown = 255.0 - shown
    if state.cam and cam is not None:
        sx, sy = cam.width / film.width, cam.height / film.height
        cam_box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        heat = np.asarray(cam.resize(size, PILImage.Resampling.BILINEAR, box=cam_box, reducing_gap=2.0))
        rgb = np.clip(cam_tint(shown, heat, state.alpha), 0.0, 255.0)
    else:
        rgb = np.repeat(shown[..., None], 3, axis=2)
    if colors in PALETTES:
        out = quantise(rgb, colors)
    else:
        out = np.rint(rgb).astype(np.uint8)
    return PILImage.fromarray(np.ascontiguousarray(out), mode="RGB")


def film_image(pixels: np.ndarray) -> PILImage.Image:
    """The film as a float (mode F) image, 0..255, at most :data:`SOURCE_MAX` on its long side."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = np.clip(np.nan_to_num(array.astype(np.float32)), 0, 255)
    image = PILImage.fromarray(np.ascontiguousarray(array)).convert("F")
    long_side = max(image.size)
    if long_side > SOURCE_MAX:
        scale = SOURCE_MAX / long_side
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=2.0)
    return image


def cam_is_empty(cam: np.ndarray) -> bool:
    """cxr_core.infer.cam_is_empty's rule (nothing over 0), without importing torch into the widget."""
    return not bool(np.any(np.nan_to_num(np.asarray(cam, dtype=np.float32)) > 0.0))


def _cam_image(cam: np.ndarray) -> PILImage.Image:
    heat = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    return PILImage.fromarray(np.ascontiguousarray(heat), mode="F")


_COLOR_NAMES = {"truecolor": "truecolor", "256": "256", "standard": "16", "windows": "16"}


class XRayView(Container):
    """Shows one film: ``show(pixels)``, ``set_cam(map)``; the view methods below change what is drawn.

    For the study screen to bind: :meth:`zoom_in` / :meth:`zoom_out` / :meth:`reset_view`, :meth:`pan`,
    :meth:`adjust_window` (continuous width / level), :meth:`next_window` (presets), :meth:`toggle_invert`,
    :meth:`toggle_cam`, :meth:`toggle_fullscreen`. The mouse works on the film itself: the wheel zooms at the
    pointer, a left drag pans, a right drag changes the window (across: width, down: level).
    """

    ALLOW_MAXIMIZE = True  # full-screen mode is Textual's maximized view (escape restores it)

    DEFAULT_CSS = """
    XRayView { height: 1fr; width: 1fr; align: center middle; }
    XRayView > #xray-caption { dock: bottom; height: 1; width: 1fr; color: $text-muted; }
    XRayView > #xray-placeholder { width: 1fr; height: 1fr; content-align: center middle; color: $text-muted; }
    """

    def __init__(self, protocol: str = "auto", *, color_system: str | None = None, **kwargs) -> None:
        """``color_system``: "truecolor", "256" or "16" to prepare the picture for; default: the app's."""
        super().__init__(**kwargs)
        self._image_class = image_widget_class(protocol)
        self.raster = raster_of(self._image_class)
        self.color_system = color_system
        self.state = ViewState()
        self._film: PILImage.Image | None = None
        self._cam: np.ndarray | None = None
        self._cam_image: PILImage.Image | None = None
        self._cam_label = ""
        self._cam_empty = False
        self.caption_extra = ""
        self.geometry: Geometry | None = None  # of the picture drawn last
        self.picture: PILImage.Image | None = None
        self._drawn_key: tuple | None = None
        self._version = 0  # bumped by show() and set_cam(): part of what says a picture is still current
        self._drag: tuple[int, int, int] | None = None  # (button, screen x, screen y) of a drag in progress

    def compose(self) -> ComposeResult:
        yield Static("loading image…", id="xray-placeholder", markup=False)
        yield Static("", id="xray-caption", markup=False)

    # -- content ------------------------------------------------------------------------------------------------

    def show(self, pixels: np.ndarray | None, message: str = "") -> None:
        self._film = None if pixels is None else film_image(pixels)
        self._cam = self._cam_image = None
        self._version += 1
        self.state = replace(self.state, zoom=1.0, cx=0.5, cy=0.5)
        if self._film is None:
            self._placeholder(message or "no image")
            return
        self._draw()

    def set_cam(self, cam: np.ndarray | None, label: str = "") -> None:
        self._cam, self._cam_label = cam, label
        self._cam_image = None if cam is None else _cam_image(cam)
        self._cam_empty = cam is not None and cam_is_empty(cam)
        self._version += 1
        self._draw()

    @property
    def has_cam(self) -> bool:
        return self._cam is not None

    @property
    def film_size(self) -> tuple[int, int] | None:
        """(width, height) of the film as kept (full resolution up to SOURCE_MAX)."""
        return None if self._film is None else self._film.size

    @property
    def colors(self) -> str:
        """The colour system the picture is prepared for: "truecolor", "256" or "16"."""
        if self.color_system:
            return self.color_system
        try:
            name = self.app.console.color_system
        except Exception:  # noqa: BLE001 - no app yet: nothing is drawn anyway
            name = None
        return _COLOR_NAMES.get(name or "truecolor", "truecolor")

    def update_state(self, **changes) -> None:
        self.state = replace(self.state, **changes)
        self._draw()

    def _placeholder(self, text: str) -> None:
        for old in self.query(".xray-image"):
            old.remove()
        self.geometry = self.picture = self._drawn_key = None
        placeholder = self.query_one("#xray-placeholder", Static)
        placeholder.display = True
        placeholder.update(visible(text, lines=True))

    def _area(self) -> tuple[int, int]:
        caption = self.query_one("#xray-caption", Static)
        return self.content_size.width, self.content_size.height - (caption.outer_size.height or 1)

    def _layout_geometry(self, state: ViewState) -> Geometry | None:
        if self._film is None:
            return None
        columns, rows = self._area()
        if columns <= 0 or rows <= 0:
            return None
        return fit(self._film.size, (columns, rows), tuple(get_cell_size()), self.raster, state.zoom, state.cx,
                   state.cy)

    def _draw(self) -> None:
        if self._film is None or not self.is_mounted:
            return
        geometry = self._layout_geometry(self.state)
        if geometry is None:  # not laid out yet
            self.call_after_refresh(self._draw_if_laid_out)
            return
        film_w, film_h = self._film.size
        left, top, right, bottom = geometry.box
        self.state = replace(self.state, cx=(left + right) / 2 / film_w, cy=(top + bottom) / 2 / film_h)
        colors = self.colors if self.raster == HALFCELL else "truecolor"  # kitty / sixel / text: not rich's colours
        key = (self._version, self.state, geometry, colors)
        if key != self._drawn_key:
            self.picture = render(self._film, self.state, geometry, self._cam_image, colors)
            self.geometry, self._drawn_key = geometry, key
            existing = list(self.query(".xray-image"))
            if existing:
                image = existing[0]
                image.styles.width, image.styles.height = geometry.cells
                image.image = self.picture
            else:
                self.query_one("#xray-placeholder", Static).display = False
                image = self._image_class(self.picture, classes="xray-image")
                image.styles.width, image.styles.height = geometry.cells
                self.mount(image, before="#xray-caption")
        self._caption()

    def _draw_if_laid_out(self) -> None:
        if self._layout_geometry(self.state) is not None:
            self._draw()

    def _caption(self) -> None:
        parts = [f"window {self.state.window_name}"]
        if self.state.invert:
            parts.append("inverted")
        if self.state.zoom > 1.001:
            parts.append(f"zoom {self.state.zoom:.2f}×")
        if self.state.cam:
            if self._cam is None:
                parts.append("CAM computing…")
            else:
                parts.append(f"CAM {self._cam_label}" + (" empty (nothing raises this score)"
                                                         if self._cam_empty else ""))
        if self.caption_extra:
            parts.append(self.caption_extra)
        self.query_one("#xray-caption", Static).update(visible(" · ".join(parts)))

    def on_resize(self, event: events.Resize) -> None:
        self._draw()

    # -- view methods (the study screen binds keys to these) ----------------------------------------------------

    def zoom(self, factor: float, at: tuple[float, float] | None = None) -> None:
        """Zoom by ``factor`` (1 to :data:`ZOOM_MAX`). ``at``: a point on the screen (cells, e.g. the mouse's)
        whose part of the film stays under it; default: the centre of the view stays."""
        zoom = float(np.clip(self.state.zoom * factor, 1.0, ZOOM_MAX))
        if abs(zoom - 1.0) < 1e-3:
            zoom = 1.0
        changes: dict[str, float] = {"zoom": zoom}
        after = self._layout_geometry(replace(self.state, zoom=zoom))
        if at is not None and after is not None and self.geometry is not None and self._film is not None:
            film_w, film_h = self._film.size
            left, top, right, bottom = self.geometry.box
            # The film point under ``at`` now ...
            x, y = self._placement(self.geometry)
            point_x = left + (at[0] - x) / self.geometry.cells[0] * (right - left)
            point_y = top + (at[1] - y) / self.geometry.cells[1] * (bottom - top)
            # ... and where the new picture will be.
            x, y = self._placement(after)
            visible_w, visible_h = after.visible
            new_left = point_x - (at[0] - x) / after.cells[0] * visible_w
            new_top = point_y - (at[1] - y) / after.cells[1] * visible_h
            changes["cx"] = (new_left + visible_w / 2) / film_w
            changes["cy"] = (new_top + visible_h / 2) / film_h
        self.update_state(**changes)

    def _placement(self, geometry: Geometry) -> tuple[int, int]:
        """Where (screen cells) a picture of ``geometry`` sits: centred in the area above the caption."""
        columns, rows = self._area()
        origin = self.content_region.offset
        return origin.x + (columns - geometry.cells[0]) // 2, origin.y + (rows - geometry.cells[1]) // 2

    def zoom_in(self, at: tuple[float, float] | None = None) -> None:
        self.zoom(ZOOM_STEP, at)

    def zoom_out(self, at: tuple[float, float] | None = None) -> None:
        self.zoom(1 / ZOOM_STEP, at)

    def reset_view(self) -> None:
        """The whole film again (zoom 1, centred); the window stays."""
        self.update_state(zoom=1.0, cx=0.5, cy=0.5)

    def pan(self, dx: float, dy: float) -> None:
        """Move the view by ``dx`` / ``dy`` steps of a quarter of what is visible."""
        self._move(dx * PAN_STEP, dy * PAN_STEP)

    def _move(self, fx: float, fy: float) -> None:
        """Move by fractions of the visible extent."""
        if self._film is None:
            return
        film_w, film_h = self._film.size
        visible_w, visible_h = self.geometry.visible if self.geometry else (film_w / self.state.zoom,
                                                                            film_h / self.state.zoom)
        self.update_state(cx=float(np.clip(self.state.cx + fx * visible_w / film_w, 0, 1)),
                          cy=float(np.clip(self.state.cy + fy * visible_h / film_h, 0, 1)))

    def set_window(self, center: float, width: float) -> None:
        self.update_state(center=float(np.clip(center, *CENTER_RANGE)), width=float(np.clip(width, *WIDTH_RANGE)))

    def adjust_window(self, d_width: float = 0.0, d_level: float = 0.0) -> None:
        """Widen (``d_width`` > 0) or narrow the window, raise (``d_level`` > 0) or lower its level, in steps of
        the 8-bit display scale; any values, not only the presets."""
        self.set_window(self.state.center + d_level, self.state.width + d_width)

    def next_window(self) -> None:
        """The next preset (full, lung, mediastinum, bone)."""
        names = [name for name, _, _ in WINDOWS]
        current = self.state.window_name
        index = (names.index(current) + 1) % len(WINDOWS) if current in names else 0
        _, center, width = WINDOWS[index]
        self.update_state(center=center, width=width)

    def toggle_invert(self) -> None:
        self.update_state(invert=not self.state.invert)

    def toggle_cam(self) -> bool:
        self.update_state(cam=not self.state.cam)
        return self.state.cam

    @property
    def fullscreen(self) -> bool:
        try:
            return self.screen.maximized is self
        except Exception:  # noqa: BLE001 - not on a screen
            return False

    def toggle_fullscreen(self) -> bool:
        """The film alone on the screen (Textual's maximized view: the footer stays, escape restores), or back."""
        if self.fullscreen:
            self.screen.minimize()
        else:
            self.screen.maximize(self, container=False)
        return self.fullscreen

    # -- the mouse ------------------------------------------------------------------------------------------------

    @staticmethod
    def _pointer(event: events.MouseEvent) -> tuple[float, float]:
        return event.screen_x + 0.5, event.screen_y + 0.5  # the middle of the cell under the pointer

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.zoom_in(self._pointer(event))

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.zoom_out(self._pointer(event))

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if self._film is None or event.button not in (1, 3):
            return
        event.stop()
        self._drag = (event.button, event.screen_x, event.screen_y)
        self.capture_mouse()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if self._drag is None:
            return
        button, x0, y0 = self._drag
        dx, dy = event.screen_x - x0, event.screen_y - y0
        if not (dx or dy):
            return
        event.stop()
        self._drag = (button, event.screen_x, event.screen_y)
        if button == 3:
            self.adjust_window(d_width=2.0 * dx, d_level=-4.0 * dy)
        elif self.geometry is not None:
            columns, rows = self.geometry.cells
            self._move(-dx / columns, -dy / rows)

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self._drag is not None:
            event.stop()
            self._drag = None
            self.release_mouse()
