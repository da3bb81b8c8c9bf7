"""Training throughput reading the uint8 image cache vs decoding PNGs every step; print and write JSON.

Same run, same model (efficientnet_b0, 14 outputs, random init), same batch size, same augmentation and
DataLoader workers; only where the pixels come from differs. For each path it measures the data-loading
rate alone (no model: the decoding cost by itself) and the training rate (forward, BCE, backward, AdamW),
over a fixed number of steps after warm-up, and reports cache/decode ratios. Also: cache build rate in
this process and with ``--workers`` processes (their start-up, a re-import of this script with torch,
included), re-open time, row read time, and one decode + letterbox time.

On CUDA: bf16 autocast and channels_last, against the goal of >= 2,000 img/s on an H100 (pass more
``--workers`` on a many-core GPU box). On CPU the model dominates and the figures are only reported (the
share of training time spent waiting for data says which side is the bottleneck);
the CPU defaults (batch 8, 2 timed steps) keep the run to about three minutes on two cores.

Images: ``--images`` names (default 512) cycling over the 100 real 1024x1024 NIH PNGs in
``$CXR_REAL_DATA/nih-sample/images_001/images`` when set, else over 50 synthetic 1024x1024 PNGs that
compress like them (~550 KB).

    python benchmarks/train_throughput.py [--out benchmarks/out/train_throughput.json] [--steps N]
        [--warmup N] [--batch-size N] [--workers N] [--loader-batches N] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cxr_core.data.augment import train_transform
from cxr_core.data.dataset import Item, XRayDataset
from cxr_core.data.image_cache import ImageCache
from cxr_core.data.preprocess import Normalizer, Preprocess, load_letterboxed
from cxr_core.train.losses import make_loss
from cxr_core.train.sampling import RareLabelSampler

GOAL_CUDA_IMG_S = 2000.0
NUM_CLASSES = 14
DEFAULTS = {  # (batch size, warm-up steps, timed steps, timed loader batches)
    "cuda": (256, 10, 40, 20),
    "cpu": (8, 1, 2, 10),
}


def synthetic_pngs(folder: Path, count: int, side: int = 1024) -> list[str]:
    """Smooth 'body' shading plus film noise: compresses to ~550 KB like real NIH PNGs (~420 KB), so decodes cost the same."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    names = []
    for i in range(count):
        body = 120 + 80 * np.sin(np.pi * xx) * np.sin(np.pi * yy) * rng.uniform(0.6, 1.0)
        ribs = 15 * np.sin(2 * np.pi * (yy * rng.uniform(8, 12) + 0.3 * np.sin(4 * xx)))
        pixels = np.clip(body + ribs + rng.normal(0, 3, (side, side)), 0, 255).astype(np.uint8)
        name = f"synthetic_{i:03d}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    return names


def source_images(tmp: Path, count: int) -> tuple[Path, list[str], str]:
    """``count`` image names in one folder: symlinks cycling over the real (or synthetic) PNGs.

    More names than source files gives the cache build enough work to be worth its worker processes; the
    files behind them are read from the page cache either way, as in a real epoch after the first.
    """
    real = Path(os.environ.get("CXR_REAL_DATA", "")) / "nih-sample" / "images_001" / "images"
    if os.environ.get("CXR_REAL_DATA") and real.is_dir():
        sources = sorted(real.glob("*.png"))
        kind = f"real NIH 1024x1024 PNGs ({len(sources)} files)"
    else:
        made = tmp / "synthetic"
        sources = [made / name for name in synthetic_pngs(made, 50)]
        kind = f"synthetic 1024x1024 PNGs ({len(sources)} files)"
    base = tmp / "links"
    base.mkdir()
    names = []
    for i in range(count):
        name = f"{i:05d}.png"
        (base / name).symlink_to(sources[i % len(sources)])
        names.append(name)
    return base, names, f"{kind}, {count} names"


def measure_cache(base: Path, names: list[str], size: int, workers: int, root: Path) -> tuple[ImageCache, dict]:
    """Build in this thread and with ``workers`` threads, re-open, read rows."""
    builds = {}
    for processes in sorted({0, workers}):
        start = time.perf_counter()
        cache = ImageCache.open_or_build(base, names, size, workers=processes, root=root / f"w{processes}")
        builds[processes] = len(names) / (time.perf_counter() - start)
        assert cache.decoded == len(names) and not cache.failures, cache.failures
    start = time.perf_counter()
    cache = ImageCache.open_or_build(base, names, size, root=root / f"w{workers}")
    reopen_s = time.perf_counter() - start
    assert cache.decoded == 0
    passes, start = 5, time.perf_counter()
    for _ in range(passes):
        for name in names:
            np.array(cache.get(name))
    read_s = (time.perf_counter() - start) / (passes * len(names))
    return cache, {
        "images": len(names),
        "build_img_s_by_workers": {str(k): round(v, 1) for k, v in builds.items()},
        "reopen_ms": round(reopen_s * 1000, 2),
        "read_us_per_img": round(read_s * 1e6, 2),
    }


def decode_ms(base: Path, names: list[str], size: int) -> float:
    sample = names[: min(20, len(names))]
    start = time.perf_counter()
    for name in sample:
        load_letterboxed(base / name, size)
    return (time.perf_counter() - start) / len(sample) * 1000


