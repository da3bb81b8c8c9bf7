"""A run in one row: what ``jobs list`` prints and the Training screen lists, read from status.json and config.toml."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cxr_core.runs.rundir import RunDir


@dataclass(frozen=True)
class RunSummary:
    run: str
    state: str
    epoch: int
    epochs: int | None
    best_metric: float | None
    best_epoch: int | None
    model: str | None
    data: str | None
    phase: str | None
    error: str | None
    pid: int | None
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(run: RunDir) -> RunSummary:
    """The run's state (a dead process reads as ``interrupted``), progress, best validation AUC and model; a
    damaged config still gives a row, with what the status says, and so does a damaged status.json (``failed``,
    its error naming the file)."""
    status = run.read_status()
    settings = run.settings()
    best = status["best_metric"]
    epochs = _int(status["epochs"]) or _int(settings.get("epochs"))
    return RunSummary(
        run=run.id, state=status.state, epoch=_int(status["epoch"]) or 0, epochs=epochs,
        best_metric=float(best) if isinstance(best, int | float) and not isinstance(best, bool) else None,
        best_epoch=_int(status["best_epoch"]), model=_text(settings.get("model")), data=_text(settings.get("data")),
        phase=_text(status["phase"]), error=_text(status["error"]), pid=_int(status["pid"]), path=str(run.path))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
