"""cxr_core.eval.evaluate / report: every number against scikit-learn, the patient bootstrap, the report files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxr_core.errors import DataError
from cxr_core.eval.evaluate import (
    evaluate,
    patient_codes,
    patient_resamples,
    pr_curve,
    reliability,
    roc_curve,
    weighted_auc_ap,
)
from cxr_core.eval.report import write_report
from cxr_core.predictions import Predictions

TOL = 1e-9


def _random_preds(seed: int, n: int = 400, k: int = 5, nan_fraction: float = 0.15, levels: int = 10,
                  n_patients: int = 120) -> Predictions:
    """Probabilities on a coarse grid (many ties, some exactly on bin edges and thresholds), NaN truth."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, k)) < rng.uniform(0.1, 0.5, k)).astype(np.float32)
    probs = np.round((truth * 0.3 + rng.random((n, k)) * 0.7) * levels) / levels
    truth[rng.random((n, k)) < nan_fraction] = np.nan
    patients = [f"p{i}" for i in rng.integers(0, n_patients, n)]
    ids = [f"s{i}" for i in range(n)]
    return Predictions([f"c{j}" for j in range(k)], probs, ids, ids, patients, truth)


def _column(preds: Predictions, k: int) -> tuple[np.ndarray, np.ndarray]:
    assert preds.truth is not None
    rows = ~np.isnan(preds.truth[:, k])
    return (preds.truth[rows, k] > 0.5).astype(int), preds.probs[rows, k].astype(np.float64)


# -- against scikit-learn ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_class_numbers_match_scikit_learn(seed):
    preds = _random_preds(seed)
    thresholds = {"c0": 0.3, "c2": 0.65, "c4": 0.5}
    result = evaluate(preds, {**thresholds, "c1": None, "c3": float("nan"), "other": 0.1}, n_boot=0)
    for k, label in enumerate(preds.labels):
        y, p = _column(preds, k)
        assert result["auc"][label] == pytest.approx(roc_auc_score(y, p), abs=TOL)
        assert result["ap"][label] == pytest.approx(average_precision_score(y, p), abs=TOL)
        t = thresholds.get(label, 0.5)
        y_pred = (p.astype(np.float32) >= np.float32(t)).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, y_pred, labels=[0, 1]).ravel()
        tm = result["threshold_metrics"][label]
        assert (tm["tp"], tm["fp"], tm["tn"], tm["fn"]) == (tp, fp, tn, fn)
        assert tm["threshold"] == t and result["threshold_source"][label] == ("given" if label in thresholds else "default")
        assert tm["support"] == y.sum() == result["support"][label] and tm["n"] == y.size == result["n_labelled"][label]
        assert tm["sensitivity"] == pytest.approx(recall_score(y, y_pred), abs=TOL)
        assert tm["specificity"] == pytest.approx(recall_score(1 - y, 1 - y_pred), abs=TOL)
        assert tm["ppv"] == pytest.approx(precision_score(y, y_pred), abs=TOL)
        assert tm["npv"] == pytest.approx(precision_score(1 - y, 1 - y_pred), abs=TOL)
        assert tm["f1"] == pytest.approx(f1_score(y, y_pred), abs=TOL)
    # averages over the labelled cells: macro = mean of classes, micro = pooled cells
    mask = preds.mask()
    assert result["auc_macro"] == pytest.approx(np.mean(list(result["auc"].values())), abs=TOL)
    assert result["ap_macro"] == pytest.approx(np.mean(list(result["ap"].values())), abs=TOL)
    assert result["auc_micro"] == pytest.approx(roc_auc_score(preds.truth[mask], preds.probs[mask]), abs=TOL)
    assert result["ap_micro"] == pytest.approx(average_precision_score(preds.truth[mask], preds.probs[mask]), abs=TOL)
    f1s = [result["threshold_metrics"][label]["f1"] for label in preds.labels]
    assert result["threshold_macro"]["f1"] == pytest.approx(np.mean(f1s), abs=TOL)


