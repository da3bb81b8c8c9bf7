#!/usr/bin/env bash
# Every GPU measurement of issue 14 in one command, writing JSON under OUT (about 5 minutes on a 16-core H100/H200).
#
#   bash benchmarks/gpu_check.sh OUT [--wheels DIR] [--images DIR] [--python PY] [--quick]
#
# Written for the machine users have: a GPU box with torch and timm (numpy, Pillow, scipy, scikit-learn,
# safetensors, typer, rich) installed but not necessarily cxr's other dependencies. It runs from this checkout
# (PYTHONPATH, nothing installed into site-packages from here) and never touches torch:
#   --wheels DIR   pip-installs what is missing from that folder only (pip install --no-index --find-links DIR,
#                  torch and torchvision pinned to the versions present);
#   --images DIR   a few real 1024x1024 PNGs (e.g. NIH's images_001/images; 20-100 are enough): decoding and
#                  prediction are measured on them (else on synthetic PNGs that compress like them);
#   --python PY    the interpreter with torch (default: python3);
#   --quick        everything shrunk to tiny sizes, any device: to test this script on a CPU (figures meaningless).
#
# What it runs (on a GPU in the order predict, train, trainer_vs_loop, train_throughput, cache_build, decoders;
# each step with its own time limit and none past 345 s after the start, so that the whole command, pip included,
# ends within 6 minutes; a failed, timed-out (exit 124) or skipped (125) step is recorded and the rest go on):
#   env.json                 device, versions, what was missing / installed
#   decoders.json            benchmarks/decoders.py: Pillow / pyspng / OpenCV / torchvision.io on 8/16-bit PNG
#   predict_throughput.json  engine + `cxr-tui predict` (defaults, cold) from PNG, from the image cache, vs a loop,
#                            the host's decode limit and the engine's share of it
#   trainer_vs_loop.json     the real Trainer vs a bare loop, efficientnet_b0 @224 (goal ratio >= 0.85)
#   train_throughput.json    bare training loop, uint8 cache vs decoding (goal >= 2,000 img/s)
#   cache_build.json         ImageCache build, in-process vs one thread per core, share of the decode limit
#   train_defaults.json      `cxr-tui train --data P` with its defaults on 2,000 phantoms (128 px, seed 0):
#                            wall time (cache build included), val macro AUC per epoch and when >= 0.95 was first
#                            reached (goal: within 60 s)
#   summary.json             each step's exit status and seconds, and the headline figures
# Copy the figures (device named) into benchmarks/RESULTS.md, section "GPU runs".
#
# Preparing the wheels folder (on any machine with internet, for the GPU box's Python and platform; here 3.12 on
# linux x86_64 -- change --python-version to what `python3 -V` says there). Packages that depend on torch are
# fetched without their dependencies, so that no torch or CUDA wheel is downloaded; their other dependencies are
# listed explicitly:
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d wheels \
#       textual textual-image textual-plotext plotext ftfy regex tqdm huggingface_hub pydicom platformdirs \
#       tomli-w pydantic typer rich matplotlib safetensors
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d wheels --no-deps open-clip-torch torchcam timm
#   # optional, measured by decoders.py: pyspng opencv-python-headless (add them to the first command)
# then copy `wheels/` and this checkout to the GPU box and run:
#   bash benchmarks/gpu_check.sh /tmp/gpu_check --wheels wheels --images /path/to/nih/images_001/images
set -uo pipefail

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
WHEELS=""; IMAGES=""; PY=${PYTHON:-python3}; QUICK=0
while [ $# -gt 0 ]; do
    case $1 in
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
        --images) IMAGES=${2:?--images needs a folder}; shift 2 ;;
        --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown option: $1" >&2; usage ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
[ -z "$WHEELS" ] || WHEELS=$(cd "$WHEELS" && pwd) || { echo "no wheels folder $WHEELS" >&2; exit 1; }
[ -z "$IMAGES" ] || IMAGES=$(cd "$IMAGES" && pwd) || { echo "no images folder $IMAGES" >&2; exit 1; }
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export CXR_HOME="$OUT/home"   # fresh: no index, prediction cache or image cache from before
rm -rf "$CXR_HOME" "$OUT/work"; mkdir -p "$CXR_HOME" "$OUT/work" "$OUT/logs"
STARTED=$(date +%s)
STEPS="$OUT/work/steps.tsv"; : > "$STEPS"
log() { echo "[$(( $(date +%s) - STARTED ))s] $*"; }

