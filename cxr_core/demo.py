"""The embedded default: the demo phantom set and the small model shipped in ``assets/models``.

The demo model is a resnet10t trained from scratch on 2,000 phantoms (seed 1, 256 px, input 128 px) — a
different seed from the demo set (seed 0), so what the demo shows is held out. Reproduce it with::

    cxr-tui data synth /tmp/demo-train --n 2000 --size 256 --seed 1
    cxr-tui train --data /tmp/demo-train --model resnet10t --image-size 128 --epochs 8 --name demo
    python -m cxr_core.demo export RUN_DIR assets/models/demo_resnet10t.safetensors

``export`` keeps the best checkpoint's weights in float16 (half the size; the model is rebuilt in float32
when loaded) with its model config, training config and metrics, and no optimiser state. The shipped model
predates training-image statistics in checkpoints; ``ood-stats`` adds them (out-of-distribution warning,
:mod:`cxr_core.ood`), computed on 512 phantoms of its training distribution (seed 1, 256 px), not on the demo set
it is shown on::

    python -m cxr_core.demo ood-stats assets/models/demo_resnet10t.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

from cxr_core.assets import asset_path
from cxr_core.paths import data_dir

DEMO_N = 600
DEMO_SIZE = 256
DEMO_SEED = 0
DEMO_MODEL = "models/demo_resnet10t.safetensors"
TRAIN_SEED = 1  # the demo model's training phantoms


def demo_root() -> Path:
    return data_dir() / "demo" / "phantoms"


def ensure_demo_set(root: Path | None = None, progress=None) -> Path:
    """Write the demo phantom set (once; a complete set with the right settings is reused)."""
    from cxr_core.data.sources.synthetic import read_manifest
    from cxr_core.phantoms import write_phantoms

    root = root or demo_root()
    manifest = read_manifest(root)
    if not manifest or (manifest.get("n"), manifest.get("size"), manifest.get("seed")) != (DEMO_N, DEMO_SIZE, DEMO_SEED):
        write_phantoms(root, DEMO_N, DEMO_SIZE, DEMO_SEED, progress=progress)
    return root


def demo_model_path() -> Path:
    return asset_path(DEMO_MODEL)


def export(run_or_checkpoint: str | Path, out: str | Path) -> Path:
    from cxr_core.checkpoint import load_checkpoint, save_checkpoint
    from cxr_core.infer.loading import resolve_checkpoint
    from cxr_core.models import get_spec

    source = resolve_checkpoint(run_or_checkpoint)
    checkpoint = load_checkpoint(source)
    config = dict(checkpoint.model_config)
    spec = get_spec(config["name"])
    config["cam_layer"] = spec.cam_layer  # the registry's current choice, even if the run predates it
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in checkpoint.weights.items()}
    metrics = {k: v for k, v in checkpoint.metrics.items() if k in ("val_auc_macro", "val_auc", "val_ap_macro", "epoch")}
    save_checkpoint(out, weights, config, train_config=checkpoint.train_config, metrics=metrics, epoch=checkpoint.epoch)
    Path(out).chmod(0o644)
    return Path(out)


def add_training_stats(checkpoint: str | Path, *, n: int = 512, size: int = DEMO_SIZE, seed: int = TRAIN_SEED):
    """Rewrite ``checkpoint`` (the demo model) with the out-of-distribution stats of ``n`` phantoms drawn as its
    training set was (same weights and metadata); returns the stats."""
    import tempfile

    import numpy as np

    from cxr_core.checkpoint import add_ood_stats
    from cxr_core.data.preprocess import load_letterboxed
    from cxr_core.infer.loading import load_model
    from cxr_core.ood import stats_for_model
    from cxr_core.phantoms import write_phantoms

    loaded = load_model(checkpoint)
    with tempfile.TemporaryDirectory(prefix="cxr-demo-stats-") as tmp:
        write_phantoms(Path(tmp), n, size, seed)
        files = sorted((Path(tmp) / "images").glob("*.png"))
        pixels = np.stack([load_letterboxed(f, loaded.config.input_size) for f in files])
    stats = stats_for_model(loaded.model, loaded.config, pixels)
    add_ood_stats(checkpoint, stats)
    return stats


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ood-stats":
        found = add_training_stats(sys.argv[2])
        print(f"{sys.argv[2]}: stats of {found.n_images} phantoms, thresholds {found.thresholds()}")
    elif len(sys.argv) == 4 and sys.argv[1] == "export":
        print(export(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("usage: python -m cxr_core.demo export RUN_OR_CHECKPOINT OUT.safetensors\n"
                 "       python -m cxr_core.demo ood-stats CHECKPOINT")
