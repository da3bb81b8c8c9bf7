"""Inference throughput: the engine and the CLI vs a per-image loop, same model, same PNGs, same run; print and write JSON.

The loop is what a simple script does: for each file, open it, preprocess it, run the model on a batch of
one, in a fresh interpreter each time (nothing the engine sets in this process helps it). The engine
(:class:`cxr_core.infer.engine.Predictor`) with its defaults batches; on a CPU it decodes each batch in threads over
every core, then runs the model (BatchNorms folded into the convolutions, channels_last) on every core, in turn; on
CUDA it decodes in DataLoader workers while the GPU runs, with bf16 autocast and channels_last. The prediction cache
is off: this measures computing, not remembering. Also measured in the same run:

* the host's **decode limit**: cores / one core's decode + letterbox time (``load_letterboxed`` on the same files),
  and the engine's share of it; and the **model limit** (the engine's forward alone on ready batches): on a CPU the
  engine decodes and runs the model in turn, so its ceiling is 1 / (1 / decode limit + 1 / model limit);
* ``previous_engine``: the engine with BatchNorms not folded and Pillow's pixels copied out (batch 8), in this
  process, so with the malloc settings the engine made (``keep_freed_memory``); the whole before is the CLI from
  ``--previous-checkout`` (loop, engine and previous engine run in ``--rounds`` interleaved rounds: medians, and
  medians of per-round ratios);
* the **CLI** as a user runs it: ``cxr-tui predict ROOT --model M`` with its defaults, cold (a fresh CXR_HOME: no
  index, no prediction cache, no image cache), in a fresh process; wall time (start, torch import, indexing
  included) and the command's own ``seconds``; the ``--compile`` engine when ``--compile`` is given;
* the engine reading the **training image cache** (no decoding: ``predict_root`` finds the cache ``cxr-tui train``
  builds for that root and size), and answering from a warm **prediction cache**.

Images: ``--images-dir DIR`` (PNGs), else the real 1024x1024 NIH PNGs of ``$CXR_REAL_DATA/nih-sample``, else
synthetic PNGs that compress like them; ``--images N`` names cycling over them (symlinks in a temp folder).
Goals (issue 14): on a CPU, the CLI (defaults, cold) >= 2.0x the loop, and the engine >= 0.8 of the decode limit; on
a GPU >= 1,200 img/s from PNG files for efficientnet_b0 at 224 and >= 5,000 img/s from the image cache.

    python benchmarks/predict_throughput.py [--model efficientnet_b0] [--size 224] [--images 320]
        [--batch-size N] [--workers N] [--compile] [--no-cli] [--images-dir DIR] [--out benchmarks/out/predict_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr_core.checkpoint import save_checkpoint
from cxr_core.data.image_cache import ImageCache
from cxr_core.data.preprocess import Normalizer, load_letterboxed
from cxr_core.infer.engine import Predictor, auto_device
from cxr_core.infer.loading import load_model
from cxr_core.infer.prediction_cache import PredictionCache
from cxr_core.infer.studies import predict_root
from cxr_core.labels import get_space
from cxr_core.models import create_model

GOAL_RATIO_CPU = 2.0
GOAL_SHARE = 0.8
GOAL_CUDA_IMG_S = 1200.0
GOAL_CUDA_CACHE_IMG_S = 5000.0
REPO = Path(__file__).resolve().parent.parent


def source_files(folder: Path | None) -> tuple[list[Path], str]:
    if folder is None and os.environ.get("CXR_REAL_DATA"):
        folder = Path(os.environ["CXR_REAL_DATA"]) / "nih-sample" / "images_001" / "images"
    if folder is not None and folder.is_dir():
        files = sorted(folder.glob("*.png"))
        if files:
            return files, f"real PNGs ({len(files)} files in {folder}, cycled)"
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import synthetic_pngs

    made = Path(tempfile.mkdtemp()) / "png"
    return [made / n for n in synthetic_pngs(made, 50)], "synthetic 1024x1024 PNGs (no real PNGs given)"


def image_root(files: list[Path], count: int, root: Path) -> list[str]:
    """A folder data set of ``count`` names (symlinks cycling over ``files``): what the CLI and the engine read."""
    root.mkdir(parents=True)
    names = []
    for i in range(count):
        name = root / f"img_{i:05d}.png"
        name.symlink_to(files[i % len(files)].resolve())
        names.append(str(name))
    return names


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


def loop_in_fresh_process(checkpoint: Path, paths: list[str], device: torch.device) -> float:
    """:func:`per_image_loop` in a new interpreter, untouched by anything the engine set in this one (its malloc
    settings: a simple script has glibc's defaults); start-up is not timed."""
    listing = checkpoint.parent / "loop_paths.txt"
    listing.write_text("\n".join(paths))
    done = subprocess.run([sys.executable, __file__, "--loop-only", str(checkpoint), str(listing), str(device)],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    if done.returncode != 0:
        raise SystemExit(f"the per-image loop failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def loop_only(checkpoint: str, listing: str, device_name: str) -> None:
    device = torch.device(device_name)
    loaded = load_model(checkpoint, device)
    paths = Path(listing).read_text().splitlines()
    per_image_loop(loaded.model, loaded.config, paths[:8], device)  # warm
    print(per_image_loop(loaded.model, loaded.config, paths, device))


def decode_ms(files: list[Path], size: int) -> float:
    """One core's decode + letterbox of one image (the median of 3 passes over up to 20 files, warm)."""
    sample = [str(f) for f in files[:20]]
    for path in sample[:3]:
        load_letterboxed(path, size)
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        for path in sample:
            load_letterboxed(path, size)
        passes.append((time.perf_counter() - start) / len(sample))
    return float(np.median(passes)) * 1000


def model_img_s(engine: Predictor, seconds: float = 4.0) -> float:
    """The engine's forward alone (normalised batches ready), img/s: what the model allows."""
    size, batch = engine.config.input_size, engine.batch_size
    pixels = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8)
    normalizer = Normalizer(engine.config)
    engine.predict_batch(normalizer.batch(pixels.to(engine.device)))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2 * batch:
        engine.predict_batch(normalizer.batch(pixels.to(engine.device)))
        done += batch
    return done / (time.perf_counter() - start)


def run_cli(root: Path, checkpoint: Path, home: Path, extra: list[str], repo: Path = REPO) -> dict:
    """``cxr-tui predict ROOT --model M`` (from checkout ``repo``) in a fresh process, cold (an empty CXR_HOME)."""
    home.mkdir(parents=True)
    env = {**os.environ, "CXR_HOME": str(home), "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "cxr_tui", "predict", str(root), "--model", str(checkpoint),
               "--out", str(home / "preds.csv"), "--json", *extra]
    start = time.perf_counter()  # cwd: `python -m` puts it first on sys.path
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600, cwd=repo)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cxr-tui predict failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout)
    return {"wall_s": round(wall, 2), "seconds": summary["seconds"], "images": summary["images"],
            "computed": summary["computed"], "unreadable": summary["unreadable"], "device": summary["device"],
            "decoded_while_loading": summary.get("decoded_while_loading")}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--loop-only":
        loop_only(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=None, help="default: 320 on a CPU, 4096 on CUDA")
    parser.add_argument("--images-dir", type=Path, default=None, help="a folder of PNGs (default: the NIH sample)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's")
    parser.add_argument("--compile", action="store_true", help="also measure the engine with torch.compile")
    parser.add_argument("--no-cli", action="store_true", help="skip the cxr-tui predict measurement")
    parser.add_argument("--previous-checkout", type=Path, default=None,
                        help="also run cxr-tui predict from this older checkout (e.g. a `git archive` of main)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of loop / engine / previous engine")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "predict_throughput.json")
    args = parser.parse_args()
    device = auto_device()
    count = args.images or (4096 if device.type == "cuda" else 320)
    files, source = source_files(args.images_dir)
    labels = list(get_space("nih").findings)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    paths = image_root(files, count, work / "root")
    model = create_model(args.model, labels=labels, image_size=args.size)
    checkpoint = work / "model.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    loaded = load_model(checkpoint, device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    one_ms = decode_ms(files, args.size)
    decode_limit = cores * 1000 / one_ms
    warm = paths[: min(8, len(paths))]
    loop_n = paths[: max(16, min(256, len(paths) // 4) if device.type == "cpu" else min(128, len(paths)))]

    kwargs = {"batch_size": args.batch_size, "workers": args.workers}
    started = time.perf_counter()
    engine = Predictor(load_model(checkpoint, device), device=device, cache=False, **kwargs)
    setup_s = time.perf_counter() - started
    engine.predict(warm)
    # The engine with two of issue 14's CPU changes off: BatchNorms not folded, Pillow's pixels copied out.
    from cxr_core.images import raster

    old = Predictor(load_model(checkpoint, device), device=device, cache=False, batch_size=args.batch_size or 8,
                    workers=args.workers, amp=False)
    old.inference_model = old.forward = old.model

    def previous_engine() -> tuple[float, object]:
        before = raster.force_decoder("pillow-copy")
        try:
            return len(paths) / old.predict(paths).seconds, None
        finally:
            raster.force_decoder(before)

    previous_engine()  # warm
    # Rounds of loop, engine, previous engine, interleaved: this machine's speed drifts by 2x within minutes, so
    # each figure is a median over rounds and each ratio the median of its rounds' ratios.
    # The engine in float32 (``--fp32``), when it runs in bf16 by default here (a CPU with native bf16).
    fp32 = Predictor(load_model(checkpoint, device), device=device, cache=False, amp=False, **kwargs) \
        if engine.precision != "fp32" else None
    if fp32 is not None:
        fp32.predict(warm)
    loops, engines, olds, fp32s = [], [], [], []
    result = exact = None
    for _ in range(args.rounds):
        loops.append(loop_in_fresh_process(checkpoint, loop_n, device))
        result = engine.predict(paths)
        engines.append(len(paths) / result.seconds)
        olds.append(previous_engine()[0])
        if fp32 is not None:
            exact = fp32.predict(paths)
            fp32s.append(len(paths) / exact.seconds)
    loops.append(loop_in_fresh_process(checkpoint, loop_n, device))
    loop_pairs = [(a + b) / 2 for a, b in zip(loops, loops[1:], strict=False)]  # the loop around each round
    loop_rate, engine_rate, old_rate = (float(np.median(v)) for v in (loops, engines, olds))
    engine_vs_loop = float(np.median([e / lp for e, lp in zip(engines, loop_pairs, strict=True)]))
    old_vs_loop = float(np.median([o / lp for o, lp in zip(olds, loop_pairs, strict=True)]))
    engine_vs_old = float(np.median([e / o for e, o in zip(engines, olds, strict=True)]))
    model_rate = model_img_s(engine)

    compiled_rate = compile_s = None
    if args.compile:
        compiled = Predictor(load_model(checkpoint, device), device=device, cache=False, compile=True, **kwargs)
        started = time.perf_counter()
        compiled.predict(paths[: compiled.batch_size])  # compilation happens here, once per shape
        compile_s = time.perf_counter() - started
        compiled_rate = len(paths) / compiled.predict(paths).seconds

    cli = cli_compiled = cli_previous = None
    cli_loop = loop_rate
    if not args.no_cli:  # the loop measured just before and after the command is its baseline
        around = [loop_in_fresh_process(checkpoint, loop_n, device)]
        cli = run_cli(work / "root", checkpoint, work / "home_cli", [])
        around.append(loop_in_fresh_process(checkpoint, loop_n, device))
        if args.previous_checkout is not None:  # the same command from an older checkout, same loop around it
            cli_previous = run_cli(work / "root", checkpoint, work / "home_cli_prev", [], args.previous_checkout)
            around.append(loop_in_fresh_process(checkpoint, loop_n, device))
            cli_previous["loop_img_s"] = round(float(np.mean(around[1:3])), 2)
            cli_previous["checkout"] = str(args.previous_checkout)
        if args.compile:
            cli_compiled = run_cli(work / "root", checkpoint, work / "home_cli_compiled", ["--compile"])
            around.append(loop_in_fresh_process(checkpoint, loop_n, device))
        cli_loop = float(np.mean(around[:2]))

    # The training image cache of that root (as `cxr-tui train` builds it), then predict_root reading it.
    os.environ["CXR_HOME"] = str(work / "home_cache")
    names = [Path(p).name for p in paths]
    ImageCache.open_or_build(work / "root", names, args.size, workers=cores)
    from_cache = predict_root(Predictor(loaded, device=device, cache=False, **kwargs), work / "root")
    cache_rate = from_cache.computed / from_cache.seconds if from_cache.seconds else 0.0

    cache = PredictionCache(work / "preds.sqlite")
    cached_engine = Predictor(loaded, device=device, cache=cache, **kwargs)
    cached_engine.predict(paths)
    again = cached_engine.predict(paths)
    cached_rate = len(paths) / again.seconds

    same = np.allclose(result.probs[: len(warm)], engine.predict(warm).probs, atol=1e-5)
    unfolded = old.predict(warm).probs  # the folded engine predicts what the model itself does
    report_fold = float(np.abs(result.probs[: len(warm)] - unfolded).max())
    ceiling = 1 / (1 / decode_limit + 1 / model_rate) if device.type == "cpu" else min(decode_limit, model_rate)
    report = {
        "benchmark": "predict_throughput", "model": args.model, "image_size": args.size, "images": len(paths),
        "source": source, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({cores} cores)",
        "cpu": _cpu(), "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "batch_size": engine.batch_size, "workers": args.workers if args.workers is not None else "auto",
        "batchnorms_folded": engine.folded, "engine_setup_s": round(setup_s, 2), "compute_dtype": engine.precision,
        "engine_fp32_img_s": round(float(np.median(fp32s)), 2) if fp32s else None,
        "engine_vs_fp32": round(float(np.median([e / f for e, f in zip(engines, fp32s, strict=True)])), 3)
        if fp32s else None,
        "vs_fp32_max_abs_diff": float(np.nanmax(np.abs(result.probs - exact.probs))) if exact is not None else None,
        "rounds": args.rounds, "loop_img_s": round(loop_rate, 2), "loop_rounds_img_s": [round(v, 2) for v in loops],
        "loop_images": len(loop_n),
        "engine_img_s": round(engine_rate, 2), "engine_rounds_img_s": [round(v, 2) for v in engines],
        "engine_vs_loop": round(engine_vs_loop, 3),
        "previous_engine_img_s": round(old_rate, 2), "previous_rounds_img_s": [round(v, 2) for v in olds],
        "previous_engine_vs_loop": round(old_vs_loop, 3), "engine_vs_previous": round(engine_vs_old, 3),
        "decode_letterbox_ms_one_core": round(one_ms, 2), "decode_limit_img_s": round(decode_limit, 1),
        "engine_share_of_decode_limit": round(engine_rate / decode_limit, 3),
        "model_limit_img_s": round(model_rate, 1),
        "in_turn_ceiling_img_s": round(ceiling, 1), "engine_share_of_ceiling": round(engine_rate / ceiling, 3),
        "engine_compiled_img_s": round(compiled_rate, 2) if compiled_rate else None,
        "engine_compiled_vs_loop": round(compiled_rate / loop_rate, 3) if compiled_rate else None,
        "compile_s": round(compile_s, 1) if compile_s is not None else None,
        "engine_from_image_cache_img_s": round(cache_rate, 1), "from_image_cache": from_cache.from_image_cache,
        "engine_cached_img_s": round(cached_rate, 1), "unreadable": len(result.errors),
        "deterministic": bool(same), "folded_vs_unfolded_max_abs_diff": report_fold, "python": platform.python_version(), "torch": torch.__version__,
    }
    if cli is not None:
        report["cli"] = cli
        report["cli_loop_img_s"] = round(cli_loop, 2)
        report["cli_img_s"] = round(cli["images"] / cli["seconds"], 2)
        report["cli_vs_loop"] = round(cli["images"] / cli["seconds"] / cli_loop, 3)
        report["cli_wall_img_s"] = round(cli["images"] / cli["wall_s"], 2)
        report["cli_wall_vs_loop"] = round(cli["images"] / cli["wall_s"] / cli_loop, 3)
    if cli_previous is not None:
        report["cli_previous"] = cli_previous
        report["cli_previous_wall_vs_loop"] = round(cli_previous["images"] / cli_previous["wall_s"]
                                                    / cli_previous["loop_img_s"], 3)
        report["cli_previous_vs_loop"] = round(cli_previous["images"] / cli_previous["seconds"]
                                               / cli_previous["loop_img_s"], 3)
    if cli_compiled is not None:
        report["cli_compiled"] = cli_compiled
        report["cli_compiled_wall_vs_loop"] = round(cli_compiled["images"] / cli_compiled["wall_s"] / cli_loop, 3)
    if device.type == "cuda":
        report["goal_img_s"] = GOAL_CUDA_IMG_S
        report["engine_vs_goal"] = round(engine_rate / GOAL_CUDA_IMG_S, 3)
        report["goal_cache_img_s"] = GOAL_CUDA_CACHE_IMG_S
        report["image_cache_vs_goal"] = round(cache_rate / GOAL_CUDA_CACHE_IMG_S, 3)
    else:
        report["goal_ratio"] = GOAL_RATIO_CPU
        report["ratio_vs_goal"] = round(report["engine_vs_loop"] / GOAL_RATIO_CPU, 3)
        if cli is not None:
            report["cli_wall_ratio_vs_goal"] = round(report["cli_wall_vs_loop"] / GOAL_RATIO_CPU, 3)
    report["goal_share_of_decode_limit"] = GOAL_SHARE
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


if __name__ == "__main__":
    main()
