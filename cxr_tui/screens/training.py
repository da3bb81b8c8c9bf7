"""TrainingScreen: the runs on disk, the curves and log of one of them, and the job actions (new, stop, resume).

Everything shown is read from run directories (:mod:`cxr_core.train.rundir`) on a timer: the screen never
talks to a trainer, so a run started before an SSH drop shows up again, live, when the TUI is reopened.
The selected run is followed like a log viewer follows a file: ``metrics.jsonl`` is re-read only when its
size or mtime changed, and ``log.txt`` is read from where the last read stopped.

Starting, stopping and resuming call :mod:`cxr_core.train.jobs` in thread workers (stopping waits for the
trainer's checkpoint); their failures are shown once, from ``on_worker_state_changed``.
"""

from __future__ import annotations

import codecs
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.reactive import var
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Log, MarkdownViewer, Select, Static
from textual.worker import Worker, WorkerState

from cxr_core.data.sources import SOURCES
from cxr_core.errors import CxrError
from cxr_core.models import list_models
from cxr_core.train import jobs
from cxr_core.train.config import LOSSES, ConfigError, TrainConfig
from cxr_core.train.rundir import ACTIVE, RunDir, default_runs_dir, list_runs
from cxr_tui.messages import ModelChosen
from cxr_tui.state import Workspace
from cxr_tui.widgets.charts import CurveChart, Series

REFRESH_S = 2.0
"""Seconds between two reads of the runs directory and of the selected run's files."""

LOG_LINES = 200
"""Lines of the selected run's log kept on screen."""

TAIL_BYTES = 256 * 1024
"""How far back from the end of log.txt the first read of a run looks for its last lines."""

JOB_GROUP = "training-jobs"
COLUMNS = ("run", "state", "epoch", "best AUC", "model")
STATE_STYLES = {"running": "bold", "queued": "dim", "failed": "bold red", "interrupted": "yellow"}
MACRO = "val macro AUC"


# -- what the screen reads from a run directory ---------------------------------------------------------------


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
    def cells(self) -> tuple[str, Text, str, str, str]:
        return (self.id, Text(self.state, style=STATE_STYLES.get(self.state, "")),
                f"{self.epoch}/{self.epochs if self.epochs else '?'}",
                f"{self.best:.4f}" if self.best is not None else "—", self.model)


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


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class JobDone:
    """What a job worker reports: a line for the user, and the run to select afterwards."""

    message: str
    run_id: str | None = None


# -- dialogs --------------------------------------------------------------------------------------------------


