"""Detached jobs under faults: racing resumes, kills between checkpoint writes, damaged status.json and
metrics.jsonl, a stop during start-up, --json errors, the train loss of a resumed epoch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from cxr_core.runs import RunDir, list_runs, process_start_time, summarize
from cxr_core.runs.rundir import RunError
from cxr_core.train import jobs
from cxr_core.train.config import TrainConfig, write_run_config

DAMAGED_STATUS = ["null", "[1, 2]", '"running"', "5", '{"state": "running", "epoch": "x"}',
                  '{"state": "stopped", "pid": "12"}', '{"state": "dancing"}', '{"state": "stopped", "epoch": true}',
                  "[" * 100_000]


def _run(tmp_path, name="run", **changes) -> RunDir:
    config = TrainConfig(data=str(tmp_path), model="tiny_resnet", image_size=48, epochs=2, batch_size=16, workers=0,
                         seed=7).replace(**changes)
    run = RunDir.create(tmp_path / "runs", name)
    write_run_config(run, config)
    return run


def _live_other_pid() -> int:
    """A live process that is not this one (the parent: the shell or pytest's runner)."""
    return os.getppid()


# -- 1. racing resumes ---------------------------------------------------------------------------------------------

def test_concurrent_resumes_start_exactly_one_job(tmp_path, monkeypatch):
    run = _run(tmp_path)
    run.update_status(state="stopped", epoch=1)
    started: list[list[str]] = []

    def fake_detach(command, log_path, env):
        started.append(command)
        time.sleep(0.05)
        return _live_other_pid()

    monkeypatch.setattr(jobs, "detach", fake_detach)
    # Every resume waits here (between its check of the status and its start) for the others: without a lock
    # all of them pass the check; with it the first holds the lock and the barrier times out.
    barrier = threading.Barrier(3)
    real_read_config = jobs.read_run_config

    def slow_read_config(r):
        try:
            barrier.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass
        return real_read_config(r)

    monkeypatch.setattr(jobs, "read_run_config", slow_read_config)
    results: list[object] = []

    def resume() -> None:
        try:
            results.append(jobs.resume(RunDir(run.path)))
        except jobs.JobError as exc:
            results.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(started) == 1, started
    refused = [r for r in results if isinstance(r, jobs.JobError)]
    assert len(refused) == 2 and results.count(_live_other_pid()) == 1
    for exc in refused:
        assert str(exc) == f"run {run.id} is already queued (pid {_live_other_pid()})"
    assert run.read_status()["launcher_pid"] == _live_other_pid()


def test_a_second_trainer_refuses_a_run_a_live_trainer_owns(tmp_path):
    run = _run(tmp_path)
    other = _live_other_pid()
    run.update_status(state="running", pid=other, pid_start=process_start_time(other), host=socket.gethostname())
    with pytest.raises(RunError, match=f"already running \\(pid {other}\\)"):
        run.mark_running(phase="starting")
    assert run.read_status()["pid"] == other  # left to the owner
    run.update_status(pid_start="not its start time")  # a recycled pid: not the owner
    run.mark_running(phase="starting")
    assert run.read_status()["pid"] == os.getpid()


# -- 2. best before last, leftovers --------------------------------------------------------------------------------

def test_best_is_written_before_last(tmp_path, monkeypatch):
    from cxr_core.train import trainer as trainer_module

    written: list[str] = []
    monkeypatch.setattr(trainer_module, "save_checkpoint", lambda path, *a, **k: written.append(path.name))

    class Config:
        def to_dict(self):
            return {}

    class Model:
        def state_dict(self):
            return {}

    trainer = object.__new__(trainer_module.Trainer)
    trainer.run, trainer.model, trainer.model_config, trainer.config = _run(tmp_path), Model(), Config(), Config()
    trainer.epoch, trainer.batch_size = 1, 16
    monkeypatch.setattr(trainer_module.Trainer, "_train_state", lambda self, step: {})
    trainer._save(0, {}, best=True)
    assert written == ["best.safetensors", "last.safetensors"]


def test_checkpoint_leftovers_are_removed_unless_another_trainer_owns_the_run(tmp_path):
    run = _run(tmp_path)
    leftovers = [run.checkpoints / ".last.safetensors.abc123.tmp", run.checkpoints / ".best.safetensors.x.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    other = _live_other_pid()
    run.update_status(state="running", pid=other, pid_start=process_start_time(other))
    assert run.remove_checkpoint_leftovers() == 0 and all(p.exists() for p in leftovers)
    run.update_status(state="stopped")
    assert run.remove_checkpoint_leftovers() == 2 and not any(p.exists() for p in leftovers)


# -- 3. damaged status.json ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", DAMAGED_STATUS)
def test_a_damaged_status_reads_as_a_failed_run_and_the_others_still_list(tmp_path, text, monkeypatch):
    good = _run(tmp_path, "good")
    good.update_status(state="stopped", epoch=1, best_metric=0.7, best_epoch=1)
    bad = _run(tmp_path, "bad")
    bad.status_path.write_text(text)
    status = bad.read_status()
    assert status.state == "failed"
    assert status["error"].startswith("status.json: ") and "\n" not in status["error"]
    rows = {row.run: row for row in map(summarize, list_runs(tmp_path / "runs"))}
    assert rows[good.id].state == "stopped" and rows[good.id].best_metric == 0.7
    assert rows[bad.id].state == "failed" and rows[bad.id].error == status["error"]
    with pytest.raises(jobs.JobError, match=r"is failed \(status.json: .*\), not running"):
        jobs.stop(bad)
    monkeypatch.setattr(jobs, "detach", lambda command, log_path, env: _live_other_pid())
    assert jobs.resume(bad) == _live_other_pid()  # the rewrite leaves a clean status
    raw = json.loads(bad.status_path.read_text())
    assert raw["state"] == "queued" and raw.get("epoch") in (None, 1) and bad.read_status().state == "queued"


def test_jobs_list_shows_a_damaged_run_as_failed(tmp_path):
    from cxr_tui.cli.main import app

    good = _run(tmp_path, "good")
    good.update_status(state="stopped", epoch=1)
    bad = _run(tmp_path, "bad")
    bad.status_path.write_text("null")
    out = CliRunner().invoke(app, ["jobs", "list", "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert out.exit_code == 0, out.output
    rows = {row["run"]: row for row in json.loads(out.stdout)}
    assert rows[good.id]["state"] == "stopped" and rows[bad.id]["state"] == "failed"
    assert "status.json: damaged" in rows[bad.id]["error"]


# -- 4. damaged metrics.jsonl --------------------------------------------------------------------------------------

def test_damaged_metrics_lines_are_skipped_and_counted(tmp_path):
    run = _run(tmp_path)
    run.append_metrics({"type": "epoch", "epoch": 1, "train_loss": 0.5})
    with open(run.metrics_path, "ab") as fh:
        fh.write(b'5\n{"type": "epoch", "epoch": "x"}\n\xff\xfe\x80garbage\n[1]\n{"type": "epoch"}\n')
    run.append_metrics({"type": "step", "epoch": 2, "step": 9, "train_loss": 0.4})
    run.append_metrics({"type": "epoch", "epoch": 2, "train_loss": 0.3})
    rows, damaged = run.read_metrics_counted()
    assert damaged == 5 and [r["epoch"] for r in rows] == [1, 2, 2]
    assert run.read_metrics() == rows
    assert run.truncate_metrics(1) == 5
    assert run.read_metrics_counted() == ([{"type": "epoch", "epoch": 1, "train_loss": 0.5}], 0)


# -- 5. stop during start-up; 6. --json errors, finished_at --------------------------------------------------------

def test_stop_prints_no_epoch_it_does_not_know(tmp_path, monkeypatch):
    from cxr_core.runs import RunStatus
    from cxr_tui.cli import jobs as jobs_cli
    from cxr_tui.cli.main import app

    run = _run(tmp_path)
    monkeypatch.setattr(jobs_cli, "stop_job", lambda r: RunStatus("stopped", {"epoch": "x"}))
    out = CliRunner().invoke(app, ["jobs", "stop", str(run.path)])
    assert out.exit_code == 0 and out.stdout.strip() == f"{run.id}: stopped", out.output


@pytest.mark.parametrize("command", [["stop"], ["resume"]])
def test_json_errors_are_a_json_object_on_stdout(tmp_path, command, monkeypatch, capsys):
    import sys

    from cxr_tui.cli.main import run as entry_point

    def cli(*args: str) -> tuple[int, str]:  # the installed entry point, its error boundary included
        monkeypatch.setattr(sys, "argv", ["cxr-tui", *args])
        with pytest.raises(SystemExit) as exit_:
            entry_point()
        return exit_.value.code, capsys.readouterr().out

    run = _run(tmp_path)
    run.update_status(state="finished", epoch=2)
    code, out = cli("jobs", *command, str(run.path), "--json")
    error = json.loads(out)["error"]
    assert code == 1 and run.id in error and ("not running" in error or "already finished" in error)
    code, out = cli("jobs", *command, "no-such-run", "--runs-dir", str(tmp_path), "--json")
    assert code == 1 and "no such run" in json.loads(out)["error"]


def test_resume_clears_finished_at(tmp_path, monkeypatch):
    run = _run(tmp_path)
    run.update_status(state="stopped", epoch=1, finished_at=time.time())
    monkeypatch.setattr(jobs, "detach", lambda command, log_path, env: _live_other_pid())
    jobs.resume(run)
    assert run.read_status()["finished_at"] is None
    run.update_status(finished_at=123.0)
    run.mark_running(phase="starting")
    assert run.read_status()["finished_at"] is None


# -- with real processes and training --------------------------------------------------------------------------------

@pytest.mark.slow
def test_stop_while_the_job_is_starting_is_a_clean_stop(tmp_path, phantom_set):
    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=1, batch_size=16,
                         workers=0).resolve()
    run = jobs.create_run(config, tmp_path / "runs")
    pid = jobs.launch(run)
    status = jobs.stop(run)  # the job is still importing: SIGTERM ends it before any handler exists
    assert status.state == "stopped" and status["pid"] in (None, pid)
    assert "stopped" in run.log_path.read_text()
    assert run.read_status().state == "stopped"


@pytest.mark.slow
def test_concurrent_cli_resumes_start_one_trainer(tmp_path, phantom_set):
    import subprocess

    from tests.cli import SCRIPT

    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=50, batch_size=16,
                         workers=0).resolve()
    run = jobs.create_run(config, tmp_path / "runs")
    run.update_status(state="stopped", epoch=0)
    env = {**os.environ, "NO_COLOR": "1"}
    procs = [subprocess.Popen([str(SCRIPT), "jobs", "resume", str(run.path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    try:
        assert sorted(rc for _, _, rc in outs) == [0, 1, 1], outs
        for _out, err, rc in outs:
            if rc:
                assert err.count("\n") == 1 and "is already" in err and "Traceback" not in err, err
    finally:
        deadline = time.monotonic() + 120
        while run.read_status().state == "queued" and time.monotonic() < deadline:
            time.sleep(0.2)
        if run.read_status().state in ("queued", "running"):
            jobs.stop(run, timeout=120)


@pytest.mark.slow
def test_resume_repairs_a_best_checkpoint_older_than_the_recorded_best(tmp_path, phantom_set, monkeypatch):
    """A run written by the old order (last, then best) and killed between them: best holds epoch 1 while the
    training state says epoch 2. Resume rewrites best from last, and removes the killed writes' temporary files."""
    from cxr_core.checkpoint import read_metadata
    from cxr_core.train.trainer import Trainer

    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=3, batch_size=16,
                         lr=3e-3, workers=0, seed=7)
    run = RunDir.create(tmp_path / "runs", "r")
    write_run_config(run, config)
    saved = tmp_path / "best-epoch-1.safetensors"

    def always_best(self, row):
        self.best, self.best_epoch = row["val_auc_macro"], self.epoch
        return True

    class Watch:
        def on_validation_epoch_end(self, trainer, row):
            if trainer.epoch == 1:
                shutil.copy(run.best_checkpoint, saved)
            if trainer.epoch == 2:
                trainer.stop_event.set()

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_track_best", always_best)
        assert Trainer(config, run, callbacks=[Watch()]).fit() == "stopped"
    assert read_metadata(run.best_checkpoint)["epoch"] == 2
    shutil.copy(saved, run.best_checkpoint)  # as if killed after last, before best
    leftovers = [run.checkpoints / ".best.safetensors.k1ll3d.tmp", run.checkpoints / ".last.safetensors.k1ll3d.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    with open(run.metrics_path, "ab") as fh:
        fh.write(b"5\n\xff\xfe\n")

    class StopAtOnce:
        def on_train_start(self, trainer):
            trainer.stop_event.set()

    assert Trainer(config, run, callbacks=[StopAtOnce()]).fit(resume=True) == "stopped"
    assert read_metadata(run.best_checkpoint)["epoch"] == 2
    assert run.read_status()["best_epoch"] == 2
    assert not any(p.exists() for p in leftovers)
    assert [r["epoch"] for r in run.read_metrics() if r.get("type") == "epoch"] == [1, 2]


@pytest.mark.slow
def test_a_resumed_epochs_train_loss_covers_the_whole_epoch(tmp_path, phantom_set):
    from cxr_core.train.trainer import Trainer

    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=2, batch_size=16,
                         lr=3e-3, workers=0, seed=7)
    straight = RunDir.create(tmp_path / "runs", "straight")
    write_run_config(straight, config)
    Trainer(config, straight).fit()

    class StopAt:
        def on_train_batch_end(self, trainer, step, loss):
            if trainer.epoch == 1 and step == 2:
                trainer.stop_event.set()

    broken = RunDir.create(tmp_path / "runs", "broken")
    write_run_config(broken, config)
    assert Trainer(config, broken, callbacks=[StopAt()]).fit() == "stopped"
    assert Trainer(config, broken).fit(resume=True) == "finished"

    def losses(run):
        return [r["train_loss"] for r in run.read_metrics() if r.get("type") == "epoch"]

    assert losses(broken) == losses(straight)


def test_a_finding_the_indexed_data_set_lacks_is_refused_before_a_run_exists(tmp_path, phantom_set):
    from cxr_core.store import StudyIndex
    from cxr_core.train.config import ConfigError, TrainConfig

    runs = tmp_path / "runs"
    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=1, labels=["Tuberculosis"])
    jobs.create_run(config, runs / "before")  # not indexed yet: the job checks it (nothing to read here)
    with StudyIndex() as index:
        index.scan(phantom_set)
    with pytest.raises(ConfigError, match="labels not in the phantom label space: Tuberculosis"):
        jobs.create_run(config, runs / "after")  # was: a detached job that failed after it started
    assert not (runs / "after").exists() or not list((runs / "after").iterdir())
    jobs.create_run(config.replace(labels=["effusion"]), runs / "ok")  # case as the job accepts it


def test_gpus_of_a_resume_follow_the_config_rule(tmp_path):
    from cxr_core.train.config import ConfigError

    run = _run(tmp_path)
    run.update_status(state="stopped", epoch=1)
    with pytest.raises(ConfigError, match="--gpus 'abc': GPU numbers"):  # trained on the CPU without a word
        jobs.resume(run, gpus="abc")
    assert run.read_status().state == "stopped"


def test_a_runs_paths_read_back_as_written(tmp_path):
    from dataclasses import fields

    from cxr_core.eval.evaluation import evaluation_command
    from cxr_core.runs.rundir import PATH_SETTINGS
    from cxr_core.train.config import TrainConfig, write_run_config

    assert PATH_SETTINGS == {f.name for f in fields(TrainConfig) if f.metadata.get("path")}
    root = os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9sum\xe9 \\x41")  # Latin-1, and a literal backslash
    run = RunDir.create(tmp_path / "runs")
    write_run_config(run, TrainConfig(data=root))
    assert run.settings()["data"] == root
    command = evaluation_command(run)
    assert command[command.index("--data") + 1] == root  # what the TUI's "evaluate" starts: the folder itself


def test_a_file_system_without_locks_still_runs_jobs(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # NFS without lockd, sshfs
    run = _run(tmp_path)
    with run.lock():
        run.update_status(state="stopped", epoch=1)
    assert run.read_status().state == "stopped"


def test_a_folder_that_is_not_a_run_and_a_runs_folder_that_is_not_there_are_said(tmp_path):
    from cxr_tui.cli.main import app

    (tmp_path / "runs" / "emptyrun").mkdir(parents=True)
    logs = CliRunner().invoke(app, ["jobs", "logs", "emptyrun", "--runs-dir", str(tmp_path / "runs")])
    assert logs.exit_code != 0 and "not a run directory" in str(logs.exception)  # printed nothing, exit 0
    listed = CliRunner().invoke(app, ["jobs", "list", "--runs-dir", str(tmp_path / "nope")])
    assert listed.exit_code == 0 and "does not exist" in listed.stdout  # an empty table, unexplained
    as_json = CliRunner().invoke(app, ["jobs", "list", "--runs-dir", str(tmp_path / "nope"), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == []  # no runs yet: a script's answer
    assert CliRunner().invoke(app, ["jobs", "list", "--runs-dir", str(tmp_path / "runs")]).exit_code == 0
