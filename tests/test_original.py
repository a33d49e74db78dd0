"""Tests of ssdstudy.original: the original code base's prediction path, and how the
default (batched) prediction departs from it.

The departures are the resize kernel, the IoU's ``eps``, clipping, and top-k per image
instead of per class. Each is shown on a constructed case, and on random outputs the
two modes agree on every detection both keep; each detection only one keeps is
explained by one of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import batched_nms, box_convert, box_iou, nms

from ssdstudy.augment import build_transform
from ssdstudy.original import (
    IOU_EPS,
    decode_reference,
    hard_nms_reference,
    iou_of,
    postprocess_reference,
    predict_reference,
    reference_preprocess,
    select_reference,
)
from ssdstudy.predict import decode_outputs, postprocess, select_detections

SETTINGS = {"score_threshold": 0.01, "nms_iou": 0.45, "top_k": 200, "candidate_size": 200}


def numpy_iou_of(boxes0: np.ndarray, boxes1: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """The original's ``box_utils.iou_of``, line by line in numpy."""
    overlap_left_top = np.maximum(boxes0[..., :2], boxes1[..., :2])
    overlap_right_bottom = np.minimum(boxes0[..., 2:], boxes1[..., 2:])

    def area_of(left_top, right_bottom):
        hw = np.clip(right_bottom - left_top, 0.0, None)
        return hw[..., 0] * hw[..., 1]

    overlap_area = area_of(overlap_left_top, overlap_right_bottom)
    area0 = area_of(boxes0[..., :2], boxes0[..., 2:])
    area1 = area_of(boxes1[..., :2], boxes1[..., 2:])
    return overlap_area / (area0 + area1 - overlap_area + eps)


def random_boxes(generator: torch.Generator, n: int, low: float = 0.02, high: float = 0.4) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator)
    wh = torch.rand(n, 2, generator=generator) * (high - low) + low
    return torch.cat([xy, xy + wh], dim=1)


def random_outputs(seed: int, n: int = 3, p: int = 600, c: int = 6, box_scale: float = 1.0):
    """Decoded boxes and scores of a random 'model'; ``box_scale`` < 1 gives small boxes,
    where the IoU's eps matters more."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(p, 2, generator=g)
    wh = (torch.rand(p, 2, generator=g) * 0.3 + 0.05) * box_scale
    priors = torch.cat([xy, wh], dim=1)
    locs = torch.randn(n, p, 4, generator=g) * 0.5
    logits = torch.randn(n, p, c, generator=g) * 2.0
    sizes = [(300 + 50 * i, 500 - 40 * i) for i in range(n)]
    boxes, scores = decode_outputs(locs, logits, priors)
    return boxes, scores, sizes


def clip(boxes: torch.Tensor, size: tuple[float, float]) -> torch.Tensor:
    height, width = size
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def classes_with_iou_ties(boxes: torch.Tensor, scores: torch.Tensor, settings: dict) -> set[int]:
    """Labels of one image with two NMS candidates whose plain IoU is above the threshold
    and whose IoU with the original's eps is not: the only pairs the eps decides."""
    labels = set()
    for c in range(1, scores.shape[1]):
        s = scores[:, c]
        top = s.topk(min(settings["candidate_size"], len(s))).indices
        b = boxes[top[s[top] > settings["score_threshold"]]]
        plain = iou_of(b[:, None], b[None], 0.0)
        with_eps = iou_of(b[:, None], b[None])
        if ((plain > settings["nms_iou"]) & (with_eps <= settings["nms_iou"])).any():
            labels.add(c)
    return labels


# --- IoU -------------------------------------------------------------------------------


def test_iou_of_matches_a_numpy_transcription_of_the_original():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(g, 50)
    boxes[:5, 2:] = boxes[:5, :2]  # degenerate boxes (zero area)
    gt = random_boxes(g, 7)
    # NMS's shapes: (N, 4) against (1, 4).
    ours = iou_of(boxes, boxes[3].unsqueeze(0))
    theirs = numpy_iou_of(boxes.numpy(), boxes[3].unsqueeze(0).numpy())
    assert ours.shape == (50,)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6, atol=0)
    # Matching's shapes: (1, G, 4) against (P, 1, 4).
    ours = iou_of(gt.unsqueeze(0), boxes.unsqueeze(1))
    theirs = numpy_iou_of(gt.unsqueeze(0).numpy(), boxes.unsqueeze(1).numpy())
    assert ours.shape == (50, 7)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6, atol=0)
    # The eps is the original's, and without it the IoU is torchvision's.
    assert IOU_EPS == 1e-5
    assert torch.allclose(iou_of(boxes[5:, None], gt[None], 0.0), box_iou(boxes[5:], gt), rtol=1e-6, atol=0)
    assert (iou_of(boxes[5:, None], gt[None]) <= box_iou(boxes[5:], gt)).all()


