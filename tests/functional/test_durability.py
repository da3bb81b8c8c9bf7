"""Decisions are never lost in the assembled app: the promise tested the way the app is really used.

Each round starts one or two real TUI processes (``tests/functional/app_driver.py``: CxrApp with its worklist,
study and thresholds screens, driven by keys) on one phantom set with the bundled demo model, while other
processes read and write the same databases (``reviews list``, ``reviews export``, ``data index``,
``predict``), and kills the TUIs with SIGKILL or SIGHUP (what an SSH drop sends) at a random moment: before
the worklist is up, while predicting, or after a random number of decisions. After every round, a fresh
process must see every action any TUI was told was committed. At the end the three databases (reviews, study
index, prediction cache) pass SQLite's integrity check and a fresh ``data index`` and ``predict`` work from
them: the index is whole and everything predicted before the kills is answered from the cache.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cxr_core.demo import demo_model_path
from cxr_core.phantoms import write_phantoms
from tests.cli import SCRIPT

pytestmark = pytest.mark.slow

ROUNDS = 10
REPO = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "CXR_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "160", "PYTHONPATH": str(REPO)}


def _stored_action_ids(home: Path) -> set[str]:
    """Every action in the reviews database, read by a process that never wrote it."""
    code = ("import json, sys; from cxr_core.store.reviews import ReviewStore; s = ReviewStore(sys.argv[1]); "
            "print(json.dumps([r.action_id for r in s.reviews(history=True)])); s.close()")
    out = subprocess.run([sys.executable, "-c", code, str(home / "reviews.sqlite")], capture_output=True, text=True,
                         env=_env(home), timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def _acks(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line.count("\t") == 3]  # a torn last line was never acknowledged


class Neighbours:
    """Other processes using the same databases, one command after another, until stopped."""

    def __init__(self, home: Path, root: Path, model: Path, out: Path) -> None:
        self.commands = [
            ["reviews", "list", "--json"],
            ["reviews", "export", "--out", str(out / "export.csv")],
            ["data", "index", str(root)],
            ["predict", str(root), "--model", str(model), "--out", str(out / "preds.csv")],
        ]
        self.home, self.stop, self.failures, self.runs = home, threading.Event(), [], 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        while not self.stop.is_set():
            command = self.commands[k % len(self.commands)]
            k += 1
            out = subprocess.run([str(SCRIPT), *command], capture_output=True, text=True, env=_env(self.home),
                                 timeout=300)
            self.runs += 1
            if out.returncode != 0 or "Traceback" in out.stderr:
                self.failures.append((command, out.returncode, out.stderr[-2000:]))

    def __enter__(self) -> Neighbours:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(300)


def test_acknowledged_decisions_survive_kills_of_the_running_app(tmp_path: Path) -> None:
    rng = random.Random(20261205)
    home, root, work = tmp_path / "home", tmp_path / "set", tmp_path / "work"
    work.mkdir()
    write_phantoms(root, 120, 128, 0)
    model = demo_model_path()
    acknowledged: dict[str, list[str]] = {}
    kills = {"SIGKILL": 0, "SIGHUP": 0}
    with Neighbours(home, root, model, work) as neighbours:
        for round_no in range(ROUNDS):
            tuis = []
            for n in range(1 if round_no % 3 else 2):  # every third round a second reader's TUI at the same time
                acks, ready = work / f"acks-{round_no}-{n}.tsv", work / f"ready-{round_no}-{n}"
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.functional.app_driver", str(root), str(model), str(acks),
                     "--seed", str(rng.randrange(1 << 30)), "--reviewer", f"reader{n}", "--ready", str(ready)],
                    cwd=REPO, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                tuis.append((proc, acks, ready))
            # A random moment: sometimes before the worklist is up (indexing, predicting), mostly after some
            # decisions.
            proc, acks, ready = tuis[0]
            deadline = time.monotonic() + 120
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.5, 3.0))
            else:
                wanted = rng.randint(1, 12)
                while len(_acks(acks)) < wanted and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 0.3))
            for proc, _, _ in tuis:
                assert proc.poll() is None, f"a TUI ended by itself: {proc.stderr.read()[-3000:]}"
                sig = rng.choice([signal.SIGKILL, signal.SIGHUP])
                kills[sig.name] += 1
                proc.send_signal(sig)
            for proc, acks, _ in tuis:
                proc.wait(60)
                proc.stderr.close()
                for action_id, *rest in _acks(acks):
                    acknowledged[action_id] = rest
            stored = _stored_action_ids(home)
            lost = {a: v for a, v in acknowledged.items() if a not in stored}
            assert not lost, f"round {round_no}: {len(lost)} acknowledged actions lost: {list(lost.items())[:5]}"
    assert not neighbours.failures, neighbours.failures[:3]
    assert neighbours.runs >= 4, "the other processes never got going"
    assert len(acknowledged) >= ROUNDS, "too few decisions were recorded for the test to mean anything"
    assert kills["SIGKILL"] and kills["SIGHUP"]

    # The real commands, from fresh processes, see every decision and whole databases.
    export = work / "final.csv"
    out = subprocess.run([str(SCRIPT), "reviews", "export", "--out", str(export), "--history"], capture_output=True,
                         text=True, env=_env(home), timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"wrote {len(_stored_action_ids(home))} actions" in out.stdout
    code = ("import sqlite3, sys\nfor p in sys.argv[1:]:\n"
            "    c = sqlite3.connect(p); print(c.execute('PRAGMA integrity_check').fetchone()[0]); c.close()")
    dbs = [home / name for name in ("reviews.sqlite", "index.sqlite", "predictions.sqlite")]
    out = subprocess.run([sys.executable, "-c", code, *map(str, dbs)], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["ok", "ok", "ok"], out.stdout + out.stderr
    index = json.loads(subprocess.run([str(SCRIPT), "data", "index", str(root), "--json"], capture_output=True,
                                      text=True, env=_env(home), timeout=120).stdout)
    assert (index["studies"], index["images"], index["unreadable"]) == (120, 120, 0)
    predict = json.loads(subprocess.run([str(SCRIPT), "predict", str(root), "--model", str(model), "--json",
                                         "--out", str(work / "last.csv")], capture_output=True, text=True,
                                        env=_env(home), timeout=300).stdout)
    assert predict["images"] == 120 and predict["computed"] == 0 and predict["cached"] == 120