def test_averages_match_scikit_learn_micro_and_macro_without_missing_truth():
    preds = _random_preds(7, nan_fraction=0.0)
    result = evaluate(preds, n_boot=0)
    y, p = preds.truth.astype(int), preds.probs.astype(np.float64)
    y_pred = (preds.probs >= np.float32(0.5)).astype(int)
    for average in ("macro", "micro"):
        assert result[f"auc_{average}"] == pytest.approx(roc_auc_score(y, p, average=average), abs=TOL)
        assert result[f"ap_{average}"] == pytest.approx(average_precision_score(y, p, average=average), abs=TOL)
    assert result["threshold_macro"]["f1"] == pytest.approx(f1_score(y, y_pred, average="macro"), abs=TOL)
    micro = result["threshold_micro"]
    assert micro["f1"] == pytest.approx(f1_score(y, y_pred, average="micro"), abs=TOL)
    assert micro["sensitivity"] == pytest.approx(recall_score(y, y_pred, average="micro"), abs=TOL)
    assert micro["ppv"] == pytest.approx(precision_score(y, y_pred, average="micro"), abs=TOL)
    assert micro["specificity"] == pytest.approx(recall_score(1 - y, 1 - y_pred, average="micro"), abs=TOL)
    assert micro["tp"] + micro["fp"] + micro["tn"] + micro["fn"] == y.size
    assert result["threshold_macro"]["sensitivity"] == pytest.approx(
        recall_score(y, y_pred, average="macro"), abs=TOL)


@pytest.mark.parametrize("seed", [0, 5])
def test_calibration_matches_scikit_learn_calibration_curve(seed):
    preds = _random_preds(seed)
    result = evaluate(preds, n_boot=0, n_bins=10)
    for k, label in enumerate(preds.labels):
        y, p = _column(preds, k)
        observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
        bins = result["calibration"][label]["bins"]
        assert [o for o in bins["observed"] if o is not None] == pytest.approx(observed, abs=TOL)
        assert [m for m in bins["mean_predicted"] if m is not None] == pytest.approx(predicted, abs=TOL)
        assert sum(bins["count"]) == y.size
        # ECE by its definition, bin b = (lo, hi] (the first one also holds 0)
        edges = np.linspace(0, 1, 11)
        ece = 0.0
        for b in range(10):
            sel = (p > edges[b]) & (p <= edges[b + 1]) if b else (p <= edges[1])
            assert bins["count"][b] == sel.sum()
            if sel.any():
                ece += sel.sum() / y.size * abs(p[sel].mean() - y[sel].mean())
        assert result["calibration"][label]["ece"] == pytest.approx(ece, abs=TOL)
    mask = preds.mask()
    pooled = reliability(preds.truth[mask] > 0.5, preds.probs[mask])
    assert result["ece"] == pytest.approx(pooled["ece"], abs=TOL) and result["calibration_pooled"] == pooled


def test_curves_reproduce_auc_and_ap():
    preds = _random_preds(11)
    result = evaluate(preds, n_boot=0)
    for k, label in enumerate(preds.labels):
        y, p = _column(preds, k)
        fpr, tpr = roc_curve(y, p)
        assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(result["auc"][label], abs=TOL)
        recall, precision = pr_curve(y, p)
        assert np.sum(np.diff(np.r_[0, recall]) * precision) == pytest.approx(result["ap"][label], abs=TOL)


# -- undefined values --------------------------------------------------------------------------------------


