"""BiomedCLIP's vision tower (ViT-B/16, 224 px) with a small MLP classification head.

The tower is built offline by open_clip's own vision-tower builder from the config BiomedCLIP ships
(``assets/models/biomedclip_vision.json``), so its parameter names are exactly those of BiomedCLIP's
``open_clip_pytorch_model.bin`` under ``visual.``: that file loads as-is, its text tower ignored. Fetching
that one file (rather than ``open_clip.create_model_from_pretrained``) avoids building the PubMedBERT text
tower and keeps loading ``weights_only``.

Only the last ``unfreeze_layers`` blocks (default 2), the final norm, the projection and the head train:
BiomedCLIP's features are the point, and chest X-ray sets are small. The tower's position grid is fixed
(224 px, 14 x 14 tokens), so other input sizes are refused rather than silently resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from cxr_core.assets import load_json_asset
from cxr_core.errors import CxrError
from cxr_core.models import hub, vit
from cxr_core.models.config import ModelConfig
from cxr_core.models.registry import ModelSpec, get_spec

VISION_JSON = "models/biomedclip_vision.json"
TRUSTED_MODULE_PACKAGES: tuple[str, ...] = ()
DEFAULT_UNFREEZE = 2
HEAD_HIDDEN = (512, 256)
HEAD_DROPOUT = 0.1


def default_labels(spec: ModelSpec) -> tuple[str, ...] | None:
    return None


class BiomedClipClassifier(nn.Module):
    """``visual`` (open_clip's TimmModel: ``trunk`` ViT + ``head.proj`` to 512) then ``classifier``."""

    def __init__(self, visual: nn.Module, classifier: nn.Module):
        super().__init__()
        self.visual = visual
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.visual(x))


def mlp_head(embed_dim: int, hidden: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = embed_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def make_config(spec: ModelSpec, labels: Sequence[str], image_size: int | None,
                unfreeze_layers: int | None) -> ModelConfig:
    shipped = load_json_asset(VISION_JSON)
    vision_cfg = dict(shipped["vision_cfg"])
    if spec.tiny:  # the CPU-test tower: same recipe on a small trunk at its own size
        trunk_size = timm.models.get_pretrained_cfg(spec.arch).input_size[-1]
        vision_cfg.update(timm_model_name=spec.arch, image_size=trunk_size)
    native = vision_cfg["image_size"]
    if image_size not in (None, native):
        raise CxrError(f"{spec.name}: the BiomedCLIP tower takes {native}x{native} input only "
                       f"(its position grid is fixed), got image_size={image_size}")
    assert spec.patch_size is not None and spec.depth is not None
    unfreeze = vit.check_unfreeze(spec.name, DEFAULT_UNFREEZE if unfreeze_layers is None else unfreeze_layers,
                                  spec.depth)
    extra = {
        "vision_cfg": vision_cfg,
        "embed_dim": shipped["embed_dim"],
        "head_hidden": list(HEAD_HIDDEN),
        "head_dropout": HEAD_DROPOUT,
        "unfreeze_layers": unfreeze,
        "head": ["classifier"],
        "hf_hub_id": shipped["hf_hub_id"],
        "weights_file": shipped["weights_file"],
    }
    return ModelConfig(
        name=spec.name, family="biomedclip", arch=vision_cfg["timm_model_name"], labels=tuple(labels),
        input_size=native, in_chans=3, mean=shipped["preprocess_cfg"]["mean"], std=shipped["preprocess_cfg"]["std"],
        interpolation="bicubic",  # open_clip's image transform
        cam_layer=spec.cam_layer, vit_tokens=vit.token_grid(spec.name, native, spec.patch_size),
        prefix_tokens=spec.prefix_tokens, extra=extra,
    )


def _vision_tower(embed_dim: int, vision_cfg: dict) -> nn.Module:
    try:
        from open_clip.model import CLIPVisionCfg, _build_vision_tower
    except ImportError as err:
        raise CxrError(f"BiomedCLIP needs open_clip's vision-tower builder ({err}); "
                       "pip install 'open-clip-torch>=2.24'") from None
    return _build_vision_tower(embed_dim, CLIPVisionCfg(**vision_cfg))


def build(config: ModelConfig) -> nn.Module:
    extra = config.extra
    visual = _vision_tower(extra["embed_dim"], extra["vision_cfg"])
    head = mlp_head(extra["embed_dim"], extra["head_hidden"], config.num_classes, extra["head_dropout"])
    model = BiomedClipClassifier(visual, head)
    trunk = visual.trunk
    vit.freeze_all_but_last_blocks(visual, trunk.blocks, extra["unfreeze_layers"],
                                   tail=(trunk.norm, trunk.fc_norm, visual.head))
    return model


def pretrained_file(config: ModelConfig) -> Path:
    if get_spec(config.name).tiny:
        raise CxrError(f"{config.name} is a CPU-test model with no published weights; pass --weights PATH")
    return hub.hub_file(config.extra["hf_hub_id"], (config.extra["weights_file"],), f"{config.name} weights")
