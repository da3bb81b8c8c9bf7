"""Image cache build: in this thread vs ``--workers`` threads, on the same 2,000 names; print and write JSON.

The product's own call (:meth:`cxr_core.data.image_cache.ImageCache.open_or_build`, as training makes it), cold
each time (a fresh cache folder), letterboxing to ``--size``. Images: names cycling over the 100 real 1024x1024
NIH PNGs in ``$CXR_REAL_DATA/nih-sample/images_001/images`` when set, else over synthetic 1024x1024 PNGs that
compress like them; the files come from the page cache after the first pass, as decoding is what is measured.
Also reports the host's decode limit (cores / one decode + letterbox) and the build's share of it.

Goal (issue 14): 2 workers >= 1.6x in-process on a 2-core machine.

    python benchmarks/cache_build.py [--images 2000] [--workers 2] [--size 224] [--out benchmarks/out/cache_build.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import source_images  # noqa: E402 - the same image set as the training benchmark

from cxr_core.data.image_cache import ImageCache  # noqa: E402
from cxr_core.data.preprocess import load_letterboxed  # noqa: E402

GOAL_RATIO = 1.6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "cache_build.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, names, kind = source_images(tmp, args.images)
        sample = sorted({os.path.realpath(base / n) for n in names})[:20]
        for path in sample:  # warm the page cache and the decoder
            load_letterboxed(path, args.size)
        start = time.perf_counter()
        for path in sample:
            load_letterboxed(path, args.size)
        one = (time.perf_counter() - start) / len(sample)
        rates = {}
        for workers in (0, args.workers):
            start = time.perf_counter()
            cache = ImageCache.open_or_build(base, names, args.size, workers=workers, root=tmp / f"cache{workers}")
            seconds = time.perf_counter() - start
            assert cache.decoded == len(names) and not cache.failures, cache.failures
            rates[workers] = len(names) / seconds
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = min(cores, args.workers) / one
    result = {
        "images": len(names), "source": kind, "size": args.size, "cores": cores, "workers": args.workers,
        "in_process_img_s": round(rates[0], 1), "workers_img_s": round(rates[args.workers], 1),
        "ratio": round(rates[args.workers] / rates[0], 3), "goal_ratio": GOAL_RATIO,
        "decode_letterbox_ms": round(one * 1000, 2), "decode_limit_img_s": round(limit, 1),
        "share_of_decode_limit": round(rates[args.workers] / limit, 3),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
