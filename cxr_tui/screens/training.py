"""TrainingScreen: the runs on disk, the curves and log of one of them, and the job actions (new, stop, resume).

Everything shown is read from run directories (:mod:`cxr_core.runs`) on a timer: the screen never
talks to a trainer, so a run started before an SSH drop shows up again, live, when the TUI is reopened.
The selected run is followed like a log viewer follows a file: ``metrics.jsonl`` is re-read only when its
size or mtime changed, and ``log.txt`` is read from where the last read stopped.

Starting, stopping and resuming call :mod:`cxr_core.train.jobs` in thread workers (stopping waits for the
trainer's checkpoint); their failures are shown once, from ``on_worker_state_changed``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.widgets import DataTable, Footer, Log, Static
from textual.worker import Worker, WorkerState

from cxr_core.errors import CxrError, error_text
from cxr_core.runs import ACTIVE, LOG_LINES, LogTail, RunDir, RunSummary, default_runs_dir, list_runs, summarize
from cxr_core.text import visible
from cxr_core.train import TrainConfig, resume_job, start_job, stop_job
from cxr_tui.dialogs import ConfirmScreen, ReportScreen
from cxr_tui.messages import ModelChosen
from cxr_tui.run_charts import (
    auc_labels,
    auc_series,
    epoch_rows,
    eval_report,
    file_stamp,
    loss_series,
    run_cells,
)
from cxr_tui.screens.base import CxrScreen
from cxr_tui.state import Workspace
from cxr_tui.widgets.charts import CurveChart

REFRESH_S = 2.0
"""Seconds between two reads of the runs directory and of the selected run's files."""

JOB_GROUP = "training-jobs"
COLUMNS = ("run", "state", "epoch", "best AUC", "model")


@dataclass(frozen=True)
class JobDone:
    """What a job worker reports: a line for the user, and the run to select afterwards."""

    message: str
    run_id: str | None = None


# -- the screen -----------------------------------------------------------------------------------------------


