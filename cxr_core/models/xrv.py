"""torchxrayvision's chest X-ray classifiers (optional extra ``cxr[xrv]``), answering in our label space.

The network is built without xrv's ``weights=`` argument, so xrv neither downloads nor resizes inputs
nor applies its operating-point normalisation: cxr's preprocessing already delivers the config's size
and scaling (1 channel, ``mean 0.5, std 1/2048`` = xrv's [-1024, 1024]), and the model returns logits
like every other cxr model. Weights come from xrv's own cache folder or ``--weights`` and are read
``weights_only``; xrv's DenseNet files are whole pickled models, admitted only as ``nn.Module`` classes
from torch, torchvision and torchxrayvision (see ``weights.read_state_dict``).

Its 18 outputs are matched to the requested labels by name through the label spaces' aliases
(``Effusion`` = ``Pleural Effusion``, ``Pleural_Thickening`` = ``Pleural Thickening``); the model returns
those outputs only, in the requested order.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
import torchvision
from torch import nn

from cxr_core.errors import CxrError
from cxr_core.labels import builtin_spaces
from cxr_core.models.config import ModelConfig
from cxr_core.models.registry import ModelSpec
from cxr_core.models.weights import WeightsUnavailable

TRUSTED_MODULE_PACKAGES = ("torch.nn", "torchvision.models", "torchxrayvision")
XRV_MEAN = (0.5,)
XRV_STD = (1 / 2048,)  # (x - 0.5) * 2048 == x * 2048 - 1024: xrv's [-1024, 1024] from [0, 1] pixels
_HEADS = {"densenet": "net.classifier", "resnet50": "net.fc"}


def _xrv() -> ModuleType:
    try:
        with warnings.catch_warnings():  # torchxrayvision.models silences all warnings at import; undo that
            import torchxrayvision
    except ImportError:
        raise CxrError("torchxrayvision models need the optional extra: pip install 'cxr[xrv]'") from None
    return torchxrayvision


def _kind(arch: str) -> str:
    kind = next((k for k in _HEADS if arch.startswith(k)), None)
    if kind is None:
        raise CxrError(f"torchxrayvision weights {arch!r} are not supported by cxr (known: densenet*, resnet50*)")
    return kind


def _entry(arch: str) -> dict:
    table = _xrv().models.model_urls
    if arch not in table:
        raise CxrError(f"this torchxrayvision has no weights {arch!r}; upgrade it: pip install -U torchxrayvision")
    return table[arch]


def _loose(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def same_finding(a: str, b: str) -> bool:
    """Whether two label names mean the same finding in some label space (spelling, aliases)."""
    if _loose(a) == _loose(b):
        return True
    for space in builtin_spaces().values():
        ca = space.canonical(a)
        if ca is not None and ca == space.canonical(b):
            return True
    return False


def output_indices(name: str, labels: Sequence[str], targets: Sequence[str]) -> list[int]:
    """For each label, the index of the xrv output that predicts it; CxrError naming those none does."""
    indices, unknown = [], []
    for label in labels:
        index = next((i for i, target in enumerate(targets) if same_finding(label, target)), None)
        if index is None:
            unknown.append(label)
        else:
            indices.append(index)
    if unknown:
        raise CxrError(f"{name} cannot predict {', '.join(unknown)} (it predicts {', '.join(targets)})")
    return indices


def default_labels(spec: ModelSpec) -> tuple[str, ...] | None:
    return tuple(_entry(spec.arch)["labels"])


def make_config(spec: ModelSpec, labels: Sequence[str], image_size: int | None,
                unfreeze_layers: int | None) -> ModelConfig:
    if unfreeze_layers is not None:
        raise CxrError(f"{spec.name}: unfreeze_layers applies to ViT models only")
    entry = _entry(spec.arch)
    targets = list(entry["labels"])
    native = int(entry["input_resolution"])
    extra = {
        "targets": targets,
        "outputs": output_indices(spec.name, labels, targets),
        "head": [_HEADS[_kind(spec.arch)]],
        "weights_url": entry["weights_url"],
        "pretrained_size": native,
    }
    return ModelConfig(
        name=spec.name, family="xrv", arch=spec.arch, labels=tuple(labels), input_size=image_size or native,
        in_chans=1, mean=XRV_MEAN, std=XRV_STD, interpolation="bilinear", cam_layer=spec.cam_layer, extra=extra,
    )


class XrvClassifier(nn.Module):
    """An xrv network whose outputs are selected and reordered to the config's labels."""

    def __init__(self, net: nn.Module, outputs: Sequence[int]):
        super().__init__()
        self.net = net
        self.register_buffer("outputs", torch.tensor(list(outputs), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).index_select(1, self.outputs)


def build(config: ModelConfig) -> nn.Module:
    num_outputs = len(config.extra["targets"])
    if _kind(config.arch) == "densenet":
        net = _xrv().models.DenseNet(num_classes=num_outputs, in_channels=1)
    else:  # xrv.models.ResNet insists on downloading; it is this torchvision net with a 1-channel stem
        net = torchvision.models.resnet50(weights=None, num_classes=num_outputs)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return XrvClassifier(net, config.extra["outputs"])


def pretrained_file(config: ModelConfig) -> Path:
    url = config.extra["weights_url"]
    folder = Path(_xrv().utils.get_cache_dir())
    path = folder / os.path.basename(url)
    if not path.is_file():
        raise WeightsUnavailable(f"{config.name} weights are not on this machine: download {url} into {folder} "
                                 "(cxr does not download torchxrayvision weights itself), or pass --weights PATH")
    return path
