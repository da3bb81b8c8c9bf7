"""The real Trainer against a bare training loop on the same data, model, batch size and device; print + JSON.

What a user runs (``cxr-tui train`` = :func:`cxr_core.train.runner.run_training` on a run directory: logging,
status, metrics lines, validation, checkpoints) is compared with the least a loop can do: the same
:class:`~cxr_core.train.trainer.Trainer` set-up (data set over the same uint8 cache, sampler, model, loss,
optimizer, device, channels_last) driven by ``for batch in loader: forward, loss, backward, step`` with no
logging, no checks, no host syncs. The figure is training images per second over epochs 2.. (the Trainer's own
``images_per_s``, which counts training steps only; the loop timed the same way), so cache building, start-up
and validation are outside both.

On this CPU with a tiny model at 64 px the step is short and the Trainer's overheads show: the goal
(issue 14) is ratio >= 0.85. On a GPU pass ``--model efficientnet_b0 --size 224``.

    python benchmarks/trainer_vs_loop.py [--images 1200] [--size 64] [--model tiny_resnet] [--epochs 4]
        [--batch-size 32] [--out benchmarks/out/trainer_vs_loop.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

GOAL = 0.85


def bare_loop(config, epochs: int) -> list[float]:
    """Images per second of each epoch of the least loop over the Trainer's own set-up."""
    import torch
    from torch.utils.data import DataLoader

    from cxr_core.train.optim import build_optimizer
    from cxr_core.train.trainer import Trainer

    trainer = Trainer(config, None)
    trainer._setup()
    model, loss_fn, device = trainer.model, trainer.loss_fn, trainer.device
    optimizer = build_optimizer(model, trainer.config)
    loader = DataLoader(trainer.train_set, batch_size=trainer.batch_size, sampler=trainer.sampler,
                        num_workers=trainer.workers, pin_memory=device.type == "cuda",
                        persistent_workers=trainer.workers > 0)
    model.train()
    rates = []
    for epoch in range(epochs):
        trainer.sampler.set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        for batch in loader:
            images = trainer.normalizer.batch(batch["pixels"].to(device, non_blocking=True))
            if trainer.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=trainer.amp_dtype or torch.float32,
                                enabled=trainer.amp_dtype is not None):
                logits = model(images)
            loss = loss_fn(logits.float(), batch["target"].to(device), batch["mask"].to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(batch["target"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return rates


def real_trainer(config, runs: Path) -> tuple[list[float], list[float]]:
    """Images per second and validation seconds of each epoch, as the Trainer wrote them to metrics.jsonl."""
    from cxr_core.train.jobs import create_run
    from cxr_core.train.runner import run_training

    run = create_run(config, runs)
    assert run_training(run) == "finished"
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if row.get("type") == "epoch"]
    return [row["images_per_s"] for row in epochs], [row.get("val_s") for row in epochs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="tiny_resnet")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "trainer_vs_loop.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("CXR_HOME", str(tmp / "home"))
        from cxr_core.phantoms import write_phantoms
        from cxr_core.train.config import TrainConfig

        root = tmp / "phantoms"
        write_phantoms(root, args.images, args.size, 0)
        config = TrainConfig(data=str(root), model=args.model, image_size=args.size, epochs=args.epochs,
                             batch_size=args.batch_size, workers=args.workers, pretrained=False, seed=0)
        loop_before = bare_loop(config, args.epochs)  # also builds the image cache both then read
        trainer_rates, val_seconds = real_trainer(config, tmp / "runs")
        loop_after = bare_loop(config, args.epochs)
    # Epoch 1 of each warms up (allocator, oneDNN kernels, loader workers): compare epochs 2.. .
    loop = statistics.median(loop_before[1:] + loop_after[1:])
    trainer = statistics.median(trainer_rates[1:])
    result = {
        "model": args.model, "size": args.size, "images": args.images, "batch_size": args.batch_size,
        "epochs": args.epochs, "device": "cuda" if _cuda() else "cpu",
        "loop_img_s": round(loop, 1), "trainer_img_s": round(trainer, 1), "ratio": round(trainer / loop, 3),
        "goal": GOAL, "loop_epochs_img_s": [round(r, 1) for r in loop_before + loop_after],
        "trainer_epochs_img_s": [round(r, 1) for r in trainer_rates], "trainer_val_s": val_seconds,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