"$PY" -c 'import torch, timm' 2>/dev/null || { echo "$PY has no torch/timm: pass --python" >&2; exit 1; }
if [ "$QUICK" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA device visible to $PY (use --quick to test this script on a CPU)" >&2; exit 1
fi

# --- dependencies: what is missing, installed from --wheels only, torch pinned --------------------------------
missing=$("$PY" - <<'EOF'
import importlib.util
wanted = {"textual": "textual", "textual_image": "textual-image", "textual_plotext": "textual-plotext",
          "plotext": "plotext", "open_clip": "open-clip-torch", "ftfy": "ftfy", "pydicom": "pydicom",
          "platformdirs": "platformdirs", "torchcam": "torchcam", "tomli_w": "tomli-w", "pydantic": "pydantic",
          "typer": "typer", "rich": "rich", "safetensors": "safetensors", "scipy": "scipy",
          "sklearn": "scikit-learn", "matplotlib": "matplotlib", "PIL": "pillow", "numpy": "numpy"}
print(" ".join(pip for module, pip in wanted.items() if importlib.util.find_spec(module) is None))
EOF
)
installed=""
if [ -n "$missing" ]; then
    if [ -n "$WHEELS" ]; then
        "$PY" - > "$OUT/work/constraints.txt" <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "torchvision", "triton"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
EOF
        log "installing from $WHEELS: $missing (torch pinned: $(tr '\n' ' ' < "$OUT/work/constraints.txt"))"
        # shellcheck disable=SC2086  # one package per word
        if "$PY" -m pip install --no-index --find-links "$WHEELS" --only-binary=:all: \
                -c "$OUT/work/constraints.txt" $missing > "$OUT/logs/pip.log" 2>&1; then
            installed=$missing
        else
            log "pip install failed (see logs/pip.log); going on with what is there"
        fi
    else
        log "missing: $missing (give --wheels DIR to install them); steps that need them will fail"
    fi
fi
"$PY" - "$OUT/env.json" "$missing" "$installed" "$QUICK" <<'EOF'
import json, os, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count(), "cpus": len(os.sched_getaffinity(0)),
        "missing_before": sys.argv[2].split(), "installed": sys.argv[3].split(), "quick": sys.argv[4] == "1"}
try:
    import timm
    info["timm"] = timm.__version__
except ImportError:
    pass
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
EOF

# --- images: the scripts read $CXR_REAL_DATA/nih-sample/images_001/images --------------------------------------
if [ -n "$IMAGES" ]; then
    mkdir -p "$OUT/work/real/nih-sample/images_001"
    ln -sfn "$IMAGES" "$OUT/work/real/nih-sample/images_001/images"
    export CXR_REAL_DATA="$OUT/work/real"
    IMAGE_ARGS=(--images "$IMAGES")
    PREDICT_IMAGES=(--images-dir "$IMAGES")
else
    unset CXR_REAL_DATA
    IMAGE_ARGS=(); PREDICT_IMAGES=()
fi

# step NAME LIMIT_S COMMAND...: run with a time limit (never past the deadline), log to logs/NAME.log, record exit
# status and seconds. Full runs end by BUDGET seconds after the start (6 minutes less a margin); --quick has no
# deadline unless GPU_CHECK_BUDGET is set.
DEADLINE=1
[ "$QUICK" = 0 ] || [ -n "${GPU_CHECK_BUDGET:-}" ] || DEADLINE=0
BUDGET=${GPU_CHECK_BUDGET:-345}
step() {
    local name=$1 limit=$2; shift 2
    if [ "$DEADLINE" = 1 ]; then
        local left=$(( BUDGET - ($(date +%s) - STARTED) ))
        if [ $left -lt 15 ]; then
            log "$name: skipped, the ${BUDGET}s budget is spent"
            printf '%s\t%s\t%s\t%s\n' "$name" 125 "$(date +%s)" "$(date +%s)" >> "$STEPS"
            return
        fi
        [ "$limit" -le "$left" ] || limit=$left
    fi
    log "$name (limit ${limit}s): $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    (cd "$REPO" && timeout --kill-after=10 "$limit" "$@") > "$OUT/logs/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$t0" "$t1" >> "$STEPS"
    if [ $rc != 0 ]; then
        log "$name: exit $rc (124: over its time limit); tail of logs/$name.log:"
        tail -5 "$OUT/logs/$name.log"
    fi
}

B="$REPO/benchmarks"
CLI=("$PY" -m cxr_tui)
# `cxr-tui train` with its defaults on the phantom acceptance set: wall time includes start-up and the cache build.
train_defaults() {
    step synth 30 "${CLI[@]}" data synth "$OUT/work/phantoms" "${PHANTOMS[@]}" --json
    step train_defaults "$TRAIN_LIMIT" "${CLI[@]}" train --data "$OUT/work/phantoms" --runs-dir "$OUT/work/runs" \
        "${TRAIN[@]}" --json
}
if [ "$QUICK" = 1 ]; then
    step decoders 120 "$PY" "$B/decoders.py" "${IMAGE_ARGS[@]}" --count 3 --repeat 1 --out "$OUT/decoders.json"
    step predict_throughput 300 "$PY" "$B/predict_throughput.py" "${PREDICT_IMAGES[@]}" --model resnet10t --size 64 \
        --images 24 --out "$OUT/predict_throughput.json"
    step trainer_vs_loop 300 "$PY" "$B/trainer_vs_loop.py" --model tiny_resnet --size 32 --images 96 --epochs 2 \
        --batch-size 16 --out "$OUT/trainer_vs_loop.json"
    step train_throughput 300 "$PY" "$B/train_throughput.py" --size 64 --images 32 --workers 2 --batch-size 4 \
        --steps 1 --warmup 1 --loader-batches 2 --out "$OUT/train_throughput.json"
    step cache_build 120 "$PY" "$B/cache_build.py" --images 32 --workers 2 --size 64 --out "$OUT/cache_build.json"
    PHANTOMS=(--n 120 --size 64 --seed 0); TRAIN=(--model tiny_resnet --image-size 32 --epochs 2); TRAIN_LIMIT=300
    train_defaults
