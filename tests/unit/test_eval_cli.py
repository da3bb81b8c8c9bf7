"""`eval`, `cam` and `thresholds tune` as scripts run them: subprocesses, files on disk, numbers rechecked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from cxr_core.checkpoint import save_checkpoint
from cxr_core.eval.thresholds_file import load_thresholds, threshold_values
from cxr_core.models import create_model
from cxr_core.phantoms import FINDINGS
from cxr_core.predictions import Predictions

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_tui", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=[f if isinstance(f, str) else f.name for f in FINDINGS], image_size=48)
    run = tmp_path_factory.mktemp("run") / "checkpoints"
    run.mkdir()
    save_checkpoint(run / "best.safetensors", model.state_dict(), model.cxr_config.to_dict())
    return run / "best.safetensors"


def test_eval_json_matches_sklearn_on_its_own_predictions(checkpoint, phantom_set, tmp_path):
    out = tmp_path / "report"
    done = _cli("eval", str(checkpoint.parent.parent), "--data", str(phantom_set), "--split", "all", "--out", str(out),
                "--n-boot", "200", "--boxes", str(phantom_set / "BBox_List.csv"), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for name in ("report.md", "per_class.csv", "predictions.csv", "roc.png", "auc_ci.png"):
        assert (out / name).is_file(), name
    preds = Predictions.read(out / "predictions.csv")
    assert len(preds) == result["n_images"] == 96
    scored = 0
    for k, label in enumerate(preds.labels):
        known = ~np.isnan(preds.truth[:, k])
        truth = preds.truth[known, k]
        if result["auc"][label] is None:
            assert truth.min() == truth.max() or label in result["excluded"]
            continue
        assert result["auc"][label] == pytest.approx(roc_auc_score(truth, preds.probs[known, k]), abs=1e-9)
        lo, hi = result["ci"][label]
        assert lo <= hi
        scored += 1
    assert scored >= 4
    assert result["localisation"] and all(0 <= v["pointing_game"] <= 1 for v in result["localisation"].values())
    assert "| Finding" in (out / "report.md").read_text() or "AUC" in (out / "report.md").read_text()


def test_thresholds_tune_then_predict_flags_follow(checkpoint, phantom_set, tmp_path):
    preds = tmp_path / "preds.csv"
    assert _cli("predict", str(phantom_set), "--model", str(checkpoint), "--out", str(preds)).returncode == 0
    thresholds = tmp_path / "thresholds.json"
    done = _cli("thresholds", "tune", "--preds", str(preds), "--mode", "sens=0.8", "--out", str(thresholds), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    tuned = json.loads(thresholds.read_text())
    assert tuned["tuned_on"]["split"] == "val" and set(tuned["tuned_on"]["splits"]) == {"val"}  # the default
    assert any(v["threshold"] is not None for v in tuned["labels"].values())
    values = threshold_values(load_thresholds(thresholds), list(tuned["labels"]))  # 0.5 where tuning found none
    flagged = tmp_path / "flagged.csv"
    assert _cli("predict", str(phantom_set), "--model", str(checkpoint), "--thresholds", str(thresholds),
                "--out", str(flagged)).returncode == 0
    table = Predictions.read(flagged)
    assert table.flagged(values) == [f.split("|") if f else [] for f in
                                     [line.rsplit(",", 1)[1] for line in flagged.read_text().splitlines()[1:]]]
    # the model's own thresholds (what the TUI's thresholds screen saves) are predict's default, as eval's
    import shutil

    from cxr_core.eval import thresholds_path_for
    from cxr_core.infer.loading import fingerprint

    own = thresholds_path_for(checkpoint, fingerprint(checkpoint))
    own.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(thresholds, own)
    default = tmp_path / "default.csv"
    done = _cli("predict", str(phantom_set), "--model", str(checkpoint), "--out", str(default), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["thresholds"] == str(own), done.stderr[-2000:]
    assert default.read_text() == flagged.read_text()  # it ignored the saved file: nothing flagged at 0.5


def test_cam_writes_an_overlay_of_the_image_size(checkpoint, phantom_set, tmp_path):
    image = sorted((phantom_set / "images").glob("*.png"))[0]
    out = tmp_path / "cam.png"
    done = _cli("cam", str(image), "--model", str(checkpoint), "--finding", "effusion", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout)
    assert info["finding"] == "Effusion" and out.is_file()
    with Image.open(out) as png, Image.open(image) as src:
        assert png.size == src.size and png.mode == "RGB"
    bad = _cli("cam", str(image), "--model", str(checkpoint), "--finding", "Fracture", "--out", str(out))
    assert bad.returncode == 1 and "Fracture" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_says_when_it_scores_the_split_its_thresholds_were_tuned_on(checkpoint, phantom_set, tmp_path):
    run = checkpoint.parent.parent
    thresholds = run / "thresholds.json"  # the run's own file: what eval takes by default
    test_preds = tmp_path / "test.csv"
    assert _cli("predict", str(phantom_set), "--model", str(checkpoint), "--split", "test",
                "--out", str(test_preds)).returncode == 0
    done = _cli("thresholds", "tune", "--preds", str(test_preds), "--split", "test", "--out", str(thresholds))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "on-test"
    done = _cli("eval", str(run), "--data", str(phantom_set), "--split", "test", "--n-boot", "50", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    warning = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "tuned on the test split" in warning[0]
    report = (out / "report.md").read_text()
    assert "**Caveat:** the thresholds were tuned on the test split" in report and "allowed" not in report

    allowed = tmp_path / "allowed"
    done = _cli("eval", str(run), "--data", str(phantom_set), "--split", "test", "--n-boot", "50",
                "--allow-same-split", "--out", str(allowed))
    assert done.returncode == 0 and "note: the thresholds were tuned on the test split" in done.stdout
    assert "allowed with --allow-same-split" in (allowed / "report.md").read_text()

    all_preds = tmp_path / "all.csv"
    assert _cli("predict", str(phantom_set), "--model", str(checkpoint), "--out", str(all_preds)).returncode == 0
    assert _cli("thresholds", "tune", "--preds", str(all_preds), "--out", str(thresholds)).returncode == 0  # val
    clean = tmp_path / "on-val"
    done = _cli("eval", str(run), "--data", str(phantom_set), "--split", "test", "--n-boot", "50", "--out", str(clean))
    assert done.returncode == 0 and "warning:" not in done.stdout and "tuned on" not in done.stdout
    report = (clean / "report.md").read_text()
    caveats = [line for line in report.splitlines() if "**Caveat:**" in line]
    assert not [c for c in caveats if "tuned" in c] and "Thresholds tuned on: `val" in report  # no tuning caveat


def test_python_m_cxr_core_eval_is_the_same_evaluation(checkpoint, phantom_set, tmp_path):
    """What the TUI starts detached: the core's evaluation, no command-line front-end."""
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "cxr_core.eval", str(checkpoint.parent.parent), "--data",
                           str(phantom_set), "--split", "all", "--n-boot", "20", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "macro AUC" in done.stdout and (out / "report.md").is_file() and (out / "per_class.csv").is_file()
    bad = subprocess.run([sys.executable, "-m", "cxr_core.eval", str(checkpoint), "--data", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "none" in bad.stderr