@pytest.mark.parametrize("seed", range(4))
def test_reference_nms_equals_torchvision_away_from_the_threshold(seed):
    """Where no pair of boxes has an IoU within the eps's reach of the threshold, the
    original's NMS keeps what torchvision's keeps, in the same order."""
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(g, 300, low=0.1, high=0.5)
    scores = torch.rand(300, generator=g)
    classes = torch.randint(0, 4, (300,), generator=g)
    threshold = 0.45
    # Leave out the boxes of pairs whose IoU lies within 1e-3 of the threshold: for boxes
    # of sides 0.1 or more (unions of 0.01 or more) the eps moves an IoU by 4.5e-4 at most.
    near = ((box_iou(boxes, boxes) - threshold).abs() < 1e-3).any(1)
    boxes, scores, classes = boxes[~near], scores[~near], classes[~near]
    plain = box_iou(boxes, boxes)
    assert len(boxes) > 250
    assert torch.equal(plain > threshold, iou_of(boxes[:, None], boxes[None]) > threshold)
    kept = hard_nms_reference(boxes, scores, threshold, 0)
    assert torch.equal(kept, nms(boxes, scores, threshold))
    per_class = torch.cat([
        torch.nonzero(classes == c).squeeze(1)[
            hard_nms_reference(boxes[classes == c], scores[classes == c], threshold, 0)
        ]
        for c in range(4)
    ])
    expected = batched_nms(boxes, scores, classes, threshold)
    assert sorted(per_class.tolist()) == sorted(expected.tolist())


def test_the_eps_changes_the_decision_just_above_the_threshold():
    """Suppression needs an IoU strictly above the threshold in both modes; the eps
    lowers the IoU by a factor ``union / (union + eps)``, so a pair of small boxes just
    above the threshold is suppressed by the default and kept by the original."""
    # Nested dyadic boxes: IoU exactly 1/2 in float.
    big = torch.tensor([0.0, 0.0, 0.25, 0.25])
    half = torch.tensor([0.0, 0.0, 0.125, 0.25])
    assert box_iou(big[None], half[None]).item() == 0.5
    pair = torch.stack([big, half]).unsqueeze(0)
    scores = torch.tensor([[[0.0, 0.9], [0.0, 0.8]]])

    def kept(threshold: float, mode: str) -> int:
        (det,) = select_detections(pair, scores, [(300, 300)], nms_iou=threshold, mode=mode)
        return len(det["scores"])

    # At the threshold itself both keep the two boxes.
    assert kept(0.5, "batched") == kept(0.5, "reference") == 2
    # Just below 0.5 the plain IoU is above it, the original's (0.49992) is not.
    with_eps = iou_of(big[None], half[None]).item()
    assert with_eps == pytest.approx(0.5 * (1 / 16) / (1 / 16 + 1e-5))
    assert with_eps < 0.49995
    assert kept(0.49995, "batched") == 1
    assert kept(0.49995, "reference") == 2

    # At the study's threshold, 0.45: two boxes of about 15 px in a 300 px input whose
    # IoU is 0.451. The eps takes 0.4 % off their IoU (union 0.0025), to 0.449.
    small = torch.tensor([0.1, 0.1, 0.15, 0.15])
    inside = torch.tensor([0.1, 0.1, 0.15, 0.1 + 0.05 * 0.451])
    plain = box_iou(small[None], inside[None]).item()
    assert 0.45 < plain < 0.4511
    assert iou_of(small[None], inside[None]).item() < 0.45
    pair = torch.stack([small, inside]).unsqueeze(0)
    assert kept(0.45, "batched") == 1
    assert kept(0.45, "reference") == 2