def test_classes_without_both_outcomes_are_excluded_not_half():
    truth = np.array([[1, 0, 1, np.nan], [0, 0, 1, np.nan], [1, 0, 1, np.nan], [0, 0, 1, np.nan]])
    probs = np.array([[0.9, 0.1, 0.2, 0.5], [0.2, 0.3, 0.4, 0.5], [0.8, 0.1, 0.9, 0.5], [0.1, 0.7, 0.5, 0.5]])
    ids = ["a", "b", "c", "d"]
    result = evaluate(Predictions(["a", "b", "c", "d"], probs, ids, ids, ids, truth), n_boot=50)
    assert result["auc"] == {"a": 1.0, "b": None, "c": None, "d": None}
    assert result["ap"]["b"] is None and result["ci"]["b"] is None and result["n_boot_used"]["b"] == 0
    assert result["excluded"] == {"b": "no positives", "c": "no negatives", "d": "no labelled images"}
    assert result["auc_macro"] == 1.0 and result["ap_macro"] == 1.0
    assert result["support"] == {"a": 2, "b": 0, "c": 4, "d": 0}
    b = result["threshold_metrics"]["b"]  # 0/0 ratios are None, the rest still counted
    assert b["sensitivity"] is None and b["specificity"] == 0.75 and b["ppv"] == 0.0 and b["npv"] == 1.0
    d = result["threshold_metrics"]["d"]
    assert d["n"] == 0 and all(d[key] is None for key in ("sensitivity", "specificity", "ppv", "npv", "f1"))
    assert result["calibration"]["d"]["ece"] is None
    json.dumps(result, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_zero_denominators_are_none_and_missing_truth_or_nan_probabilities_raise():
    preds = _random_preds(3)
    result = evaluate(preds, {label: 1.01 for label in preds.labels}, n_boot=0)
    for label in preds.labels:
        tm = result["threshold_metrics"][label]
        assert tm["ppv"] is None and tm["tp"] == tm["fp"] == 0 and tm["sensitivity"] == 0.0
    with pytest.raises(DataError):
        evaluate(Predictions(["a"], [[0.5]], ["s"], ["i"]))
    with pytest.raises(DataError, match="NaN"):
        evaluate(Predictions(["a"], [[np.nan]], ["s"], ["i"], truth=[[1.0]]))


# -- bootstrap ---------------------------------------------------------------------------------------------


def test_weighted_auc_ap_equal_the_metrics_of_repeated_rows():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(5, 60))
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        p = rng.integers(0, 6, n) / 5
        w = rng.integers(0, 4, (3, n))
        w[:, :2] = 1
        auc, ap = weighted_auc_ap(y, p, w)
        for b in range(3):
            yy, pp = np.repeat(y, w[b]), np.repeat(p, w[b])
            assert auc[b] == pytest.approx(roc_auc_score(yy, pp), abs=TOL)
            assert ap[b] == pytest.approx(average_precision_score(yy, pp), abs=TOL)


def test_bootstrap_equals_a_naive_loop_over_patient_resamples():
    preds = _random_preds(4, n=150, k=3, n_patients=40)
    n_boot, seed = 60, 9
    result = evaluate(preds, n_boot=n_boot, seed=seed)
    codes = patient_codes(preds.patient)
    counts = patient_resamples(codes, n_boot, np.random.default_rng(seed))  # (patients, resamples)
    for k, label in enumerate(preds.labels):
        rows = ~np.isnan(preds.truth[:, k])
        aucs, aps = [], []
        for b in range(n_boot):
            repeat = counts[codes[rows], b].astype(int)  # each image as often as its patient was drawn
            y = np.repeat(preds.truth[rows, k], repeat)
            p = np.repeat(preds.probs[rows, k], repeat)
            if 0 < y.sum() < y.size:
                aucs.append(roc_auc_score(y, p))
                aps.append(average_precision_score(y, p))
        assert result["n_boot_used"][label] == len(aucs)
        assert result["ci"][label] == pytest.approx(np.percentile(aucs, [2.5, 97.5]), abs=TOL)
        assert result["ci_ap"][label] == pytest.approx(np.percentile(aps, [2.5, 97.5]), abs=TOL)


def test_sensitivity_and_specificity_cis_equal_a_naive_loop_over_the_same_resamples():
    preds = _random_preds(5, n=200, k=3, n_patients=50)
    thresholds = {"c0": 0.5, "c1": 0.3, "c2": 0.8}
    n_boot, seed = 80, 3
    result = evaluate(preds, thresholds, n_boot=n_boot, seed=seed)
    codes = patient_codes(preds.patient)
    counts = patient_resamples(codes, n_boot, np.random.default_rng(seed))
    for k, label in enumerate(preds.labels):
        rows = ~np.isnan(preds.truth[:, k])
        sens, spec = [], []
        for b in range(n_boot):
            repeat = counts[codes[rows], b].astype(int)
            y = np.repeat(preds.truth[rows, k], repeat) > 0.5
            flag = np.repeat(preds.probs[rows, k], repeat) >= np.float32(thresholds[label])
            if y.any():
                sens.append((flag & y).sum() / y.sum())
            if (~y).any():
                spec.append((~flag & ~y).sum() / (~y).sum())
        assert result["ci_sensitivity"][label] == pytest.approx(np.percentile(sens, [2.5, 97.5]), abs=TOL)
        assert result["ci_specificity"][label] == pytest.approx(np.percentile(spec, [2.5, 97.5]), abs=TOL)
        lo, hi = result["ci_sensitivity"][label]
        assert lo <= result["threshold_metrics"][label]["sensitivity"] <= hi


