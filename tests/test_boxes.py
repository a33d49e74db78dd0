"""Tests of ssdstudy.boxes: the offset encoding and prior matching."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_convert, box_iou

from ssdstudy.boxes import decode, encode, match, pairwise_iou


def centre(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    """Priors from xyxy rows, returned in centre form."""
    return box_convert(torch.tensor(rows, dtype=torch.float32), "xyxy", "cxcywh")


def random_priors(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator)
    wh = torch.rand(n, 2, generator=generator) * 0.4 + 0.05
    return torch.cat([xy, wh], dim=1)


def random_gt(k: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=generator) * 0.7
    wh = torch.rand(k, 2, generator=generator) * 0.3 + 0.02
    return torch.cat([xy, xy + wh], dim=1)


def assign_loop(
    gt: torch.Tensor, labels: torch.Tensor, priors: torch.Tensor, threshold: float
):
    """Oracle: the original code's per-image assignment, written as a plain loop."""
    if gt.shape[0] == 0:
        return torch.zeros(priors.shape[0], 4), torch.zeros(
            priors.shape[0], dtype=torch.long
        )
    ious = box_iou(gt, box_convert(priors, "cxcywh", "xyxy"))  # (K, P)
    best_iou, best_target = ious.max(dim=0)
    best_prior = ious.argmax(dim=1)
    for target, prior in enumerate(best_prior.tolist()):
        best_target[prior] = target
        best_iou[prior] = 2.0
    out_labels = labels[best_target].clone()
    out_labels[best_iou < threshold] = 0
    return encode(gt[best_target], priors), out_labels


# --------------------------------------------------------------------------- encoding


def test_encode_known_values():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    same = torch.tensor([[0.4, 0.3, 0.6, 0.7]])
    assert torch.allclose(encode(same, priors), torch.zeros(1, 4), atol=1e-6)
    # Shift the centre by 0.1 * w and double the height.
    moved = torch.tensor([[0.42, 0.1, 0.62, 0.9]])
    expected = torch.tensor(
        [[0.02 / (0.1 * 0.2), 0.0, 0.0, torch.log(torch.tensor(2.0)) / 0.2]]
    )
    assert torch.allclose(encode(moved, priors), expected, atol=1e-5)


def test_decode_returns_xyxy_and_zero_offsets_give_priors():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.1, 0.1]])
    boxes = decode(torch.zeros(3, 2, 4), priors)
    assert boxes.shape == (3, 2, 4)
    assert torch.allclose(boxes[1], box_convert(priors, "cxcywh", "xyxy"), atol=1e-7)


def test_encode_decode_identity_batched():
    g = torch.Generator().manual_seed(0)
    priors = random_priors(500, g)
    boxes = torch.stack([random_gt(500, g) for _ in range(4)])  # (4, 500, 4)
    assert torch.allclose(decode(encode(boxes, priors), priors), boxes, atol=1e-5)
    locs = torch.randn(4, 500, 4, generator=g)
    assert torch.allclose(encode(decode(locs, priors), priors), locs, atol=1e-3)


coord = st.floats(0.0, 1.0, allow_nan=False)
size = st.floats(0.01, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    box=st.tuples(coord, coord, size, size),
    prior=st.tuples(coord, coord, size, size),
    variances=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)),
)
def test_encode_decode_identity_property(box, prior, variances):
    x, y, w, h = box
    boxes = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64)
    priors = torch.tensor([prior], dtype=torch.float64)
    back = decode(encode(boxes, priors, variances), priors, variances)
    assert torch.allclose(back, boxes, atol=1e-9)


# --------------------------------------------------------------------------- matching


def test_match_threshold_is_inclusive_at_half():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.25]])
    priors = centre(
        (0.0, 0.0, 0.5, 0.25),  # IoU 1: the forced best prior
        (0.0, 0.0, 0.5, 0.125),  # IoU exactly 0.5
        (0.0, 0.0, 0.5, 0.124),  # IoU just below 0.5
        (0.6, 0.6, 0.9, 0.9),  # no overlap
    )
    assert box_iou(gt, box_convert(priors, "cxcywh", "xyxy"))[0, 1].item() == 0.5
    _, labels = match([gt], [torch.tensor([7])], priors)
    assert labels.tolist() == [[7, 7, 0, 0]]


