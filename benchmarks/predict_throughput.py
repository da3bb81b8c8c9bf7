"""Inference throughput: the engine vs a per-image loop, same model, same PNGs, same run; print and write JSON.

The loop is what a simple script does: for each file, open it, preprocess it, run the model on a batch of
one. The engine (:class:`cxr_core.infer.engine.Predictor`) batches; on a CPU it decodes each batch in
threads over every core, then runs the model (channels_last) on every core, in turn; on CUDA it decodes in
DataLoader workers while the GPU runs, with bf16 autocast and channels_last. The prediction cache is off: this measures
computing, not remembering. A third figure, the engine reading a warm cache, shows what a reopen costs.

Images: the real 1024x1024 NIH PNGs of ``$CXR_REAL_DATA/nih-sample`` (``--images`` names, cycling over
the 100 present), else synthetic PNGs that compress like them. Goal on this 2-core CPU: engine / loop >= 2.0.
On an H100-class GPU: >= 1,200 img/s from PNG files for efficientnet_b0 at 224.

    python benchmarks/predict_throughput.py [--model efficientnet_b0] [--size 224] [--images 200]
        [--batch-size 32] [--workers N] [--out benchmarks/out/predict_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr_core.checkpoint import save_checkpoint
from cxr_core.data.preprocess import Normalizer, load_letterboxed
from cxr_core.infer.engine import Predictor, auto_device
from cxr_core.infer.loading import load_model
from cxr_core.infer.prediction_cache import PredictionCache
from cxr_core.labels import get_space
from cxr_core.models import create_model

GOAL_RATIO_CPU = 2.0
GOAL_CUDA_IMG_S = 1200.0


def image_paths(count: int) -> tuple[list[str], str]:
    real = os.environ.get("CXR_REAL_DATA")
    folder = Path(real) / "nih-sample" / "images_001" / "images" if real else None
    if folder is not None and folder.is_dir():
        files = sorted(str(p) for p in folder.glob("*.png"))
        return [files[i % len(files)] for i in range(count)], f"real NIH PNGs ({len(files)} files, cycled)"
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import synthetic_pngs

    files = synthetic_pngs(Path(tempfile.mkdtemp()) / "png", 50)
    return [files[i % len(files)] for i in range(count)], "synthetic 1024x1024 PNGs (CXR_REAL_DATA not set)"


def per_image_loop(model: torch.nn.Module, config, paths: list[str], device: torch.device) -> float:
    normalise = Normalizer(config)
    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            x = normalise(load_letterboxed(path, config.input_size))[None].to(device)
            torch.sigmoid(model(x)).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's (8 on CPU, 64 on CUDA)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "predict_throughput.json")
    args = parser.parse_args()
    device = auto_device()
    count = args.images or (4096 if device.type == "cuda" else 160)
    paths, source = image_paths(count)
    labels = list(get_space("nih").findings)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    model = create_model(args.model, labels=labels, image_size=args.size)
    checkpoint = work / "model.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    loaded = load_model(checkpoint, device)

    warm = paths[: min(8, len(paths))]
    per_image_loop(loaded.model, loaded.config, warm, device)
    loop_n = paths[: max(16, len(paths) // (4 if device.type == "cpu" else 1))]
    loop_rate = per_image_loop(loaded.model, loaded.config, loop_n, device)

    engine = Predictor(loaded, device=device, batch_size=args.batch_size, workers=args.workers, cache=False)
    engine.predict(warm)
    result = engine.predict(paths)
    eager_rate = len(paths) / result.seconds
    engine_rate, compile_s, compiled_rate = eager_rate, None, None
    if not args.no_compile:
        compiled = Predictor(load_model(checkpoint, device), device=device, batch_size=args.batch_size,
                             workers=args.workers, cache=False, compile=True)
        started = time.perf_counter()
        compiled.predict(paths[: compiled.batch_size])  # compilation happens here, once per shape
        compile_s = time.perf_counter() - started
        compiled_rate = len(paths) / compiled.predict(paths).seconds
        engine_rate = max(eager_rate, compiled_rate)

    cache = PredictionCache(work / "preds.sqlite")
    cached_engine = Predictor(loaded, device=device, batch_size=args.batch_size, workers=args.workers, cache=cache)
    cached_engine.predict(paths)
    again = cached_engine.predict(paths)
    cached_rate = len(paths) / again.seconds

    same = np.allclose(result.probs[: len(warm)], engine.predict(warm).probs, atol=1e-5)
    report = {
        "benchmark": "predict_throughput", "model": args.model, "image_size": args.size, "images": len(paths),
        "source": source, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "batch_size": engine.batch_size,
        "workers": args.workers if args.workers is not None else "auto",
        "loop_img_s": round(loop_rate, 2), "loop_images": len(loop_n),
        "engine_eager_img_s": round(eager_rate, 2), "engine_eager_vs_loop": round(eager_rate / loop_rate, 3),
        "engine_compiled_img_s": round(compiled_rate, 2) if compiled_rate else None,
        "compile_s": round(compile_s, 1) if compile_s is not None else None,
        "engine_img_s": round(engine_rate, 2), "engine_vs_loop": round(engine_rate / loop_rate, 3),
        "engine_cached_img_s": round(cached_rate, 1), "unreadable": len(result.errors),
        "deterministic": bool(same), "python": platform.python_version(), "torch": torch.__version__,
    }
    if device.type == "cuda":
        report["goal_img_s"] = GOAL_CUDA_IMG_S
        report["engine_vs_goal"] = round(engine_rate / GOAL_CUDA_IMG_S, 3)
    else:
        report["goal_ratio"] = GOAL_RATIO_CPU
        report["ratio_vs_goal"] = round(report["engine_vs_loop"] / GOAL_RATIO_CPU, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