def test_top_k_is_per_image_by_default_and_per_class_in_the_reference():
    # Two classes, each with 6 disjoint boxes in a row: NMS removes none.
    row = torch.tensor([[0.15 * i, 0.0, 0.15 * i + 0.1, 0.1] for i in range(6)])
    boxes = torch.cat([row, row]).unsqueeze(0)
    scores = torch.zeros(1, 12, 3)
    scores[0, :6, 1] = torch.linspace(0.9, 0.4, 6)
    scores[0, 6:, 2] = torch.linspace(0.85, 0.35, 6)
    (default,) = select_detections(boxes, scores, [(100, 100)], top_k=3)
    (reference,) = select_detections(boxes, scores, [(100, 100)], top_k=3, mode="reference")
    assert default["labels"].tolist() == [1, 2, 1]
    assert torch.bincount(reference["labels"]).tolist() == [0, 3, 3]
    # The default's are the reference's best, with the same scores and boxes.
    assert torch.equal(default["scores"], reference["scores"][:3])
    assert torch.equal(default["boxes"], reference["boxes"][:3])
    # With top_k = candidate_size (the study's 200) the per-class cap is the candidate cap.
    (capped,) = select_detections(boxes, scores, [(100, 100)], top_k=2, candidate_size=2, mode="reference")
    (uncapped,) = select_detections(boxes, scores, [(100, 100)], top_k=0, candidate_size=2, mode="reference")
    assert torch.equal(capped["scores"], uncapped["scores"])


def test_the_reference_does_not_clip():
    boxes = torch.tensor([[[-0.1, 0.2, 0.5, 1.3]]])
    scores = torch.tensor([[[0.1, 0.9]]])
    (default,) = select_detections(boxes, scores, [(100, 200)])
    (reference,) = select_detections(boxes, scores, [(100, 200)], mode="reference")
    assert torch.allclose(reference["boxes"], torch.tensor([[-20.0, 20.0, 100.0, 130.0]]))
    assert torch.allclose(default["boxes"], torch.tensor([[0.0, 20.0, 100.0, 100.0]]))
    assert torch.equal(default["scores"], reference["scores"])


# --- the two modes on random outputs -----------------------------------------------------


@pytest.mark.parametrize(("seed", "box_scale", "top_k"), [
    (0, 1.0, 50), (1, 1.0, 200), (2, 1.0, 0), (3, 0.3, 50), (4, 0.3, 200), (5, 0.2, 20),
])
def test_reference_and_default_agree_on_the_detections_both_keep(seed, box_scale, top_k):
    boxes, scores, sizes = random_outputs(seed, box_scale=box_scale)
    settings = {**SETTINGS, "top_k": top_k}
    default = select_detections(boxes, scores, sizes, **settings)
    reference = select_detections(boxes, scores, sizes, mode="reference", **settings)
    both = only_default = only_reference = 0
    for i, (d, r, size) in enumerate(zip(default, reference, sizes, strict=True)):
        ties = classes_with_iou_ties(boxes[i], scores[i], settings)
        r_boxes = clip(r["boxes"], size)
        same_label = d["labels"][:, None] == r["labels"][None]
        same = (box_iou(d["boxes"], r_boxes) > 0.999) & same_label
        assert (same.sum(1) <= 1).all() and (same.sum(0) <= 1).all()  # unambiguous
        rows, cols = same.nonzero(as_tuple=True)
        # Kept by both: the same score (and, once clipped, the same box).
        assert torch.equal(d["scores"][rows], r["scores"][cols])
        assert torch.allclose(d["boxes"][rows], r_boxes[cols], atol=1e-4)
        both += len(rows)
        # Kept by the reference alone: cut by the default's top-k per image, or a
        # class where the eps decides a pair.
        lowest = d["scores"].min() if len(d["scores"]) else torch.tensor(1.0)
        for j in torch.nonzero(~same.any(0)).squeeze(1).tolist():
            cut = 0 < top_k == len(d["scores"]) and r["scores"][j] <= lowest
            assert cut or int(r["labels"][j]) in ties, (i, j)
            only_reference += 1
        # Kept by the default alone: only where the eps decides a pair.
        for j in torch.nonzero(~same.any(1)).squeeze(1).tolist():
            assert int(d["labels"][j]) in ties, (i, j)
            only_default += 1
        # Without top-k per image and away from the eps's pairs, the lists are the same.
        if top_k == 0 and not ties:
            assert len(d["scores"]) == len(r["scores"]) == len(rows)
    assert both > 0
    if top_k in (20, 50):
        assert only_reference > 0  # the per-class top-k is exercised


