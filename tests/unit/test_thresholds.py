"""Operating points and threshold tuning against brute force (NumPy, exact fractions, scikit-learn); the
thresholds file; the ``thresholds`` CLI."""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix, f1_score, roc_curve
from typer.testing import CliRunner

from cxr_core.errors import CxrError
from cxr_core.eval.operating_points import Mode, OperatingPoints, parse_mode, tune
from cxr_core.eval.thresholds_file import ThresholdsFile, load_thresholds, save_review, thresholds_from_choices
from cxr_core.predictions import Predictions
from cxr_tui.cli.thresholds import app

# -- brute force -------------------------------------------------------------------------------------------


def random_set(seed: int, n: int, k: int, levels: int, unknown: float, dtype=np.float64):
    """Scores on ``levels`` levels (few levels: many ties), truth 1/0 with a share of NaN."""
    rng = np.random.default_rng(seed)
    probs = (rng.integers(0, levels, (n, k)) / levels).astype(dtype)
    truth = (rng.random((n, k)) < 0.3).astype(np.float64)
    truth[rng.random((n, k)) < unknown] = np.nan
    return probs, truth


def brute(probs: np.ndarray, truth: np.ndarray, t: np.ndarray, c: int) -> dict:
    """Counts of one class at threshold t by direct comparison over all rows (in the scores' dtype)."""
    score = probs[:, c]
    has = ~np.isnan(score)
    flag = score >= np.asarray(t, dtype=probs.dtype)
    known = has & ~np.isnan(truth[:, c])
    pos, neg = known & (truth[:, c] == 1), known & (truth[:, c] == 0)
    return {"tp": int((flag & pos).sum()), "fp": int((flag & neg).sum()), "tn": int((~flag & neg).sum()),
            "fn": int((~flag & pos).sum()), "flagged": int((flag & has).sum()), "support": int(pos.sum()),
            "negatives": int(neg.sum())}


def ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(a - b) <= 1e-9


def candidates(probs: np.ndarray, truth: np.ndarray, c: int) -> np.ndarray:
    known = ~np.isnan(truth[:, c]) & ~np.isnan(probs[:, c])
    u = np.unique(probs[known, c])
    return np.concatenate([u, [np.nextafter(u[-1], np.array(np.inf, dtype=probs.dtype))]]).astype(probs.dtype)


def exhaustive(probs: np.ndarray, truth: np.ndarray, c: int, mode: Mode) -> float:
    """The mode's threshold by trying every candidate, with exact fractions for F1 and Youden's J."""
    best = None
    rows = []
    for t in candidates(probs, truth, c):
        b = brute(probs, truth, t, c)
        p, q = b["support"], b["negatives"]
        rows.append((float(t), b, p, q))
    if mode.kind == "sens":
        return max(t for t, b, p, _ in rows if b["tp"] / p >= mode.value)
    if mode.kind == "spec":
        return min(t for t, b, _, q in rows if b["tn"] / q >= mode.value)
    for t, b, p, q in rows:  # ascending; >= keeps the highest threshold among ties
        if mode.kind == "f1":
            value = Fraction(2 * b["tp"], 2 * b["tp"] + b["fp"] + b["fn"])
        else:
            value = Fraction(b["tp"], p) + Fraction(b["tn"], q) - 1
        if best is None or value >= best[0]:
            best = (value, t)
    return best[1]


# -- operating points ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 150), st.integers(1, 4), st.sampled_from([2, 5, 1000]),
       st.sampled_from([0.0, 0.2]), st.sampled_from([np.float32, np.float64]))
def test_counts_and_rates_match_brute_force(seed, n, k, levels, unknown, dtype):
    probs, truth = random_set(seed, n, k, levels, unknown, dtype)
    points = OperatingPoints(probs, truth)
    rng = np.random.default_rng(seed + 1)
    pool = np.r_[probs.ravel(), rng.random(5), 0.0, 1.0, 1.5, -0.1, np.nan, 0.3]
    for _ in range(5):
        t = rng.choice(pool, k)
        stats = points.at(t)
        for c in range(k):
            b = brute(probs, truth, t[c], c)
            row = stats.row(c)
            for key, value in b.items():
                assert row[key] == value, (key, c)
            tp, fp, tn, fn = b["tp"], b["fp"], b["tn"], b["fn"]
            assert row["labelled"] == tp + fp + tn + fn
            assert same(row["sensitivity"], ratio(tp, tp + fn))
            assert same(row["specificity"], ratio(tn, tn + fp))
            assert same(row["ppv"], ratio(tp, tp + fp))
            assert same(row["npv"], ratio(tn, tn + fn))
            assert same(row["f1"], ratio(2 * tp, 2 * tp + fp + fn))