def test_bootstrap_resamples_patients_not_images():
    """One patient with 200 identical, badly ranked positive images beside 200 one-image patients ranked well:
    drawn 0, 1, 2... times, that patient moves the AUC in big steps; resampled image by image, it hardly moves."""
    rng = np.random.default_rng(0)
    n_single = 200
    single_truth = rng.random(n_single) < 0.5
    single_probs = np.where(single_truth, rng.uniform(0.4, 1.0, n_single), rng.uniform(0.0, 0.6, n_single))
    truth = np.r_[np.ones(200), single_truth].astype(np.float32)[:, None]
    probs = np.r_[np.full(200, 0.3), single_probs][:, None]
    ids = [str(i) for i in range(len(truth))]
    by_patient = Predictions(["x"], probs, ids, ids, ["big"] * 200 + ids[200:], truth)
    by_image = Predictions(["x"], probs, ids, ids, [""] * len(ids), truth)  # empty id: every image its own patient
    r_patient = evaluate(by_patient, n_boot=500, seed=1)
    r_image = evaluate(by_image, n_boot=500, seed=1)
    assert r_patient["n_patients"] == n_single + 1 and r_image["n_patients"] == len(ids)
    assert r_patient["auc"]["x"] == r_image["auc"]["x"]
    width = {name: r["ci"]["x"][1] - r["ci"]["x"][0] for name, r in (("patient", r_patient), ("image", r_image))}
    assert width["patient"] > 2 * width["image"], width


def test_ci_contains_the_estimate_is_seeded_and_counts_skipped_resamples():
    preds = _random_preds(2, n=600, k=4, n_patients=200)
    truth = preds.truth.copy()
    truth[:, 3] = 0
    truth[0, 3] = 1  # one positive image: resamples without its patient are skipped for that class
    preds = Predictions(preds.labels, preds.probs, preds.study, preds.image, preds.patient, truth)
    a = evaluate(preds, n_boot=300, seed=5)
    assert a == evaluate(preds, n_boot=300, seed=5)
    b = evaluate(preds, n_boot=300, seed=6)
    assert a["ci"] != b["ci"]
    for label in ("c0", "c1", "c2"):
        lo, hi = a["ci"][label]
        assert lo < a["auc"][label] < hi and a["n_boot_used"][label] == 300
        lo, hi = a["ci_ap"][label]
        assert lo < a["ap"][label] < hi
    assert a["ci_auc_macro"][0] < a["auc_macro"] < a["ci_auc_macro"][1]
    used = a["n_boot_used"]["c3"]
    assert 0.5 * 300 < used < 0.75 * 300  # P(patient drawn at least once) ~ 1 - 1/e
    assert a["n_boot_used_macro"] == used
    assert a["n_boot"] == 300 and a["seed"] == 5 and a["ci_level"] == 0.95


def test_patient_codes_and_resample_counts():
    codes = patient_codes(["a", "", "b", "a", "", "b"])
    assert codes.tolist() == [0, 1, 2, 0, 3, 2]
    counts = patient_resamples(codes, 7, np.random.default_rng(0))
    assert counts.shape == (4, 7) and (counts.sum(axis=0) == 4).all()


# -- report ------------------------------------------------------------------------------------------------


