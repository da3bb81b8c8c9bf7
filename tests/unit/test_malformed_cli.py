"""The malformed-file corpus (tests/malformed.py builds it) through `data index`, `predict` and `eval` as
subprocesses: exit 0, every good file used, every bad file listed with its reason, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxr_core.checkpoint import save_checkpoint
from cxr_core.models import create_model
from tests.malformed import build_mixed_folder

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_tui", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str], dict[str, str], Path]:
    root = tmp_path_factory.mktemp("corpus") / "mixed"
    good, bad = build_mixed_folder(root)
    rows = ["image,labels,patient_id"] + [f'"{name}",{"Effusion" if i % 2 else "No Finding"},p{i % 5}'
                                          for i, name in enumerate(good)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=["Effusion", "Mass"], image_size=32)
    checkpoint = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    return root, good, bad, checkpoint


def _listed(errors: dict[str, str], bad: dict[str, str]) -> None:
    for name, reason in bad.items():
        assert name in errors, f"{name} not reported"
        assert reason.lower() in errors[name].lower(), f"{name}: {errors[name]!r} lacks {reason!r}"


def test_index_lists_every_bad_file(corpus, tmp_path):
    root, good, bad, _ = corpus
    done = _cli("data", "index", root, "--json", "--db", tmp_path / "i.sqlite")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["images"] == len(good)
    _listed({item["path"]: item["reason"] for item in report["unreadable_files"]}, bad)


def test_predict_predicts_every_good_file_and_lists_the_bad(corpus, tmp_path):
    root, good, bad, checkpoint = corpus
    out = tmp_path / "preds.csv"
    done = _cli("predict", root, "--model", checkpoint, "--out", out, "--json", "--db", tmp_path / "i.sqlite")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["images"] >= len(good) - 1  # a multi-frame DICOM is one image; every good file is there
    _listed(summary["errors"], bad)
    text = out.read_text(encoding="utf-8")
    assert all(name in text for name in good)


def test_eval_runs_over_the_good_files_and_lists_the_bad(corpus, tmp_path):
    root, good, bad, checkpoint = corpus
    done = _cli("eval", checkpoint, "--data", root, "--split", "all", "--out", tmp_path / "eval", "--n-boot", "20",
                "--json", "--db", tmp_path / "i.sqlite")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["n_images"] == len(good) and result["auc"]["Effusion"] is not None
    assert "Mass" in result["excluded"]  # the data set never labels Mass positive: reported, not 0.5
    _listed(result["unreadable"], bad)
