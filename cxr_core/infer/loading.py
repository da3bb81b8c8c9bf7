"""A trained model back from its checkpoint (file or run directory), with nothing else needed.

The checkpoint carries the architecture (``ModelConfig``) and the weights; the model is rebuilt from the
config and every tensor must fit (no silent partial loads). Its fingerprint — a hash of the weights file —
keys the prediction cache, so retraining (a new file) never serves stale predictions.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr_core.checkpoint import CheckpointError, load_checkpoint
from cxr_core.errors import CxrError
from cxr_core.models import ModelConfig, apply_state_dict, build_model
from cxr_core.ood import TrainingStats
from cxr_core.runs.rundir import CHECKPOINT_NAMES

_fingerprints: dict[tuple[str, int, int], str] = {}


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    path: Path
    fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    ood: TrainingStats | None = None  # statistics of the training images (older checkpoints: None)


def resolve_checkpoint(ref: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run directory (its ``best``, else ``last``), or a run's ``checkpoints/``."""
    path = Path(ref).expanduser()
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in CHECKPOINT_NAMES:
                if (folder / name).is_file():
                    return folder / name
        if (path / "config.toml").is_file():  # a run that has not written its first checkpoint
            raise CxrError(f"{path}: {_no_checkpoint_yet(path)}")
        raise CxrError(f"{path}: no checkpoint in this directory (looked for checkpoints/best.safetensors, last.safetensors)")
    if not path.exists():
        if os.sep in str(ref) or path.suffix:
            raise CxrError(f"{ref}: no such checkpoint file or run directory")
        from cxr_core.runs import RunDir  # a run id typed on its own

        try:
            run = RunDir.open(str(ref))
        except CxrError:
            raise CxrError(f"{ref}: no such checkpoint file or run") from None
        return resolve_checkpoint(run.path)
    return path


def _no_checkpoint_yet(run_path: Path) -> str:
    from cxr_core.runs import RunDir

    state = RunDir(run_path).read_status().state
    if state in ("queued", "running"):
        return f"run {run_path.name} is {state} and has no checkpoint yet; it writes one after its first epoch"
    return f"run {run_path.name} ({state}) never wrote a checkpoint; `cxr-tui jobs resume {run_path.name}` starts it again"


def fingerprint(path: str | os.PathLike[str]) -> str:
    """A content hash of the checkpoint file (memoised per path, size and mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _fingerprints:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _fingerprints[key] = digest.hexdigest()
    return _fingerprints[key]


def load_model(ref: str | os.PathLike[str], device: torch.device | str = "cpu") -> LoadedModel:
    path = resolve_checkpoint(ref)
    checkpoint = load_checkpoint(path)
    try:
        config = ModelConfig.from_dict(checkpoint.model_config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: model config unreadable ({err})") from None
    model = build_model(config)
    apply_state_dict(model, checkpoint.weights, str(path))
    model.eval().to(device)
    return LoadedModel(model, config, path, fingerprint(path), dict(checkpoint.metrics),
                       dict(checkpoint.train_config), checkpoint.epoch, checkpoint.ood)