def test_counts_match_scikit_learn():
    probs, truth = random_set(7, 500, 3, 20, 0.1)
    points = OperatingPoints(probs, truth, labels=["a", "b", "c"])
    t = np.array([0.3, 0.55, 0.9])
    stats = points.at(t)
    for c in range(3):
        known = ~np.isnan(truth[:, c])
        y, pred = truth[known, c].astype(int), (probs[known, c] >= t[c]).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (stats.tp[c], stats.fp[c], stats.tn[c], stats.fn[c]) == (tp, fp, tn, fn)
        assert stats.f1[c] == pytest.approx(f1_score(y, pred), abs=1e-9)
        assert stats.flagged[c] == int((probs[:, c] >= t[c]).sum())  # unlabelled rows count as flagged too


def test_flagged_agrees_with_predictions_file_flags():
    probs, truth = random_set(3, 300, 2, 1000, 0.3, np.float32)
    preds = Predictions(["a", "b"], probs, [str(i) for i in range(300)], [f"{i}.png" for i in range(300)], truth=truth)
    chosen = {"a": 0.3, "b": 0.7000000001}
    stats = OperatingPoints.from_predictions(preds).at(chosen)
    flags = preds.flagged(chosen)
    assert stats.flagged.tolist() == [sum("a" in f for f in flags), sum("b" in f for f in flags)]
    assert stats.threshold.tolist() == [0.3, 0.7000000001]  # kept as given, compared in float32


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 200), st.sampled_from([2, 5, 1000]))
def test_roc_points_match_scikit_learn(seed, n, levels):
    probs, truth = random_set(seed, n, 1, levels, 0.2)
    truth[0, 0], truth[1, 0] = 1, 0
    points = OperatingPoints(probs, truth)
    curve = points.curve(0)
    known = ~np.isnan(truth[:, 0])
    fpr, tpr, thr = roc_curve(truth[known, 0], probs[known, 0], drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(curve.tpr, tpr, atol=1e-12)
    np.testing.assert_array_equal(curve.thresholds[1:], thr[1:])
    assert curve.thresholds[0] > probs[known, 0].max() and np.isnan(curve.precision[0])
    for i in range(1, curve.thresholds.size):
        b = brute(probs, truth, curve.thresholds[i], 0)
        assert curve.precision[i] == pytest.approx(b["tp"] / (b["tp"] + b["fp"]), abs=1e-12)
        assert curve.recall[i] == pytest.approx(b["tp"] / b["support"], abs=1e-12)


def test_curve_downsample_keeps_the_ends():
    probs, truth = random_set(1, 5000, 1, 100_000, 0.0)
    full = OperatingPoints(probs, truth).curve(0)
    small = OperatingPoints(probs, truth).curve(0, max_points=40)
    assert full.thresholds.size > 1000 and 2 <= small.thresholds.size <= 40
    assert (small.fpr[0], small.tpr[0], small.fpr[-1], small.tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(small.thresholds) < 0)


# -- tuning ------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 120), st.sampled_from([2, 5, 1000]),
       st.sampled_from(["f1", "youden", "sens=0.8", "sens=0.5", "sens=1", "spec=0.9", "spec=0.25", "spec=0"]),
       st.sampled_from([np.float32, np.float64]))
def test_tuning_equals_exhaustive_search(seed, n, levels, mode_text, dtype):
    probs, truth = random_set(seed, n, 2, levels, 0.15, dtype)
    truth[0], truth[1] = 1, 0  # both outcomes in every class
    points = OperatingPoints(probs, truth, labels=["a", "b"])
    mode = parse_mode(mode_text)
    for c, choice in enumerate(tune(points, mode)):
        assert choice.reason is None and choice.mode == str(mode)
        assert choice.threshold == exhaustive(probs, truth, c, mode)
        b = brute(probs, truth, choice.threshold, c)
        assert all(choice.metrics[key] == value for key, value in b.items())
        if mode.kind == "sens":
            assert choice.metrics["sensitivity"] >= mode.value
        if mode.kind == "spec":
            assert choice.metrics["specificity"] >= mode.value