def test_match_forces_each_ground_truth_onto_its_best_prior():
    # The ground truth overlaps every prior below the threshold: it still gets its best one.
    gt = torch.tensor([[0.0, 0.0, 0.4, 0.4]])
    priors = centre((0.0, 0.0, 0.4, 0.8), (0.0, 0.0, 0.8, 0.8), (0.5, 0.5, 1.0, 1.0))
    loc, labels = match([gt], [torch.tensor([3])], priors)
    assert labels.tolist() == [[3, 0, 0]]
    assert torch.allclose(loc[0, 0], encode(gt, priors[:1])[0], atol=1e-6)


def test_forced_prior_goes_to_its_ground_truth_even_if_another_overlaps_more():
    # Prior 0 overlaps gt A (IoU 0.8) more than gt B (IoU 0.5), but prior 0 is B's best
    # prior, so it is given to B; A keeps its own best prior (prior 1, IoU 1).
    gt_a = (0.0, 0.0, 1.0, 0.5)
    gt_b = (0.0, 0.0, 0.4, 0.5)
    priors = centre((0.0, 0.0, 0.8, 0.5), gt_a, (0.0, 0.6, 1.0, 1.0))
    gts = torch.tensor([gt_a, gt_b])
    ious = box_iou(gts, box_convert(priors, "cxcywh", "xyxy"))
    assert ious[0, 0] > ious[1, 0] and ious[1].argmax() == 0
    loc, labels = match([gts], [torch.tensor([1, 2])], priors)
    assert labels.tolist() == [[2, 1, 0]]
    assert torch.allclose(loc[0, 0], encode(gts[1:], priors[:1])[0], atol=1e-6)


def test_two_ground_truths_sharing_a_best_prior_give_it_to_the_later_one():
    gts = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5]])
    priors = centre((0.1, 0.1, 0.5, 0.5), (0.7, 0.7, 0.9, 0.9))
    _, labels = match([gts], [torch.tensor([4, 9])], priors)
    assert labels.tolist() == [[9, 0]]


def test_match_empty_images():
    g = torch.Generator().manual_seed(1)
    priors = random_priors(300, g)
    empty_boxes, empty_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    loc, labels = match(
        [empty_boxes, empty_boxes], [empty_labels, empty_labels], priors
    )
    assert loc.shape == (2, 300, 4) and labels.shape == (2, 300)
    assert labels.eq(0).all() and loc.eq(0).all()
    # An empty image beside a full one: the full one is matched, the empty one stays background.
    gt = random_gt(3, g)
    loc, labels = match(
        [gt, empty_boxes], [torch.tensor([1, 2, 3]), empty_labels], priors
    )
    assert labels[0].gt(0).sum() >= 3 and labels[1].eq(0).all()
    assert torch.isfinite(loc).all() and loc[1].eq(0).all()
    assert match([], [], priors)[0].shape == (0, 300, 4)


def test_match_batched_equals_the_per_image_loop():
    g = torch.Generator().manual_seed(2)
    priors = random_priors(2000, g)
    counts = [5, 0, 1, 17, 3]
    gts = [random_gt(k, g) for k in counts]
    labs = [torch.randint(1, 21, (k,), generator=g) for k in counts]
    loc, labels = match(gts, labs, priors)
    assert loc.shape == (5, 2000, 4) and labels.dtype == torch.long
    for i in range(len(counts)):
        want_loc, want_labels = assign_loop(gts[i], labs[i], priors, 0.5)
        assert torch.equal(labels[i], want_labels)
        positive = want_labels > 0
        assert torch.allclose(loc[i][positive], want_loc[positive], atol=1e-5)
    # Every ground truth has at least its forced prior.
    for i, k in enumerate(counts):
        if k:
            assert labels[i].gt(0).sum() >= len(
                set(
                    box_iou(gts[i], box_convert(priors, "cxcywh", "xyxy"))
                    .argmax(1)
                    .tolist()
                )
            )


def test_match_rejects_mismatched_lists():
    with pytest.raises(ValueError):
        match([torch.zeros(0, 4)], [], torch.rand(3, 4))


def test_pairwise_iou_equals_torchvision():
    g = torch.Generator().manual_seed(3)
    a, b = random_gt(30, g), box_convert(random_priors(700, g), "cxcywh", "xyxy")
    b[:5] = a[:5]  # identical boxes: IoU 1
    b[5] = torch.tensor([2.0, 2.0, 3.0, 3.0])  # disjoint: IoU 0
    assert torch.equal(pairwise_iou(a, b), box_iou(a, b))
    assert pairwise_iou(a[:0], b).shape == (0, 700)
