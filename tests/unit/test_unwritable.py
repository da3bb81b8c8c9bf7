"""Unwritable places, as a user meets them: every output that cannot be written is one line, said before the
work starts, and nothing already there is harmed."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_core.checkpoint import save_checkpoint
from cxr_core.models import create_model
from tests.cli import cxr

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("unwritable")
    root = base / "root"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(root / f"i{i}.png")
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=["Effusion"], image_size=32)
    checkpoint = base / "model.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    readonly = base / "readonly"
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(readonly)],
                             capture_output=True).returncode == 0
    yield {"base": base, "root": root, "model": checkpoint, "readonly": readonly if mounted else None}
    if mounted:
        subprocess.run(["umount", str(readonly)], capture_output=True)


def one_line(out, *words):
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def test_outputs_that_cannot_be_written(setup, tmp_path):
    root, model = setup["root"], setup["model"]
    env = {"CXR_HOME": str(tmp_path / "home")}
    one_line(cxr("predict", root, "--model", model, "--out", tmp_path, env=env), "is a directory")
    one_line(cxr("predict", root, "--model", model, "--out", tmp_path / "missing" / "p.csv", env=env), "no such folder")
    one_line(cxr("cam", root / "i1.png", "--model", model, "--out", tmp_path / "nowhere" / "cam.png", env=env),
             "no such folder")
    plain = tmp_path / "plain"
    plain.write_text("x")
    one_line(cxr("data", "index", root, env={"CXR_HOME": str(plain)}), "not a directory", "CXR_HOME")
    one_line(cxr("eval", model, "--data", root, "--out", plain / "report", env=env), "not a folder")
    one_line(cxr("train", "--data", root, "--model", "tiny_resnet", "--runs-dir", plain / "runs", env=env),
             "not a folder")
    assert plain.read_text() == "x"


def test_a_read_only_file_system(setup, tmp_path):
    readonly = setup["readonly"]
    if readonly is None:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    root, model = setup["root"], setup["model"]
    env = {"CXR_HOME": str(tmp_path / "home")}
    one_line(cxr("predict", root, "--model", model, "--out", readonly / "p.csv", env=env), "read-only file system")
    one_line(cxr("train", "--data", root, "--model", "tiny_resnet", "--runs-dir", readonly / "runs", env=env),
             "read-only file system")
    one_line(cxr("data", "index", root, env={"CXR_HOME": str(readonly / "home")}), "read-only file system")
    one_line(cxr("thresholds", "tune", "--preds", root / "none.csv", "--out", readonly / "t.json", env=env),
             "read-only file system")