def make_loader(dataset: XRayDataset, targets: np.ndarray, batches: int, batch_size: int, workers: int,
                cuda: bool) -> DataLoader:
    sampler = RareLabelSampler(targets, num_samples=batches * batch_size, seed=0)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=cuda,
                      drop_last=True, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def timed_rate(loader: DataLoader, warmup: int, step, sync) -> tuple[float, float]:
    """Images per second over the batches after the first ``warmup`` (worker start-up is not timed), and
    the share of that time spent waiting for the next batch (near 0: the consumer is the bottleneck)."""
    start, waited, images = 0.0, 0.0, 0
    batches = iter(loader)
    for i in range(len(loader)):
        if i == warmup:
            sync()
            start, waited = time.perf_counter(), 0.0
        asked = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - asked
        step(batch)
        if i >= warmup:
            images += len(batch["target"])
    sync()
    elapsed = time.perf_counter() - start
    return images / elapsed, waited / elapsed


def train_step(model: torch.nn.Module, device: torch.device, amp: bool, channels_last: bool,
               normalizer: Normalizer):
    """One optimisation step as the trainer takes it: uint8 pixels to the device, normalised there."""
    loss_fn = make_loss("bce").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def step(batch):
        pixels = batch["pixels"].to(device, non_blocking=True)
        images = normalizer.batch(pixels).contiguous(memory_format=memory_format)
        target = batch["target"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        loss = loss_fn(logits, target, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _random_batch(batch_size: int, size: int) -> dict[str, torch.Tensor]:
    return {"pixels": torch.randint(0, 256, (batch_size, size, size), dtype=torch.uint8),
            "target": torch.zeros(batch_size, NUM_CLASSES),
            "mask": torch.ones(batch_size, NUM_CLASSES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train_throughput.json"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=512, help="image names (symlinks over the source files)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, and cache build processes")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--warmup", type=int, help="untimed steps before each timed run")
    parser.add_argument("--steps", type=int, help="timed training steps per path")
    parser.add_argument("--loader-batches", type=int, help="timed batches per path, loading only")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch_size, warmup, steps, loader_batches = (
        given if given is not None else default
        for given, default in zip((args.batch_size, args.warmup, args.steps, args.loader_batches),
                                  DEFAULTS[device.type], strict=True))
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else lambda: None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base, names, kind = source_images(Path(tmp), args.images)
        print(f"{kind}; {device}; batch {batch_size}; {args.workers} workers", flush=True)
        cache, cache_figures = measure_cache(base, names, args.size, args.workers, Path(tmp) / "cache")
        decode_figure = decode_ms(base, names, args.size)
        rng = np.random.default_rng(0)
        targets = (rng.random((len(names), NUM_CLASSES)) < 0.08).astype(np.float32)
        items = [Item(name, targets[i], np.ones(NUM_CLASSES, np.float32)) for i, name in enumerate(names)]
        datasets = {
            path: XRayDataset(items, cache=cache if path == "cache" else None, base=base, size=args.size,
                              preprocess=Preprocess(), transform=train_transform(args.size), raw=True)
            for path in ("cache", "decode")
        }
        loader_rates = {}
        for path, dataset in datasets.items():
            loader = make_loader(dataset, targets, warmup + loader_batches, batch_size, args.workers, cuda)
            loader_rates[path], _ = timed_rate(loader, warmup, lambda b: b["pixels"].to(device, non_blocking=True), sync)
            print(f"loading only, {path}: {loader_rates[path]:.1f} img/s", flush=True)

        model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=NUM_CLASSES).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        step = train_step(model, device, cuda, cuda, datasets["cache"].normalizer)
        for _ in range(warmup):  # first steps allocate optimizer state and pick kernels: not either path's cost
            step(_random_batch(batch_size, args.size))
        sync()
        train_rates, waiting = {}, {}
        for path, dataset in datasets.items():
            loader = make_loader(dataset, targets, warmup + steps, batch_size, args.workers, cuda)
            train_rates[path], waiting[path] = timed_rate(loader, warmup, step, sync)
            print(f"training, {path}: {train_rates[path]:.1f} img/s, {waiting[path]:.0%} of it waiting for data",
                  flush=True)

    result = {
        "benchmark": "train_throughput",
        "data": kind,
        "model": "efficientnet_b0",
        "size": args.size,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "amp_bf16": cuda,
        "channels_last": cuda,
        "batch_size": batch_size,
        "workers": args.workers,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "timed_loader_batches": loader_batches,
        "cache": cache_figures,
        "decode_ms_per_img": round(decode_figure, 2),
        "loader_img_s": {**{k: round(v, 1) for k, v in loader_rates.items()},
                         "cache_vs_decode": round(loader_rates["cache"] / loader_rates["decode"], 2)},
        "train_img_s": {**{k: round(v, 1) for k, v in train_rates.items()},
                        "cache_vs_decode": round(train_rates["cache"] / train_rates["decode"], 2)},
        "train_data_wait_share": {k: round(v, 3) for k, v in waiting.items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    if cuda:
        result["goal"] = {"train_img_s": GOAL_CUDA_IMG_S,
                          "cache_vs_goal": round(train_rates["cache"] / GOAL_CUDA_IMG_S, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    builds = ", ".join(f"{rate} img/s with {w} workers" for w, rate in cache_figures["build_img_s_by_workers"].items())
    print(f"cache: built {len(names)} images at {builds} (start-up included);"
          f" re-open {cache_figures['reopen_ms']} ms; row read {cache_figures['read_us_per_img']} us;"
          f" decode + letterbox {result['decode_ms_per_img']} ms/img")
    print(f"loading only: cache/decode = {result['loader_img_s']['cache_vs_decode']}x;"
          f" training: cache/decode = {result['train_img_s']['cache_vs_decode']}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