def test_fixed_mode_and_flag_nothing():
    probs = np.array([[0.1], [0.4], [0.4], [0.8]])
    truth = np.array([[0], [1], [0], [1]])
    points = OperatingPoints(probs, truth, labels=["a"])
    [fixed] = tune(points, "fixed=0.4")
    assert fixed.threshold == 0.4 and (fixed.metrics["tp"], fixed.metrics["fp"], fixed.metrics["flagged"]) == (2, 1, 3)
    [none] = tune(points, "sens=0")  # the highest threshold meeting sensitivity 0 flags nothing
    assert none.threshold > 0.8 and none.metrics["flagged"] == 0 and none.metrics["ppv"] is None
    [spec] = tune(points, "spec=1")  # the lowest threshold with no false positive: 0.8 (0.4 has one)
    assert spec.threshold == 0.8 and spec.metrics["fp"] == 0
    [f1] = tune(points, "f1")  # F1 at 0.4 = 0.8 and at 0.1 = 0.667, at 0.8 = 0.667
    assert f1.threshold == 0.4


def test_classes_without_both_outcomes_get_a_reason_not_a_threshold():
    probs = np.array([[0.2, 0.3, 0.5, 0.1], [0.6, 0.3, 0.5, 0.9], [0.9, 0.3, 0.5, 0.4]])
    truth = np.array([[0, 1, 1, np.nan], [0, 1, 0, np.nan], [0, 1, 1, np.nan]])
    points = OperatingPoints(probs, truth, labels=["noPos", "noNeg", "same", "unlabelled"])
    for mode in ("f1", "youden", "sens=0.9", "spec=0.9"):
        by = {c.label: c for c in tune(points, mode)}
        assert by["noPos"].threshold is None and "no positive" in by["noPos"].reason
        assert by["noNeg"].threshold is None and "no negative" in by["noNeg"].reason
        assert by["unlabelled"].threshold is None and by["unlabelled"].reason == "no labelled cases"
        assert by["noPos"].metrics["support"] == 0 and by["noPos"].metrics["sensitivity"] is None
    by = {c.label: c for c in tune(points, "f1")}
    assert by["same"].threshold == 0.5 and by["same"].metrics["sensitivity"] == 1.0  # all one score: flag all
    stats = points.at([0.5, 0.5, 0.5, 0.5]).rows()
    assert stats["noPos"]["sensitivity"] is None and stats["noNeg"]["specificity"] is None
    assert stats["unlabelled"]["flagged"] == 1 and stats["unlabelled"]["labelled"] == 0
    assert [c.threshold for c in tune(points, "fixed=0.5")] == [0.5] * 4


def test_empty_nan_scores_and_no_truth():
    empty = OperatingPoints(np.zeros((0, 2)), np.zeros((0, 2)), labels=["a", "b"])
    assert empty.at([0.5, 0.5]).rows()["a"]["flagged"] == 0
    assert empty.curve("a").thresholds.size == 0
    assert [c.reason for c in tune(empty, "f1")] == ["no labelled cases"] * 2
    nan_scores = OperatingPoints(np.array([[np.nan], [0.7], [0.2]]), np.array([[1], [1], [0]]))
    row = nan_scores.at([0.5]).row(0)
    assert (row["tp"], row["fn"], row["support"], row["flagged"]) == (1, 0, 1, 1) and nan_scores.missing[0] == 1
    no_truth = OperatingPoints(np.array([[0.1], [0.9]]), None)
    assert no_truth.at([0.5]).row(0)["flagged"] == 1 and no_truth.at([0.5]).row(0)["sensitivity"] is None
    preds = Predictions(["a"], np.array([[0.1]]), ["s"], ["s.png"])
    with pytest.raises(CxrError, match="no labels"):
        OperatingPoints.from_predictions(preds)
    points = OperatingPoints(np.array([[0.1, 0.2]]), np.array([[1, 0]]), labels=["a", "b"])
    assert points.at({"a": 0.05}).row("b")["flagged"] == 0  # missing from a mapping: flags nothing
    with pytest.raises(CxrError, match="unknown label 'zz'"):
        points.curve("zz")