class TrainingScreen(CxrScreen[None]):
    """Training runs: list, live loss/AUC curves and log of the selected one, start / stop / resume / use."""

    HELP = """
## Training

Every run under the runs directory, newest first, read from its files every two seconds: runs keep going
when the terminal or SSH connection closes, and show up here again. A run whose process died reads
*interrupted*; **r** resumes it from its last checkpoint.

- **n** new run (a form; it starts as a background job) · **x** stop (it checkpoints first) · **r** resume
- **c** adds one class's validation AUC to the AUC chart (again: the next class)
- **e** the run's evaluation report, or evaluate it now · **u** review with the run's best checkpoint
"""

    DEFAULT_CSS = """
    TrainingScreen #runs { height: auto; max-height: 7; }
    TrainingScreen #run-detail { height: 1; padding: 0 1; background: $boost; }
    TrainingScreen #charts { height: 1fr; min-height: 8; }
    TrainingScreen #run-log { height: 6; border-top: solid $primary-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_run", "New run", id="training.new_run"),
        Binding("x", "stop_run", "Stop", id="training.stop_run"),
        Binding("r", "resume_run", "Resume", id="training.resume_run"),
        Binding("e", "eval_report", "Eval", id="training.eval_report"),
        Binding("u", "use_model", "Use model", id="training.use_model"),
        Binding("c", "cycle_label", "Class AUC", id="training.cycle_label"),
        Binding("escape", "back", "Back", id="training.back"),
    ]

    run_id: var[str | None] = var(None)
    """The selected run (its directory name under the runs directory)."""

    auc_label: var[str | None] = var(None)
    """The label whose own validation AUC is drawn beside the macro AUC (None: macro only)."""

    def __init__(self, runs_dir: Path | None = None, *, models: Sequence[str] | None = None,
                 refresh_interval: float = REFRESH_S, name: str | None = None, id: str | None = None,
                 classes: str | None = None):
        """``runs_dir``: where runs live (default: the workspace's, else the user data dir); ``models``: the
        choices of the launch form (default: every full-size registered model)."""
        super().__init__(name=name, id=id, classes=classes)
        self._runs_dir = runs_dir
        self.models = list(models) if models else None
        self.refresh_interval = refresh_interval
        self.rows: dict[str, RunSummary] = {}
        self.metrics: list[dict[str, Any]] = []
        self._row_order: list[str] = []
        self._metrics_stamp: tuple[int, int, int] | None = None
        self._log_tail: LogTail | None = None

    # -- layout and polling ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical():
            yield DataTable(id="runs", cursor_type="row")
            yield Static("", id="run-detail", markup=False)
            with Horizontal(id="charts"):
                yield CurveChart("loss", id="loss-chart")
                yield CurveChart("val AUC", id="auc-chart")
            yield Log(max_lines=LOG_LINES, id="run-log")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.refresh_runs()
        self.set_interval(self.refresh_interval, self.refresh_runs)

    @property
    def workspace(self) -> Workspace:
        return getattr(self.app, "workspace", None) or Workspace()

    @property
    def runs_dir(self) -> Path:
        return self._runs_dir or self.workspace.runs_dir or default_runs_dir()

    def refresh_runs(self) -> None:
        """Re-read every run's status (cheap: one small JSON file each), then follow the selected run."""
        runs_dir = self.runs_dir
        try:
            runs = list_runs(runs_dir)
        except OSError as exc:
            self.query_one("#run-detail", Static).update(visible(f"{runs_dir}: cannot read ({exc.strerror or exc})"))
            return
        rows = [summarize(run) for run in runs]
        table = self.query_one("#runs", DataTable)
        order = [row.run for row in rows]
        if order != self._row_order:
            table.clear()
            for row in rows:
                table.add_row(*run_cells(row), key=row.run)
            self._row_order = order
            self.rows = {row.run: row for row in rows}
            self.select_run(self.run_id if self.run_id in self.rows else (order[0] if order else None))
        else:
            for row in rows:
                if row != self.rows.get(row.run):
                    for column, cell in zip(COLUMNS, run_cells(row), strict=True):
                        table.update_cell(row.run, column, cell, update_width=True)  # "queued" -> "running"
            self.rows = {row.run: row for row in rows}
        self._show_detail()
        self.follow_run()

    def select_run(self, run_id: str | None) -> None:
        self.run_id = run_id
        if run_id in self._row_order:
            self.query_one("#runs", DataTable).move_cursor(row=self._row_order.index(run_id), animate=False)

    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row != event.data_table.cursor_row:  # stale: the table was rebuilt since
            return
        if event.row_key.value in self.rows:
            self.run_id = event.row_key.value

    def watch_run_id(self, run_id: str | None) -> None:
        self._metrics_stamp = None
        self.metrics = []
        self.auc_label = None
        self._log_tail = LogTail(self.runs_dir / run_id / "log.txt") if run_id else None
        self.query_one("#run-log", Log).clear()
        self._show_detail()
        self.follow_run()

    def watch_auc_label(self) -> None:
        self._draw_charts()

    def follow_run(self) -> None:
        """Re-read the selected run's metrics if the file changed, and append what was added to its log."""
        run = self.selected_run
        stamp = file_stamp(run.metrics_path) if run else None
        if run is not None and stamp != self._metrics_stamp:
            self._metrics_stamp = stamp
            self.metrics = epoch_rows(run.read_metrics())
            self._draw_charts()
        elif run is None and self.metrics:
            self.metrics = []
            self._draw_charts()
        if self._log_tail is not None:
            restart, lines = self._log_tail.read()
            log = self.query_one("#run-log", Log)
            if restart:
                log.clear()
            if lines:
                log.write_lines([visible(line) for line in lines])  # log text names outside files

    def _draw_charts(self) -> None:
        if self.auc_label is not None and self.auc_label not in auc_labels(self.metrics):
            self.auc_label = None  # watch_auc_label draws again
            return
        self.query_one("#loss-chart", CurveChart).set_series(loss_series(self.metrics))
        title = f"val AUC: macro and {self.auc_label}" if self.auc_label else "val AUC (c: a class)"
        self.query_one("#auc-chart", CurveChart).set_series(auc_series(self.metrics, self.auc_label), title)

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", Static)
        row = self.rows.get(self.run_id) if self.run_id else None
        if row is None:
            detail.update(visible(f"No runs in {self.runs_dir} yet: press n to start one.") if not self.rows else "")
            return
        parts = [row.run, row.state]
        if row.best_metric is not None:
            parts.append(f"best AUC {row.best_metric:.4f}" + (f" at epoch {row.best_epoch}" if row.best_epoch else ""))
        if row.state in ACTIVE and row.phase:
            parts.append(row.phase)
        if row.error and row.state in ("failed", "interrupted"):
            parts.append(row.error)
        detail.update(visible(" · ".join(parts)))

    @property
    def selected_run(self) -> RunDir | None:
        return RunDir(self.runs_dir / self.run_id) if self.run_id else None

    def _require_run(self) -> RunDir | None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected: press n to start one.", severity="warning", markup=False)
        return run

    # -- actions ---------------------------------------------------------------------------------------------

    def action_new_run(self) -> None:
        def launch(config: TrainConfig | None) -> None:
            if config is not None:
                self.launch_run(config)

        from cxr_tui.dialogs import LaunchForm  # the model zoo behind it loads torch: only when asked

        self.app.push_screen(LaunchForm(self.workspace.root, self.models), launch)

    def action_stop_run(self) -> None:
        run = self._require_run()
        if run is not None:
            self.notify(f"Stopping {run.id}: it saves a checkpoint first…", markup=False)
            self.stop_run(run)

    def action_resume_run(self) -> None:
        run = self._require_run()
        if run is not None:
            self.resume_run(run)

    def action_use_model(self) -> None:
        run = self._require_run()
        if run is None:
            return
        if not run.best_checkpoint.is_file():
            self.notify(f"Run {run.id} has no best checkpoint yet (it saves one after each improving epoch).",
                        severity="error", markup=False)
            return
        self.app.post_message(ModelChosen(run.best_checkpoint))  # the app switches the model and says so

    def action_eval_report(self) -> None:
        run = self._require_run()
        if run is None:
            return
        report = eval_report(run)
        if report is not None:
            self.app.push_screen(ReportScreen(report))
            return
        if not run.best_checkpoint.is_file():
            self.notify(f"Run {run.id} has no checkpoint to evaluate yet.", severity="error", markup=False)
            return
        try:
            from cxr_core.eval import evaluation_command  # evaluation loads torch: only when asked

            command = shlex.join(["python", *evaluation_command(run)[1:]])
        except CxrError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.evaluate_run(run)

        self.app.push_screen(ConfirmScreen(f"Run {run.id} has no evaluation report yet. Evaluate its best "
                                           f"checkpoint on the test split in the background?\n\n  {command}",
                                           yes="Evaluate"), answered)

    def action_cycle_label(self) -> None:
        labels = auc_labels(self.metrics)
        if not labels:
            self.notify("No per-class AUC yet (it comes with the first validated epoch).", severity="warning",
                        markup=False)
            return
        order: list[str | None] = [None, *labels]
        position = order.index(self.auc_label) if self.auc_label in order else 0
        self.auc_label = order[(position + 1) % len(order)]

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    # -- workers: one core call each; results and failures are shown in on_worker_state_changed ----------------

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def launch_run(self, config: TrainConfig) -> JobDone:
        """What ``cxr-tui train --detach`` does: create the run, save its config, start it detached."""
        run, pid = start_job(config, self.runs_dir)
        return JobDone(f"Started {run.id} (pid {pid}).", run.id)

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def stop_run(self, run: RunDir) -> JobDone:
        status = stop_job(run)
        return JobDone(f"{run.id}: {status.state} at epoch {status['epoch'] or 0}.", run.id)

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def resume_run(self, run: RunDir) -> JobDone:
        pid = resume_job(run)
        return JobDone(f"Resumed {run.id} (pid {pid}).", run.id)

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def evaluate_run(self, run: RunDir) -> JobDone:
        """The core's evaluation job, detached (it outlives the TUI, like a training job)."""
        from cxr_core.eval import launch_evaluation

        pid, log_path = launch_evaluation(run)
        return JobDone(f"Evaluating {run.id} (pid {pid}, log {log_path}); press e when it is done.")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != JOB_GROUP:
            return
        event.stop()  # shown here, once; not again by the app
        if event.state == WorkerState.SUCCESS and isinstance(worker.result, JobDone):
            self.notify(worker.result.message, markup=False)
            self.refresh_runs()
            if worker.result.run_id in self.rows:
                self.select_run(worker.result.run_id)
        elif event.state == WorkerState.ERROR:
            error = worker.error
            message = error_text(error)
            self.notify(message, severity="error", timeout=10, markup=False)
