"""The best film each terminal can show (issue 13): truecolor where it can, a dithered grey ramp in 256 colours,
a Grad-CAM tint that leaves the film grey where the map is low, the film's aspect at any size, fine zoom steps,
continuous window / level, the mouse, full screen, kitty at full resolution.

Pilot's terminal cannot show pictures, so the half-cell film is read as Textual writes it: each cell's
foreground (the upper pixel) and background (the lower) downgraded to the app's colour system as
``Strip.render_ansi`` does: what the compositor sends to the terminal. The last test runs the real thing in tmux.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.color import EIGHT_BIT_PALETTE
from textual import events
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.geometry import Region
from textual.widgets import Footer, Header, Static
from textual_image._terminal import get_cell_size

from cxr_tui.terminal import ColorSupport, apply_color_system
from cxr_tui.widgets.xray import CAM_LOW, WINDOWS, ZOOM_MAX, ZOOM_STEP, XRayView, render

RAMP = {16, 231, *range(232, 256)}  # the 256-colour palette's greys (what rich turns a grey into)


class FilmApp(App):
    """The study screen's layout: the film left of a 52-column side panel, header and footer."""

    CSS = "#side { width: 52; } #body { height: 1fr; }"

    def __init__(self, protocol: str = "halfcell", side: bool = True):
        super().__init__()
        self.protocol, self.side = protocol, side

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            yield XRayView(self.protocol, id="film")
            if self.side:
                yield Static("findings", id="side")
        yield Footer()


@pytest.fixture
def colors(monkeypatch):
    """Set the colour system the next App draws in, as `cxr-tui --color` does (restored afterwards)."""
    import textual.constants

    monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", textual.constants.COLOR_SYSTEM)
    for name in ("TEXTUAL_COLOR_SYSTEM", "COLORTERM"):
        monkeypatch.setenv(name, os.environ.get(name, ""))

    def use(system: str) -> None:
        apply_color_system(ColorSupport(system, "test"))

    return use