@pytest.mark.parametrize("text,expected", [("f1", Mode("f1")), (" Youden ", Mode("youden")),
                                            ("sens=0.8", Mode("sens", 0.8)), ("spec = 0.95", Mode("spec", 0.95)),
                                            ("fixed=0.5", Mode("fixed", 0.5)), ("sens=1", Mode("sens", 1.0))])
def test_parse_mode(text, expected):
    assert parse_mode(text) == expected
    assert parse_mode(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "f2", "sens", "sens=", "sens=abc", "sens=1.5", "spec=-0.1", "f1=0.3",
                                  "fixed=nan", "fixed=inf", "fixed=-3", "fixed=1.5", "sens=0.8=1", "auc"])
def test_bad_modes_are_one_line_errors(text):
    with pytest.raises(CxrError) as err:
        parse_mode(text)
    assert "\n" not in str(err.value) and "bad threshold mode" in str(err.value)


# -- the file ------------------------------------------------------------------------------------------------


def tuned_file(tmp_path, who="alice"):
    probs, truth = random_set(5, 200, 3, 50, 0.1, np.float32)
    truth[:, 2] = 0  # no positives in c
    points = OperatingPoints(probs, truth, labels=["a", "b", "c"])
    data = thresholds_from_choices(tune(points, "sens=0.8"), predictions="preds.csv", n=200, who=who)
    return points, data, data.write(tmp_path / "thresholds.json")


