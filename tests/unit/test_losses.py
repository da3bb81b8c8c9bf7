"""cxr_core.train.losses: agreement with torch/torchvision references, masks, stability, the factory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from cxr_core.errors import CxrError
from cxr_core.train.losses import asymmetric, bce, bce_posweight, focal, make_loss, pos_weight


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g, dtype=torch.float64).float() * 6
    logits[0, :2] = torch.tensor([60.0, -60.0])  # saturated: naive log(sigmoid) would give -inf
    targets = (torch.rand(16, 5, generator=g) < 0.3).float()
    mask = (torch.rand(16, 5, generator=g) < 0.7).float()
    return logits, targets, mask


def _reference_bce(logits, targets, mask=None, pos_weight=None):
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=pos_weight)
    return loss.mean() if mask is None else (loss * mask).sum() / mask.sum()


def test_bce_matches_torch_unmasked_and_masked(batch):
    logits, targets, mask = batch
    torch.testing.assert_close(bce(logits, targets), _reference_bce(logits, targets), rtol=0, atol=1e-6)
    torch.testing.assert_close(bce(logits, targets, mask), _reference_bce(logits, targets, mask), rtol=0, atol=1e-6)


def test_masked_entries_do_not_count(batch):
    logits, targets, mask = batch
    changed = torch.where(mask.bool(), logits, -logits * 100)
    assert bce(changed, targets, mask).item() == pytest.approx(bce(logits, targets, mask).item(), abs=1e-6)


def test_all_masked_batch_gives_zero_loss_and_finite_gradient(batch):
    logits, targets, _ = batch
    logits = logits.clone().requires_grad_()
    for name, kw in [("bce", {}), ("focal", {}), ("asl", {}), ("bce-posweight", {"pos_weight": torch.ones(5)})]:
        loss = make_loss(name, **kw)(logits, targets, torch.zeros_like(targets))
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_bce_posweight_matches_torch(batch):
    logits, targets, mask = batch
    weight = torch.tensor([1.0, 2.0, 5.0, 0.5, 100.0])
    got = bce_posweight(logits, targets, mask, pos_weight=weight)
    torch.testing.assert_close(got, _reference_bce(logits, targets, mask, weight), rtol=0, atol=1e-6)


def test_pos_weight_from_label_frequencies():
    y = np.array([[1, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]], np.float32)
    mask = np.ones_like(y)
    mask[3, 0] = 0  # label 0: 1 positive, 2 counted negatives
    weight = pos_weight(y, mask, max_weight=100)
    assert weight.dtype == torch.float32
    assert weight.tolist() == [2.0, 3.0, 100.0, 1.0]
    many = np.zeros((1000, 1), np.float32)
    many[0] = 1
    assert pos_weight(many).item() == 100.0  # 999 clipped


def test_focal_without_focusing_is_bce_and_matches_torchvision(batch):
    logits, targets, mask = batch
    torch.testing.assert_close(focal(logits, targets, mask, alpha=None, gamma=0.0), bce(logits, targets, mask),
                               rtol=0, atol=1e-6)
    reference = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="mean")
    torch.testing.assert_close(focal(logits, targets), reference, rtol=0, atol=1e-6)


def _reference_asl(logits, targets, gamma_neg=4.0, gamma_pos=0.0, clip=0.05):
    """Ridnik et al. 2021, eq. 3-4, written in probabilities in float64 (mean instead of sum)."""
    p = torch.sigmoid(logits.double())
    p_m = (p - clip).clamp(min=0)
    loss_pos = targets * (1 - p) ** gamma_pos * torch.log(p.clamp_min(1e-300))
    loss_neg = (1 - targets) * p_m**gamma_neg * torch.log((1 - p_m).clamp_min(1e-8))
    return (-(loss_pos + loss_neg)).mean().float()


def test_asymmetric_matches_the_paper_and_reduces_to_bce(batch):
    logits, targets, _ = batch
    torch.testing.assert_close(asymmetric(logits, targets), _reference_asl(logits, targets), rtol=0, atol=1e-6)
    torch.testing.assert_close(asymmetric(logits, targets, gamma_neg=0, gamma_pos=0, clip=0), bce(logits, targets),
                               rtol=0, atol=1e-6)
    easy_negative = torch.tensor([[-5.0]])
    assert asymmetric(easy_negative, torch.zeros(1, 1)).item() == 0.0  # p < clip: discarded


def test_losses_stay_finite_on_extreme_logits():
    logits = torch.tensor([[200.0, -200.0, 0.0, 50.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    for name, kw in [("bce", {}), ("focal", {}), ("asl", {}), ("bce-posweight", {"pos_weight": torch.full((4,), 3.0)})]:
        loss = make_loss(name, **kw)(logits, targets)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), name
        logits.grad = None


def test_make_loss_names_parameters_and_errors(batch):
    logits, targets, mask = batch
    focal_loss = make_loss("focal", alpha=0.5, gamma=1.0)
    torch.testing.assert_close(focal_loss(logits, targets, mask), focal(logits, targets, mask, alpha=0.5, gamma=1.0))
    posweight = make_loss("bce-posweight", pos_weight=pos_weight(targets.numpy()))
    assert "pos_weight" in posweight.state_dict()
    with pytest.raises(CxrError, match="valid: bce, bce-posweight, focal, asl"):
        make_loss("hinge")
    with pytest.raises(CxrError, match="takes: alpha, gamma"):
        make_loss("focal", gamma_neg=2)
    with pytest.raises(CxrError, match="needs pos_weight"):
        make_loss("bce-posweight")
