"""What the Training screen reads from run directories, without Textual: job-list rows, chart series, log tails.

Kept apart from the screen (like :mod:`cxr_tui.study_list`) so it is tested with plain files and the
screen only draws. Everything here reads :mod:`cxr_core.runs` files that a detached trainer writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text

from cxr_core.runs import RunDir, RunSummary
from cxr_core.text import visible
from cxr_tui.widgets.charts import Series

STATE_STYLES = {"running": "bold", "queued": "dim", "failed": "bold red", "interrupted": "yellow"}
MACRO = "val macro AUC"


def run_cells(row: RunSummary) -> tuple[Text, Text, str, str, Text]:
    """A run's cells in the job list: id, state (styled), epoch, best validation AUC, model."""
    return (Text(visible(row.run)), Text(row.state, style=STATE_STYLES.get(row.state, "")),
            f"{row.epoch}/{row.epochs if row.epochs else '?'}",
            f"{row.best_metric:.4f}" if row.best_metric is not None else "—", Text(visible(row.model or "?")))


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


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