def test_json_round_trip(tmp_path):
    points, data, path = tuned_file(tmp_path)
    back = load_thresholds(path)
    assert back.thresholds == data.thresholds and set(back.thresholds) == {"a", "b"}
    assert back.labels["c"].threshold is None and "no positive" in back.labels["c"].reason
    assert back.to_json() == data.to_json()
    raw = json.loads(path.read_text())
    assert raw["version"] == 1 and raw["n"] == 200 and raw["predictions"] == "preds.csv"
    assert raw["labels"]["a"]["mode"] == "sens=0.8" and raw["labels"]["a"]["metrics"]["sensitivity"] >= 0.8
    assert raw["history"][0]["who"] == "alice" and raw["history"][0]["changes"]["a"]["from"] is None
    # the stored threshold reproduces the stored metrics exactly
    assert points.at(back.thresholds).row("a") == back.labels["a"].metrics


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    _, data, path = tuned_file(tmp_path)
    before = path.read_bytes()
    data.labels["a"].threshold = 0.123

    def broken(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cxr_core.atomic.os.replace", broken)
    with pytest.raises(CxrError, match="cannot write thresholds"):
        data.write(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["thresholds.json"]  # no temp file left behind


@pytest.mark.parametrize("content,reason", [
    ("", "invalid JSON"), ('{"version": 1, "labels": {"a": {"thresh', "invalid JSON"),
    ("[1, 2]", "expected a JSON object"), ('{"labels": {}}', "expected a JSON object"),
    ('{"version": 1, "labels": {"a": {"threshold": "high"}}}', "not a number from 0 to 1"),
    ('{"version": 1, "labels": {"a": {"threshold": -3}}}', "not a number from 0 to 1"),
    ('{"version": 1, "labels": {"a": {"threshold": 0.5, "metrics": [1]}}}', "metrics is not an object"),
    ('{"version": 1, "labels": {}, "history": [{"changes": 5}]}', "'changes' objects"),
    ('{"version": 1, "labels": {"a": {"mode": "f1"}}}', "has no threshold"),
    ('{"version": 1, "labels": []}', "'labels' is not an object"),
    ('{"version": 7, "labels": {}}', "newer than this cxr reads"),
])
def test_damaged_or_foreign_files_raise_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(CxrError) as err:
        load_thresholds(path)
    assert str(path) in str(err.value) and reason in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CxrError, match="no such thresholds file"):
        load_thresholds(tmp_path / "nope.json")


def test_review_save_appends_history_and_keeps_previous_values(tmp_path, monkeypatch):
    points, data, path = tuned_file(tmp_path)
    monkeypatch.setattr("getpass.getuser", lambda: "dr_bob")
    old_a = data.thresholds["a"]
    saved = save_review(path, {"a": 0.61, "b": data.thresholds["b"]}, points)
    back = load_thresholds(path)
    assert back.thresholds["a"] == 0.61 and back.thresholds["b"] == data.thresholds["b"]
    assert back.labels["a"].mode == "manual" and back.labels["a"].metrics == points.at({"a": 0.61}).row("a")
    assert back.labels["b"].mode == "sens=0.8"  # unchanged labels keep how they were chosen
    last = back.history[-1]
    assert len(back.history) == 2 and last["who"] == "dr_bob" and last["action"] == "review" and last["when"]
    assert last["changes"] == {"a": {"from": old_a, "to": 0.61, "mode": "manual"}}
    assert saved.to_json() == back.to_json()
    before = path.read_bytes()
    save_review(path, {"a": 0.61})  # nothing changed: no new row, file untouched
    assert path.read_bytes() == before
    save_review(path, {"a": None})  # cleared
    assert "a" not in load_thresholds(path).thresholds


def test_review_save_creates_a_file_but_never_overwrites_a_damaged_one(tmp_path):
    new = tmp_path / "new.json"
    save_review(new, {"x": 0.5}, who="carol", predictions="p.csv")
    data = load_thresholds(new)
    assert data.thresholds == {"x": 0.5} and data.history[0]["who"] == "carol" and data.created
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{not json")
    with pytest.raises(CxrError, match="damaged.json"):
        save_review(damaged, {"x": 0.5})
    assert damaged.read_text() == "{not json"
    for value in (float("nan"), -3.0, 1.5):
        with pytest.raises(CxrError, match="must be a number from 0 to 1"):
            save_review(new, {"x": value})


def _saver(path: str, label: str, start: object, rounds: int) -> None:
    start.wait()  # type: ignore[attr-defined]
    for i in range(1, rounds + 1):
        save_review(path, {label: i / 1000}, who=label)


@pytest.mark.slow
def test_two_reviewers_saving_at_once_keep_every_history_row(tmp_path):
    """Read-modify-write under a lock: without it one process's save overwrites the other's row."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    path = tmp_path / "thresholds.json"
    start = ctx.Event()
    rounds = 40
    children = [ctx.Process(target=_saver, args=(str(path), label, start, rounds)) for label in ("ana", "bo")]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    data = load_thresholds(path)
    assert data.thresholds == {"ana": rounds / 1000, "bo": rounds / 1000}
    assert sorted(row["who"] for row in data.history) == ["ana"] * rounds + ["bo"] * rounds
    assert (tmp_path / ".thresholds.json.lock").stat().st_mode & 0o777 == 0o600


def test_review_save_into_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(CxrError, match=r"missing/t.json: cannot lock for writing \(No such file"):
        save_review(tmp_path / "missing" / "t.json", {"x": 0.5})


def test_threshold_file_without_optional_fields_loads():
    data = ThresholdsFile.from_json({"version": 1, "labels": {"a": {"threshold": 0.5}, "b": {"threshold": None}}})
    assert data.thresholds == {"a": 0.5} and data.history == []


# -- CLI -----------------------------------------------------------------------------------------------------


def write_predictions(path, n=300):
    probs, truth = random_set(11, n, 3, 100, 0.1, np.float32)
    labels = ["Atelectasis", "Effusion", "Nodule"]
    Predictions(labels, probs, [f"s{i}" for i in range(n)], [f"s{i}.png" for i in range(n)], truth=truth).write(path)
    return labels


def test_cli_tune_writes_a_file_and_json_parses(tmp_path):
    preds = tmp_path / "preds.csv"
    labels = write_predictions(preds)
    out = tmp_path / "thr.json"
    runner = CliRunner()
    result = runner.invoke(app, ["tune", "--preds", str(preds), "--mode", "sens=0.8", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["labels"]) == labels and data["path"] == str(out) and data["n"] == 300
    assert load_thresholds(out).thresholds == {k: v["threshold"] for k, v in data["labels"].items()}
    assert all(v["metrics"]["sensitivity"] >= 0.8 for v in data["labels"].values())
    result = runner.invoke(app, ["tune", "--preds", str(preds), "--mode", "youden", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Atelectasis" in result.stdout and "wrote" in result.stdout
    assert len(load_thresholds(out).history) == 2  # re-tuning keeps the history
    shown = runner.invoke(app, ["show", str(out), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["labels"]["Nodule"]["mode"] == "youden"
    shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 0 and "Effusion" in shown.stdout and "tune" in shown.stdout


def test_a_tuned_file_applied_to_the_csv_in_float64_keeps_its_sensitivity(tmp_path):
    # What a statistician does with the two files: read the CSV (pandas/NumPy, float64), apply the JSON thresholds.
    # The thresholds were float32 scores written in full, above their 9-digit CSV text: the tuning's own
    # positives fell below them (sens 0.857 reported, 0.714 recomputed).
    rng = np.random.default_rng(4)
    labels, n = ["Atelectasis", "Effusion"], 400
    truth = (rng.random((n, 2)) < 0.2).astype(np.float32)
    probs = np.clip(rng.normal(0.3 + 0.3 * truth, 0.2), 0, 1).astype(np.float32)
    preds = tmp_path / "preds.csv"
    Predictions(labels, probs, [f"s{i}" for i in range(n)], [f"s{i}.png" for i in range(n)], truth=truth).write(preds)
    out = tmp_path / "thr.json"
    for mode in ("sens=0.8", "sens=0.9", "youden"):
        result = CliRunner().invoke(app, ["tune", "--preds", str(preds), "--mode", mode, "--out", str(out), "--json",
                                          "--split", "all"])
        assert result.exit_code == 0, result.output
        tuned = json.loads(out.read_text())["labels"]
        with open(preds, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for name in labels:
            score = np.array([float(r[name]) for r in rows])  # float64, from the CSV's text
            positive = np.array([r["truth:" + name] == "1" for r in rows])
            flagged = score >= tuned[name]["threshold"]
            assert flagged[positive].mean() == pytest.approx(tuned[name]["metrics"]["sensitivity"]), (mode, name)
            assert (~flagged[~positive]).mean() == pytest.approx(tuned[name]["metrics"]["specificity"]), (mode, name)


def test_cli_user_mistakes_raise_cxr_errors(tmp_path):
    preds = tmp_path / "preds.csv"
    write_predictions(preds, 20)
    runner = CliRunner()
    result = runner.invoke(app, ["tune", "--preds", str(preds), "--mode", "sens=high"])
    assert isinstance(result.exception, CxrError) and "bad threshold mode" in str(result.exception)
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"something": "else"}')
    result = runner.invoke(app, ["tune", "--preds", str(preds), "--out", str(foreign)])
    assert isinstance(result.exception, CxrError) and "not overwriting" in str(result.exception)
    assert foreign.read_text() == '{"something": "else"}'
    result = runner.invoke(app, ["tune", "--preds", str(tmp_path / "missing.csv")])
    assert isinstance(result.exception, CxrError)
    result = runner.invoke(app, ["show", str(foreign)])
    assert isinstance(result.exception, CxrError) and "foreign.json" in str(result.exception)


# -- what thresholds were tuned on ---------------------------------------------------------------------------


def split_predictions(splits: list[str], n_per: int = 40) -> Predictions:
    rows = [s for s in splits for _ in range(n_per)]
    probs, truth = random_set(3, len(rows), 2, 50, 0.0, np.float32)
    ids = [f"s{i}" for i in range(len(rows))]
    return Predictions(["Effusion", "Nodule"], probs, ids, [f"{i}.png" for i in ids], truth=truth,
                       meta={"root": "/data/x", "fingerprint": "abc", "source": "preds.csv"}, split=rows)


def test_predictions_keep_their_split_through_csv_and_json(tmp_path):
    preds = split_predictions(["train", "val", "test"], 5)
    for name in ("p.csv", "p.json"):
        back = Predictions.read(preds.write(tmp_path / name))
        assert back.split == preds.split and back.splits == {"test": 5, "train": 5, "val": 5}
        assert back.labels == preds.labels and np.array_equal(back.probs, preds.probs)
    no_split = Predictions(preds.labels, preds.probs, preds.study, preds.image)
    back = Predictions.read(no_split.write(tmp_path / "old.csv"))
    assert "split" not in (tmp_path / "old.csv").read_text().splitlines()[0] and back.splits == {}


@pytest.mark.parametrize(("splits", "asked", "chosen", "rows", "test_asked"), [
    (["train", "val", "test"], None, "val", {"val"}, False),           # validation by default
    (["train_val", "test"], None, "train_val", {"train_val"}, False),  # NIH: no val split, never test
    (["train", "val", "test"], "test", "test", {"test"}, True),        # test only when asked
    (["train", "val", "test"], "all", "all", {"train", "val", "test"}, True),
    (["train", "val", "test"], "train+val", "train+val", {"train", "val"}, False),
])
def test_tuning_rows_choose_validation_and_test_only_when_asked(splits, asked, chosen, rows, test_asked):
    from cxr_core.eval.thresholds_file import tuning_rows

    selected, tuned_on = tuning_rows(split_predictions(splits), asked)
    assert tuned_on.split == chosen and set(selected.split) == rows and set(tuned_on.splits) == rows
    assert tuned_on.test_asked is test_asked and tuned_on.includes_test is ("test" in rows)
    assert (tuned_on.root, tuned_on.model, tuned_on.images) == ("/data/x", "abc", 40 * len(rows))


def test_tuning_on_test_rows_alone_must_be_asked_for():
    from cxr_core.eval.thresholds_file import tuning_rows

    with pytest.raises(CxrError, match="--split test"):
        tuning_rows(split_predictions(["test"]))
    with pytest.raises(CxrError, match="no rows in split val"):
        tuning_rows(split_predictions(["train", "test"]), "val")
    unknown = Predictions(["a"], np.zeros((3, 1)), ["1", "2", "3"], ["1", "2", "3"])
    assert tuning_rows(unknown)[1].split == "unknown"
    with pytest.raises(CxrError, match="do not say which split"):
        tuning_rows(unknown, "val")


def test_split_check_says_when_evaluation_scores_the_tuning_split(tmp_path):
    from cxr_core.eval.thresholds_file import TunedOn, split_check, tuning_rows

    _, on_test = tuning_rows(split_predictions(["train", "val", "test"]), "test")
    _, on_val = tuning_rows(split_predictions(["train", "val", "test"]))
    assert "tuned on the test split" in split_check(on_test, {"test": 10})
    assert "allowed with --allow-same-split" in split_check(on_test, {"test": 10}, allowed=True)
    assert split_check(on_val, {"test": 10}) is None
    assert split_check(TunedOn(), {"test": 10}) is None  # unknown: said elsewhere, never guessed
    assert split_check(None, {"test": 10}) is None
    path = tmp_path / "t.json"
    choices = tune(OperatingPoints.from_predictions(split_predictions(["test"])), "f1")
    thresholds_from_choices(choices, tuned_on=on_test).write(path)
    back = load_thresholds(path)
    assert back.tuned_on == on_test and back.history[-1]["split"] == "test"


def test_cli_tune_records_the_split_and_refuses_test_unless_asked(tmp_path):
    runner = CliRunner()
    preds = tmp_path / "test-only.csv"
    split_predictions(["test"]).write(preds)
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["tune", "--preds", str(preds), "--out", str(out)])
    assert isinstance(result.exception, CxrError) and not out.exists()
    result = runner.invoke(app, ["tune", "--preds", str(preds), "--out", str(out), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert "tuned on: test" in result.stdout and "tuned on the test split" in result.stderr
    tuned_on = load_thresholds(out).tuned_on
    assert tuned_on.split == "test" and tuned_on.test_asked and tuned_on.studies == 40


def test_show_a_hand_edited_file_with_odd_metric_values(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"version": 1, "labels": {"a": {"threshold": 0.5, "metrics": {"f1": "high", "flagged": true,'
                    ' "support": 3}}}, "history": [{"changes": {}}]}')
    result = CliRunner().invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "?" in result.stdout and "0.5000" in result.stdout


def test_a_thresholds_file_that_does_not_fit_the_model_is_said(tmp_path):
    from cxr_core.eval.thresholds_file import LabelThreshold, threshold_mismatch

    def file(**values):
        return ThresholdsFile(labels={k: LabelThreshold(v, "fixed") for k, v in values.items()})

    model = ["Atelectasis", "Effusion"]
    assert threshold_mismatch(None, model) is None and threshold_mismatch(file(), model) is None
    assert threshold_mismatch(file(Atelectasis=0.3, Effusion=0.4), model) is None
    other = threshold_mismatch(file(Dragon=0.3, **{"\x1b[31mEvil": 0.2}), model, "t.json")
    assert other.startswith("t.json: none of its findings (Dragon, \\x1b[31mEvil) is one of the model's")
    assert other.endswith("0.5 used for every finding")
    part = threshold_mismatch(file(Atelectasis=0.3, Mass=0.2), model)
    assert "findings the model does not have: Mass (ignored)" in part and "no threshold for Effusion (0.5 used)" in part