def test_report_files(tmp_path):
    preds = _random_preds(8, n=300, k=4)
    truth = preds.truth.copy()
    truth[:, 3] = np.where(np.isnan(truth[:, 3]), np.nan, 0)  # an excluded class
    preds = Predictions(preds.labels, preds.probs, preds.study, preds.image, preds.patient, truth,
                        meta={"checkpoint": "runs/r1/checkpoints/best.safetensors", "split": "test"})
    result = evaluate(preds, {"c0": 0.4}, n_boot=100)
    loc = {"c1": {"pointing_game": 0.75, "iou": 0.31, "n": 40}}
    paths = write_report(result, preds, tmp_path / "eval", title="Phantom test set", localisation=loc)
    names = sorted(p.name for p in paths)
    assert names == ["auc_ci.png", "per_class.csv", "pr.png", "reliability.png", "report.md", "roc.png"]
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o644
    assert not list((tmp_path / "eval").glob(".*"))  # no temporary files left

    md = (tmp_path / "eval" / "report.md").read_text()
    assert md.startswith("# Phantom test set")
    auc, (lo, hi) = result["auc"]["c0"], result["ci"]["c0"]
    assert f"| c0 | {result['n_labelled']['c0']:,} | {result['support']['c0']:,} | {auc:.3f} [{lo:.3f}, {hi:.3f}] |" in md
    for label in ("c1", "c2"):
        assert f"| {label} |" in md
    assert "| c3 |" in md and "excluded" in md and "**c3**: no positives" in md
    assert "## Localisation" in md and "| c1 | 40 | 0.750 | 0.310 |" in md
    assert "runs/r1/checkpoints/best.safetensors" in md and "bootstrap over **patients**" in md
    assert "![ROC curves](roc.png)" in md

    with open(tmp_path / "eval" / "per_class.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == preds.labels
    assert float(rows[0]["auc"]) == pytest.approx(auc, abs=1e-5) and float(rows[0]["threshold"]) == 0.4
    assert rows[3]["auc"] == "" and rows[3]["excluded"] == "no positives"

    for name in ("auc_ci.png", "roc.png", "pr.png", "reliability.png"):
        path = tmp_path / "eval" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()


def test_report_without_scored_classes_still_writes(tmp_path):
    ids = ["a", "b"]
    preds = Predictions(["x"], [[0.2], [0.7]], ids, ids, ids, [[0.0], [0.0]])
    result = evaluate(preds, n_boot=20)
    paths = write_report(result, preds, tmp_path, title="Nothing to rank")
    assert sorted(p.name for p in paths) == ["per_class.csv", "reliability.png", "report.md"]
    assert "**x**: no positives" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_modules_load_neither_matplotlib_nor_scipy_on_import():
    code = ("import sys, cxr_core.eval.evaluate, cxr_core.eval.report\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'scipy', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_evaluating_the_training_images_of_the_run_says_the_metrics_are_optimistic(tmp_path):
    from cxr_core.eval.evaluation import _trained_on_these
    from cxr_core.runs import RunDir
    from cxr_core.train.config import TrainConfig, write_run_config

    root = tmp_path / "data"
    root.mkdir()
    run = RunDir.create(tmp_path / "runs")
    write_run_config(run, TrainConfig(data=str(root)))
    preds = Predictions(["Effusion"], np.zeros((4, 1), np.float32), ["a", "b", "c", "d"], ["a", "b", "c", "d"],
                        split=["train", "train", "val", "test"], meta={"root": str(root)})
    said = _trained_on_these(run, preds)
    assert said is not None and said.startswith("2 of the 4 images are in the training split") and "optimistic" in said
    assert _trained_on_these(run, preds.subset(np.array([2, 3]))) is None  # val and test only
    assert _trained_on_these(None, preds) is None  # a checkpoint outside a run: not known
    other = RunDir.create(tmp_path / "runs", "other")
    write_run_config(other, TrainConfig(data=str(tmp_path / "elsewhere")))
    assert _trained_on_these(other, preds) is None  # trained on another data set


def test_a_second_data_set_gets_its_own_default_report_folder(tmp_path):
    from cxr_core.eval.evaluation import default_out
    from cxr_core.runs import RunDir
    from cxr_core.train.config import TrainConfig, write_run_config

    own, other = tmp_path / "nih-64px", tmp_path / "nih-sample"
    run = RunDir.create(tmp_path / "runs")
    write_run_config(run, TrainConfig(data=str(own)))
    checkpoint = run.path / "checkpoints" / "best.safetensors"
    assert default_out(checkpoint, "test", own) == run.path / "eval" / "test"  # what the TUI's evaluate writes
    elsewhere = default_out(checkpoint, "test", other)
    assert elsewhere.parent == run.path / "eval" and elsewhere.name.startswith("test-nih-sample-")
    assert elsewhere != default_out(checkpoint, "test", tmp_path / "b" / "nih-sample")  # same name, another root


def test_positives_from_few_patients_are_a_caveat():
    from cxr_core.eval.evaluation import few_positive_patients

    truth = np.zeros((12, 2), np.float32)
    truth[:5, 0] = 1  # Edema: 5 positives, one patient (nih-64px test: CI [0.627, 0.737] from a single patient)
    truth[5:11, 1] = 1  # Effusion: 6 positives from 6 patients
    patients = ["p1"] * 5 + [f"q{k}" for k in range(7)]
    preds = Predictions(["Edema", "Effusion"], np.zeros((12, 2), np.float32), [f"s{k}" for k in range(12)],
                        [f"s{k}.png" for k in range(12)], patients, truth)
    said = few_positive_patients(preds)
    assert said is not None and "Edema (5 positives from 1 patient)" in said and "Effusion" not in said
    assert few_positive_patients(preds.subset(np.arange(5, 12))) is None  # no Edema left; Effusion from 6
