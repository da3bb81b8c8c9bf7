"""Optimizer and learning-rate schedules: AdamW with cosine (+ warmup), warm restarts, or plateau."""

from __future__ import annotations

import math

import torch

from cxr_core.train.config import TrainConfig

MIN_LR_FRACTION = 0.01  # cosine decays to 1% of the peak rather than to zero


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm weights (1-D parameters), the usual timm recipe."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """(scheduler, stepped per optimizer step?). Plateau steps once per epoch on val macro AUC."""
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2), False
    steps_per_epoch = max(1, steps_per_epoch)
    if config.scheduler == "cosine-restarts":
        period = max(1, config.restart_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=period, eta_min=config.lr * MIN_LR_FRACTION), True
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