def chest(height: int = 400, width: int = 320) -> np.ndarray:
    """A film-like picture: smooth tones from dark to bright, ribs (fine structure), a bright spine."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    tone = 40 + 180 * (y / height) * (0.6 + 0.4 * np.cos((x / width - 0.5) * np.pi))
    ribs = 18 * np.sin(y / 9.0 + 0.02 * (x - width / 2) ** 2 / width * 6)
    spine = 60 * np.exp(-((x - width / 2) / (width * 0.05)) ** 2)
    return np.clip(tone + ribs + spine, 0, 255).astype(np.uint8)


async def shown(app: FilmApp, pilot, pixels: np.ndarray) -> XRayView:
    view = app.query_one(XRayView)
    view.show(pixels)
    await pilot.pause()
    await pilot.pause(0.05)
    return view


def image_of(app: App):
    return app.query_one(".xray-image")


_SGR_COLOR = re.compile(r"(?:^|;)([34])8;(2;\d+;\d+;\d+|5;\d+)")


def drawn(app: App) -> list[list[str]]:
    """The half-cell film as the terminal gets it: one colour code ("2;r;g;b" or "5;n") per picture pixel, rows
    of pixels (two per cell row: foreground above, background below)."""
    widget = image_of(app)
    system = app.console._color_system
    rows: list[list[str]] = []
    for strip in widget.render_lines(Region(0, 0, *widget.size)):
        upper: list[str] = []
        lower: list[str] = []
        for segment in strip:
            if segment.style is None or not segment.text.strip():
                continue
            # What Strip.render_ansi writes for the style (called without it: it caches the codes on the style).
            fg = ";".join(segment.style.color.downgrade(system).get_ansi_codes())
            bg = ";".join(segment.style.bgcolor.downgrade(system).get_ansi_codes(False))
            codes = dict(_SGR_COLOR.findall(f"{fg};{bg}"))
            upper.append(codes["3"])
            lower.append(codes["4"])
        rows += [upper, lower]
    return rows


def shown_grey(code: str) -> int:
    """The grey the terminal shows for a 256-colour code "5;n"."""
    return EIGHT_BIT_PALETTE[int(code.split(";")[1])].red


# -- colours ------------------------------------------------------------------------------------------------------


async def test_truecolor_draws_the_film_in_24_bit(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        view = await shown(app, pilot, chest())
        assert app.console.color_system == "truecolor" and view.colors == "truecolor"
        codes = {code for row in drawn(app) for code in row}
        assert all(code.startswith("2;") for code in codes)
        assert len(codes) >= 100, len(codes)


async def test_256_colours_dither_the_film_onto_the_grey_ramp(colors):
    colors("256")
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        view = await shown(app, pilot, chest())
        assert app.console.color_system == "256" and view.colors == "256"
        rows = drawn(app)
        numbers = {int(code.split(";")[1]) for row in rows for code in row}
        assert all(code.startswith("5;") for row in rows for code in row)
        assert numbers <= RAMP and len(numbers) >= 20  # the ramp's levels, most of them
        # The dither keeps the tones between the palette's steps (10 apart): averaged over 8x8 pixels the shown
        # greys follow the film far better than the nearest level alone could.
        shown_levels = np.array([[shown_grey(code) for code in row] for row in rows], dtype=np.float32)
        ideal = np.asarray(render(view._film, view.state, view.geometry, colors="truecolor"), dtype=np.float32)[..., 0]
        assert shown_levels.shape == ideal.shape

        def blocks(a):
            h, w = (a.shape[0] // 8) * 8, (a.shape[1] // 8) * 8
            return a[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))

        assert np.abs(blocks(shown_levels) - blocks(ideal)).mean() < 1.5
        levels = np.array(sorted(EIGHT_BIT_PALETTE[n].red for n in RAMP), dtype=np.float32)
        nearest = levels[np.abs(ideal[..., None] - levels).argmin(axis=2)]
        assert np.abs(blocks(shown_levels) - blocks(ideal)).mean() < np.abs(blocks(nearest) - blocks(ideal)).mean()


async def test_a_flat_grey_between_two_levels_is_a_mix_of_exactly_those_two(colors):
    colors("256")
    app = FilmApp(side=False)
    async with app.run_test(size=(60, 30)) as pilot:
        view = await shown(app, pilot, np.full((200, 200), 113, np.uint8))
        view.set_window(127.5, 255.0)  # the display value is the film's: 113, between the levels 108 and 118
        await pilot.pause()
        greys = np.array([shown_grey(code) for row in drawn(app) for code in row])
        assert set(greys) == {108, 118} and abs(greys.mean() - 113) < 0.5


def cam_top_left(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cam = np.exp(-(((x - width * 0.3) / (width * 0.15)) ** 2 + ((y - height * 0.25) / (height * 0.12)) ** 2))
    cam[height // 2:] = 0.0
    return (cam / cam.max()).astype(np.float32)


@pytest.mark.parametrize("system", ["256", "truecolor"])
async def test_the_cam_colours_only_where_it_is_high(colors, system):
    colors(system)
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        film = chest()
        view = await shown(app, pilot, film)
        view.set_cam(cam_top_left(*film.shape), "Nodule")
        view.update_state(cam=True)
        await pilot.pause()
        rows = drawn(app)
        heat = np.asarray(view._cam_image.resize(view.geometry.pixels, box=view.geometry.box))
        assert heat.shape == (len(rows), len(rows[0]))

        def grey(code: str) -> bool:
            if system == "256":
                return int(code.split(";")[1]) in RAMP
            _, r, g, b = code.split(";")
            return r == g == b

        low = [grey(code) for row, cams in zip(rows, heat, strict=True) for code, cam in zip(row, cams, strict=True) if cam <= CAM_LOW]
        high = [grey(code) for row, cams in zip(rows, heat, strict=True) for code, cam in zip(row, cams, strict=True) if cam > 0.8]
        assert low and all(low)  # no hue where the map is low: the film stays grey
        assert high and sum(not g for g in high) > 0.8 * len(high)  # coloured where it is high


def test_the_film_s_structure_stays_under_the_cam():
    from cxr_tui.widgets.xray import ViewState, film_image, fit

    film = chest()
    cam = np.ones(film.shape, np.float32)  # the whole film at the map's maximum
    state = ViewState(cam=True)
    geometry = fit((film.shape[1], film.shape[0]), (70, 40), (10, 20))
    plain = np.asarray(render(film_image(film), state, geometry), dtype=np.float32)[..., 0]
    tinted = np.asarray(render(film_image(film), state, geometry, film_image(cam)), dtype=np.float32)
    luma = tinted @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert (tinted[..., 0] - tinted[..., 2]).mean() > 40  # it is coloured ...
    assert np.corrcoef(luma.ravel(), plain.ravel())[0, 1] > 0.99  # ... and the film's luminance is all there
    assert np.abs(luma - plain).mean() < 3


# -- size and aspect ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (140, 45)])
@pytest.mark.parametrize("film_shape", [(400, 320), (512, 512), (300, 420)])
async def test_the_film_keeps_its_aspect_to_within_a_cell(colors, size, film_shape):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=size) as pilot:
        view = await shown(app, pilot, chest(*film_shape))
        image = image_of(app)
        columns, rows = image.size
        cell_w, cell_h = get_cell_size()
        film_h, film_w = film_shape
        ideal_columns = rows * cell_h * film_w / film_h / cell_w  # for the rows drawn
        ideal_rows = columns * cell_w * film_h / film_w / cell_h  # for the columns drawn
        assert abs(columns - ideal_columns) <= 1 or abs(rows - ideal_rows) <= 1, (columns, rows)
        area_columns, area_rows = view._area()
        assert columns <= area_columns and rows <= area_rows
        assert columns >= area_columns - 1 or rows >= area_rows - 1  # as big as the space allows
        # The picture handed to textual-image is the size it draws (a half-cell pixel is 1x2 of a cell), so it
        # is not resampled again.
        assert view.picture.size == (columns, 2 * rows)


async def test_at_80x24_a_square_film_is_not_stretched(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await shown(app, pilot, chest(512, 512))
        columns, rows = image_of(app).size
        cell_w, cell_h = get_cell_size()
        assert abs(columns * cell_w / (rows * cell_h) - 1.0) < 1.0 / min(columns, rows) + 0.05


async def test_kitty_gets_full_resolution_cut_from_the_full_film(colors, capfd):
    colors("truecolor")
    app = FilmApp("kitty")
    async with app.run_test(size=(140, 45)) as pilot:
        film = np.full((2400, 2000), 120, np.uint8)
        film[1200:1216, 1000:1016] = np.indices((16, 16)).sum(axis=0) % 2 * 255  # a 1-pixel checker
        view = await shown(app, pilot, film)
        assert view.film_size == (2000, 2400)  # kept at full resolution, not 768
        cell_w, cell_h = get_cell_size()
        columns, rows = image_of(app).size
        assert view.picture.size == (columns * cell_w, rows * cell_h)
        view.zoom(ZOOM_MAX)
        await pilot.pause()
        left, top, right, bottom = view.geometry.box
        assert left <= 1000 and right >= 1016 and top <= 1200 and bottom >= 1216
        picture = np.asarray(view.picture.convert("L"), dtype=np.float32)
        x0 = round((1000 - left) / (right - left) * picture.shape[1])
        y0 = round((1200 - top) / (bottom - top) * picture.shape[0])
        patch = picture[y0 + 10:y0 + 100, x0 + 10:x0 + 100]
        assert patch.std() > 40  # a film pixel is ~5 screen pixels wide: the checker is resolved (at 768: grey)
        capfd.readouterr()  # the kitty graphics written to the terminal


# -- zoom, pan, window / level, mouse, full screen ------------------------------------------------------------------


async def test_zoom_steps_are_fine(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        view = await shown(app, pilot, chest(800, 640))
        assert ZOOM_STEP == 1.25
        widths = [view.geometry.visible[0]]
        for _ in range(6):
            view.zoom_in()
            await pilot.pause()
            widths.append(view.geometry.visible[0])
        assert view.state.zoom == pytest.approx(1.25 ** 6)
        ratios = [a / b for a, b in zip(widths[:-1], widths[1:], strict=True)]
        assert all(1.0 <= r <= 1.26 for r in ratios) and ratios[-1] == pytest.approx(1.25, rel=0.01)
        assert "zoom 3.81×" in str(app.query_one("#xray-caption", Static).render())
        for _ in range(6):
            view.zoom_out()
        assert view.state.zoom == 1.0
        view.zoom_out()
        assert view.state.zoom == 1.0  # never smaller than the whole film
        for _ in range(40):
            view.zoom_in()
        assert view.state.zoom == ZOOM_MAX
        view.reset_view()
        assert (view.state.zoom, view.state.cx, view.state.cy) == (1.0, 0.5, 0.5)


async def test_pan_stays_on_the_film(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        view = await shown(app, pilot, chest(800, 640))
        view.zoom(4)
        await pilot.pause()
        for _ in range(20):
            view.pan(-1, -1)
        assert view.geometry.box[:2] == (0.0, 0.0)
        view.pan(1, 0)
        assert view.geometry.box[0] == pytest.approx(0.25 * view.geometry.visible[0])


async def test_window_and_level_are_continuous(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        view = await shown(app, pilot, chest())
        before = np.asarray(view.picture, dtype=np.float32)
        view.adjust_window(d_width=-56, d_level=7)
        await pilot.pause()
        assert (view.state.width, view.state.center) == (200.0, 135.0)
        assert view.state.window_name == "W200 L135"
        assert "window W200 L135" in str(app.query_one("#xray-caption", Static).render())
        after = np.asarray(view.picture, dtype=np.float32)
        assert after.std() > before.std()  # a narrower window: more contrast
        view.adjust_window(d_width=-1000)
        assert view.state.width == 2.0  # never zero
        view.next_window()
        assert view.state.window_name == "full"
        view.next_window()
        assert (view.state.window_name, view.state.center, view.state.width) == ("lung", *WINDOWS[1][1:])


def _mouse(cls, x: int, y: int, button: int = 0):
    return cls(None, x, y, 0, 0, button, False, False, False, screen_x=x, screen_y=y)


async def test_the_wheel_zooms_at_the_pointer(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        view = await shown(app, pilot, chest(800, 640))
        view.zoom(2)  # the film fills the area (while it is narrower, it stays centred and grows about its centre)
        await pilot.pause()
        region = image_of(app).region
        x, y = region.x + region.width // 4, region.y + region.height // 4

        def film_point():
            g, r = view.geometry, image_of(app).region
            fx, fy = (x - r.x + 0.5) / r.width, (y - r.y + 0.5) / r.height
            return g.box[0] + fx * (g.box[2] - g.box[0]), g.box[1] + fy * (g.box[3] - g.box[1])

        before = film_point()
        for _ in range(3):
            app.post_message(_mouse(events.MouseScrollUp, x, y))
            await pilot.pause()
        assert view.state.zoom == pytest.approx(2 * 1.25 ** 3)
        after = film_point()
        film_per_cell = view.geometry.visible[0] / view.geometry.cells[0]
        assert abs(after[0] - before[0]) <= film_per_cell and abs(after[1] - before[1]) <= 2 * film_per_cell
        app.post_message(_mouse(events.MouseScrollDown, x, y))
        await pilot.pause()
        assert view.state.zoom == pytest.approx(2 * 1.25 ** 2)


async def test_dragging_pans_and_the_right_button_windows(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(140, 45)) as pilot:
        view = await shown(app, pilot, chest(800, 640))
        view.zoom(4)
        await pilot.pause()
        region = image_of(app).region
        x, y = region.x + region.width // 2, region.y + region.height // 2
        cx = view.state.cx
        app.post_message(_mouse(events.MouseDown, x, y, button=1))
        app.post_message(_mouse(events.MouseMove, x + 5, y, button=1))
        app.post_message(_mouse(events.MouseUp, x + 5, y, button=1))
        await pilot.pause()
        assert view.state.cx < cx  # the film follows the pointer to the right: the view moves left
        width = view.state.width
        app.post_message(_mouse(events.MouseDown, x, y, button=3))
        app.post_message(_mouse(events.MouseMove, x - 10, y, button=3))
        app.post_message(_mouse(events.MouseUp, x - 10, y, button=3))
        await pilot.pause()
        assert view.state.width < width


async def test_full_screen_is_the_maximized_view(colors):
    colors("truecolor")
    app = FilmApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = await shown(app, pilot, chest(512, 512))
        small = image_of(app).size
        assert view.toggle_fullscreen() is True
        await pilot.pause()
        await pilot.pause(0.05)
        assert app.screen.maximized is view and view.fullscreen
        big = image_of(app).size
        assert big.width > small.width and big.height > small.height
        await pilot.press("escape")  # Textual's own way back
        await pilot.pause(0.05)
        assert not view.fullscreen and image_of(app).size == small
        view.toggle_fullscreen()
        view.toggle_fullscreen()
        assert not view.fullscreen


# -- the real terminal ----------------------------------------------------------------------------------------------

FILM_APP = """
import sys
import numpy as np
from cxr_tui.cli.open import choose_colors
choose_colors("auto")
from textual.app import App
from cxr_tui.widgets.xray import XRayView
y, x = np.mgrid[0:400, 0:320].astype(np.float32)
film = np.clip(40 + 180 * y / 400 + 18 * np.sin(y / 9.0) + 30 * np.cos(x / 40.0), 0, 255).astype(np.uint8)
class Film(App):
    def compose(self):
        yield XRayView("halfcell", id="film")
    def on_mount(self):
        self.query_one(XRayView).show(film)
        self.set_timer(0.5, lambda: self.notify("drawn"))
