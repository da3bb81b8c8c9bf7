"""The real terminal: start `cxr-tui` in tmux as a person would, press keys, read the pane."""

from __future__ import annotations

import os
import shutil
import signal
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


# A tmux server started from pytest inherits pytest's COLUMNS=80 / LINES=24, and a program in a pane that reads
# them (Python's shutil.get_terminal_size does) would draw at 80x24 in a 140x45 window: every command unsets them.
UNSET_SIZE = "env -u COLUMNS -u LINES"


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
    command = (f"{UNSET_SIZE} CXR_HOME={cxr_home} CXR_PSEUDONYM_KEY={'00' * 32} {sys.executable} -m cxr_tui {phantom_set} "
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


def _study_title(pane: str) -> str | None:
    """The study id on the study screen's title line (``ph00012_001  patient ...``)."""
    for line in pane.splitlines():
        if "  patient " in line:
            return line.split("  patient ")[0].split()[-1]
    return None


def test_demo_decisions_survive_sighup_in_tmux(tmp_path, cxr_home):
    """The issue's acceptance as a person would do it: the demo in tmux, the thresholds screen visited, 20
    decisions while `reviews list` runs in a loop in another process, then the TUI gets SIGHUP (an SSH drop)."""
    from cxr_core.store.reviews import ReviewStore

    with ReviewStore(Path(cxr_home) / "reviews.sqlite") as store:  # a reviewer who has used cxr before
        store.record("/earlier/data", "old-study", "Effusion", "reject")
    session = f"cxr-hup-{os.getpid()}"
    env = {**os.environ, "CXR_HOME": str(cxr_home), "NO_COLOR": "1"}
    command = (f"exec {UNSET_SIZE} CXR_HOME={cxr_home} CXR_PSEUDONYM_KEY={'00' * 32} {sys.executable} -m cxr_tui demo "
               f"--image-protocol halfcell")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "45", command], check=True)
    stop = False
    listed = 0

    def list_in_a_loop() -> None:
        nonlocal listed
        while not stop:
            subprocess.run([sys.executable, "-m", "cxr_tui", "reviews", "list"], env=env, capture_output=True,
                           timeout=60)
            listed += 1

    import threading

    reader = threading.Thread(target=list_in_a_loop, daemon=True)
    try:
        _wait_for(session, "computed", 180)  # predictions are in
        reader.start()
        subprocess.run(["tmux", "send-keys", "-t", session, "t"], check=True)
        _wait_for(session, "Thresholds ·", 30)
        subprocess.run(["tmux", "send-keys", "-t", session, "Escape"], check=True)
        _wait_for(session, "sorted by max probability", 30)
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        _wait_for(session, "Accept", 30)
        reviewed = []
        for _ in range(20):
            study = _study_title(_wait_for(session, "  patient ", 30))
            subprocess.run(["tmux", "send-keys", "-t", session, "a"], check=True)
            _wait_for(session, "✓ accept", 30)  # on screen = committed (the screen shows it after the commit)
            reviewed.append(study)
            subprocess.run(["tmux", "send-keys", "-t", session, "n"], check=True)
            deadline = time.monotonic() + 30
            while _study_title(_pane(session)) == study and time.monotonic() < deadline:
                time.sleep(0.1)
        assert len(set(reviewed)) == 20
        pid = int(subprocess.run(["tmux", "display-message", "-p", "-t", session, "#{pane_pid}"],
                                 capture_output=True, text=True, check=True).stdout)
        os.kill(pid, signal.SIGHUP)
    finally:
        stop = True
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    reader.join(60)
    assert listed >= 1
    out = tmp_path / "reviews.csv"
    done = subprocess.run([sys.executable, "-m", "cxr_tui", "reviews", "export", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import csv

    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["study"] for r in rows if r["root"] != "/earlier/data") == sorted(reviewed)
    assert {r["decision"] for r in rows if r["root"] != "/earlier/data"} == {"accept"}


def _quit(session: str) -> None:
    subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and subprocess.run(["tmux", "has-session", "-t", session],
                                                         capture_output=True).returncode == 0:
        time.sleep(0.2)
    subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_three_readers_agreement_and_adjudication_in_tmux(cxr_home):
    """Issue 15's acceptance: three readers (--reader) read the same demo film in tmux, one key each; a fourth
    session shows their Fleiss' kappa and lists exactly the findings they disagreed on."""
    from cxr_core.eval import disagreements
    from cxr_core.store.reviews import ReviewStore

    def start(name: str, reader: str) -> str:
        session = f"cxr-{name}-{os.getpid()}"
        command = (f"exec {UNSET_SIZE} CXR_HOME={cxr_home} CXR_PSEUDONYM_KEY={'00' * 32} {sys.executable} -m cxr_tui demo "
                   f"--image-protocol halfcell --reader {reader}")
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "45", command], check=True)
        _wait_for(session, "computed", 240)  # the predictions' notification (cache hits after the first reader)
        return session

    first = None
    for reader, key in (("ana", "0"), ("bo", "A"), ("cy", "0")):  # normal, agree with the model, normal
        session = start(reader, reader)
        try:
            subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
            study = _study_title(_wait_for(session, "  patient ", 30))
            first = first or study
            assert study == first  # everyone reads the most suspicious film
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            deadline = time.monotonic() + 30  # one key: stored, and the next unreviewed study opens
            while _study_title(_pane(session)) == study and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _study_title(_pane(session)) != study
        finally:
            _quit(session)
    with ReviewStore(Path(cxr_home) / "reviews.sqlite") as store:
        expected = disagreements(store.reviews())
    assert expected and {d.study for d in expected} == {first}
    session = start("chief", "chief")
    try:
        subprocess.run(["tmux", "send-keys", "-t", session, "D"], check=True)
        pane = _wait_for(session, "adjudicated", 30)
        assert "3 readers (ana, bo, cy)" in pane and "Fleiss' κ" in pane
        rows = [line for line in pane.splitlines() if first in line]
        assert len(rows) == len(expected)
        for d in expected:
            assert any(d.finding in row and "accept" in row and "reject" in row for row in rows)
        subprocess.run(["tmux", "send-keys", "-t", session, "x"], check=True)  # the chief settles the first one
        _wait_for(session, f"1 of {len(expected)} adjudicated", 30)
    finally:
        _quit(session)
    with ReviewStore(Path(cxr_home) / "reviews.sqlite") as store:
        settled = [d for d in disagreements(store.reviews()) if d.adjudicated]
    assert len(settled) == 1 and settled[0].adjudicated == "reject"
