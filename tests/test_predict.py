"""Tests of ssdstudy.predict: post-processing (batched and reference) and prediction."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import box_convert, box_iou

from ssdstudy.predict import (
    decode_outputs,
    postprocess,
    predict,
    select_detections,
    timed_predict,
)


def centre(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return box_convert(torch.tensor(rows, dtype=torch.float32), "xyxy", "cxcywh")


def one_hot_logits(
    n: int, p: int, c: int, hits: dict[tuple[int, int], int], strength: float = 10.0
):
    """Logits favouring background everywhere, except class ``hits[(image, prior)]``."""
    logits = torch.zeros(n, p, c)
    logits[..., 0] = strength
    for (i, j), cls in hits.items():
        logits[i, j, 0] = 0.0
        logits[i, j, cls] = strength
    return logits


def random_case(seed: int, n: int = 3, p: int = 600, c: int = 6):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(p, 2, generator=g)
    wh = torch.rand(p, 2, generator=g) * 0.3 + 0.05
    priors = torch.cat([xy, wh], dim=1)
    locs = torch.randn(n, p, 4, generator=g) * 0.5
    logits = torch.randn(n, p, c, generator=g) * 2.0
    sizes = [(300 + 50 * i, 500 - 40 * i) for i in range(n)]
    return locs, logits, priors, sizes


def canonical(
    det: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order detections by (label, score) so two implementations can be compared."""
    key = det["labels"].double() * 10 - det["scores"].double()
    order = key.argsort()
    return det["boxes"][order], det["scores"][order], det["labels"][order]


def test_boxes_are_in_original_image_pixels_and_clipped():
    priors = centre((0.1, 0.2, 0.5, 0.6), (0.8, 0.9, 1.2, 1.3), (0.0, 0.0, 1.0, 1.0))
    logits = one_hot_logits(1, 3, 4, {(0, 0): 2, (0, 1): 3})
    # The second prior sticks out of the image: the default clips it to (w, h) =
    # (400, 200); the reference mode, like the original, does not clip.
    outside = {
        "batched": [320.0, 180.0, 400.0, 200.0],
        "reference": [320.0, 180.0, 480.0, 260.0],
    }
    for mode in ("batched", "reference"):
        (det,) = postprocess(
            torch.zeros(1, 3, 4), logits, priors, [(200, 400)], mode=mode
        )
        by_label = {int(lab): box for lab, box in zip(det["labels"], det["boxes"])}
        assert set(by_label) == {2, 3}
        assert torch.allclose(
            by_label[2], torch.tensor([40.0, 40.0, 200.0, 120.0]), atol=1e-4
        )
        assert torch.allclose(by_label[3], torch.tensor(outside[mode]), atol=1e-4)
        assert det["labels"].dtype == torch.long


def test_threshold_and_top_k_respected():
    locs, logits, priors, sizes = random_case(0)
    everything = postprocess(locs, logits, priors, sizes, top_k=0)
    limited = postprocess(locs, logits, priors, sizes, top_k=7)
    strict = postprocess(locs, logits, priors, sizes, score_threshold=0.3, top_k=0)
    for full, top, high, (h, w) in zip(everything, limited, strict, sizes):
        assert len(full["scores"]) > 7 and len(top["scores"]) == 7
        assert torch.equal(top["scores"], full["scores"][:7])
        assert torch.all(full["scores"][:-1] >= full["scores"][1:])
        assert full["scores"].min() > 0.01 and high["scores"].min() > 0.3
        assert torch.equal(high["scores"], full["scores"][full["scores"] > 0.3])
        boxes = full["boxes"]
        assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= w
        assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= h


def test_candidate_size_caps_each_class():
    locs, logits, priors, sizes = random_case(1, n=1)
    dets = postprocess(
        locs, logits, priors, sizes, candidate_size=3, nms_iou=1.0, top_k=0
    )
    assert torch.bincount(dets[0]["labels"]).max() == 3


@pytest.mark.parametrize("seed", range(6))
def test_batched_equals_reference_loop_without_the_departures(seed):
    """The reference loop with the default path's choices (plain IoU, clipping, top-k
    per image) returns the batched path's detections: the loop is its oracle."""
    from ssdstudy.original import select_reference

    locs, logits, priors, sizes = random_case(seed, c=4 + seed)
    kw = {
        "score_threshold": 0.05 * (seed % 3),
        "nms_iou": 0.3 + 0.05 * seed,
        "top_k": (0, 50, 10)[seed % 3],
    }
    kw["candidate_size"] = (200, 40, 0)[seed % 3]
    fast = postprocess(locs, logits, priors, sizes, mode="batched", **kw)
    boxes, scores = decode_outputs(locs, logits, priors)
    slow = select_reference(
        boxes, scores, sizes, kw["score_threshold"], kw["nms_iou"], kw["top_k"],
        kw["candidate_size"], eps=0.0, clip=True, per_class_top_k=False,
    )
    assert len(fast) == len(slow) == len(sizes)
    for a, b in zip(fast, slow):
        assert len(a["scores"]) == len(b["scores"]) > 0
        assert torch.equal(a["scores"], b["scores"])  # both sorted by score
        for x, y in zip(canonical(a), canonical(b)):
            assert torch.allclose(x.float(), y.float(), atol=1e-4)


