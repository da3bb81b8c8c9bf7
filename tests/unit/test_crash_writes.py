"""A writer killed with SIGKILL at random moments never leaves a status.json or thresholds.json that a reader
takes as valid but is half-written: the reader sees the previous version or the new one, whole."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest

from cxr_core.eval.thresholds_file import LabelThreshold, ThresholdsFile, load_thresholds
from cxr_core.runs import RunDir

LABELS = [f"Finding {k}" for k in range(40)]  # big enough that a write takes more than one syscall


def _status_writer(path: str) -> None:
    run = RunDir(Path(path).parent)
    for i in range(10**9):
        run.update_status(state="running", epoch=i, note="x" * 20_000, check=i * 7)


def _thresholds_writer(path: str) -> None:
    for i in range(10**9):
        file = ThresholdsFile(labels={name: LabelThreshold(i / 10**6, "fixed", {"i": i, "pad": "y" * 400})
                                      for name in LABELS}, created="now")
        file.write(path)


def _kill_rounds(target, path: Path, check, rounds: int = 12) -> int:
    ctx = mp.get_context("fork")
    rng = random.Random(3)
    checked = 0
    for _ in range(rounds):
        child = ctx.Process(target=target, args=(str(path),))
        child.start()
        time.sleep(rng.uniform(0.01, 0.12))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        if path.exists():
            check(path)
            checked += 1
    return checked


@pytest.mark.slow
def test_status_json_is_whole_after_any_kill(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def check(path: Path) -> None:
        raw = json.loads(path.read_text())  # never a JSON error: the rename is atomic
        assert raw["check"] == raw["epoch"] * 7 and len(raw["note"]) == 20_000
        assert RunDir(run_dir).read_status()["epoch"] == raw["epoch"]

    assert _kill_rounds(_status_writer, run_dir / "status.json", check) >= 10


@pytest.mark.slow
def test_thresholds_json_is_whole_after_any_kill(tmp_path):
    target = tmp_path / "thresholds.json"

    def check(path: Path) -> None:
        loaded = load_thresholds(path)  # a half-written file would raise DataError here
        values = {e.metrics["i"] for e in loaded.labels.values()}
        assert len(loaded.labels) == len(LABELS) and len(values) == 1  # one version, whole

    assert _kill_rounds(_thresholds_writer, target, check) >= 10