class ReportScreen(ModalScreen[None]):
    """A run's evaluation report (report.md) in a Markdown viewer."""

    DEFAULT_CSS = """
    ReportScreen { align: center middle; }
    ReportScreen > Vertical { width: 95%; height: 95%; border: round $primary; background: $surface; }
    ReportScreen #report-title { width: 1fr; height: 1; padding: 0 1; text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "close", "Close")]

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(str(self.path), id="report-title", markup=False)
            yield MarkdownViewer(self.path.read_text(encoding="utf-8", errors="replace"),
                                 show_table_of_contents=False, open_links=False, id="report")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A question with a yes button (``y``) and a no button (``n`` / escape)."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 76; max-width: 100%; height: auto; border: round $primary;
                               background: $surface; padding: 0 1; }
    ConfirmScreen #question { width: 1fr; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "Yes"),
                                             Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes: str = "Yes"):
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question", markup=False)
            with Horizontal():
                yield Button(self.yes, id="yes", variant="primary", compact=True)
                yield Button("Cancel", id="no", compact=True)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class LaunchForm(ModalScreen[TrainConfig | None]):
    """The settings of a new training run; dismisses with a resolved, validated TrainConfig (or None)."""

    DEFAULT_CSS = """
    LaunchForm { align: center middle; }
    LaunchForm > Vertical { width: 76; max-width: 100%; height: auto; max-height: 100%;
                            border: round $primary; background: $surface; padding: 0 1; }
    LaunchForm #launch-title { text-style: bold; height: 1; }
    LaunchForm Grid { grid-size: 2; grid-columns: 14 1fr; grid-rows: 1; grid-gutter: 0 1; height: auto; }
    LaunchForm #launch-error { color: $error; height: auto; min-height: 1; }
    LaunchForm #launch-buttons { height: 1; align-horizontal: right; }
    LaunchForm Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel"),
                                             Binding("ctrl+s", "submit", "Start run")]

    def __init__(self, root: Path | None = None, models: Sequence[str] | None = None):
        super().__init__()
        self.root = root
        self.models = list(models) if models else list_models(include_tiny=False)

    def compose(self) -> ComposeResult:
        defaults = TrainConfig()
        model = defaults.model if defaults.model in self.models else self.models[0]
        with Vertical():
            yield Static("New training run", id="launch-title")
            with Grid():
                yield Label("data root")
                yield Input(str(self.root or ""), placeholder="data set root (as for `data index`)", id="data",
                            compact=True)
                yield Label("format")
                yield Select([("detect", "auto"), *((name, name) for name in SOURCES)], value="auto",
                             allow_blank=False, id="format", compact=True)
                yield Label("model")
                yield Select([(name, name) for name in self.models], value=model, allow_blank=False, id="model",
                             compact=True)
                yield Label("image size")
                yield Input(placeholder="the model's own", type="integer", id="image-size", compact=True)
                yield Label("epochs")
                yield Input(str(defaults.epochs), type="integer", id="epochs", compact=True)
                yield Label("batch size")
                yield Input(str(defaults.batch_size), type="integer", id="batch-size", compact=True)
                yield Label("learning rate")
                yield Input(placeholder="auto (2e-3 from scratch, 3e-4 from weights)", type="number", id="lr",
                            compact=True)
                yield Label("loss")
                yield Select([(name, name) for name in LOSSES], value=defaults.loss, allow_blank=False, id="loss",
                             compact=True)
                yield Label("weights file")
                yield Input(placeholder="optional: .safetensors / .pth / .bin", id="weights", compact=True)
                yield Label("GPUs")
                yield Input("1", type="integer", id="gpus", compact=True,
                            tooltip="0: CPU; 1: one GPU; more: one process per GPU (torchrun, DDP)")
                yield Label("name")
                yield Input(placeholder="optional: appended to the run id", id="name", compact=True)
            yield Static("", id="launch-error", markup=False)
            with Horizontal(id="launch-buttons"):
                yield Button("Start", id="start", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def config(self) -> TrainConfig:
        """The form as a resolved, validated config; a ConfigError says which field is wrong."""
        data = self._text("data")
        if not data:
            raise ConfigError("data: a data set root is required")
        root = Path(data).expanduser().resolve()
        if not root.exists():
            raise ConfigError(f"data: {root} does not exist")
        weights = self._text("weights")
        if weights:
            weights = str(Path(weights).expanduser().resolve())
            if not Path(weights).is_file():
                raise ConfigError(f"weights: {weights} is not a file")
        gpus = self._number("gpus", int)
        gpus = 1 if gpus is None else gpus
        if gpus < 0:
            raise ConfigError("GPUs must be 0 (CPU) or more")
        fmt, model = self.query_one("#format", Select).value, self.query_one("#model", Select).value
        config = TrainConfig(
            data=str(root), format=None if fmt == "auto" else str(fmt), model=str(model),
            image_size=self._number("image-size", int), epochs=self._number("epochs", int, required=True),
            batch_size=self._number("batch-size", int, required=True), lr=self._number("lr", float),
            loss=str(self.query_one("#loss", Select).value), weights=weights or None,
            device="cpu" if gpus == 0 else "auto", gpus=",".join(map(str, range(gpus))) if gpus > 1 else None,
            name=self._text("name") or None,
        )
        return config.resolve().validate()

    def _text(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def _number(self, field: str, kind: type, required: bool = False) -> Any:
        text = self._text(field)
        label = field.replace("-", " ")
        if not text:
            if required:
                raise ConfigError(f"{label}: a value is required")
            return None
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{label}: {text!r} is not a {'whole ' if kind is int else ''}number") from None

    def show_error(self, message: str) -> None:
        self.query_one("#launch-error", Static).update(f"⚠ {message}")

    def action_submit(self) -> None:
        try:
            config = self.config()
        except CxrError as exc:
            self.show_error(str(exc))
            return
        self.dismiss(config)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#start")
    def _start(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.action_cancel()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_submit()


# -- the screen -----------------------------------------------------------------------------------------------


class TrainingScreen(Screen[None]):
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
        self.rows: dict[str, RunRow] = {}
        self.metrics: list[dict[str, Any]] = []
        self._row_order: list[str] = []
        self._configs: dict[str, TrainConfig | None] = {}
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
            self.query_one("#run-detail", Static).update(f"{runs_dir}: cannot read ({exc.strerror or exc})")
            return
        rows = [run_row(run, self._config(run)) for run in runs]
        table = self.query_one("#runs", DataTable)
        order = [row.id for row in rows]
        if order != self._row_order:
            table.clear()
            for row in rows:
                table.add_row(*row.cells, key=row.id)
            self._row_order = order
            self.rows = {row.id: row for row in rows}
            self.select_run(self.run_id if self.run_id in self.rows else (order[0] if order else None))
        else:
            for row in rows:
                if row != self.rows.get(row.id):
                    for column, cell in zip(COLUMNS, row.cells, strict=True):
                        table.update_cell(row.id, column, cell)
            self.rows = {row.id: row for row in rows}
        self._show_detail()
        self.follow_run()

    def _config(self, run: RunDir) -> TrainConfig | None:
        if run.id not in self._configs:
            try:
                self._configs[run.id] = run.read_config()
            except CxrError:  # a damaged config still lists, with what its status says
                self._configs[run.id] = None
        return self._configs[run.id]

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
        stamp = _stamp(run.metrics_path) if run else None
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
                log.write_lines(lines)

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
            detail.update(f"No runs in {self.runs_dir} yet: press n to start one." if not self.rows else "")
            return
        parts = [row.id, row.state]
        if row.best is not None:
            parts.append(f"best AUC {row.best:.4f}" + (f" at epoch {row.best_epoch}" if row.best_epoch else ""))
        if row.state in ACTIVE and row.phase:
            parts.append(row.phase)
        if row.error and row.state in ("failed", "interrupted"):
            parts.append(row.error)
        detail.update(" · ".join(parts))

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
            args = eval_args(run, run.read_config())
        except CxrError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.evaluate_run(run, args)

        command = shlex.join(["cxr-tui", *args])
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
        run = RunDir.create(self.runs_dir, config.name)
        run.write_config(config)
        pid = jobs.launch(run, gpus=config.gpus)
        return JobDone(f"Started {run.id} (pid {pid}).", run.id)

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def stop_run(self, run: RunDir) -> JobDone:
        status = jobs.stop(run)
        return JobDone(f"{run.id}: {status.state} at epoch {status['epoch'] or 0}.", run.id)

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def resume_run(self, run: RunDir) -> JobDone:
        pid = jobs.resume(run)
        return JobDone(f"Resumed {run.id} (pid {pid}).", run.id)

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def evaluate_run(self, run: RunDir, args: list[str]) -> JobDone:
        """``cxr-tui eval`` as a detached process (it outlives the TUI, like a training job)."""
        log_path = run.path / "eval" / "eval.log"
        log_path.parent.mkdir(mode=0o700, exist_ok=True)
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "cxr_tui", *args], stdin=subprocess.DEVNULL,
                                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, close_fds=True)
        return JobDone(f"Evaluating {run.id} (pid {proc.pid}, log {log_path}); press e when it is done.")

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
            message = str(error) if isinstance(error, CxrError | OSError) else f"{type(error).__name__}: {error}"
            self.notify(message, severity="error", timeout=10, markup=False)
