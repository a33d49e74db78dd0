"""SSD's MultiBox loss: smooth L1 on positive priors plus cross-entropy with
hard-negative mining."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiBoxLoss", "hard_negative_mask"]


def hard_negative_mask(
    background_loss: Tensor, labels: Tensor, neg_pos_ratio: float
) -> Tensor:
    """Select, per image, the positives and the hardest ``neg_pos_ratio * num_pos`` negatives.

    Negatives are ranked by ``background_loss`` (high first); an image without positives
    contributes no negatives. Ties are broken by the sort, so the count is exact.

    Args:
        background_loss: ``(N, P)`` loss of predicting background at each prior,
            ``-log_softmax(logits)[..., 0]``.
        labels: ``(N, P)`` int64 matched labels, 0 = background.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        ``(N, P)`` bool mask of the priors that enter the classification loss.
    """
    positive = labels > 0
    num_neg = (positive.sum(dim=1, keepdim=True) * neg_pos_ratio).floor().long()
    ranked = background_loss.masked_fill(positive, -torch.inf)
    order = ranked.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return positive | ((rank < num_neg) & ~positive)


class MultiBoxLoss(nn.Module):
    """Localisation and classification losses of SSD.

    ``loc_loss`` is the summed smooth L1 between predicted and target offsets over the
    positive priors; ``cls_loss`` is the summed cross-entropy over the positives and the
    selected negatives. Both are divided by the number of positives in the batch
    (at least 1, so a batch without objects gives a finite loss).

    Args:
        neg_pos_ratio: hard negatives kept per positive (the original's 3), or ``None``
            to train on every negative prior ("no mining").
    """

    def __init__(self, neg_pos_ratio: float | None = 3) -> None:
        super().__init__()
        if neg_pos_ratio is not None and neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0 or None, got {neg_pos_ratio}")
        self.neg_pos_ratio = neg_pos_ratio

    def forward(
        self, locs: Tensor, logits: Tensor, loc_targets: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Compute the two loss terms.

        Args:
            locs: ``(N, P, 4)`` predicted offsets.
            logits: ``(N, P, C)`` class scores before softmax (class 0 = background).
            loc_targets: ``(N, P, 4)`` encoded matched boxes (from :func:`ssdstudy.boxes.match`).
            labels: ``(N, P)`` int64 matched labels, 0 = background.

        Returns:
            ``(loc_loss, cls_loss)``, two scalar tensors.
        """
        num_classes = logits.shape[-1]
        positive = labels > 0
        if self.neg_pos_ratio is None:
            selected = None
        else:
            with torch.no_grad():
                background_loss = -F.log_softmax(logits, dim=-1)[..., 0]
                selected = hard_negative_mask(
                    background_loss, labels, self.neg_pos_ratio
                )
        if selected is None:
            cls_loss = F.cross_entropy(
                logits.reshape(-1, num_classes), labels.reshape(-1), reduction="sum"
            )
        else:
            cls_loss = F.cross_entropy(
                logits[selected], labels[selected], reduction="sum"
            )
        loc_loss = F.smooth_l1_loss(
            locs[positive], loc_targets[positive], reduction="sum"
        )
        num_pos = positive.sum().clamp(min=1).to(logits.dtype)
        return loc_loss / num_pos, cls_loss / num_pos
