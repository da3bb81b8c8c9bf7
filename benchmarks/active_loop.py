"""Does reviewing the studies the model is least sure of teach the next model more than reviewing at random?

On phantoms (whose truth is known), per seed:

1. Labels for 30 % of the training patients' studies (the rest are ``?``: not labelled yet); validation and test
   fully labelled. Train a model (``auc_start``: its val macro AUC).
2. Predict every study with it; a scripted reviewer (answering with the phantom truth: accept the findings the
   study has, reject the others) reviews ``--budget`` unlabelled training studies chosen by the ``uncertain``
   ordering (:mod:`cxr_core.eval.uncertainty`, the worklist's and ``cxr-tui worklist --order uncertain``), and,
   into a separate reviews database, the same number chosen at random.
3. Retrain each from scratch with ``--with-reviews`` (the product's path: create_run + run_training; same seed,
   epochs, model): ``auc_uncertain`` and ``auc_random``.

Writes ``benchmarks/out/active_loop.json`` with every seed's three AUCs, the mean gain of uncertainty over random,
and on how many seeds it won.

    python benchmarks/active_loop.py [--seeds 3] [--images 1500] [--size 64] [--model resnet10t] [--epochs 8]
        [--budget 200] [--labelled 0.3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _split_of(patient: str, seed: int) -> str:
    import hashlib

    u = int(hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()[:8], 16) / 16**8
    return "val" if u < 0.15 else "test" if u < 0.30 else "train"


def build_root(root: Path, labelled: float, seed: int) -> dict[str, list[str]]:
    """The phantom set in ``root`` as a folder layout whose labels CSV labels ``labelled`` of the training
    patients and marks the rest ``?``. Returns study id -> true positive findings (the scripted reviewer's
    answers, from the phantoms' own labels)."""
    (root / "phantoms.json").unlink()  # read as the folder layout, through the labels CSV written here
    rng = np.random.default_rng(seed)
    truth, rows = {}, []
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            split = _split_of(row["patient_id"], seed)
            study = Path(row["image"]).stem
            truth[study] = [n for n in row["labels"].split("|") if n and n != "No Finding"]
            rows.append({"image": row["image"], "labels": row["labels"], "patient_id": row["patient_id"],
                         "split": split})
    train_patients = sorted({r["patient_id"] for r in rows if r["split"] == "train"})
    keep = set(rng.choice(train_patients, size=int(round(labelled * len(train_patients))), replace=False))
    for r in rows:
        if r["split"] == "train" and r["patient_id"] not in keep:
            r["labels"] = "?"
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["image", "labels", "patient_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return truth


def reviewer_thresholds(predictions, mode: str) -> dict[str, float | None]:
    """The thresholds a reviewer would work with: tuned on the validation split as the thresholds screen tunes them
    (:func:`cxr_core.eval.tune`), not 0.5 (a rare finding's scores seldom reach it, so "nearest 0.5" is "most
    probably positive")."""
    from cxr_core.eval import OperatingPoints, tune
    from cxr_core.eval.thresholds_file import tuning_rows

    val, _ = tuning_rows(predictions, "val")
    return {c.label: c.threshold for c in tune(OperatingPoints.from_predictions(val), mode)}


def pool_disagreement(predictor, loaded, predictions, pool: list[str]) -> np.ndarray:
    """(len(pool), K) BALD mutual information of each pool study under the model's views (TTA; MC dropout when
    the model has dropout), the highest over a study's images: what the worklist's disagreement order ranks."""
    from cxr_core.data.study import image_base
    from cxr_core.infer import study_disagreement

    return study_disagreement(predictor, predictions, pool, image_base(loaded.root))[0]


def train(config, runs: Path) -> tuple[float, Path]:
    from cxr_core.train.jobs import create_run
    from cxr_core.train.runner import run_training

    run = create_run(config, runs)
    assert run_training(run) == "finished"
    epochs = [r for r in run.read_metrics() if r.get("type") == "epoch"]
    return float(epochs[-1]["val_auc_macro"]), run.best_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--labelled", type=float, default=0.3)
    parser.add_argument("--arms", default="uncertain,random",
                        help="Orderings to compare (uncertain, margin, entropy, disagreement: cxr_core.eval.uncertainty; "
                             "random).")
    parser.add_argument("--thresholds", default="youden",
                        help="The reviewer's thresholds the orderings measure distance to: tuned on the start model's "
                             "validation predictions by this operating point (youden, f1, sens=X, ...), or fixed=0.5.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "active_loop.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CXR_HOME"] = str(tmp / "home")
        from cxr_core.eval import review_order
        from cxr_core.infer import Predictor, load_model, predict_root
        from cxr_core.phantoms import write_phantoms
        from cxr_core.store import ReviewStore, StudyIndex
        from cxr_core.train.config import TrainConfig

        for seed in range(args.seeds):
            started = time.perf_counter()
            root = tmp / f"root{seed}"
            write_phantoms(root, args.images, args.size, seed)
            truth = build_root(root, args.labelled, seed)
            base = TrainConfig(data=str(root), format="folder", model=args.model, image_size=args.size,
                               epochs=args.epochs, seed=seed, workers=0, val_fraction=0.0)
            auc_start, checkpoint = train(base, tmp / "runs")
            with StudyIndex() as index:
                loaded = index.load(root)
            space_findings = [f for f in loaded.space.findings]
            pool = [s.id for s in loaded.studies if s.split == "train" and set(s.labels) == {"."}]
            predictor = Predictor(load_model(checkpoint), device="cpu", cache=False)
            predictions = predict_root(predictor, loaded).predictions
            scores = predictions.study_scores(pool)
            thresholds = reviewer_thresholds(predictions, args.thresholds)
            rng = np.random.default_rng(1000 + seed)
            picks = {}
            information = None
            if "disagreement" in args.arms.split(","):
                information = pool_disagreement(predictor, loaded, predictions, pool)
            for arm in args.arms.split(","):
                if arm == "random":
                    picks[arm] = list(rng.choice(pool, size=min(args.budget, len(pool)), replace=False))
                else:
                    picks[arm] = [s for s, _ in review_order(pool, scores, predictions.labels, thresholds, arm,
                                                             information)][:args.budget]
            aucs = {}
            for arm, chosen in picks.items():
                db = tmp / f"reviews-{seed}-{arm}.sqlite"
                with ReviewStore(db) as store:
                    for study in chosen:
                        store.record_study(loaded.root, study, {
                            f: ("accept" if f in truth[study] else "reject", None, None) for f in space_findings},
                            reviewer="scripted")
                aucs[arm], _ = train(base.replace(with_reviews=True, reviews_db=str(db)), tmp / "runs")
            results.append({"seed": seed, "auc_start": auc_start, **{f"auc_{arm}": auc for arm, auc in aucs.items()},
                            "pool": len(pool), "reviewed": args.budget,
                            "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(results[-1]), flush=True)
    gains = [r["auc_uncertain"] - r["auc_random"] for r in results]
    summary = {
        "model": args.model, "size": args.size, "images": args.images, "epochs": args.epochs, "budget": args.budget,
        "labelled_fraction": args.labelled, "thresholds": args.thresholds, "arms": args.arms.split(","),
        "seeds": results,
        "auc_start": round(statistics.mean(r["auc_start"] for r in results), 4),
        **{f"auc_{arm}": round(statistics.mean(r[f"auc_{arm}"] for r in results), 4) for arm in args.arms.split(",")},
        "gain_mean": round(statistics.mean(gains), 4), "uncertain_wins": sum(g > 0 for g in gains),
        "n_seeds": len(results),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "seeds"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
