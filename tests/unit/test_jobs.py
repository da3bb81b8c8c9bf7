"""Detached training jobs as a user runs them: start, kill -9, resume, stop; and DDP under torchrun (gloo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cxr_core.checkpoint import load_checkpoint
from cxr_core.runs import RunDir
from tests.cli import cxr, cxr_json

pytestmark = pytest.mark.slow  # every test here runs cxr-tui as a process, most of them train

TRAIN = ["--model", "tiny_resnet", "--image-size", "48", "--batch-size", "16", "--workers", "0", "--lr", "3e-3"]


def _wait(predicate, timeout: float, what: str, run: RunDir | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if run is not None and run.read_status().state == "failed":
            raise AssertionError(f"the run failed: {run.read_status()['error']}\n{run.log_path.read_text()[-2000:]}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _epochs(run: RunDir) -> list[int]:
    return [r["epoch"] for r in run.read_metrics() if r.get("type") == "epoch"]


def test_killed_job_is_interrupted_and_resumes_to_the_end(tmp_path, phantom_set):
    runs = tmp_path / "runs"
    started = cxr_json("train", "--data", phantom_set, *TRAIN, "--epochs", "3", "--runs-dir", runs, "--detach")
    run = RunDir.open(started["run"], runs)
    assert started["state"] == "queued" and started["pid"] > 0
    # after the first epoch's checkpoint (metrics.jsonl gets the epoch line a moment before it is written)
    _wait(lambda: run.read_status().state == "running" and _epochs(run) and run.last_checkpoint.is_file(), 240,
          "the first epoch's checkpoint", run)
    os.kill(run.read_status()["pid"], signal.SIGKILL)
    _wait(lambda: run.read_status().state == "interrupted", 30, "state interrupted")
    listed = cxr_json("jobs", "list", "--runs-dir", runs)
    assert listed[0]["run"] == run.id and listed[0]["state"] == "interrupted"
    done_before = load_checkpoint(run.last_checkpoint).epoch
    out = cxr("jobs", "resume", run.id, "--runs-dir", runs)
    assert out.returncode == 0, out.stderr
    _wait(lambda: run.read_status().state == "finished", 300, "the resumed run to finish", run)
    assert _epochs(run) == [1, 2, 3]
    assert load_checkpoint(run.last_checkpoint).epoch == 3 >= done_before
    logs = cxr("jobs", "logs", run.id, "--runs-dir", runs)
    assert "resumed from" in logs.stdout and "epoch 3/3" in logs.stdout
    lines = run.log_path.read_text().splitlines()
    assert not [a for a, b in zip(lines, lines[1:], strict=False) if a == b], "log lines written twice"
    assert sum("epoch 3/3" in line for line in lines) == 1


def test_stop_gives_a_checkpoint_and_stopped_within_30s(tmp_path, phantom_set):
    runs = tmp_path / "runs"
    started = cxr_json("train", "--data", phantom_set, *TRAIN, "--epochs", "200", "--runs-dir", runs, "--detach")
    run = RunDir.open(started["run"], runs)
    _wait(lambda: run.read_status()["phase"] == "training", 240, "training to start", run)
    began = time.monotonic()
    stopped = cxr_json("jobs", "stop", run.id, "--runs-dir", runs)
    assert stopped["state"] == "stopped" and time.monotonic() - began < 30
    assert run.last_checkpoint.is_file()
    out = cxr("jobs", "stop", run.id, "--runs-dir", runs)
    assert out.returncode == 1 and "not running" in out.stderr


def test_torchrun_two_gloo_processes_write_one_run(tmp_path, phantom_set):
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cxr_tui",
               "train", "--data", str(phantom_set), *TRAIN, "--epochs", "2", "--runs-dir", str(runs), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (only,) = [p for p in runs.iterdir() if p.is_dir()]
    run = RunDir(only)
    assert run.read_status().state == "finished"
    assert _epochs(run) == [1, 2]
    assert load_checkpoint(run.last_checkpoint).epoch == 2


@pytest.mark.parametrize("payload_kind", ["pickle"])
def test_malicious_pickle_checkpoint_is_refused_and_nothing_runs(tmp_path, payload_kind):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps(Evil(), protocol=4))
    out = cxr("train", "--data", tmp_path, "--resume", tmp_path / "nope")
    assert out.returncode == 1
    from cxr_core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_a_mistake_before_training_is_one_line_and_leaves_no_run(tmp_path, phantom_set):
    runs = tmp_path / "runs"
    typo = cxr("train", "--data", phantom_set, *TRAIN, "--model", "resnet10", "--runs-dir", runs)
    assert typo.returncode == 1 and typo.stderr.count("unknown model 'resnet10'") == 1, typo.stderr
    offline = cxr("train", "--data", phantom_set, *TRAIN, "--model", "resnet18", "--pretrained", "--runs-dir", runs,
                  "--detach", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and offline.stderr.count("error:") == 1 and "HF_HUB_OFFLINE" in offline.stderr
    assert not runs.exists() or not any(runs.iterdir())
    assert cxr_json("jobs", "list", "--runs-dir", runs) == []


def test_a_run_killed_before_its_first_checkpoint(tmp_path, phantom_set):
    """`--model RUN` says the run has no checkpoint yet; `jobs resume` starts it again from the beginning."""
    from cxr_core.train import jobs
    from cxr_core.train.config import TrainConfig

    runs = tmp_path / "runs"
    config = TrainConfig(data=str(phantom_set), model="tiny_resnet", image_size=48, epochs=1, batch_size=16, workers=0)
    run = jobs.create_run(config.resolve(), runs)
    run.update_status(state="running", pid=999_999_999, pid_start=1, phase="training")  # a process long gone
    run.append_metrics({"type": "step", "step": 1, "loss": 0.7})  # the aborted first epoch's step line
    out = cxr("predict", phantom_set, "--model", run.path)
    assert out.returncode == 1 and "has no checkpoint yet" not in out.stderr and "never wrote a checkpoint" in out.stderr
    assert "jobs resume" in out.stderr
    resumed = cxr("jobs", "resume", run.id, "--runs-dir", runs)
    assert resumed.returncode == 0, resumed.stderr
    _wait(lambda: run.read_status().state == "finished", 300, "the restarted run to finish", run)
    assert _epochs(run) == [1] and run.best_checkpoint.is_file()
    assert not [r for r in run.read_metrics() if r.get("type") == "step" and r.get("loss") == 0.7]


def test_run_ids_are_names_not_patterns(tmp_path):
    for ref in ("**", "[x", "*"):
        out = cxr("jobs", "stop", ref, "--runs-dir", tmp_path)
        assert out.returncode == 1 and "no such run" in out.stderr and "Traceback" not in out.stderr
