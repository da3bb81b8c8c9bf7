"""Self-describing checkpoints in one safetensors file: weights, and everything needed to use them.

A checkpoint carries the model config (architecture, labels, input size, normalisation), the training config
and metrics, so ``Predictor.from_checkpoint(path)`` needs nothing else. Nothing is ever unpickled: tensors live
in the safetensors body and everything else is JSON in its header metadata. A ``last`` checkpoint also holds the
training state (optimizer, scheduler, AMP scaler, sampler, RNG), stored the same way: tensors by key, the
surrounding structure as JSON with references to them, so resuming continues exactly where it stopped.
A checkpoint may also carry :class:`~cxr_core.ood.TrainingStats` of its training images (``ood.*`` tensors and
an ``ood`` JSON entry), which prediction compares new images with; :func:`add_ood_stats` adds them to a
checkpoint already written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cxr_core.atomic import atomic_path
from cxr_core.errors import CxrError
from cxr_core.ood import TrainingStats

FORMAT = "cxr-checkpoint/1"
_MODEL, _STATE, _OOD = "model.", "state.", "ood."
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


class CheckpointError(CxrError):
    """A checkpoint file is missing, damaged, or not a cxr checkpoint."""


@dataclass
class Checkpoint:
    model_config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    train_state: dict[str, Any] | None = None
    path: Path | None = None
    ood: TrainingStats | None = None  # statistics of the training images (None: an older checkpoint)


def save_checkpoint(
    path: str | os.PathLike[str],
    weights: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    *,
    train_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    epoch: int = 0,
    train_state: Mapping[str, Any] | None = None,
    ood: TrainingStats | None = None,
) -> None:
    """Write atomically: a crash (or a full disk) mid-write leaves the previous file as it was."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in weights.items():
        tensors[_MODEL + key] = _own(value, seen)
    structure = _split(dict(train_state), _STATE, tensors, seen) if train_state is not None else None
    info = {"model_config": dict(model_config), "train_config": dict(train_config or {}),
            "metrics": dict(metrics or {}), "epoch": epoch}
    metadata = {"format": FORMAT, "cxr": json.dumps(info)}
    if structure is not None:
        metadata["train_state"] = json.dumps(structure)
    if ood is not None:
        _put_ood(ood, tensors, metadata, seen)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def add_ood_stats(path: str | os.PathLike[str], stats: TrainingStats, *, mode: int | None = None) -> None:
    """Rewrite a checkpoint with ``stats`` (replacing any it had), every other tensor and entry kept as they are.

    ``mode`` defaults to the file's own permissions."""
    path = Path(path)
    with _open(path) as (reader, _):
        metadata = dict(reader.metadata() or {})
        try:
            tensors = {k: reader.get_tensor(k) for k in reader.keys() if not k.startswith(_OOD)}
        except (SafetensorError, ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from None
    metadata.pop("ood", None)
    _put_ood(stats, tensors, metadata, set())
    mode = path.stat().st_mode & 0o777 if mode is None else mode
    with atomic_path(path, mode=mode) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)  # safetensors writes the file anew


def _put_ood(stats: TrainingStats, tensors: dict[str, torch.Tensor], metadata: dict[str, str], seen: set[int]) -> None:
    meta, arrays = stats.to_checkpoint()
    metadata["ood"] = json.dumps(meta)
    for key, value in arrays.items():
        tensors[_OOD + key] = _own(value, seen)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON metadata (configs, metrics, epoch) without loading any tensor."""
    with _open(path) as (_, info):
        return info


def load_checkpoint(path: str | os.PathLike[str], *, train_state: bool = False) -> Checkpoint:
    """Weights (and, with ``train_state=True``, the resumable training state) of a checkpoint."""
    with _open(path) as (reader, info):
        meta = reader.metadata() or {}
        try:
            weights = {k[len(_MODEL):]: reader.get_tensor(k) for k in reader.keys() if k.startswith(_MODEL)}
            state = None
            if train_state:
                if "train_state" not in meta:
                    raise CheckpointError(f"{path}: holds weights only (a 'best' checkpoint?); resume needs 'last'")
                tensors = {k: reader.get_tensor(k) for k in reader.keys() if k.startswith(_STATE)}
                state = _join(json.loads(meta["train_state"]), tensors)
            ood = _read_ood(reader, meta)
        except (SafetensorError, ValueError, KeyError, OSError) as exc:
            raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from None
    return Checkpoint(info["model_config"], weights, info.get("train_config", {}), info.get("metrics", {}),
                      int(info.get("epoch", 0)), state, Path(path), ood)


def read_ood_stats(path: str | os.PathLike[str]) -> TrainingStats | None:
    """The training-image statistics a checkpoint carries (None when it has none), without its weights."""
    with _open(path) as (reader, _):
        try:
            return _read_ood(reader, reader.metadata() or {})
        except (SafetensorError, ValueError, KeyError, OSError) as exc:
            raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from None


def _read_ood(reader: Any, meta: Mapping[str, str]) -> TrainingStats | None:
    if "ood" not in meta:
        return None
    info = json.loads(meta["ood"])
    if not isinstance(info, dict):
        raise ValueError("out-of-distribution stats: metadata is not an object")
    tensors = {k[len(_OOD):]: reader.get_tensor(k) for k in reader.keys() if k.startswith(_OOD)}
    try:
        return TrainingStats.from_checkpoint(info, tensors)
    except ValueError as err:
        raise ValueError(f"out-of-distribution stats: {err}") from None


class _open:
    """Open a checkpoint for reading, turning every way it can be wrong into one CheckpointError line."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __enter__(self):
        path = self.path
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
        if head.startswith(_PICKLE_MAGIC):
            raise CheckpointError(f"{path}: a pickled PyTorch file, not a cxr checkpoint; cxr never unpickles "
                                  "checkpoints (convert the weights to .safetensors and pass them as --weights)")
        try:
            self._ctx = safe_open(str(path), framework="pt", device="cpu")
            reader = self._ctx.__enter__()
            meta = reader.metadata() or {}
        except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a valid checkpoint (damaged or truncated: {exc})") from None
        if meta.get("format") != FORMAT:
            self._ctx.__exit__(None, None, None)
            raise CheckpointError(f"{path}: a safetensors file but not a cxr checkpoint (no '{FORMAT}' metadata); "
                                  "plain weights go to --weights")
        try:
            info = json.loads(meta["cxr"])
        except (KeyError, ValueError) as exc:
            self._ctx.__exit__(None, None, None)
            raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from None
        return reader, info

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _own(value: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """A contiguous CPU tensor that shares storage with no other tensor written (safetensors refuses sharing)."""
    tensor = value.detach().to("cpu").contiguous()
    ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else 0
    if ptr and ptr in seen:
        tensor = tensor.clone()
        ptr = tensor.untyped_storage().data_ptr()
    if ptr:
        seen.add(ptr)
    return tensor


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor], seen: set[int]) -> Any:
    """Replace tensors in a nested structure by references; keep dict key types (optimizer state uses ints)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = _own(obj, seen)
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        return {"__map__": [[k, _split(v, prefix, tensors, seen)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, prefix, tensors, seen) for v in obj]}
    if isinstance(obj, list):
        return [_split(v, prefix, tensors, seen) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint's training state")


def _join(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__map__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__map__"]}
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj
