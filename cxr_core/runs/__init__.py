"""Training runs on disk: the run directory contract, run summaries, following a run's log, and starting
a detached process.

What a trainer leaves behind (``runs/<id>/``) is read by jobs, the CLI, the TUI, inference (a run id names its
best checkpoint) and evaluation; none of them imports the trainer.
"""

from cxr_core.runs.detach import detach
from cxr_core.runs.logtail import LOG_LINES, LogTail
from cxr_core.runs.rundir import (
    ACTIVE,
    STATES,
    RunDir,
    RunError,
    RunStatus,
    default_runs_dir,
    list_runs,
    pid_alive,
    process_start_time,
)
from cxr_core.runs.summary import RunSummary, summarize

__all__ = [
    "ACTIVE",
    "LOG_LINES",
    "STATES",
    "LogTail",
    "RunDir",
    "RunError",
    "RunStatus",
    "RunSummary",
    "default_runs_dir",
    "detach",
    "list_runs",
    "pid_alive",
    "process_start_time",
    "summarize",
]
