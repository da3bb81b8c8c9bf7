"""The real terminal: start `cxr-tui` in tmux as a person would, press keys, read the pane."""

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
from cxr_core.phantoms import FINDINGS

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_for(session: str, text: str, seconds: float = 90) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pane = _pane(session)
        if text in pane:
            return pane
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared; the pane shows:\n{_pane(session)}")


def test_worklist_study_and_back_in_tmux(phantom_set, tmp_path, cxr_home):
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=list(FINDINGS), image_size=48)
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    session = f"cxr-test-{os.getpid()}"
    command = (f"CXR_HOME={cxr_home} CXR_PSEUDONYM_KEY={'00' * 32} {sys.executable} -m cxr_tui {phantom_set} "
               f"--model {checkpoint} --image-protocol halfcell")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command], check=True)
    try:
        pane = _wait_for(session, "sorted by max probability")
        _wait_for(session, "computed")  # the predictions' notification: the worklist is complete
        pane = _pane(session)
        assert "Quit" in pane and "Help" in pane  # the footer shows the keys that matter
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        pane = _wait_for(session, "Accept", 30)
        assert "Atelectasis" in pane and "patient" in pane
        subprocess.run(["tmux", "send-keys", "-t", session, "a"], check=True)
        _wait_for(session, "✓ accept")
        subprocess.run(["tmux", "send-keys", "-t", session, "Escape"], check=True)
        _wait_for(session, "sorted by max probability")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and subprocess.run(["tmux", "has-session", "-t", session],
                                                             capture_output=True).returncode == 0:
            time.sleep(0.2)
        assert subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    from cxr_core.store.reviews import ReviewStore

    with ReviewStore(Path(cxr_home) / "reviews.sqlite") as store:
        assert store.count() == 1
