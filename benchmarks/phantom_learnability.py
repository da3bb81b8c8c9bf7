"""Can a small CNN learn the planted findings? Calibrates phantom difficulty.

Renders ``--n`` phantoms at ``--size`` px, splits them 80/20 by patient, trains a CNN from scratch on the CPU
(timm ``resnet10t`` by default, BCE, AdamW, one-cycle schedule) for a few epochs, and reports the validation
ROC AUC per finding and their macro average. The phantoms are meant to be learnable (macro AUC around 0.95
in a few CPU-minutes) without being trivial (no finding at 1.000 for every seed; Nodule is the hardest).

    python benchmarks/phantom_learnability.py [--n 2000] [--size 128] [--budget-s 300] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_core.phantoms import FINDINGS, GENERATOR_VERSION, render_phantom  # noqa: E402


def build_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.empty((n, size, size), np.uint8)
    targets = np.zeros((n, len(FINDINGS)), np.float32)
    patients = []
    for index in range(n):
        ph = render_phantom(seed, index, size)
        images[index] = ph.image
        for name in ph.findings:
            targets[index, FINDINGS.index(name)] = 1.0
        patients.append(ph.patient_id)
    return images, targets, np.array(patients)


def patient_split(patients: np.ndarray, seed: int, val_share: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    val_patients = set(rng.choice(unique, size=int(round(len(unique) * val_share)), replace=False).tolist())
    is_val = np.array([p in val_patients for p in patients])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).float().unsqueeze(1) - 127.5) / 64.0


def evaluate(model: torch.nn.Module, images: np.ndarray, targets: np.ndarray, batch: int) -> dict[str, float]:
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            scores.append(torch.sigmoid(model(to_tensor(images[start : start + batch]))).numpy())
    probs = np.concatenate(scores)
    aucs = {}
    for k, name in enumerate(FINDINGS):
        column = targets[:, k]
        aucs[name] = float(roc_auc_score(column, probs[:, k])) if 0 < column.sum() < len(column) else float("nan")
    return aucs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="phantom set seed (also seeds the split and the model)")
    parser.add_argument("--model", default="resnet10t", help="any timm model (efficientnet_b0 mirrors the acceptance test)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs (the one-cycle schedule spans them)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop after the epoch that passes this many seconds (0: no limit)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/phantom_learnability.json"))
    args = parser.parse_args(argv)

    import timm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    images, targets, patients = build_data(args.n, args.size, args.seed)
    render_s = time.perf_counter() - start
    train_idx, val_idx = patient_split(patients, args.seed)
    print(f"rendered {args.n} phantoms at {args.size} px in {render_s:.1f} s; "
          f"{len(train_idx)} train / {len(val_idx)} val images (split by patient)")
    print("prevalence:", ", ".join(f"{n} {targets[:, k].mean():.2f}" for k, n in enumerate(FINDINGS)))

    model = timm.create_model(args.model, pretrained=False, num_classes=len(FINDINGS), in_chans=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_idx) / args.batch)
    total_steps = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps, pct_start=0.15)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(args.seed)
    history = []
    train_start, train_cpu = time.perf_counter(), time.process_time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(train_idx)
        losses = []
        for first in range(0, len(order), args.batch):
            batch = np.sort(order[first : first + args.batch])
            optimizer.zero_grad()
            loss = loss_fn(model(to_tensor(images[batch])), torch.from_numpy(targets[batch]))
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        aucs = evaluate(model, images[val_idx], targets[val_idx], 2 * args.batch)
        macro = float(np.nanmean(list(aucs.values())))
        elapsed = time.perf_counter() - train_start
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "macro_auc": round(macro, 4),
                        "elapsed_s": round(elapsed, 1)})
        print(f"epoch {epoch:2d}  loss {np.mean(losses):.4f}  val macro AUC {macro:.4f}  ({elapsed:.0f} s)")
        if args.budget_s and elapsed > args.budget_s:
            print(f"time budget of {args.budget_s:.0f} s reached")
            break
    for name, auc in aucs.items():
        print(f"  {name:14s} {auc:.4f}")
    cpu = time.process_time() - train_cpu
    print(f"macro AUC {macro:.4f} after {epoch} epochs, {elapsed:.0f} s of training ({cpu:.0f} CPU-seconds)")
    report = {
        "benchmark": "phantom_learnability",
        "generator_version": GENERATOR_VERSION,
        "model": args.model,
        "n": args.n,
        "size": args.size,
        "seed": args.seed,
        "threads": args.threads,
        "train_images": int(len(train_idx)),
        "val_images": int(len(val_idx)),
        "render_s": round(render_s, 1),
        "train_s": round(elapsed, 1),
        "train_cpu_s": round(cpu, 1),
        "epochs": epoch,
        "macro_auc": round(macro, 4),
        "auc": {k: round(v, 4) for k, v in aucs.items()},
        "history": history,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
