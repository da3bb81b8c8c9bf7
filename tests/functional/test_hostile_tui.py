"""Untrusted text through every screen: the hostile data set (tests/hostile.py) with a checkpoint whose class
names carry markup and escapes, in the app under Pilot (every screen's rendering searched for raw control
characters) and once in tmux with everything the app writes to the terminal captured by ``pipe-pane``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cxr_core.checkpoint import save_checkpoint
from cxr_core.models import create_model
from cxr_tui.app import CxrApp
from cxr_tui.screens.study import StudyScreen
from cxr_tui.screens.thresholds import ThresholdsScreen
from cxr_tui.screens.training import TrainingScreen
from tests.hostile import CHECKPOINT_LABELS, build_hostile_root, raw_controls
from tests.pilot import until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hostile-tui")
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=CHECKPOINT_LABELS, image_size=48)
    checkpoint = base / "model [old] \x1b[2J.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    return {"root": build_hostile_root(base, n=40), "checkpoint": checkpoint}


def assert_clean(app: CxrApp, where: str) -> None:
    """Nothing on the screen is a raw control character (the image is half-cell blocks: no escapes of its own)."""
    svg = app.export_screenshot()
    found = raw_controls(svg)
    assert not found, f"{where}: {found}"
    for entity in ("&#27;", "&#x1b;", "&#7;", "&#155;", "&#x9b;"):
        assert entity not in svg, f"{where}: {entity}"


async def test_every_screen_shows_hostile_text_as_text(world):
    app = CxrApp(world["root"], world["checkpoint"], image_protocol="halfcell", show_phi=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None, seconds=120)
        assert_clean(app, "worklist")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen))
        seen = set()
        for _ in range(len(app.workspace.studies)):  # every study, the DICOM one (with --show-phi) included
            study = app.screen

            def shown(study: StudyScreen = study) -> bool:
                return study.pixels is not None or "unreadable" in str(study.query_one("#study-info").render())

            await until(pilot, shown)
            assert_clean(app, f"study {study.study_id!r}")
            seen.add(study.study_id)
            await pilot.press("c")  # the Grad-CAM caption names the class
            await pilot.pause()
            assert_clean(app, f"study {study.study_id!r} with CAM")
            await pilot.press("c", "n")
        assert len(seen) == len(app.workspace.studies)
        dicom_info = [s for s in app.workspace.studies.values() if s.images and s.images[0].path.endswith(".dcm")]
        assert dicom_info  # the DICOM study was among them
        await pilot.press("escape", "t")
        await until(pilot, lambda: isinstance(app.screen, ThresholdsScreen))
        for _ in CHECKPOINT_LABELS:
            assert_clean(app, f"thresholds {app.screen.selected!r}")
            await pilot.press("j")
        await pilot.press("escape", "g")
        await until(pilot, lambda: isinstance(app.screen, TrainingScreen))
        assert_clean(app, "training")
        texts = [n.message for n in app._notifications]
        assert not any(raw_controls(t) for t in texts)


def test_show_phi_shows_a_bracketed_name_in_tmux(world, tmp_path, cxr_home):
    """Once in a real terminal: every byte the app writes goes through pipe-pane; no hostile sequence is in it."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = f"cxr-hostile-{os.getpid()}"
    raw = tmp_path / "terminal.bytes"
    command = (f"exec env -u COLUMNS -u LINES CXR_HOME={cxr_home} CXR_PSEUDONYM_KEY={'00' * 32} {sys.executable} -m cxr_tui "
               f"'{world['root']}' --model '{world['checkpoint']}' --image-protocol halfcell --show-phi")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "40", "sleep 600"], check=True)
    try:
        subprocess.run(["tmux", "pipe-pane", "-t", session, "-o", f"cat >> '{raw}'"], check=True)
        subprocess.run(["tmux", "respawn-pane", "-k", "-t", session, command], check=True)
        deadline = time.monotonic() + 120
        while b"computed" not in (raw.read_bytes() if raw.exists() else b"") and time.monotonic() < deadline:
            time.sleep(0.3)
        for key in ["Enter"] + ["n"] * 20 + ["Escape", "t", "j", "j", "Escape", "g", "Escape", "q"]:
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            time.sleep(0.25)
        time.sleep(1.0)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    written = raw.read_bytes()
    assert b"computed" in written, written[-2000:]
    for payload in (b"\x1b]0;PWNED\x07", b"\x1b]0;CKPT\x07", b"\x1b]0;BAD\x07", b"\x1b]0;DCM\x07", b"\x1b]0;LBL\x07",
                    b"\x9b31m", "\u009b31m".encode(), b"\xe2\x80\xae"):  # OSC titles, C1 CSI, bidi override
        assert payload not in written, payload
    assert b"PWNED" in written or b"CKPT" in written  # the names themselves were shown, as text