def test_each_departure_alone_accounts_for_its_share():
    """Switching the reference's departures to the default's one at a time: all of them
    switched gives the default; each alone changes only its share."""
    boxes, scores, sizes = random_outputs(0, box_scale=0.1)
    s = SETTINGS

    def reference(top_k: int, **switches) -> list:
        return select_reference(boxes, scores, sizes, s["score_threshold"], s["nms_iou"], top_k,
                                s["candidate_size"], **switches)

    default = select_detections(boxes, scores, sizes, **{**s, "top_k": 20})
    as_default = reference(20, eps=0.0, clip=True, per_class_top_k=False)
    for a, b in zip(default, as_default, strict=True):
        assert torch.equal(a["scores"], b["scores"])
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
    # The top-k per class alone: the default's list is the head of the reference's.
    per_class = reference(20, eps=0.0, clip=True, per_class_top_k=True)
    for a, b in zip(as_default, per_class, strict=True):
        assert len(b["scores"]) > len(a["scores"]) == 20
        assert torch.equal(a["scores"], b["scores"][:20]) and torch.equal(a["boxes"], b["boxes"][:20])
    # The eps alone (no top-k cut): only classes with a pair it decides change.
    plain = reference(0, eps=0.0, clip=True, per_class_top_k=False)
    with_eps = reference(0, eps=IOU_EPS, clip=True, per_class_top_k=False)
    changed = 0
    for i, (a, b) in enumerate(zip(plain, with_eps, strict=True)):
        ties = classes_with_iou_ties(boxes[i], scores[i], s)
        for label in range(1, scores.shape[2]):
            sa = a["scores"][a["labels"] == label]
            sb = b["scores"][b["labels"] == label]
            if label not in ties:
                assert torch.equal(sa, sb)
            elif not torch.equal(sa, sb):
                assert len(sb) > len(sa)  # a smaller IoU suppresses less
                changed += 1
    assert changed > 0  # small boxes: the eps decides some pairs here
    # Clipping alone changes only boxes, never what is kept.
    unclipped = reference(0, eps=0.0, clip=False, per_class_top_k=False)
    clipped = reference(0, eps=0.0, clip=True, per_class_top_k=False)
    for a, b, size in zip(clipped, unclipped, sizes, strict=True):
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["boxes"], clip(b["boxes"], size))
        assert not torch.equal(a["boxes"], b["boxes"])


