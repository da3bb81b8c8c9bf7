"""Putting weights from a local file into a model, without unpickling arbitrary objects.

Files come from many places (timm's hub, BiomedCLIP's open_clip checkpoint, torchxrayvision, DataParallel
or Lightning training runs), so keys are aligned by prefix automatically, a classifier that does not fit
(ImageNet's 1,000 classes) is dropped and re-initialised, and anything else that does not fit is an error
naming the keys: a backbone silently left at random init is the worst outcome.
"""

from __future__ import annotations

import importlib
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cxr_core.errors import CxrError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


class WeightsUnavailable(CxrError):
    """Published weights are not on this machine and cannot be fetched; the message says how to get them."""


@dataclass(frozen=True)
class LoadReport:
    """What a weights file gave a model; kept on the model as ``model.cxr_load_report``."""

    source: str
    loaded: int
    head_dropped: tuple[str, ...] = ()  # file tensors for a classifier of another shape (e.g. 1,000 ImageNet classes)
    head_initialised: tuple[str, ...] = ()  # model head tensors left at random init
    ignored: tuple[str, ...] = ()  # file tensors outside the part that was taken (e.g. BiomedCLIP's text tower)
    strip_prefix: str = ""
    add_prefix: str = ""

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        if self.strip_prefix or self.add_prefix:
            parts.append(f"keys mapped {self.strip_prefix or '<none>'} -> {self.add_prefix or '<none>'}")
        if self.head_dropped:
            parts.append(f"dropped {len(self.head_dropped)} head tensors that did not fit ({_few(self.head_dropped)})")
        if self.head_initialised:
            parts.append(f"head initialised randomly ({_few(self.head_initialised)})")
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} tensors outside {self.strip_prefix!r} ({_few(self.ignored)})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def _few(keys: Iterable[str], n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:160]


