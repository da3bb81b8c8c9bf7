"""Run every benchmark, collect their JSON, and write the summary table of benchmarks/RESULTS.md + JSON.

Each benchmark runs as its own process (a fresh interpreter, as a user would start it) and writes its own
JSON to ``benchmarks/out/``; this script gathers the headline figure of each, always as a ratio against
its goal or its baseline measured in the same run, describes the machine, and rewrites the part of
RESULTS.md between the ``run_all`` markers (the hand-written notes around it are kept).

    CXR_REAL_DATA=../shared/data python benchmarks/run_all.py [--quick] [--only NAME ...]

``--quick`` shrinks each benchmark (fewer images, presses, changes) to a few minutes in all; numbers are
noisier. On a CUDA machine the scripts pick the GPU, bf16 and channels_last themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"

# name: (script, full args, quick args, [(label, json path, goal text)])
BENCHMARKS: dict[str, tuple[str, list[str], list[str], list[tuple[str, str, str]]]] = {
    "index": ("index_nih.py", [], ["--repeat", "1"],
              [("index 112,120 NIH rows / 5 s", "index_vs_goal", "< 1"),
               ("unchanged re-scan / 1 s", "rescan_vs_goal", "< 1")]),
    "thresholds": ("threshold_latency.py", [], ["--changes", "500"],
                   [("threshold change p99 (1M x 14) / 5 ms", "p99_vs_goal", "< 1"),
                    ("structure p50 / NumPy recompute", "p50_vs_baseline", "< 1")]),
    "decoders": ("decoders.py", [], ["--count", "10", "--repeat", "1"],
                 [("PNG 8-bit: fastest identical decoder / Pillow, one core", "png8_fastest_vs_pillow", "(context)"),
                  ("PNG 8-bit: best decoder / Pillow, one thread per core", "png8_threaded_best_vs_pillow", ""),
                  ("PNG 16-bit: fastest identical decoder / Pillow, one core", "png16_fastest_vs_pillow", "")]),
    "predict": ("predict_throughput.py", [], ["--images", "96"],
                [("engine (defaults) / per-image loop (img/s)", "engine_vs_loop", ">= 2"),
                 ("cxr-tui predict (defaults, cold, wall) / loop", "cli_wall_vs_loop", ">= 2"),
                 ("cxr-tui predict (its own seconds) / loop", "cli_vs_loop", ""),
                 ("engine / host decode limit", "engine_share_of_decode_limit", ">= 0.8"),
                 ("engine / in-turn ceiling (decode + model)", "engine_share_of_ceiling", "")]),
    "train": ("train_throughput.py", [], ["--images", "128"],
              [("train loader: cache / PNG decode", "loader_img_s.cache_vs_decode", "> 1"),
               ("training: cache / PNG decode", "train_img_s.cache_vs_decode", "")]),
    "worklist": ("tui_worklist.py", [], ["--presses", "60", "--repeat", "2", "--baseline-rows", "2000"],
                 [("worklist open (112,120 rows) / 2 s", "open_vs_goal", "< 1"),
                  ("worklist key p50 / 50 ms", "key_paint_p50_vs_goal", "< 1"),
                  ("worklist key p99 (gc frozen) / 50 ms", "key_paint_p99_vs_goal_gc_frozen", "< 1")]),
}
OUTPUTS = {"decoders": "decoders.json", "index": "index_nih.json", "thresholds": "threshold_latency.json", "predict": "predict_throughput.json",
           "train": "train_throughput.json", "worklist": "tui_worklist.json"}


def lookup(data: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    info["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine(), "quick": args.quick, "benchmarks": {}}
    for name in args.only or BENCHMARKS:
        script, full, quick, figures = BENCHMARKS[name]
        started = time.perf_counter()
        command = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        entry = {"seconds": round(seconds, 1), "exit": done.returncode}
        if done.returncode != 0:
            entry["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"   failed: {entry['error']}", flush=True)
        else:
            data = json.loads((OUT / OUTPUTS[name]).read_text())
            entry["figures"] = {label: {"ratio": lookup(data, key), "goal": goal} for label, key, goal in figures}
            for label, value in entry["figures"].items():
                print(f"   {label}: {value['ratio']}", flush=True)
        summary["benchmarks"][name] = entry
    (OUT / "run_all.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_results(args.results, summary)


def write_results(path: Path, summary: dict) -> None:
    m = summary["machine"]
    lines = [BEGIN, "", f"Last `run_all.py`{' --quick' if summary['quick'] else ''}: {m.get('cpu', '?')}, "
             f"{m['cpus']} cores, GPU {m.get('gpu') or 'none'}, Python {m['python']}, torch {m.get('torch', '?')}, "
             f"load average {m.get('load_average')}.", "", "| figure | ratio | goal |", "| --- | --- | --- |"]
    for name, entry in summary["benchmarks"].items():
        if "figures" not in entry:
            lines.append(f"| {name} | failed: {entry.get('error', '?')} | |")
            continue
        for label, value in entry["figures"].items():
            ratio = value["ratio"]
            lines.append(f"| {label} | {ratio if ratio is not None else '—'} | {value['goal'] or '(context)'} |")
    lines += ["", END]
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Latest run of run_all.py\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