# --- resize and the whole path -------------------------------------------------------------


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 RGB image with edges and gradients (noise upsampled, plus shapes)."""
    import cv2

    low = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    image[height // 4 : height // 2, width // 3 : width // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    noise = rng.integers(-20, 21, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(375, 500), (500, 333), (200, 180), (300, 300), (640, 427)])
def test_cv2_and_torchvision_resize_differ_by_at_most_one_grey_level(shape):
    rng = np.random.default_rng(sum(shape))
    image = smooth_image(rng, *shape)
    mean, std = (127 / 255,) * 3, (128 / 255,) * 3
    ours, _ = build_transform(False, 300, mean, std)(
        torch.from_numpy(image).permute(2, 0, 1), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}
    )
    theirs = reference_preprocess(image, 300, mean, std)
    assert ours.shape == theirs.shape == (3, 300, 300)
    grey_levels = ((ours - theirs) * 128).abs()
    assert grey_levels.max() <= 1 + 1e-4
    if shape != (300, 300):
        assert ((grey_levels > 0.5).float().mean()) > 0  # they do differ
    else:
        assert grey_levels.max() < 1e-4  # no resize, no difference


def test_reference_preprocess_is_the_original_prediction_transform():
    import cv2

    rng = np.random.default_rng(1)
    image = smooth_image(rng, 240, 320)
    out = reference_preprocess(image, 300, (127 / 255,) * 3, (128 / 255,) * 3)
    expected = (cv2.resize(image, (300, 300)).astype(np.float32) - 127.0) / 128.0
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-6)
    # A (3, H, W) tensor, as ssdstudy.data.read_image gives, is the same image.
    as_tensor = reference_preprocess(torch.from_numpy(image).permute(2, 0, 1), 300, (127 / 255,) * 3,
                                     (128 / 255,) * 3)
    assert torch.equal(out, as_tensor)
    with pytest.raises(TypeError):
        reference_preprocess(image.astype(np.float32), 300, (0.5,) * 3, (0.5,) * 3)


class TinySSD(nn.Module):
    """A stand-in detector with the attributes predict_reference reads."""

    def __init__(self, grid: int = 5, num_classes: int = 4, image_size: int = 64) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        centres = (torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5) / grid
        self.register_buffer("priors", torch.cat([centres, torch.full_like(centres, 0.3)], 1))
        self.grid, self.image_size = grid, image_size
        self.mean, self.std = (127 / 255,) * 3, (128 / 255,) * 3
        self.head = nn.Conv2d(3, 4 + num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.head(nn.functional.adaptive_avg_pool2d(x, self.grid))
        y = y.flatten(2).transpose(1, 2)
        return y[..., :4], y[..., 4:] * 3


def test_predict_reference_runs_the_original_path():
    torch.manual_seed(0)
    model = TinySSD()
    rng = np.random.default_rng(2)
    images = [smooth_image(rng, 120, 160), smooth_image(rng, 90, 60)]
    dets = predict_reference(model, images, score_threshold=0.05)
    assert len(dets) == 2
    with torch.inference_mode():
        inputs = torch.stack([reference_preprocess(im, 64, model.mean, model.std) for im in images])
        locs, logits = model(inputs)
    by_hand = postprocess_reference(locs, logits, model.priors, [(120, 160), (90, 60)], score_threshold=0.05)
    # The same as the reference mode on the project's decoding (last-bit differences).
    by_mode = postprocess(locs, logits, model.priors, [(120, 160), (90, 60)], score_threshold=0.05,
                          mode="reference")
    batched = predict_reference(model, images, score_threshold=0.05, batch_size=2)
    for a, b, c, e in zip(dets, by_hand, by_mode, batched, strict=True):
        assert len(a["scores"]) > 0
        assert torch.allclose(a["scores"], b["scores"], atol=1e-6)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
        assert torch.allclose(a["scores"], c["scores"], atol=1e-6)
        assert torch.allclose(a["boxes"], c["boxes"], atol=1e-4)
        assert torch.allclose(a["scores"], e["scores"], atol=1e-5)
    # Unclipped: the priors of the border cells reach out of the image.
    boxes = torch.cat([d["boxes"] for d in dets])
    assert boxes.min() < 0


def test_decode_reference_is_the_project_decode():
    g = torch.Generator().manual_seed(3)
    priors = torch.cat([torch.rand(50, 2, generator=g), torch.rand(50, 2, generator=g) * 0.5 + 0.01], 1)
    locs, logits = torch.randn(2, 50, 4, generator=g), torch.randn(2, 50, 5, generator=g)
    boxes, scores = decode_reference(locs, logits, priors)
    ours_boxes, ours_scores = decode_outputs(locs, logits, priors)
    assert torch.allclose(boxes, ours_boxes, rtol=0, atol=1e-6)
    assert torch.equal(scores, ours_scores)
    assert torch.allclose(box_convert(boxes, "xyxy", "cxcywh")[..., 2:],
                          torch.exp(locs[..., 2:] * 0.2) * priors[:, 2:], atol=1e-5)


# --- the benchmark ---------------------------------------------------------------------------


def test_reference_mode_benchmark_runs(tiny_synth, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from ssdstudy.config import build_config
    from ssdstudy.data import read_class_names
    from ssdstudy.model import build_model

    classes = tuple(read_class_names(tiny_synth))
    config = build_config(("test", {"data": {"root": str(tiny_synth), "synth": None},
                                    "model": {"backbone": "mobilenet_v1", "width": 0.25, "image_size": 96}}))
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", len(classes) + 1, width=0.25, image_size=96)
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"config": config.to_dict(), "model": model.state_dict(), "class_names": list(classes)}, checkpoint)

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_mode.py"
    spec = importlib.util.spec_from_file_location("reference_mode_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "reference-mode.json"
        assert module.main(["--checkpoint", str(checkpoint), "--data", str(tiny_synth), "--limit", "3",
                            "--device", "cpu", "--threads", "1", "--resamples", "20", "--quiet",
                            "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    figures = json.loads(out.read_text())
    assert figures["images"] == 3 and figures["settings"]["iou_eps"] == 1e-5
    assert set(figures["variants"]) == set(module.VARIANTS)
    for name, variant in figures["variants"].items():
        assert 0.0 <= variant["voc07_map"] <= 1.0
        assert ("minus_default" in variant) == (name != "default")
    # On the same network outputs, the detections both keep have the same scores.
    assert figures["agreement"]["same_inputs"]["largest_score_difference"] == 0.0
    assert figures["provenance"]["compute_code"] and "git" in figures["provenance"]
