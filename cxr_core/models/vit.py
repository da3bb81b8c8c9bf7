"""ViT specifics shared by timm ViTs and the BiomedCLIP tower: the token grid and partial fine-tuning."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from cxr_core.errors import CxrError


def token_grid(name: str, image_size: int, patch_size: int) -> tuple[int, int]:
    """(rows, cols) of patch tokens; Grad-CAM reshapes the tokens to this grid."""
    if image_size % patch_size:
        raise CxrError(f"{name}: image_size must be a multiple of its {patch_size}-pixel patches, got {image_size}")
    side = image_size // patch_size
    return side, side


def check_unfreeze(name: str, unfreeze_layers: int, depth: int) -> int:
    if not 0 <= unfreeze_layers <= depth:
        raise CxrError(f"{name}: unfreeze_layers must be between 0 (train the head only) and {depth} "
                       f"(train everything), got {unfreeze_layers}")
    return unfreeze_layers


def freeze_all_but_last_blocks(tower: nn.Module, blocks: nn.Sequential, unfreeze_layers: int,
                               tail: Iterable[nn.Module]) -> None:
    """Train only the last ``unfreeze_layers`` blocks and ``tail`` (final norm, projection) of ``tower``.

    Small chest X-ray sets overfit a fully trainable ViT-B; the early blocks' generic features are kept.
    0 freezes the whole tower; ``len(blocks)`` trains all of it, embeddings included.
    """
    depth = len(blocks)
    tower.requires_grad_(unfreeze_layers == depth)
    if unfreeze_layers:
        for block in list(blocks)[depth - unfreeze_layers:]:
            block.requires_grad_(True)
        for module in tail:
            module.requires_grad_(True)
