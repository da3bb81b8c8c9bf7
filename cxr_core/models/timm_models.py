"""timm CNNs and ViTs: geometry and normalisation from timm's ``pretrained_cfg``, our head size and labels.

Images are grayscale replicated to 3 channels, normalised as the ImageNet weights expect (timm's per-model
mean/std: ImageNet statistics for the CNNs, 0.5/0.5 for the augreg ViT). ViTs are built with
``dynamic_img_size`` so any multiple of the patch size works while the position embedding keeps its
pretrained grid (interpolated on the fly), and published weights still load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
from torch import nn

from cxr_core.errors import CxrError
from cxr_core.models import hub, vit
from cxr_core.models.config import ModelConfig
from cxr_core.models.registry import ModelSpec

TRUSTED_MODULE_PACKAGES: tuple[str, ...] = ()
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def default_labels(spec: ModelSpec) -> tuple[str, ...] | None:
    return None


def make_config(spec: ModelSpec, labels: Sequence[str], image_size: int | None,
                unfreeze_layers: int | None) -> ModelConfig:
    pretrained = timm.models.get_pretrained_cfg(spec.arch)
    if pretrained is None:
        raise CxrError(f"{spec.name}: timm {timm.__version__} has no model {spec.arch!r}; upgrade timm")
    size = image_size or pretrained.input_size[-1]
    extra: dict = {
        "head": [pretrained.classifier] if isinstance(pretrained.classifier, str) else list(pretrained.classifier),
        "hf_hub_id": pretrained.hf_hub_id,
        "pretrained_size": pretrained.input_size[-1],
    }
    grid = None
    if spec.is_vit:
        assert spec.patch_size is not None and spec.depth is not None
        grid = vit.token_grid(spec.name, size, spec.patch_size)
        if unfreeze_layers is not None:
            extra["unfreeze_layers"] = vit.check_unfreeze(spec.name, unfreeze_layers, spec.depth)
    elif unfreeze_layers is not None:
        raise CxrError(f"{spec.name}: unfreeze_layers applies to ViT models only (CNNs train all layers)")
    return ModelConfig(
        name=spec.name, family="timm", arch=spec.arch, labels=tuple(labels), input_size=size, in_chans=3,
        mean=pretrained.mean, std=pretrained.std, interpolation=pretrained.interpolation or "bilinear",
        cam_layer=spec.cam_layer, vit_tokens=grid, prefix_tokens=spec.prefix_tokens, extra=extra,
    )


def build(config: ModelConfig) -> nn.Module:
    kwargs = {"dynamic_img_size": True} if config.vit_tokens is not None else {}
    model = timm.create_model(config.arch, pretrained=False, num_classes=config.num_classes,
                              in_chans=config.in_chans, **kwargs)
    unfreeze = config.extra.get("unfreeze_layers")
    if unfreeze is not None:
        vit.freeze_all_but_last_blocks(model, model.blocks, unfreeze, tail=(model.norm, model.fc_norm))
        model.get_classifier().requires_grad_(True)
    return model


def pretrained_file(config: ModelConfig) -> Path:
    repo = config.extra.get("hf_hub_id")
    if not repo:
        raise CxrError(f"{config.name}: timm publishes no weights for {config.arch}; pass --weights PATH")
    return hub.hub_file(repo, HUB_FILES, f"{config.name} ImageNet weights")
