"""Phantom generation throughput on one CPU core: rendering plus PNG writing, as images per second.

The goal is 100 images/s at 256 x 256 on one core, generation + writing; the ratio against it is reported
per size. The process pins itself to one core, and the rate is computed from the process's CPU time (user +
system, the file writes included), so other work on a shared machine does not distort it; the wall-clock
rate is reported beside it.

    python benchmarks/phantom_throughput.py [--out benchmarks/out/phantom_throughput.json] [--n 300]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_core.phantoms import GENERATOR_VERSION, render_phantom, write_phantoms  # noqa: E402

GOAL = 100.0  # images/s at 256 px, one core
SIZES = (128, 256, 512)


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(size: int, n: int) -> dict:
    """Best of three runs of ``write_phantoms`` (the real path), and rendering alone for comparison."""
    render_phantom(0, 0, size)  # warm the per-size caches (coordinate grids, noise fields)
    writes, renders = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(3):
            writes.append(_timed(lambda run=run: write_phantoms(Path(tmp) / "set", n, size=size, seed=run)))
            renders.append(_timed(lambda run=run: [render_phantom(run, i, size) for i in range(n)]))
    rate = n / min(cpu for cpu, _ in writes)
    return {
        "size": size,
        "n": n,
        "images_per_s": round(rate, 1),
        "wall_images_per_s": round(n / min(wall for _, wall in writes), 1),
        "render_only_images_per_s": round(n / min(cpu for cpu, _ in renders), 1),
        "ratio_vs_goal": round(rate / GOAL, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/phantom_throughput.json"))
    parser.add_argument("--n", type=int, default=300, help="images per run at 128 and 256 px (a third at 512)")
    args = parser.parse_args(argv)
    pinned = _pin_one_core()
    results = [measure(size, args.n if size < 512 else max(args.n // 3, 1)) for size in SIZES]
    for r in results:
        print(f"phantoms {r['size']:>4} px: {r['images_per_s']:7.1f} img/s written per CPU-second "
              f"({r['wall_images_per_s']:.1f} wall-clock, {r['render_only_images_per_s']:.1f} rendering only), "
              f"{r['ratio_vs_goal']:.2f}x the {GOAL:.0f} img/s goal")
    report = {
        "benchmark": "phantom_throughput",
        "generator_version": GENERATOR_VERSION,
        "goal_images_per_s": GOAL,
        "cores": pinned,
        "rate_basis": "process CPU time (user + system) of the best of three runs",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