Film().run()
"""


def _tmux_colours(tmp_path: Path, env: dict[str, str], size: tuple[int, int]) -> tuple[set[str], set[str]]:
    script = tmp_path / "film_app.py"
    script.write_text(FILM_APP)
    session = f"cxr-film-{os.getpid()}-{size[0]}"
    settings = " ".join(f"{k}={v}" for k, v in env.items())
    command = f"env -u COLORTERM -u TEXTUAL_COLOR_SYSTEM -u CXR_COLOR -u COLUMNS -u LINES {settings} {sys.executable} {script}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), command],
                   check=True)
    try:
        deadline = time.monotonic() + 60
        pane = ""
        while time.monotonic() < deadline and "drawn" not in pane:
            time.sleep(0.3)
            pane = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        assert "drawn" in pane, pane
        escaped = subprocess.run(["tmux", "capture-pane", "-e", "-p", "-t", session], capture_output=True,
                                 text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    truecolor = set(re.findall(r"[34]8;2;(\d+;\d+;\d+)", escaped))
    palette = set(re.findall(r"[34]8;5;(\d+)", escaped))
    return truecolor, palette


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_in_tmux_256_colours_are_dithered_and_truecolor_is_used_when_known(tmp_path):
    truecolor, palette = _tmux_colours(tmp_path, {"TERM": "screen-256color"}, (80, 24))
    film_greys = {int(n) for n in palette} & set(range(232, 256))
    assert len(film_greys) >= 18 and not truecolor
    truecolor, _ = _tmux_colours(tmp_path, {"TERM": "screen-256color", "COLORTERM": "truecolor"}, (140, 45))
    assert len(truecolor) >= 100
