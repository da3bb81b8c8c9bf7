from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import cxr_core.checkpoint as checkpoint
from cxr_core.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from cxr_core.runs import RunDir


def _save(path, value=1.0, epoch=1):
    weights = {"w": torch.full((3, 2), value), "b": torch.zeros(2)}
    save_checkpoint(path, weights, {"name": "tiny"}, metrics={"auc": 0.5}, epoch=epoch,
                    train_state={"opt": {0: {"step": torch.tensor(3.0)}}, "lr": [0.1, (1, 2)], "flag": None})


def test_round_trip_keeps_structure_and_key_types(tmp_path):
    path = tmp_path / "last.safetensors"
    _save(path)
    ckpt = load_checkpoint(path, train_state=True)
    assert ckpt.epoch == 1 and ckpt.model_config == {"name": "tiny"} and ckpt.metrics == {"auc": 0.5}
    assert torch.equal(ckpt.weights["w"], torch.ones(3, 2))
    assert ckpt.train_state["opt"][0]["step"].item() == 3.0  # int key survives JSON
    assert ckpt.train_state["lr"] == [0.1, (1, 2)] and ckpt.train_state["flag"] is None
    assert read_metadata(path)["epoch"] == 1
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    _save(path, value=1.0, epoch=1)

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _save(path, value=2.0, epoch=2)
    ckpt = load_checkpoint(path)
    assert ckpt.epoch == 1 and torch.equal(ckpt.weights["w"], torch.ones(3, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_damaged_foreign_and_pickled_files_are_refused_with_one_line(tmp_path):
    good = tmp_path / "good.safetensors"
    _save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    foreign = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    pickled = tmp_path / "model.pth"
    torch.save({"x": torch.zeros(1)}, pickled)
    for path, reason in ((truncated, "damaged"), (foreign, "not a cxr checkpoint"), (pickled, "never unpickles"),
                         (tmp_path / "missing.safetensors", "cannot read")):
        with pytest.raises(CheckpointError, match=reason) as err:
            load_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_run_status_reads_interrupted_when_the_process_is_gone(tmp_path):
    run = RunDir.create(tmp_path, "x")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    run.update_status(state="running", pid=child.pid, pid_start="1")
    assert run.read_status().state == "interrupted"
    run.mark_running()
    assert run.read_status().state == "running"
    assert RunDir.open(run.id[:10], tmp_path).path == run.path


def test_metrics_reader_skips_a_line_being_written(tmp_path):
    run = RunDir.create(tmp_path, "m")
    run.append_metrics({"epoch": 1, "val_auc_macro": 0.7})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"epoch": 2, "val_')
    assert run.read_metrics() == [{"epoch": 1, "val_auc_macro": 0.7}]
