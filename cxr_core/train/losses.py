"""Multi-label losses with a mask: entries with mask 0 (uncertain or unknown labels) do not count.

Every loss takes logits (never probabilities: log-sigmoid stays finite where ``log(sigmoid(x))`` underflows)
and returns the mean over unmasked entries, so a batch with many unknown labels is not weighted down.
A batch with no unmasked entry gives 0 (with a gradient of 0), not NaN.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cxr_core.errors import CxrError

MAX_POS_WEIGHT = 100.0


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return loss.mean()
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def _elementwise_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    positive = targets * log_p if pos_weight is None else pos_weight * targets * log_p
    return -(positive + (1 - targets) * log_not_p)


def bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy, the baseline (CheXNet and most ChestX-ray14 work)."""
    return _masked_mean(_elementwise_bce(logits.float(), targets.float(), None), mask)


def bce_posweight(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, *,
                  pos_weight: torch.Tensor) -> torch.Tensor:
    """BCE with positives of label k weighted ``pos_weight[k]`` (see :func:`pos_weight`): rare findings count."""
    return _masked_mean(_elementwise_bce(logits.float(), targets.float(), pos_weight.to(logits.device)), mask)


def pos_weight(targets: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None, *,
               max_weight: float = MAX_POS_WEIGHT) -> torch.Tensor:
    """Per label ``negatives / positives`` over the unmasked training labels, clipped to ``max_weight``.

    The clip keeps a label with a handful of positives from dominating the gradient; a label with no
    positive at all gets ``max_weight`` (it cannot matter, it never has a positive term).
    """
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    m = torch.ones_like(y) if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.float64)
    positives = (y * m).sum(dim=0)
    negatives = ((1 - y) * m).sum(dim=0)
    ratio = torch.where(positives > 0, negatives / positives.clamp_min(1e-12), torch.full_like(positives, max_weight))
    return ratio.clamp(max=max_weight).float()


def focal(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, *,
          alpha: float | None = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE scaled by ``(1 - p_t) ** gamma``, positives by ``alpha``.

    ``gamma=0, alpha=None`` is exactly BCE.
    """
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    loss = _elementwise_bce(logits, targets, None) * (1 - p_t).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _masked_mean(loss, mask)


def asymmetric(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, *,
               gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021): easy negatives are down-weighted harder than positives.

    Negatives use a shifted probability ``p_m = max(p - clip, 0)``, which also discards very easy
    negatives outright. The paper sums over entries; this is the masked mean, like the other losses, so
    learning rates carry over between them.
    """
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    if clip > 0:
        not_p_m = (torch.sigmoid(-logits) + clip).clamp(max=1.0)
        log_not_p_m = torch.log(not_p_m.clamp_min(eps))
    else:
        not_p_m, log_not_p_m = torch.sigmoid(-logits), F.logsigmoid(-logits)
    positive = targets * (1 - p).pow(gamma_pos) * F.logsigmoid(logits)
    negative = (1 - targets) * (1 - not_p_m).pow(gamma_neg) * log_not_p_m
    return _masked_mean(-(positive + negative), mask)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bce": bce,
    "bce-posweight": bce_posweight,
    "focal": focal,
    "asl": asymmetric,
}


class MaskedLoss(torch.nn.Module):
    """A named loss with its parameters bound; ``pos_weight`` is a buffer, so it follows ``.to(device)``."""

    def __init__(self, name: str, **params: object):
        super().__init__()
        self.name = name
        weight = params.pop("pos_weight", None)
        self.params = params
        self.register_buffer("pos_weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if self.pos_weight is None else {"pos_weight": self.pos_weight}
        return LOSSES[self.name](logits, targets, mask, **self.params, **extra)

    def extra_repr(self) -> str:
        return ", ".join([repr(self.name), *(f"{k}={v}" for k, v in self.params.items())])


def make_loss(name: str, **params: object) -> MaskedLoss:
    """The loss called ``name`` (``bce``, ``bce-posweight``, ``focal``, ``asl``) with keyword parameters bound.

    ``bce-posweight`` needs ``pos_weight=pos_weight(train_targets, train_mask)``. An unknown name or
    parameter is a :class:`CxrError` (it usually comes from a config file) naming what is valid.
    """
    if name not in LOSSES:
        raise CxrError(f"unknown loss {name!r} (valid: {', '.join(LOSSES)})")
    accepted = [p.name for p in inspect.signature(LOSSES[name]).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unexpected = sorted(set(params) - set(accepted))
    if unexpected:
        raise CxrError(f"loss {name!r} has no parameter {', '.join(unexpected)} (it takes: {', '.join(accepted) or 'none'})")
    if name == "bce-posweight" and "pos_weight" not in params:
        raise CxrError("loss 'bce-posweight' needs pos_weight, from pos_weight(train_targets, train_mask)")
    return MaskedLoss(name, **params)
