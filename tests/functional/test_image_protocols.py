"""The X-ray in kitty's graphics protocol and in sixel, not only in half-cell blocks (what tmux shows).

Pilot's headless terminal cannot display either, so these tests read what the widgets emit: for kitty,
the PNG transmitted with ``ESC _ G`` and the Unicode placeholder cells that place it (textual-image uses
kitty's placeholder mode, which survives Textual's compositor); for sixel, the ``ESC P ... q`` data
stream with its raster size. Both must carry the picture the viewer composed, at the widget's size.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image
from textual.app import App, ComposeResult
from textual.geometry import Region

from cxr_tui.widgets.xray import XRayView, image_widget_class

SIZE = (60, 30)
PLACEHOLDER = "\U0010eeee"  # kitty's Unicode placeholder for an image cell


class Viewer(App):
    def __init__(self, protocol: str):
        super().__init__()
        self.protocol = protocol

    def compose(self) -> ComposeResult:
        yield XRayView(self.protocol, id="xray")


def _picture() -> np.ndarray:
    """A portrait film-like ramp: dark at the top, bright at the bottom (so orientation is checkable)."""
    return np.repeat(np.linspace(0, 255, 320).astype(np.uint8)[:, None], 256, axis=1)


async def _shown(protocol: str):
    app = Viewer(protocol)
    async with app.run_test(size=SIZE) as pilot:
        app.query_one("#xray", XRayView).show(_picture())
        await pilot.pause()
        await pilot.pause(0.2)
        image = app.query_one(".xray-image")
        parts = [image, *image.walk_children()]
        lines = {type(w).__name__: "".join(seg.text for strip in w.render_lines(Region(0, 0, *w.size)) for seg in strip)
                 for w in parts}
        return type(image), image.size, lines


@pytest.mark.asyncio
async def test_kitty_transmits_the_composed_png_and_places_it_with_placeholders(capfd):
    kind, size, lines = await _shown("kitty")
    assert kind is image_widget_class("kitty")
    out = capfd.readouterr().out
    chunks = re.findall(r"\x1b_G([^;\x1b]*);?([^\x1b]*)\x1b\\", out)  # control[;payload]
    transmit = [payload for control, payload in chunks if "f=100" in control]  # f=100: PNG data
    assert transmit, "no kitty graphics transmission was written"
    png = Image.open(io.BytesIO(base64.b64decode("".join(transmit))))
    pixels = np.asarray(png.convert("L"), dtype=np.float32)
    assert pixels[: len(pixels) // 10].mean() < 60 < 200 < pixels[-len(pixels) // 10:].mean()  # upright ramp
    placement = next(control for control, _ in chunks if "a=p" in control)
    assert f"c={size.width}" in placement or f"r={size.height}" in placement
    cells = lines[kind.__name__]
    assert cells.count(PLACEHOLDER) == size.width * size.height  # every cell of the widget shows the image


@pytest.mark.asyncio
async def test_sixel_streams_the_picture_at_the_widget_size():
    kind, size, lines = await _shown("sixel")
    assert kind is image_widget_class("sixel")
    stream = next(text for text in lines.values() if "\x1bP" in text)
    header = re.search(r"\x1bP[0-9;]*q\"1;1;(\d+);(\d+)", stream)
    assert header, "no sixel raster header"
    width, height = int(header.group(1)), int(header.group(2))
    assert width > 0 and height > 0 and abs(height / width - 320 / 256) < 0.15  # the portrait aspect kept
    assert "\x1b\\" in stream[header.end():]  # the DCS string is terminated
    assert len(re.findall(r"#\d+;2;", stream)) > 8  # a grey ramp needs many palette entries


_PROBE = """
import sys
from cxr_tui.image_support import prepare
prepare(sys.argv[1])
import cxr_tui.widgets.xray
"""


def _bytes_written_to_a_terminal(protocol: str) -> bytes:
    """What importing the image widgets for ``protocol`` writes to a terminal (a pty), before any app runs."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios
    import time

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120x40 terminal
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, protocol], stdin=follower, stdout=follower,
                            stderr=subprocess.PIPE)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([leader], [], [], 0.1)[0]:
            try:
                out += os.read(leader, 4096)
            except OSError:
                break
    proc.wait(timeout=10)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read().decode()
    return out


@pytest.mark.slow
def test_a_named_protocol_asks_the_terminal_no_graphics_question():
    # tmux showed textual-image's kitty query as the pane's title (Gi=...;AAAA) under --image-protocol halfcell.
    assert b"\x1b_G" in _bytes_written_to_a_terminal("auto")  # auto detects: the kitty graphics query is sent
    quiet = _bytes_written_to_a_terminal("halfcell")
    assert b"\x1b_G" not in quiet and b"\x1b[c" not in quiet  # no kitty APC, no DA1 (sixel) query