else
    # In order of what the issue's acceptance needs most; the deadline cuts the tail if the machine is slow.
    CORES=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
    step predict_throughput 100 "$PY" "$B/predict_throughput.py" "${PREDICT_IMAGES[@]}" --model efficientnet_b0 \
        --size 224 --images 2048 --rounds 1 --out "$OUT/predict_throughput.json"
    PHANTOMS=(--n 2000 --size 128 --seed 0); TRAIN=(); TRAIN_LIMIT=90
    train_defaults
    step trainer_vs_loop 75 "$PY" "$B/trainer_vs_loop.py" --model efficientnet_b0 --size 224 --images 2000 \
        --epochs 3 --batch-size 256 --out "$OUT/trainer_vs_loop.json"
    step train_throughput 60 "$PY" "$B/train_throughput.py" --size 224 --images 1024 --workers $(( CORES - 2 )) \
        --out "$OUT/train_throughput.json"
    step cache_build 40 "$PY" "$B/cache_build.py" --images 1024 --workers "$CORES" --size 224 \
        --out "$OUT/cache_build.json"
    step decoders 45 "$PY" "$B/decoders.py" "${IMAGE_ARGS[@]}" --count 20 --repeat 2 --out "$OUT/decoders.json"
fi
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = {}
for line in (out / "work" / "steps.tsv").read_text().splitlines():
    name, rc, t0, t1 = line.split("\t")
    steps[name] = {"exit": int(rc), "seconds": round(float(t1) - float(t0), 1), "start": float(t0)}
run_step = steps.get("train_defaults", {})
train = {"exit": run_step.get("exit"), "wall_s": run_step.get("seconds")}
runs = sorted((out / "work" / "runs").glob("*/metrics.jsonl"))
if runs:
    rows = [json.loads(line) for line in runs[-1].read_text().splitlines() if line.strip()]
    epochs = [r for r in rows if r.get("type") == "epoch"]
    train["run"] = str(runs[-1].parent)
    train["epochs"] = [{k: v for k, v in r.items() if k not in ("val_auc", "val_ap")} for r in epochs]
    aucs = [r.get("val_auc_macro") for r in epochs]
    train["val_macro_auc"] = aucs
    train["best_val_macro_auc"] = max((a for a in aucs if a is not None), default=None)
    train["epoch_end_s"] = [round(r["time"] - run_step["start"], 1) for r in epochs if "time" in r]
    reached = [round(r["time"] - run_step["start"], 1) for r in epochs
               if "time" in r and (r.get("val_auc_macro") or 0) >= 0.95]
    train["first_at_or_over_0.95_s"] = reached[0] if reached else None
    train["images_per_s"] = [r.get("images_per_s") for r in epochs]
    train["goal"] = ">= 0.95 val macro AUC within 60 s of the command's start (cache build included)"
(out / "train_defaults.json").write_text(json.dumps(train, indent=2, default=str) + "\n")

def figure(name, *keys):
    try:
        data = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: data.get(k) for k in keys}

summary = {"env": json.loads((out / "env.json").read_text()), "steps": steps,
           "total_s": round(sum(s["seconds"] for s in steps.values()), 1),
           "decoders": figure("decoders", "fastest_identical", "decode_limit_img_s"),
           "predict": figure("predict_throughput", "engine_img_s", "engine_vs_goal", "engine_share_of_decode_limit",
                             "decode_limit_img_s", "engine_from_image_cache_img_s", "image_cache_vs_goal",
                             "cli_img_s", "cli_wall_img_s", "loop_img_s", "engine_vs_loop"),
           "trainer_vs_loop": figure("trainer_vs_loop", "ratio", "trainer_img_s", "loop_img_s"),
           "train_throughput": figure("train_throughput", "train_img_s", "loader_img_s"),
           "cache_build": figure("cache_build", "ratio", "workers_img_s", "share_of_decode_limit"),
           "train_defaults": {k: train.get(k) for k in ("exit", "wall_s", "best_val_macro_auc",
                                                         "first_at_or_over_0.95_s")}}
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(json.dumps(summary, indent=2, default=str))
EOF
log "done in $(( $(date +%s) - STARTED ))s; JSON under $OUT"
