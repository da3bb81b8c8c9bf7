"""create_model / model_config / build_model: a name and labels in, a configured module out.

Each family module (timm_models, biomedclip, xrv) answers the same five names: ``make_config``,
``build`` (random init, never the network), ``pretrained_file`` (published weights on this machine, or
``WeightsUnavailable``), ``default_labels`` and ``TRUSTED_MODULE_PACKAGES``. Published weights are resolved
before anything is built, so an offline failure costs milliseconds, not a model construction.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cxr_core.errors import CxrError
from cxr_core.models.config import ModelConfig
from cxr_core.models.registry import get_spec
from cxr_core.models.weights import load_weights

if TYPE_CHECKING:
    from torch import nn

# Each family's module imports its own libraries (timm; open_clip's tower through timm; torchvision and
# torchxrayvision), so it is imported when a model of that family is first asked for, not with the factory.
_FAMILIES: dict[str, str] = {"timm": "cxr_core.models.timm_models", "biomedclip": "cxr_core.models.biomedclip",
                             "xrv": "cxr_core.models.xrv"}


def _family(name: str) -> ModuleType:
    return importlib.import_module(_FAMILIES[name])


def model_config(name: str, labels: Sequence[str], *, image_size: int | None = None,
                 unfreeze_layers: int | None = None) -> ModelConfig:
    """The config ``create_model`` would build, without building anything."""
    spec = get_spec(name)
    labels = tuple(labels)
    if not labels:
        raise CxrError(f"{spec.name}: no labels given")
    if image_size is not None and image_size <= 0:
        raise CxrError(f"{spec.name}: image_size must be positive, got {image_size}")
    return _family(spec.family).make_config(spec, labels, image_size, unfreeze_layers)


def check_available(name: str, *, pretrained: bool = False, weights: str | Path | None = None,
                    image_size: int | None = None, unfreeze_layers: int | None = None) -> None:
    """Raise the CxrError ``create_model`` would (unknown name, missing weights file, published weights not
    on this machine and no network) without building anything: what a run checks before it exists."""
    config = model_config(name, ("probe",), image_size=image_size, unfreeze_layers=unfreeze_layers)
    if weights is not None:
        if not Path(weights).expanduser().is_file():
            raise CxrError(f"{weights}: no such weights file")
    elif pretrained:
        _family(config.family).pretrained_file(config)


def build_model(config: ModelConfig) -> nn.Module:
    """The architecture a config describes, randomly initialised (checkpoints put weights in)."""
    model = _family(config.family).build(config)
    model.cxr_config = config
    model.cxr_load_report = None
    return model


def create_model(name: str, num_classes: int | None = None, *, labels: Sequence[str] | None = None,
                 pretrained: bool = False, weights: str | Path | None = None, image_size: int | None = None,
                 unfreeze_layers: int | None = None) -> nn.Module:
    """A registered model with one output per label; ``weights`` (a local file) wins over ``pretrained``.

    ``model.cxr_config`` describes it; ``model.cxr_load_report`` says what a weights file provided.
    """
    spec = get_spec(name)
    family = _family(spec.family)
    if labels is not None and num_classes is not None:
        raise CxrError(f"{spec.name}: give labels or num_classes, not both")
    if labels is None and num_classes is not None:
        if num_classes <= 0:
            raise CxrError(f"{spec.name}: num_classes must be positive, got {num_classes}")
        labels = [f"class_{i}" for i in range(num_classes)]
    if labels is None:
        labels = family.default_labels(spec)
        if labels is None:
            raise CxrError(f"{spec.name}: give labels (or num_classes) for its classification head")
    config = model_config(spec.name, labels, image_size=image_size, unfreeze_layers=unfreeze_layers)
    source = weights
    if source is None and pretrained:
        source = family.pretrained_file(config)
    model = build_model(config)
    if source is not None:
        load_weights(model, source, family.TRUSTED_MODULE_PACKAGES)
    return model
