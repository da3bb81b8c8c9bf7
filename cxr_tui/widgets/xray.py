"""The X-ray, inline: window/level, invert, zoom and pan, with an optional Grad-CAM overlay.

Pixels are composed here (NumPy, a 256-entry look-up table for window/level and invert, a crop for zoom and
pan, the CAM blended with :func:`cxr_core.infer.cam.overlay`), then drawn by textual-image in whatever the
terminal speaks: kitty's graphics protocol, sixel, or half-cell blocks (plain tmux). The protocol is chosen
once per app (``--image-protocol``), because textual-image detects it before Textual takes the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.containers import Container
from textual.widget import Widget
from textual.widgets import Static

# Imported here, before any App runs, on purpose: importing textual_image.widget asks the terminal for its
# cell size and graphics support. Asked while Textual owns the terminal, the late answer is read as key
# presses (a stray "?" opened the help screen in tmux tests).
from textual_image import widget as tiw

from cxr_core.text import visible

DISPLAY_MAX = 768  # pixels kept for display: more than any terminal cell grid shows in a pane

# Window presets on the 8-bit display scale (center, width): full range, lungs, mediastinum / soft tissue.
WINDOWS: tuple[tuple[str, int, int], ...] = (("full", 128, 256), ("lung", 100, 150), ("mediastinum", 150, 110),
                                             ("bone", 180, 120))


def image_widget_class(protocol: str) -> type[Widget]:
    """The textual-image widget class for ``auto | kitty | sixel | halfcell | unicode``."""
    classes = {"auto": tiw.Image, "kitty": tiw.TGPImage, "tgp": tiw.TGPImage, "sixel": tiw.SixelImage,
               "halfcell": tiw.HalfcellImage, "unicode": tiw.UnicodeImage}
    if protocol not in classes:
        raise ValueError(f"unknown image protocol {protocol!r} (choose from {', '.join(sorted(classes))})")
    return classes[protocol]


@dataclass(frozen=True)
class ViewState:
    window: int = 0  # index into WINDOWS
    invert: bool = False
    zoom: float = 1.0  # 1 = the whole image
    cx: float = 0.5  # centre of the view, as a fraction of width / height
    cy: float = 0.5
    cam: bool = False
    alpha: float = 0.4


def display_pixels(pixels: np.ndarray) -> np.ndarray:
    """Downscale (never up) to at most DISPLAY_MAX on the long side, as uint8."""
    height, width = pixels.shape
    scale = DISPLAY_MAX / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(PILImage.fromarray(pixels).resize(size, PILImage.Resampling.BILINEAR))


def window_lut(center: int, width: int, invert: bool) -> np.ndarray:
    values = np.arange(256, dtype=np.float32)
    low = center - width / 2
    lut = np.clip((values - low) / max(width, 1) * 255.0, 0, 255)
    if invert:
        lut = 255 - lut
    return lut.astype(np.uint8)


def compose(pixels: np.ndarray, state: ViewState, cam: np.ndarray | None = None) -> PILImage.Image:
    """The picture the user sees: windowed, inverted, the CAM over it, cropped to the zoomed region."""
    _, center, width = WINDOWS[state.window % len(WINDOWS)]
    shown = window_lut(center, width, state.invert)[pixels]
    if state.cam and cam is not None:
        from cxr_core.infer import overlay

        rgb = overlay(shown, cam, alpha=state.alpha)
    else:
        rgb = np.repeat(shown[..., None], 3, axis=2)
    if state.zoom > 1.0:
        height, width_px = shown.shape
        h, w = max(8, round(height / state.zoom)), max(8, round(width_px / state.zoom))
        top = int(np.clip(round(state.cy * height - h / 2), 0, height - h))
        left = int(np.clip(round(state.cx * width_px - w / 2), 0, width_px - w))
        rgb = rgb[top:top + h, left:left + w]
    return PILImage.fromarray(np.ascontiguousarray(rgb))


class XRayView(Container):
    """Shows one image; ``show(pixels)``, ``set_cam(map)``, and the view actions change what is drawn."""

    DEFAULT_CSS = """
    XRayView { height: 1fr; width: 1fr; align: center middle; }
    XRayView > .xray-image { width: auto; height: 1fr; }
    XRayView > #xray-caption { dock: bottom; height: 1; width: 1fr; color: $text-muted; }
    XRayView > #xray-placeholder { width: 1fr; height: 1fr; content-align: center middle; color: $text-muted; }
    """

    def __init__(self, protocol: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self._image_class = image_widget_class(protocol)
        self.state = ViewState()
        self._pixels: np.ndarray | None = None
        self._cam: np.ndarray | None = None
        self._cam_label = ""
        self.caption_extra = ""

    def compose(self) -> ComposeResult:
        yield Static("loading image…", id="xray-placeholder", markup=False)
        yield Static("", id="xray-caption", markup=False)

    def show(self, pixels: np.ndarray | None, message: str = "") -> None:
        self._pixels = None if pixels is None else display_pixels(pixels)
        self._cam = None
        self.state = replace(self.state, zoom=1.0, cx=0.5, cy=0.5)
        if self._pixels is None:
            self._placeholder(message or "no image")
            return
        self._draw()

    def set_cam(self, cam: np.ndarray | None, label: str = "") -> None:
        self._cam, self._cam_label = cam, label
        self._draw()

    @property
    def has_cam(self) -> bool:
        return self._cam is not None

    def update_state(self, **changes) -> None:
        self.state = replace(self.state, **changes)
        self._draw()

    def _placeholder(self, text: str) -> None:
        for old in self.query(".xray-image"):
            old.remove()
        placeholder = self.query_one("#xray-placeholder", Static)
        placeholder.display = True
        placeholder.update(visible(text, lines=True))

    def _draw(self) -> None:
        if self._pixels is None:
            return
        picture = compose(self._pixels, self.state, self._cam)
        existing = list(self.query(".xray-image"))
        if existing:
            existing[0].image = picture
        else:
            self.query_one("#xray-placeholder", Static).display = False
            self.mount(self._image_class(picture, classes="xray-image"), before="#xray-caption")
        name, _, _ = WINDOWS[self.state.window % len(WINDOWS)]
        parts = [f"window {name}"]
        if self.state.invert:
            parts.append("inverted")
        if self.state.zoom > 1:
            parts.append(f"zoom {self.state.zoom:g}×")
        if self.state.cam:
            if self._cam is None:
                parts.append("CAM computing…")
            else:
                from cxr_core.infer import cam_is_empty

                parts.append(f"CAM {self._cam_label}" + (" empty (nothing raises this score)"
                                                         if cam_is_empty(self._cam) else ""))
        if self.caption_extra:
            parts.append(self.caption_extra)
        self.query_one("#xray-caption", Static).update(visible(" · ".join(parts)))

    # -- view actions (the study screen binds keys to these) ------------------------------------------------

    def zoom(self, factor: float) -> None:
        self.update_state(zoom=float(np.clip(self.state.zoom * factor, 1.0, 8.0)))

    def pan(self, dx: float, dy: float) -> None:
        step = 0.25 / self.state.zoom
        self.update_state(cx=float(np.clip(self.state.cx + dx * step, 0, 1)),
                          cy=float(np.clip(self.state.cy + dy * step, 0, 1)))

    def next_window(self) -> None:
        self.update_state(window=(self.state.window + 1) % len(WINDOWS))

    def toggle_invert(self) -> None:
        self.update_state(invert=not self.state.invert)

    def toggle_cam(self) -> bool:
        self.update_state(cam=not self.state.cam)
        return self.state.cam
