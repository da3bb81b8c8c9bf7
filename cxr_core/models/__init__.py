"""Models by name: timm CNNs/ViTs, BiomedCLIP's vision tower, torchxrayvision (optional), tiny test variants.

``create_model(name, labels=...)`` returns a module mapping ``(B, in_chans, S, S)`` to logits
``(B, len(labels))``; its ``cxr_config`` (a ModelConfig) says how to preprocess inputs and where Grad-CAM
hooks, and travels inside checkpoints so ``build_model(config)`` rebuilds the same architecture.
Nothing here downloads unless ``pretrained=True`` is asked for and the hub answers.
"""

from cxr_core._face import lazy

# Loaded on first use: a caller that needs only ModelConfig or the registry (reading a checkpoint's header, listing
# the zoo) does not import torch and timm (~4 s on 2 cores) with them.
__getattr__, __all__ = lazy(__name__, {
    "LoadReport": "cxr_core.models.weights",
    "ModelConfig": "cxr_core.models.config",
    "ModelSpec": "cxr_core.models.registry",
    "UnknownModel": "cxr_core.models.registry",
    "WeightsUnavailable": "cxr_core.models.weights",
    "apply_state_dict": "cxr_core.models.weights",
    "build_model": "cxr_core.models.factory",
    "check_available": "cxr_core.models.factory",
    "create_model": "cxr_core.models.factory",
    "get_spec": "cxr_core.models.registry",
    "list_models": "cxr_core.models.registry",
    "load_weights": "cxr_core.models.weights",
    "model_config": "cxr_core.models.factory",
    "read_state_dict": "cxr_core.models.weights",
})
