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

import contextlib
import glob
import json
import logging
import os
import re
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.atomic import atomic_write_text, flocked
from cxr_core.errors import CxrError
from cxr_core.paths import data_dir, ensure_private_dir
from cxr_core.text import name_from_text

CHECKPOINT_NAMES = ("best.safetensors", "last.safetensors")
"""A run's checkpoints (in ``checkpoints/``), in the order a run directory given as a model resolves to."""
PATH_SETTINGS = frozenset({"data", "labels_csv", "reviews_db", "weights"})
"""The settings of a run's config.toml that are paths (TrainConfig's ``path=True`` fields; a test keeps them equal)."""

STATES = ("queued", "running", "finished", "failed", "stopped", "interrupted")
ACTIVE = ("queued", "running")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")
LOCK_NAME = ".job.lock"
"""The run's lock file: held (flock) across every read-modify-write of status.json and across a launch."""
LOCK_TIMEOUT_S = 15.0

# status.json fields and the types they must have (None is always allowed): anything else is a damaged file.
_STATUS_TYPES: dict[str, tuple[type, ...]] = {
    "state": (str,), "pid": (int,), "pid_start": (str, int), "launcher_pid": (int,), "launcher_start": (str, int),
    "epoch": (int,), "epochs": (int,), "best_metric": (int, float), "best_epoch": (int,), "error": (str,),
    "phase": (str,), "host": (str,), "gpus": (str,), "resumed": (bool,), "detached": (bool,),
    "finished_at": (int, float), "updated_at": (int, float),
}


_warned_no_locks: set[str] = set()


