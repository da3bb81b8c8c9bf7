"""The Training screen under Pilot: run directories written by hand, then one real detached job on phantoms."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import DataTable, Input, Log, Static

from cxr_core.runs import LogTail, RunDir, process_start_time
from cxr_core.train.config import TrainConfig, read_run_config, write_run_config
from cxr_tui.dialogs import ConfirmScreen, LaunchForm, ReportScreen
from cxr_tui.messages import ModelChosen
from cxr_tui.run_charts import MACRO, epoch_rows
from cxr_tui.screens.training import TrainingScreen
from cxr_tui.state import Workspace
from cxr_tui.widgets.charts import CurveChart
from tests.pilot import until

SIZE = (80, 24)
LABELS = ("Effusion", "Mass")


class Host(App):
    """The smallest app the screen needs: a workspace, and a record of what the screen told the app."""

    def __init__(self, screen: TrainingScreen, runs_dir: Path, root: Path | None = None):
        super().__init__()
        self.workspace = Workspace(root=root, runs_dir=runs_dir)
        self.training = screen
        self.chosen: list[Path] = []
        self.notes: list[tuple[str, str]] = []

    def on_mount(self) -> None:
        self.push_screen(self.training)

    def on_model_chosen(self, message: ModelChosen) -> None:
        self.chosen.append(message.path)

    def notify(self, message: str, *, severity: str = "information", **kwargs) -> None:
        self.notes.append((severity, message))
        super().notify(message, severity=severity, **kwargs)


def epoch_row(epoch: int, train_loss: float, val_loss: float | None, macro: float | None) -> dict:
    return {"type": "epoch", "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc_macro": macro,
            "val_auc": {label: (macro or 0.5) + 0.01 * k for k, label in enumerate(LABELS)}}


def make_run(runs_dir: Path, run_id: str, state: str | None, *, epoch: int = 0, best: float | None = None,
             pid: int | None = None, pid_start: str | None = None, error: str | None = None,
             metrics: tuple[dict, ...] = (), log: str = "", best_checkpoint: bool = False) -> RunDir:
    """A run directory as a trainer leaves it, written with the core's own RunDir API."""
    run = RunDir(runs_dir / run_id)
    run.checkpoints.mkdir(parents=True)
    write_run_config(run, TrainConfig(data="/data/nih", model="resnet18", epochs=3).resolve())
    if state is not None:  # no status.json: launched, not started yet (queued)
        run.update_status(state=state, epoch=epoch, epochs=3, best_metric=best, best_epoch=epoch if best else None,
                          pid=pid, pid_start=pid_start, error=error)
    for row in metrics:
        run.append_metrics(row)
    run.log_path.write_text(log, encoding="utf-8")
    if best_checkpoint:
        run.best_checkpoint.write_bytes(b"not read by these tests")
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def text_of(static: Static) -> str:
    return str(static.render())


