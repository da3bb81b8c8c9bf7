"""What the Training screen reads from run directories, without Textual: job-list rows, chart series, log tails.

Kept apart from the screen (like :mod:`cxr_tui.worklist_model`) so it is tested with plain files and the
screen only draws. Everything here reads :mod:`cxr_core.train.rundir` files that a detached trainer writes.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text

from cxr_core.text import visible
from cxr_core.train.config import TrainConfig
from cxr_core.train.rundir import RunDir
from cxr_tui.widgets.charts import Series

LOG_LINES = 200
"""Lines of the selected run's log kept on screen."""

TAIL_BYTES = 256 * 1024
"""How far back from the end of log.txt the first read of a run looks for its last lines."""

STATE_STYLES = {"running": "bold", "queued": "dim", "failed": "bold red", "interrupted": "yellow"}
MACRO = "val macro AUC"


@dataclass(frozen=True)
class RunRow:
    """One run as the job list shows it, read from its status.json (and config.toml)."""

    id: str
    state: str
    epoch: int
    epochs: int | None
    best: float | None
    best_epoch: int | None
    model: str
    phase: str | None
    error: str | None

    @property
    def cells(self) -> tuple[Text, Text, str, str, Text]:
        return (Text(visible(self.id)), Text(self.state, style=STATE_STYLES.get(self.state, "")),
                f"{self.epoch}/{self.epochs if self.epochs else '?'}",
                f"{self.best:.4f}" if self.best is not None else "—", Text(visible(self.model)))


def run_row(run: RunDir, config: TrainConfig | None) -> RunRow:
    status = run.read_status()
    best = status["best_metric"]
    return RunRow(id=run.id, state=status.state, epoch=int(status["epoch"] or 0),
                  epochs=status["epochs"] or (config.epochs if config else None),
                  best=float(best) if isinstance(best, int | float) else None, best_epoch=status["best_epoch"],
                  model=config.model if config else "?", phase=status["phase"], error=status["error"])


def epoch_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``"type": "epoch"`` rows, one per epoch (the last written wins: a resumed run redoes an epoch)."""
    by_epoch = {int(r["epoch"]): r for r in rows if r.get("type") == "epoch" and isinstance(r.get("epoch"), int)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(rows: list[dict[str, Any]], value) -> Series:
    points = [(int(r["epoch"]), value(r)) for r in rows]
    points = [(x, float(y)) for x, y in points if isinstance(y, int | float)]
    return [x for x, _ in points], [y for _, y in points]


def loss_series(rows: list[dict[str, Any]]) -> dict[str, Series]:
    return {"train loss": _series(rows, lambda r: r.get("train_loss")),
            "val loss": _series(rows, lambda r: r.get("val_loss"))}


def auc_series(rows: list[dict[str, Any]], label: str | None = None) -> dict[str, Series]:
    """Validation macro AUC per epoch, and ``label``'s own AUC when one is chosen."""
    series = {MACRO: _series(rows, lambda r: r.get("val_auc_macro"))}
    if label is not None:
        series[label] = _series(rows, lambda r: (r.get("val_auc") or {}).get(label))
    return series


def auc_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Labels with a per-class validation AUC, in the order of the latest epoch that has any."""
    for row in reversed(rows):
        if row.get("val_auc"):
            return list(row["val_auc"])
    return []


def eval_report(run: RunDir) -> Path | None:
    """The run's newest ``eval/<split>/report.md`` (the test split's when there is one)."""
    reports = [p for p in run.path.glob("eval/*/report.md") if p.is_file()]
    if not reports:
        return None
    return max(reports, key=lambda p: (p.parent.name == "test", p.stat().st_mtime))


def eval_args(run: RunDir, config: TrainConfig, split: str = "test") -> list[str]:
    """The arguments of ``cxr-tui eval`` that evaluate ``run`` on its own data set's ``split``."""
    args = ["eval", str(run.path), "--data", config.data, "--split", split]
    if config.format:
        args += ["--format", config.format]
    if config.labels_csv:
        args += ["--labels", config.labels_csv]
    return args


class LogTail:
    """Follows a growing text file like ``tail -f``: its last lines first, then the lines appended since.

    Only complete lines are returned (a line still being written waits for its newline). A file that was
    replaced or got shorter is read again from its last lines, as is one that grew by more than TAIL_BYTES.
    """

    def __init__(self, path: Path, lines: int = LOG_LINES):
        self.path = path
        self.lines = lines
        self.offset = 0
        self.inode: int | None = None
        self.partial = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self) -> tuple[bool, list[str]]:
        """``(start over, lines)``: with start over the lines replace what was shown, else they follow it."""
        try:
            st = self.path.stat()
        except OSError:
            st = None
        inode, size = (st.st_ino, st.st_size) if st else (None, 0)
        try:
            if inode != self.inode or size < self.offset or size - self.offset > TAIL_BYTES:
                self.inode, self.offset, self.partial = inode, 0, ""
                self.decoder.reset()
                if st is None:
                    return True, []
                start = max(0, size - TAIL_BYTES)
                lines = self._read_from(start)
                return True, (lines[1:] if start else lines)[-self.lines:]  # the first may be cut
            if size == self.offset:
                return False, []
            return False, self._read_from(self.offset)
        except OSError:
            return False, []

    def _read_from(self, start: int) -> list[str]:
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read()
        self.offset = start + len(data)
        *lines, self.partial = (self.partial + self.decoder.decode(data)).split("\n")
        return [line.rstrip("\r") for line in lines]


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
