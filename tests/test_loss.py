"""Tests of ssdstudy.loss: MultiBox loss and hard-negative mining."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssdstudy.loss import MultiBoxLoss, hard_negative_mask


def batch(n: int = 3, p: int = 400, c: int = 6, positives=(5, 0, 40), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(n, p, 4, generator=g, requires_grad=True)
    logits = torch.randn(n, p, c, generator=g, requires_grad=True)
    loc_t = torch.randn(n, p, 4, generator=g)
    labels = torch.zeros(n, p, dtype=torch.long)
    for i, k in enumerate(positives):
        where = torch.randperm(p, generator=g)[:k]
        labels[i, where] = torch.randint(1, c, (k,), generator=g)
    return locs, logits, loc_t, labels


def test_mining_keeps_exactly_three_negatives_per_positive_and_the_hardest():
    _, logits, _, labels = batch(n=4, positives=(5, 0, 40, 200))
    bg_loss = -F.log_softmax(logits.detach(), dim=-1)[..., 0]
    mask = hard_negative_mask(bg_loss, labels, 3)
    positive = labels > 0
    assert (mask & positive).sum(1).tolist() == positive.sum(1).tolist()
    negatives = mask & ~positive
    # 3 per positive, capped by the number of negatives there are (200 positives of 400).
    assert negatives.sum(1).tolist() == [15, 0, 120, 200]
    for i in range(4):
        chosen = bg_loss[i][negatives[i]]
        rest = bg_loss[i][~mask[i]]
        if chosen.numel() and rest.numel():
            assert chosen.min() >= rest.max()


def test_mining_count_is_exact_with_tied_losses():
    labels = torch.zeros(2, 50, dtype=torch.long)
    labels[0, :4] = 1
    mask = hard_negative_mask(torch.zeros(2, 50), labels, 3)
    assert mask.sum(1).tolist() == [16, 0]


def test_loss_values_with_mining():
    locs, logits, loc_t, labels = batch()
    loc_loss, cls_loss = MultiBoxLoss(3)(locs, logits, loc_t, labels)
    positive = labels > 0
    num_pos = positive.sum().item()
    want_loc = (
        F.smooth_l1_loss(locs[positive], loc_t[positive], reduction="sum") / num_pos
    )
    bg_loss = -F.log_softmax(logits.detach(), dim=-1)[..., 0]
    mask = hard_negative_mask(bg_loss, labels, 3)
    assert mask.sum().item() == 4 * num_pos
    want_cls = F.cross_entropy(logits[mask], labels[mask], reduction="sum") / num_pos
    assert torch.allclose(loc_loss, want_loc) and torch.allclose(cls_loss, want_cls)
    (loc_loss + cls_loss).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_no_mining_uses_every_negative():
    locs, logits, loc_t, labels = batch()
    _, cls_loss = MultiBoxLoss(None)(locs, logits, loc_t, labels)
    num_pos = (labels > 0).sum()
    want = (
        F.cross_entropy(logits.reshape(-1, 6), labels.reshape(-1), reduction="sum")
        / num_pos
    )
    assert torch.allclose(cls_loss, want)
    # Every prior gets a gradient, not only the mined ones.
    cls_loss.backward()
    assert logits.grad.abs().sum(-1).gt(0).all()
    _, mined = MultiBoxLoss(3)(locs, logits, loc_t, labels)
    assert cls_loss > mined


def test_batch_without_objects_gives_finite_loss():
    locs, logits, loc_t, labels = batch(positives=(0, 0, 0))
    for ratio in (3, None):
        loc_loss, cls_loss = MultiBoxLoss(ratio)(locs, logits, loc_t, labels)
        assert loc_loss.item() == 0.0
        assert math.isfinite(cls_loss.item())
        (loc_loss + cls_loss).backward()
        assert torch.isfinite(logits.grad).all()
    # With mining and no positives there are no negatives either; without mining every
    # negative counts (divided by 1).
    assert MultiBoxLoss(3)(locs, logits, loc_t, labels)[1].item() == 0.0
    assert MultiBoxLoss(None)(locs, logits, loc_t, labels)[1].item() > 0


def test_normalised_by_total_positives_in_the_batch():
    locs, logits, loc_t, labels = batch(positives=(10, 30, 0))
    loc_loss, _ = MultiBoxLoss(3)(locs, logits, loc_t, labels)
    positive = labels > 0
    total = F.smooth_l1_loss(locs[positive], loc_t[positive], reduction="sum")
    assert torch.allclose(loc_loss * 40, total)


def test_negative_ratio_rejected():
    with pytest.raises(ValueError):
        MultiBoxLoss(-1)