def read_state_dict(path: str | Path, trusted_module_packages: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Tensors by name from a ``.safetensors`` or ``torch.save`` file, unwrapping training checkpoints.

    ``torch.load`` runs with ``weights_only=True``: a file that needs any other class or function to load is
    refused. ``trusted_module_packages`` admits one more thing, for published files saved as whole models
    (torchxrayvision's DenseNets): ``nn.Module`` subclasses defined in those packages, listed from the
    pickle's opcodes without running them; their parameters and buffers are taken and the modules dropped.
    Whole models saved in torch's pre-1.6 (non-zip) format cannot be read that way and are refused.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CxrError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CxrError(f"{path}: not a readable safetensors file ({err})") from None
    if path.suffix not in TORCH_SUFFIXES:
        raise CxrError(f"{path}: unknown weights format (use .safetensors or {'/'.join(TORCH_SUFFIXES)})")
    obj = _torch_load(path, trusted_module_packages)
    state = _find_state_dict(obj)
    if not state:
        raise CxrError(f"{path}: no tensors found (expected a state dict, or one under 'state_dict' / 'model')")
    return state


def _torch_load(path: Path, trusted_module_packages: tuple[str, ...]) -> object:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as err:
        raise CxrError(f"{path}: cannot read ({err.strerror or err})") from None
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # torch.save: a zip archive, or (legacy) a pickle
        raise CxrError(f"{path}: not a PyTorch weights file (neither torch.save's zip archive nor a pickle)")
    allowed = _trusted_module_classes(path, trusted_module_packages) if trusted_module_packages else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" not in text:
            raise CxrError(f"{path}: not a readable torch weights file ({_first_line(err)})") from None
        found = re.search(r"GLOBAL (\S+)", text) or re.search(r"(unrecognized function \S+|got <class \S+>)", text)
        what = found.group(1) if found else "objects other than tensors"
        raise CxrError(f"{path}: refused to load: unpickling it would need {what}, and cxr only loads tensors "
                       "(.safetensors or a plain state dict); if it is a whole model you trust, save its "
                       "state_dict() and pass that") from None
    except Exception as err:  # torch.load on arbitrary bytes raises anything (KeyError, RuntimeError, EOFError…)
        raise CxrError(f"{path}: not a readable torch weights file ({_first_line(err)})") from None


def _trusted_module_classes(path: Path, packages: tuple[str, ...]) -> list[type]:
    """``nn.Module`` classes from ``packages`` that the file names, listed by torch without unpickling."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError, KeyError):
        return []
    classes = []
    for name in sorted(names):
        module, _, attr = name.rpartition(".")
        if not any(module == p or module.startswith(p + ".") for p in packages):
            continue
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            classes.append(obj)
    return classes


def _find_state_dict(obj: object, depth: int = 0) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return _module_tensors(obj)
    if not isinstance(obj, Mapping) or depth > 2:
        return {}
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    for key in _NESTED_KEYS:
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found:
                return found
    return {}


def _module_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers read from the module's dicts, so modules pickled by old torch
    versions (lacking attributes ``state_dict()`` needs today) still give their tensors."""
    attrs = vars(module)
    skip = attrs.get("_non_persistent_buffers_set", set())
    out: dict[str, torch.Tensor] = {}
    for table in ("_parameters", "_buffers"):
        for name, value in attrs.get(table, {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in attrs.get("_modules", {}).items():
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def _first_segments(keys: Iterable[str]) -> set[str]:
    return {""} | {k.split(".", 1)[0] + "." for k in keys if "." in k}


def _align(source: Iterable[str], target: set[str]) -> tuple[str, str]:
    """The (strip, add) prefix pair that maps the most file keys onto model keys.

    Ties go to fewer unexpected keys, then fewer ignored ones; so ``module.`` (DataParallel) is stripped,
    ``net.`` (our wrapper around a published network) is added, and ``visual.`` selects BiomedCLIP's tower.
    """
    source = list(source)
    best: tuple[tuple[int, int, int], tuple[str, str]] = ((0, 0, 0), ("", ""))
    for strip in _first_segments(source):
        taken = [k[len(strip):] for k in source if k.startswith(strip)]
        for add in _first_segments(target):
            mapped = {add + k for k in taken}
            matched = len(mapped & target)
            score = (matched, -len(mapped - target), len(taken))
            if matched and score > best[0]:
                best = (score, (strip, add))
    return best[1]


def _in_head(key: str, heads: Iterable[str]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in heads)


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     heads: Iterable[str] = ()) -> LoadReport:
    """Copy ``state`` into ``model``; tensors under ``heads`` may be missing or misfit, nothing else may.

    Pass ``heads=()`` to require every tensor, as when restoring a trained checkpoint.
    """
    heads = tuple(heads)
    own = model.state_dict()
    strip, add = _align(state, set(own))
    ignored = tuple(k for k in state if not k.startswith(strip))
    mapped = {add + k[len(strip):]: v for k, v in state.items() if k.startswith(strip)}
    take: dict[str, torch.Tensor] = {}
    dropped, unexpected, misfit = [], [], []
    for key, value in mapped.items():
        fits = key in own and tuple(value.shape) == tuple(own[key].shape)
        if fits:
            take[key] = value
        elif _in_head(key, heads):
            dropped.append(key)
        elif key in own:
            misfit.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            unexpected.append(key)
    broken = [k for k, v in take.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # a model with NaN/inf weights predicts NaN for every image: say so instead of predicting nothing
        raise CxrError(f"{source}: the weights hold NaN or infinite values ({_few(broken)}); "
                       "this checkpoint cannot predict (its training diverged?)")
    untouched = [k for k in own if k not in take]
    head_init = tuple(k for k in untouched if _in_head(k, heads))
    missing = [k for k in untouched if not _in_head(k, heads) and not k.endswith("num_batches_tracked")]
    if not take:
        raise CxrError(f"{source}: no tensor matches this model (file keys: {_few(state)}; "
                       f"model keys: {_few(own)})")
    if missing or unexpected or misfit:
        problems = [f"{len(v)} {what} ({_few(v)})" for what, v in
                    (("missing", missing), ("unexpected", unexpected), ("of another shape", misfit)) if v]
        raise CxrError(f"{source}: weights do not fit this model: {'; '.join(problems)}")
    model.load_state_dict(take, strict=False)
    return LoadReport(source, len(take), tuple(dropped), head_init, ignored, strip, add)


def load_weights(model: nn.Module, path: str | Path, trusted_module_packages: tuple[str, ...] = ()) -> LoadReport:
    """Read ``path`` and apply it to a model from ``build_model``; records the report on the model."""
    config = model.cxr_config  # type: ignore[attr-defined]
    state = read_state_dict(path, trusted_module_packages)
    report = apply_state_dict(model, state, str(path), config.extra.get("head", ()))
    model.cxr_load_report = report  # type: ignore[attr-defined]
    return report