async def wait_for(pilot, condition, timeout: float = 10.0) -> None:
    await until(pilot, condition, seconds=timeout, what="the screen")


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.mark.slow
async def test_list_shows_every_run_with_its_state(runs_dir: Path) -> None:
    me = os.getpid()
    make_run(runs_dir, "20240101-000001-done", "finished", epoch=3, best=0.8123, best_checkpoint=True)
    make_run(runs_dir, "20240101-000002-live", "running", epoch=1, pid=me, pid_start=process_start_time(me))
    make_run(runs_dir, "20240101-000003-dead", "running", epoch=2, pid=dead_pid(), pid_start="0")
    make_run(runs_dir, "20240101-000004-bad", "failed", error="data: /data/nih does not exist")
    make_run(runs_dir, "20240101-000005-halt", "stopped", epoch=1)
    make_run(runs_dir, "20240101-000006-wait", None)
    (runs_dir / "not-a-run").mkdir()  # no config.toml: not listed
    screen = TrainingScreen()
    app = Host(screen, runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = screen.query_one("#runs", DataTable)
        ids = [row.value for row in table.rows]
        assert ids == [f"20240101-00000{k}-{n}" for k, n in ((6, "wait"), (5, "halt"), (4, "bad"), (3, "dead"),
                                                              (2, "live"), (1, "done"))]  # newest first
        states = {run_id: str(table.get_row(run_id)[1]) for run_id in ids}
        assert states == {"20240101-000006-wait": "queued", "20240101-000005-halt": "stopped",
                          "20240101-000004-bad": "failed", "20240101-000003-dead": "interrupted",
                          "20240101-000002-live": "running", "20240101-000001-done": "finished"}
        assert [str(c) for c in table.get_row("20240101-000001-done")[2:]] == ["3/3", "0.8123", "resnet18"]
        assert [str(c) for c in table.get_row("20240101-000006-wait")[2:]] == ["0/3", "—", "resnet18"]
        assert screen.run_id == "20240101-000006-wait"  # the newest is selected
        table.move_cursor(row=2)
        await pilot.pause()
        assert screen.run_id == "20240101-000004-bad"
        assert "data: /data/nih does not exist" in text_of(screen.query_one("#run-detail", Static))


async def test_empty_runs_dir_says_how_to_start(runs_dir: Path) -> None:
    screen = TrainingScreen()
    async with Host(screen, runs_dir).run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "press n to start one" in text_of(screen.query_one("#run-detail", Static))


@pytest.mark.slow
async def test_new_run_directory_appears_and_selection_stays(runs_dir: Path) -> None:
    make_run(runs_dir, "20240101-000001-a", "finished", epoch=3, best=0.7, metrics=(epoch_row(1, 0.5, 0.5, 0.7),))
    make_run(runs_dir, "20240101-000002-b", "finished", epoch=3, best=0.6)
    screen = TrainingScreen(refresh_interval=0.1)
    async with Host(screen, runs_dir).run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen.select_run("20240101-000001-a")
        await pilot.press("c")
        assert screen.auc_label == "Effusion"
        make_run(runs_dir, "20240101-000003-c", "running", epoch=0, pid=dead_pid(), pid_start="0")
        await wait_for(pilot, lambda: "20240101-000003-c" in screen.rows)
        await pilot.pause(0.3)
        assert screen.run_id == "20240101-000001-a" and screen.auc_label == "Effusion"  # the view is kept
        table = screen.query_one("#runs", DataTable)
        assert table.cursor_row == 2
        RunDir(runs_dir / "20240101-000002-b").update_status(best_metric=0.65)  # a status change updates a cell
        await wait_for(pilot, lambda: table.get_row("20240101-000002-b")[3] == "0.6500")


async def test_charts_and_log_follow_the_files(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = {"type": "step", "epoch": 1, "step": 10, "loss": 1.5}
    run = make_run(runs_dir, "20240101-000001-live", "running", epoch=1, pid=os.getpid(),
                   pid_start=process_start_time(os.getpid()), metrics=(step, epoch_row(1, 0.9, 0.8, 0.6)),
                   log="".join(f"line {i}\n" for i in range(300)))
    reads = []
    original = RunDir.read_metrics
    monkeypatch.setattr(RunDir, "read_metrics", lambda self: reads.append(self.id) or original(self))
    screen = TrainingScreen(refresh_interval=0.1)
    async with Host(screen, runs_dir).run_test(size=SIZE) as pilot:
        await pilot.pause()
        loss = screen.query_one("#loss-chart", CurveChart)
        auc = screen.query_one("#auc-chart", CurveChart)
        log = screen.query_one("#run-log", Log)
        assert loss.series == {"train loss": ([1], [0.9]), "val loss": ([1], [0.8])}
        assert auc.series == {MACRO: ([1], [0.6])}
        assert log.lines[0] == "line 100" and log.lines[-1] == "line 299" and len(log.lines) == 200
        await pilot.pause(0.5)  # several polls, nothing changed: metrics.jsonl is not read again
        assert len(reads) == 1

        run.append_metrics(epoch_row(2, 0.7, None, 0.7))
        with open(run.log_path, "a", encoding="utf-8") as fh:
            fh.write("epoch 2/3 done\n")
        await wait_for(pilot, lambda: loss.series["train loss"] == ([1, 2], [0.9, 0.7]))
        assert loss.series["val loss"] == ([1], [0.8])  # an epoch without validation loss has no point
        assert auc.series == {MACRO: ([1, 2], [0.6, 0.7])}
        await wait_for(pilot, lambda: log.lines[-1] == "epoch 2/3 done")
        assert len(reads) == 2

        await pilot.press("c")
        assert screen.auc_label == "Effusion"
        assert auc.series == {MACRO: ([1, 2], [0.6, 0.7]), "Effusion": ([1, 2], [0.6, 0.7])}
        await pilot.press("c")
        assert set(auc.series) == {MACRO, "Mass"}
        assert auc.series["Mass"] == ([1, 2], [pytest.approx(0.61), pytest.approx(0.71)])
        await pilot.press("c")
        assert screen.auc_label is None and set(auc.series) == {MACRO}


@pytest.mark.slow
async def test_use_model_posts_the_best_checkpoint(runs_dir: Path) -> None:
    done = make_run(runs_dir, "20240101-000001-done", "finished", epoch=3, best=0.8, best_checkpoint=True)
    make_run(runs_dir, "20240101-000002-new", "running", pid=dead_pid(), pid_start="0")
    screen = TrainingScreen()
    app = Host(screen, runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("u")  # the newest has no checkpoint: nothing is posted, the user is told why
        assert app.chosen == []
        assert app.notes[-1][0] == "error" and "no best checkpoint" in app.notes[-1][1]
        await pilot.press("down", "u")
        await pilot.pause()
        assert app.chosen == [done.best_checkpoint]


async def test_eval_shows_the_report_or_offers_the_command(runs_dir: Path) -> None:
    evaluated = make_run(runs_dir, "20240101-000001-eval", "finished", epoch=3, best=0.8, best_checkpoint=True)
    (evaluated.path / "eval" / "test").mkdir(parents=True)
    (evaluated.path / "eval" / "test" / "report.md").write_text("# Report\n\nmacro AUC 0.80\n", encoding="utf-8")
    make_run(runs_dir, "20240101-000002-plain", "finished", epoch=3, best=0.7, best_checkpoint=True)
    screen = TrainingScreen()
    app = Host(screen, runs_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("e")
        assert isinstance(app.screen, ConfirmScreen)
        question = app.screen.question
        assert "-m cxr_core.eval " in question and "--data /data/nih --split test" in question
        assert "cxr-tui" not in question  # the core's evaluation job, not the command-line front-end
        await pilot.press("n")  # declined: nothing runs
        assert app.screen is screen and not (runs_dir / "20240101-000002-plain" / "eval").exists()
        await pilot.press("down", "e")
        await pilot.pause()
        assert isinstance(app.screen, ReportScreen)
        assert app.screen.path == evaluated.path / "eval" / "test" / "report.md"
        await pilot.press("escape")
        assert app.screen is screen


@pytest.mark.slow
async def test_stop_and_resume_report_through_notifications(runs_dir: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    threading.Thread(target=sleeper.wait, daemon=True).start()  # reap it, so it reads as gone once killed
    make_run(runs_dir, "20240101-000001-halt", "finished", epoch=1)
    make_run(runs_dir, "20240101-000002-live", "running", epoch=1, pid=sleeper.pid,
             pid_start=process_start_time(sleeper.pid))
    screen = TrainingScreen(refresh_interval=0.2)
    app = Host(screen, runs_dir)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert screen.rows["20240101-000002-live"].state == "running"
            await pilot.press("x")  # SIGTERM; this fake trainer dies without writing status: interrupted
            await wait_for(pilot, lambda: any("interrupted at epoch 1" in m for _, m in app.notes))
            assert sleeper.poll() is not None
            await wait_for(pilot, lambda: screen.rows["20240101-000002-live"].state == "interrupted")
            await pilot.press("down", "r")  # a finished run cannot be resumed: the core says why
            await wait_for(pilot, lambda: app.notes[-1][0] == "error")
            assert "already finished" in app.notes[-1][1]
    finally:
        sleeper.kill()


async def test_form_refuses_bad_input(runs_dir: Path, tmp_path: Path) -> None:
    screen = TrainingScreen(models=["tiny_resnet"])
    app = Host(screen, runs_dir, root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, LaunchForm)
        assert form.query_one("#data", Input).value == str(tmp_path)  # the workspace's root
        error = form.query_one("#launch-error", Static)
        for field, value, message in (("epochs", "0", "epochs = 0: a whole number from 1 to 100,000"),
                                      ("epochs", "", "epochs: a value is required"),
                                      ("image-size", "8", "image_size = 8: a whole number of pixels from 16 to 2048"),
                                      ("lr", "-1", "lr = -1.0: a finite number > 0"),
                                      ("gpus", "-2", "GPUs must be 0 (CPU) or more"),
                                      ("data", str(tmp_path / "missing"), "does not exist")):
            form.query_one(f"#{field}", Input).value = value
            await pilot.press("ctrl+s")
            assert app.screen is form, field
            assert message in text_of(error), (field, text_of(error))
            valid = {"epochs": "1", "gpus": "1", "data": str(tmp_path)}
            form.query_one(f"#{field}", Input).value = valid.get(field, "")
        assert form.query_one("#start").region.bottom <= SIZE[1]  # the whole form fits in 80x24
        await pilot.press("escape")
        assert app.screen is screen and list(runs_dir.iterdir()) == []


async def test_form_config_maps_gpus_to_devices(tmp_path: Path) -> None:
    """GPUs 0 trains on the CPU, 1 on the default GPU, more under torchrun (``gpus`` lists them for jobs.launch)."""

    class FormHost(App):
        def on_mount(self) -> None:
            self.push_screen(LaunchForm(tmp_path, ["tiny_resnet"]))

    seen = []
    async with FormHost().run_test(size=SIZE) as pilot:
        form = pilot.app.screen
        for gpus in ("0", "1", "3"):
            form.query_one("#gpus", Input).value = gpus
            config = form.config()
            seen.append((config.device, config.gpus))
        assert (config.lr, config.model, config.format, config.data) == (2e-3, "tiny_resnet", None, str(tmp_path))
    assert seen == [("cpu", None), ("auto", None), ("auto", "0,1,2")]


def test_log_tail_starts_over_on_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    tail = LogTail(path, lines=2)
    assert tail.read() == (False, [])
    path.write_text("a\nb\nc\n", encoding="utf-8")
    assert tail.read() == (True, ["b", "c"])
    with open(path, "ab") as fh:
        fh.write(b"d\ne" + "é".encode()[:1])  # a line still being written, cut inside a character
    assert tail.read() == (False, ["d"])
    with open(path, "ab") as fh:
        fh.write("é".encode()[1:] + b"\r\n")
    assert tail.read() == (False, ["eé"])
    assert tail.read() == (False, [])
    path.write_text("new\n", encoding="utf-8")  # shorter: a new log
    assert tail.read() == (True, ["new"])


def test_epoch_rows_keep_the_last_row_of_each_epoch() -> None:
    rows = [epoch_row(1, 1.0, 1.0, 0.5), {"type": "step", "epoch": 2, "loss": 3.0}, epoch_row(2, 0.9, 0.9, 0.6),
            epoch_row(2, 0.8, 0.8, 0.65)]
    assert [(r["epoch"], r["train_loss"]) for r in epoch_rows(rows)] == [(1, 1.0), (2, 0.8)]


@pytest.mark.slow
async def test_form_launches_a_detached_run_that_finishes(runs_dir: Path, phantom_set: Path) -> None:
    screen = TrainingScreen(models=["tiny_resnet"], refresh_interval=0.5)
    app = Host(screen, runs_dir, root=phantom_set)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, LaunchForm)
        for field, value in (("image-size", "32"), ("epochs", "1"), ("batch-size", "16"), ("name", "tui")):
            form.query_one(f"#{field}", Input).value = value
        await pilot.click("#start")
        await wait_for(pilot, lambda: app.screen is screen and screen.rows, timeout=10)
        (run_id,) = screen.rows
        assert run_id.endswith("-tui") and screen.run_id == run_id
        await wait_for(pilot, lambda: screen.rows[run_id].state not in ("queued", "running"), timeout=120)
        assert screen.rows[run_id].state == "finished", screen.rows[run_id].error
        run = RunDir(runs_dir / run_id)
        config = read_run_config(run)
        assert (config.model, config.image_size, config.epochs, config.data) == ("tiny_resnet", 32, 1,
                                                                                 str(phantom_set.resolve()))
        await wait_for(pilot, lambda: screen.query_one("#loss-chart", CurveChart).series.get("train loss"))
        assert screen.query_one("#loss-chart", CurveChart).series["train loss"][0] == [1]
        assert any("epoch 1/1" in line for line in screen.query_one("#run-log", Log).lines)
        assert any(m.startswith(f"Started {run_id}") for _, m in app.notes)

        await pilot.press("u")
        assert app.chosen == [run.best_checkpoint]
        await pilot.press("e")  # no report yet: evaluate in the background, then show it
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        report = run.path / "eval" / "test" / "report.md"
        await wait_for(pilot, report.is_file, timeout=120)
        await pilot.press("e")
        assert isinstance(app.screen, ReportScreen) and app.screen.path == report