def _warn_no_locks(path: Path) -> None:
    if str(path.parent) not in _warned_no_locks:
        _warned_no_locks.add(str(path.parent))
        logging.getLogger("cxr.runs").warning("%s: the file system does not lock files; two commands acting on one "
                                              "run at the same moment are not kept apart", path.parent)


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
    try:  # a zombie (ended, not yet reaped by the process that started it, e.g. the TUI) is gone
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        fields = []
    if fields and fields[0] in ("Z", "X"):
        return False
    if start is not None and Path("/proc").is_dir():
        return process_start_time(pid) == str(start)
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
            found = base / str(ref)
            if not ((found / "config.toml").is_file() or (found / "status.json").is_file()):
                raise RunError(f"{found}: not a run directory (no config.toml or status.json)")
            return cls(found)
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
            table = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return {}
        # paths are written as name_text (a folder that is not UTF-8 as escapes): read them back
        return {k: name_from_text(v) if k in PATH_SETTINGS and isinstance(v, str) else v for k, v in table.items()}

    # -- status ------------------------------------------------------------------------------------

    def read_status(self) -> RunStatus:
        """The run's state; a live-looking state whose process is gone reads ``interrupted``, and a status.json
        that is not a JSON object with the expected field types reads ``failed`` with the reason (never raises)."""
        try:
            raw: Any = json.loads(self.status_path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raw = {"state": "queued" if self.config_path.is_file() else "failed"}
        except (OSError, ValueError, RecursionError) as exc:
            raw = {"state": "failed", "error": f"status.json: unreadable ({_short(exc)})"}
        else:
            problem = _status_problem(raw)
            if problem is not None:
                kept = _clean_status(raw) if isinstance(raw, dict) else {}
                raw = {**kept, "state": "failed", "error": f"status.json: damaged ({problem})"}
        state = raw.get("state", "failed")
        if state in ACTIVE:
            pid, start = raw.get("pid"), raw.get("pid_start")
            if not pid:  # queued: the launcher started, the trainer has not reported yet
                pid, start = raw.get("launcher_pid"), raw.get("launcher_start")
            if pid and not pid_alive(pid, start):
                state = "interrupted"
        return RunStatus(state, raw)

    def _raw_status(self) -> dict[str, Any]:
        """status.json as it is, its damaged fields left out (what a rewrite starts from)."""
        try:
            raw = json.loads(self.status_path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return _clean_status(raw) if isinstance(raw, dict) else {}

    @contextlib.contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the run's exclusive lock (``flock`` on ``.job.lock`` in the run directory): a check of the
        status and what follows from it (writing ``queued`` and starting the job) happen as one step for every
        process and thread. Re-entrant within a thread. Raises RunError when another holder keeps it past
        ``timeout`` or it cannot be taken at all."""
        key = os.path.realpath(self.path)
        held: dict[str, int] = _held.__dict__.setdefault("locks", {})
        if key in held:
            held[key] += 1
            try:
                yield
            finally:
                held[key] -= 1
            return
        lock_path = self.path / LOCK_NAME
        with flocked(lock_path, timeout, name=lock_path, error=RunError,
                     busy=f"another process holds the run's lock (for more than {timeout:.0f} s); try again",
                     failed="cannot lock the run", unlocked=lambda: _warn_no_locks(self.path)):
            held[key] = 1
            try:
                yield
            finally:
                del held[key]

    def update_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json (atomic rewrite under the run's lock; damaged fields are dropped)."""
        with contextlib.ExitStack() as stack:
            with contextlib.suppress(RunError):  # a writer never fails for want of the lock: the rewrite is atomic
                stack.enter_context(self.lock())
            raw = self._raw_status()
            raw.update(fields)
            raw["updated_at"] = time.time()
            atomic_write_text(self.status_path, json.dumps(raw, indent=2) + "\n")
            return raw

    def owner(self, *, trainer_only: bool = False) -> int | None:
        """The pid of another live process on this machine that runs this run: its trainer, or (unless
        ``trainer_only``) the launcher of a queued job. Read from status.json's own fields, so a status damaged
        elsewhere still names its live trainer."""
        raw = self._raw_status()
        if raw.get("state") not in ACTIVE or raw.get("host") not in (None, socket.gethostname()):
            return None  # another machine's pid says nothing here
        candidates = [("pid", "pid_start")] + ([] if trainer_only else [("launcher_pid", "launcher_start")])
        for pid_key, start_key in candidates:
            pid = raw.get(pid_key)
            if pid and pid != os.getpid() and pid_alive(pid, raw.get(start_key)):
                return pid
        return None

    def mark_running(self, **fields: Any) -> None:
        """Record this process as the run's trainer. Refuses (RunError) when another live trainer already runs it
        (two resumes that raced): the run keeps one trainer and one metrics.jsonl writer."""
        pid = os.getpid()
        with self.lock():
            other = self.owner(trainer_only=True)
            if other is not None:
                raise RunError(f"{self.path}: run {self.id} is already running (pid {other}); this process ({pid}) "
                               "leaves it to that one")
            self.update_status(state="running", pid=pid, pid_start=process_start_time(pid),
                               host=socket.gethostname(), error=None, finished_at=None, **fields)

    def remove_checkpoint_leftovers(self) -> int:
        """Remove temporary checkpoint files (``.last.safetensors.*.tmp``) that killed writes left behind, of
        any age, unless another live trainer owns the run (its write may be in flight). Returns how many."""
        if self.owner(trainer_only=True) is not None:
            return 0
        removed = 0
        for name in CHECKPOINT_NAMES:
            with contextlib.suppress(OSError):
                for leftover in self.checkpoints.glob(f".{glob.escape(name)}.*.tmp"):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
                        removed += 1
        return removed

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
        return self.read_metrics_counted()[0]

    def read_metrics_counted(self) -> tuple[list[dict[str, Any]], int]:
        """The rows of metrics.jsonl and how many lines were skipped as damaged: not UTF-8, not JSON, not an
        object, or an ``epoch`` / ``step`` that is not a whole number. A partial last line (being written) is
        skipped without counting. Never raises for what the file holds."""
        try:
            data = self.metrics_path.read_bytes()
        except OSError:  # missing (no epoch yet) or unreadable: no rows
            return [], 0
        lines = data.split(b"\n")
        partial = lines.pop()  # after the last newline: empty, or a line still being written
        rows: list[dict[str, Any]] = []
        damaged = 0
        for line in lines:
            if not line.strip():
                continue
            row = _metrics_row(line)
            if row is None:
                damaged += 1
            else:
                rows.append(row)
        if partial.strip():
            row = _metrics_row(partial)
            if row is not None:
                rows.append(row)
        return rows, damaged

    def truncate_metrics(self, after_epoch: int) -> int:
        """Drop rows of epochs after ``after_epoch`` (a resume redoes the epoch that was in progress), and damaged
        lines; returns how many damaged lines were dropped."""
        rows, damaged = self.read_metrics_counted()
        rows = [r for r in rows if r.get("epoch", 0) <= after_epoch]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        return damaged


_held = threading.local()  # the run locks this thread holds: {real path: depth}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_ok(key: str, value: Any) -> bool:
    types = _STATUS_TYPES.get(key)
    if value is None or types is None:
        return True
    if bool not in types and isinstance(value, bool):
        return False
    if not isinstance(value, types):
        return False
    return not (isinstance(value, float) and not (value == value and abs(value) != float("inf")))


def _status_problem(raw: Any) -> str | None:
    """Why a parsed status.json is not a status, or None when it is one."""
    if not isinstance(raw, dict):
        return f"a JSON {_json_kind(raw)}, not an object"
    for key, value in raw.items():
        if not _field_ok(key, value):
            types = _STATUS_TYPES[key]
            wanted = "a number" if float in types else {int: "a whole number", str: "text"}.get(types[0], "true or false")
            return f"{key} is {_preview(value)}, not {wanted}"
    state = raw.get("state")
    if state is not None and state not in STATES:
        return f"unknown state {_preview(state)}"
    return None


def _clean_status(raw: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in raw.items() if _field_ok(k, v)}
    if clean.get("state") not in (None, *STATES):
        clean.pop("state")
    return clean


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "value")


def _preview(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _metrics_row(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(row, dict):
        return None
    for key in ("epoch", "step"):
        if key in row and not _is_int(row[key]):
            return None
    if row.get("type") == "epoch" and "epoch" not in row:
        return None
    return row


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
