"""The run directory: what a training run leaves on disk, and the only way anything else follows it.

::

    runs/<id>/config.toml      resolved TrainConfig (re-creates the run; cxr_core.train.config reads it)
              status.json      state, pid, epoch, best metric, error   (atomic rewrite)
              metrics.jsonl    one JSON object per epoch (+ optional per-step lines)   (append, fsync)
              log.txt          the trainer's log
              checkpoints/     last.safetensors (with training state), best.safetensors

The TUI and ``cxr-tui jobs`` never talk to a trainer: they read these files. A run whose status says
``running`` but whose process is gone (kill -9, reboot) reads as ``interrupted``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.atomic import atomic_write_text
from cxr_core.errors import CxrError
from cxr_core.paths import data_dir, ensure_private_dir

CHECKPOINT_NAMES = ("best.safetensors", "last.safetensors")
"""A run's checkpoints (in ``checkpoints/``), in the order a run directory given as a model resolves to."""

STATES = ("queued", "running", "finished", "failed", "stopped", "interrupted")
ACTIVE = ("queued", "running")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class RunError(CxrError):
    """A run directory is missing or not a run."""


def default_runs_dir() -> Path:
    return ensure_private_dir(data_dir() / "runs")


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a recycled pid is not mistaken for our trainer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None and Path("/proc").is_dir():
        return process_start_time(pid) == start
    return True


@dataclass(frozen=True)
class RunStatus:
    state: str
    raw: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.raw.get(key)


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- locating ----------------------------------------------------------------------------------

    @classmethod
    def create(cls, runs_dir: Path | None = None, name: str | None = None) -> RunDir:
        runs_dir = ensure_private_dir(Path(runs_dir) if runs_dir else default_runs_dir())
        stem = time.strftime("%Y%m%d-%H%M%S") + (f"-{_NAME.sub('-', name).strip('-')}" if name else "")
        for n in range(1000):
            path = runs_dir / (stem if n == 0 else f"{stem}-{n}")
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            (path / "checkpoints").mkdir(mode=0o700)
            return cls(path)
        raise RunError(f"{runs_dir}: cannot create a run directory named {stem}")

    @classmethod
    def open(cls, ref: str | Path, runs_dir: Path | None = None) -> RunDir:
        """A run by path, or by id (directory name, or a unique prefix of one) under ``runs_dir``."""
        candidate = Path(ref)
        if (candidate / "config.toml").is_file() or (candidate / "status.json").is_file():
            return cls(candidate)
        base = Path(runs_dir) if runs_dir else default_runs_dir()
        if (base / str(ref)).is_dir():
            return cls(base / str(ref))
        matches = sorted(p for p in base.glob(f"{glob.escape(str(ref))}*") if p.is_dir()) if base.is_dir() else []
        if len(matches) == 1:
            return cls(matches[0])
        if len(matches) > 1:
            raise RunError(f"{ref}: ambiguous run id ({', '.join(p.name for p in matches[:5])})")
        raise RunError(f"{ref}: no such run (looked in {base})")

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def thresholds_path(self) -> Path:
        """The run's thresholds.json (tuned in the TUI or by ``thresholds tune``; what ``eval`` takes)."""
        return self.path / "thresholds.json"

    def eval_dir(self, split: str) -> Path:
        """Where an evaluation of this run on ``split`` writes its report."""
        return self.path / "eval" / split

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike[str]) -> RunDir | None:
        """The run a checkpoint belongs to (``<run>/checkpoints/<name>.safetensors``), or None for a checkpoint
        file that lives anywhere else (the demo model, a downloaded one). The one place this rule is written."""
        path = Path(checkpoint)
        return cls(path.parent.parent) if path.parent.name == "checkpoints" else None

    # -- config: the TOML text (train.config reads it as a TrainConfig) --------------------------------

    def settings(self) -> dict[str, Any]:
        """config.toml as plain values, for showing a run (model, data); {} when it is missing or damaged."""
        try:
            return tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return {}

    # -- status ------------------------------------------------------------------------------------

    def read_status(self) -> RunStatus:
        try:
            raw = json.loads(self.status_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {"state": "queued" if self.config_path.is_file() else "failed"}
        except (OSError, ValueError) as exc:
            raw = {"state": "failed", "error": f"status.json unreadable ({exc})"}
        state = raw.get("state", "failed")
        if state in ACTIVE:
            pid, start = raw.get("pid"), raw.get("pid_start")
            if not pid:  # queued: the launcher started, the trainer has not reported yet
                pid, start = raw.get("launcher_pid"), raw.get("launcher_start")
            if pid and not pid_alive(pid, start):
                state = "interrupted"
        return RunStatus(state, raw)

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json (atomic rewrite; only the run's own process writes it)."""
        try:
            raw = json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        raw.update(fields)
        raw["updated_at"] = time.time()
        atomic_write_text(self.status_path, json.dumps(raw, indent=2) + "\n")
        return raw

    def mark_running(self, **fields: Any) -> None:
        pid = os.getpid()
        self.update_status(state="running", pid=pid, pid_start=process_start_time(pid), host=socket.gethostname(),
                           error=None, **fields)

    # -- metrics -----------------------------------------------------------------------------------

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One JSON line, flushed and fsync'ed: a reader following the file never loses a finished epoch."""
        line = json.dumps(row, allow_nan=False, default=_json_default) + "\n"
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete line (a line still being written, or damaged, is skipped)."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def truncate_metrics(self, after_epoch: int) -> None:
        """Drop rows of epochs after ``after_epoch`` (a resume redoes the epoch that was in progress)."""
        rows = [r for r in self.read_metrics() if int(r.get("epoch", 0)) <= after_epoch]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def list_runs(runs_dir: Path | None = None) -> list[RunDir]:
    """Runs under ``runs_dir``, newest first."""
    base = Path(runs_dir) if runs_dir else default_runs_dir()
    if not base.is_dir():
        return []
    runs = [RunDir(p) for p in base.iterdir() if p.is_dir() and (p / "config.toml").is_file()]
    return sorted(runs, key=lambda r: r.id, reverse=True)
