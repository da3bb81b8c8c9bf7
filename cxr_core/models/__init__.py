"""Models by name: timm CNNs/ViTs, BiomedCLIP's vision tower, torchxrayvision (optional), tiny test variants.

``create_model(name, labels=...)`` returns a module mapping ``(B, in_chans, S, S)`` to logits
``(B, len(labels))``; its ``cxr_config`` (a ModelConfig) says how to preprocess inputs and where Grad-CAM
hooks, and travels inside checkpoints so ``build_model(config)`` rebuilds the same architecture.
Nothing here downloads unless ``pretrained=True`` is asked for and the hub answers.
"""

from __future__ import annotations

from cxr_core.models.config import ModelConfig
from cxr_core.models.factory import build_model, check_available, create_model, model_config
from cxr_core.models.registry import ModelSpec, UnknownModel, get_spec, list_models
from cxr_core.models.weights import LoadReport, WeightsUnavailable, apply_state_dict, load_weights, read_state_dict

__all__ = [
    "LoadReport",
    "ModelConfig",
    "ModelSpec",
    "UnknownModel",
    "WeightsUnavailable",
    "apply_state_dict",
    "build_model",
    "check_available",
    "create_model",
    "get_spec",
    "list_models",
    "load_weights",
    "model_config",
    "read_state_dict",
]