def test_per_class_nms_hand_case():
    priors = centre(
        (0.0, 0.0, 0.4, 0.4),
        (0.02, 0.0, 0.42, 0.4),  # IoU ~0.9 with the first
        (0.3, 0.0, 0.7, 0.4),  # IoU ~0.14 with the first
        (0.0, 0.0, 0.4, 0.4),  # duplicate of the first, another class
    )
    scores = torch.zeros(1, 4, 3)
    scores[0, :, 0] = 0.0
    scores[0, 0, 1], scores[0, 1, 1], scores[0, 2, 1], scores[0, 3, 2] = (
        0.9,
        0.8,
        0.7,
        0.6,
    )
    boxes = box_convert(priors, "cxcywh", "xyxy").unsqueeze(0)
    for mode in ("batched", "reference"):
        (det,) = select_detections(boxes, scores, [(1, 1)], mode=mode)
        assert det["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
        assert det["labels"].tolist() == [1, 1, 2]
        # Removing the 0.9 box lets the 0.8 one through.
        scores2 = scores.clone()
        scores2[0, 0, 1] = 0.0
        (det2,) = select_detections(boxes, scores2, [(1, 1)], mode=mode)
        assert det2["scores"].tolist() == pytest.approx([0.8, 0.7, 0.6])
    # Overlap just above / below the NMS threshold.
    iou = box_iou(boxes[0, :1], boxes[0, 1:2]).item()
    for threshold, kept in ((iou - 1e-3, 1), (iou + 1e-3, 2)):
        (det,) = select_detections(
            boxes[:, :2], scores[:, :2], [(1, 1)], nms_iou=threshold
        )
        assert len(det["scores"]) == kept


def test_no_detections_and_bad_arguments():
    priors = centre((0.1, 0.1, 0.3, 0.3), (0.5, 0.5, 0.9, 0.9))
    logits = one_hot_logits(2, 2, 5, {})
    for mode in ("batched", "reference"):
        dets = postprocess(
            torch.zeros(2, 2, 4), logits, priors, [(10, 10), (20, 20)], mode=mode
        )
        assert [d["boxes"].shape for d in dets] == [(0, 4), (0, 4)]
        assert [d["labels"].dtype for d in dets] == [torch.long, torch.long]
    with pytest.raises(ValueError):
        postprocess(torch.zeros(2, 2, 4), logits, priors, [(10, 10)])
    with pytest.raises(ValueError):
        postprocess(torch.zeros(2, 2, 4), logits, priors, [(10, 10)] * 2, mode="fast")


class TinySSD(nn.Module):
    """A stand-in detector: fixed priors, a 1x1 conv per output, BatchNorm to see eval mode."""

    def __init__(self, grid: int = 5, num_classes: int = 4) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        centres = (torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5) / grid
        self.register_buffer(
            "priors", torch.cat([centres, torch.full_like(centres, 0.3)], 1)
        )
        self.grid, self.num_classes = grid, num_classes
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Conv2d(3, 4 + num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.head(self.norm(nn.functional.adaptive_avg_pool2d(x, self.grid)))
        y = y.flatten(2).transpose(1, 2)  # (N, grid*grid, 4 + C)
        return y[..., :4], y[..., 4:]


def test_predict_and_timed_predict_on_a_model():
    torch.manual_seed(0)
    model = TinySSD()
    model.train()
    images = torch.randn(2, 3, 40, 40)
    sizes = [(120, 160), (90, 60)]
    dets = predict(model, images, sizes, score_threshold=0.0, top_k=5)
    assert model.training  # restored
    assert model.norm.running_mean.abs().sum() == 0  # eval mode: statistics untouched
    assert [len(d["scores"]) for d in dets] == [5, 5]
    timed, times = timed_predict(model, images, sizes, score_threshold=0.0, top_k=5)
    assert set(times) == {"forward_ms", "decode_ms", "nms_ms", "total_ms"}
    assert all(v >= 0 for v in times.values())
    assert times["total_ms"] == pytest.approx(
        times["forward_ms"] + times["decode_ms"] + times["nms_ms"]
    )
    for a, b in zip(dets, timed):
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(
            a["boxes"], b["boxes"]
        )
    ref, _ = timed_predict(
        model, images, sizes, score_threshold=0.0, top_k=5, mode="reference"
    )
    for a, b in zip(dets, ref):
        # top_k is per image here, per class in the reference mode (the original's).
        assert torch.bincount(b["labels"]).max() <= 5 < len(b["scores"])
        assert torch.allclose(a["scores"], b["scores"][:5])


def test_predict_with_the_project_model():
    from ssdstudy.model import build_model

    torch.manual_seed(0)
    model = build_model("mobilenet_v1", 21)
    images = torch.randn(2, 3, 300, 300)
    dets = predict(model, images, [(375, 500), (300, 300)])
    assert len(dets) == 2
    for det, (h, w) in zip(dets, [(375, 500), (300, 300)]):
        assert len(det["scores"]) <= 200 and det["boxes"].shape[1] == 4
        assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h
        assert det["labels"].min() >= 1 and det["labels"].max() <= 20
