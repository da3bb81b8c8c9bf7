"""The models cxr knows by name, as data: family, architecture and the facts configs need.

A spec holds only what cannot be read from the architecture's own published config (timm's
``pretrained_cfg``, BiomedCLIP's vision JSON, torchxrayvision's weight table): where Grad-CAM should hook
and, for ViTs, the patch grid geometry. ``tests/unit/test_models.py`` checks these against the built
networks, so a timm upgrade that renames a layer fails a test instead of a CAM.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from cxr_core.errors import CxrError


class UnknownModel(CxrError):
    """The name is not registered; the message lists close matches and every registered name."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    arch: str
    cam_layer: str
    tiny: bool = False
    patch_size: int | None = None  # ViTs only: pixels per token side
    prefix_tokens: int = 0  # ViTs only: class/register tokens before the patch tokens
    depth: int | None = None  # ViTs only: transformer blocks (the range of unfreeze_layers)
    summary: str = ""

    @property
    def is_vit(self) -> bool:
        return self.patch_size is not None


def _vit(name: str, family: str, arch: str, depth: int, cam_root: str = "", *, tiny: bool = False,
         summary: str = "") -> ModelSpec:
    """A ViT-*/16 with one class token whose CAM hooks the last block's norm1 (see ModelConfig)."""
    cam = f"{cam_root}blocks.{depth - 1}.norm1"
    return ModelSpec(name, family, arch, cam, tiny, patch_size=16, prefix_tokens=1, depth=depth, summary=summary)


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("efficientnet_b0", "timm", "efficientnet_b0", "bn2", summary="EfficientNet-B0, 5.3M params"),
    ModelSpec("efficientnet_b3", "timm", "efficientnet_b3", "bn2", summary="EfficientNet-B3, 12M params"),
    ModelSpec("densenet121", "timm", "densenet121", "features.norm5", summary="DenseNet-121 (CheXNet), 8M"),
    ModelSpec("resnet18", "timm", "resnet18", "layer4", summary="ResNet-18, 11.7M params"),
    ModelSpec("resnet50", "timm", "resnet50", "layer4", summary="ResNet-50, 25.6M params"),
    ModelSpec("resnet10t", "timm", "resnet10t", "layer3",  # layer4 is 4x4 at the 128 px it trains at on CPU
              summary="ResNet-10-T, 4.9M params: trains from scratch fastest on a CPU (the demo model)"),
    ModelSpec("mobilenetv3_large_100", "timm", "mobilenetv3_large_100", "blocks.6", summary="MobileNetV3-L, 5.5M"),
    ModelSpec("convnext_tiny", "timm", "convnext_tiny", "stages.3", summary="ConvNeXt-T, 28M params"),
    _vit("vit_base_patch16_224", "timm", "vit_base_patch16_224", 12, summary="ViT-B/16, 86M params"),
    _vit("biomedclip", "biomedclip", "vit_base_patch16_224", 12, "visual.trunk.",
         summary="BiomedCLIP ViT-B/16 vision tower + MLP head, last blocks trainable"),
    ModelSpec("xrv_densenet121_all", "xrv", "densenet121-res224-all", "net.features.norm5",
              summary="torchxrayvision DenseNet-121, 18 pathologies, 224 px, 1 channel"),
    ModelSpec("xrv_resnet50_all", "xrv", "resnet50-res512-all", "net.layer4",
              summary="torchxrayvision ResNet-50, 18 pathologies, 512 px, 1 channel"),
    ModelSpec("tiny_efficientnet", "timm", "test_efficientnet", "bn2", tiny=True, summary="CPU tests"),
    ModelSpec("tiny_resnet", "timm", "test_resnet", "layer4", tiny=True, summary="CPU tests"),
    ModelSpec("tiny_convnext", "timm", "test_convnext", "stages.3", tiny=True, summary="CPU tests"),
    _vit("tiny_vit", "timm", "test_vit", 6, tiny=True, summary="CPU tests"),
    _vit("tiny_biomedclip", "biomedclip", "test_vit", 6, "visual.trunk.", tiny=True,
         summary="CPU tests: BiomedCLIP's tower and head built on timm's test_vit"),
)

SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models(include_tiny: bool = True) -> list[str]:
    """Registered names, full-size first, in registration order."""
    full = [s.name for s in _SPECS if not s.tiny]
    return full + [s.name for s in _SPECS if s.tiny] if include_tiny else full


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name``; case and ``-``/``_`` do not matter (``EfficientNet-B0`` works)."""
    key = name.strip().lower().replace("-", "_")
    spec = SPECS.get(key)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(key, list(SPECS), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownModel(f"unknown model {name!r}{hint}; available: {', '.join(list_models())}")
