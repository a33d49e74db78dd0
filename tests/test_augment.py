"""Tests of ssdstudy.augment: the SSD training augmentation and the evaluation transform."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as TF

from ssdstudy.augment import (
    CROP_MIN_IOUS,
    CROP_TRIALS,
    STEPS,
    AugmentConfig,
    build_transform,
    hue_rotation,
    photometric_matrix,
    sample_crop,
)
from ssdstudy.errors import ConfigError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))  # objects; background black


def make_sample(height: int, width: int, boxes, labels=None, image=None):
    """An (image, target) pair as DetectionDataset yields it (decode_image layout)."""
    if image is None:
        gen = torch.Generator().manual_seed(height * 1000 + width)
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen).permute(2, 0, 1)
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if labels is None:
        labels = torch.arange(1, boxes_t.shape[0] + 1, dtype=torch.int64)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes_t, format="XYXY", canvas_size=(height, width)),
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "image_id": "000001",
    }
    return tv_tensors.Image(image), target


def smooth_image(height: int, width: int) -> torch.Tensor:
    """A uint8 (3, H, W) image of gentle gradients (under half a grey level per pixel)."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    r = 70 + 0.4 * xx
    g = 190 - 0.4 * yy
    b = 100 + 15 * torch.sin(2 * math.pi * (xx + yy) / (width + height))
    return torch.stack([r, g, b]).round().to(torch.uint8)


def unnormalise(image: torch.Tensor) -> np.ndarray:
    """(3, S, S) normalised float -> (S, S, 3) pixel values 0..255 (float)."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return ((image * std + mean) * 255.0).permute(1, 2, 0).numpy()


def run(transform, image, target, seed: int):
    torch.manual_seed(seed)
    return transform(image, target)


# ------------------------------------------------------------------------- config
def test_config_from_dict_defaults_round_trip_and_labels():
    assert AugmentConfig.from_dict(None) == AugmentConfig()
    assert AugmentConfig.from_dict({}) == AugmentConfig()
    cfg = AugmentConfig.from_dict({"crop": False, "mirror": False})
    assert cfg == AugmentConfig(crop=False, mirror=False)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.active_steps == ("photometric", "expand")
    assert cfg.label == "photometric+expand"
    assert AugmentConfig(enabled=False).active_steps == ()
    assert AugmentConfig(enabled=False).label == "none"
    assert AugmentConfig.only("mirror") == AugmentConfig(photometric=False, expand=False, crop=False)
    assert AugmentConfig().without("expand", "crop").active_steps == ("photometric", "mirror")
    assert AugmentConfig().active_steps == STEPS


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"experiments/augmentation.yaml: augment\.rotate: unknown"):
        AugmentConfig.from_dict({"rotate": True}, where="experiments/augmentation.yaml: augment")
    with pytest.raises(ConfigError, match=r"augment\.mirror: expected true or false"):
        AugmentConfig.from_dict({"mirror": "yes"})
    with pytest.raises(ConfigError, match=r"augment\.crop: expected true or false"):
        AugmentConfig.from_dict({"crop": 1})
    with pytest.raises(ConfigError, match="mapping"):
        AugmentConfig.from_dict(["crop"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"augment\.zoom"):
        AugmentConfig.only("zoom")


def test_bad_arguments_and_inputs_are_rejected():
    with pytest.raises(ConfigError, match="image_size"):
        build_transform(False, 0, MEAN, STD)
    with pytest.raises(ValueError, match="std"):
        build_transform(False, 300, MEAN, (0.2, 0.0, 0.2))
    transform = build_transform(False, 32, MEAN, STD)
    image, target = make_sample(40, 50, [[1, 1, 20, 20]])
    with pytest.raises(TypeError, match="uint8"):
        transform(image.float(), target)
    with pytest.raises(TypeError, match="uint8"):
        transform(image[:1], target)
    with pytest.raises(ValueError, match="labels"):
        transform(image, dict(target, labels=torch.tensor([1, 2])))


def test_transform_pickles_for_dataloader_workers():
    image, target = make_sample(60, 80, [[5, 5, 50, 40]])
    transform = build_transform(True, 32, MEAN, STD, AugmentConfig(expand=False))
    copy = pickle.loads(pickle.dumps(transform))
    a, ta = run(transform, image, target, 7)
    b, tb = run(copy, image, target, 7)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert "train" in repr(copy) and "photometric+crop+mirror" in repr(copy)


# ---------------------------------------------------------------- eval / disabled
@pytest.mark.parametrize("contiguous", [False, True])
def test_eval_is_exactly_resize_then_normalise(contiguous):
    image, target = make_sample(75, 100, [[10, 5, 60, 70], [0, 0, 100, 75]], labels=[3, 9])
    if contiguous:
        image = tv_tensors.Image(image.contiguous())
    out, tgt = build_transform(False, 64, MEAN, STD)(image, target)
    expected = TF.normalize(
        TF.to_dtype(TF.resize(image, [64, 64], antialias=False), torch.float32, scale=True), MEAN, STD
    )
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected.as_subclass(torch.Tensor), atol=1e-5, rtol=0)
    expected_boxes = TF.resize(target["boxes"], [64, 64])
    torch.testing.assert_close(tgt["boxes"].as_subclass(torch.Tensor), expected_boxes.as_subclass(torch.Tensor))
    assert tgt["boxes"].canvas_size == (64, 64)
    assert tgt["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tgt["labels"].tolist() == [3, 9]
    assert tgt["image_id"] == "000001"


def test_other_box_formats_are_converted():
    image, target = make_sample(60, 80, [[10, 10, 50, 40]])
    xywh = dict(target, boxes=tv_tensors.BoundingBoxes([[10, 10, 40, 30]], format="XYWH", canvas_size=(60, 80)))
    transform = build_transform(False, 40, MEAN, STD)
    torch.testing.assert_close(transform(image, xywh)[1]["boxes"], transform(image, target)[1]["boxes"])


@pytest.mark.parametrize("config", [AugmentConfig(enabled=False), AugmentConfig.only()])
def test_disabled_training_transform_equals_eval(config):
    image, target = make_sample(90, 120, [[5, 5, 60, 80], [70, 10, 119, 89]])
    train = build_transform(True, 48, MEAN, STD, config)
    evaluate = build_transform(False, 48, MEAN, STD)
    state = torch.get_rng_state()
    for seed in range(5):
        a, ta = run(train, image, target, seed)
        b, tb = run(evaluate, image, target, seed)
        assert torch.equal(a, b)
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    torch.set_rng_state(state)


# ------------------------------------------------------------------ single steps
def test_mirror_only_mirrors_image_and_boxes_half_the_time():
    image, target = make_sample(90, 120, [[5, 10, 60, 80], [70, 10, 119, 89]])
    size = 48
    plain, plain_t = build_transform(False, size, MEAN, STD)(image, target)
    mirror = build_transform(True, size, MEAN, STD, AugmentConfig.only("mirror"))
    flipped_boxes = plain_t["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([size, 0, size, 0])
    seen = set()
    for seed in range(30):
        out, tgt = run(mirror, image, target, seed)
        assert tgt["labels"].tolist() == [1, 2]
        if torch.equal(out, plain):
            assert torch.equal(tgt["boxes"], plain_t["boxes"])
            seen.add("same")
        else:
            assert torch.equal(out, plain.flip(-1))
            torch.testing.assert_close(tgt["boxes"].as_subclass(torch.Tensor), flipped_boxes.as_subclass(torch.Tensor))
            seen.add("mirrored")
    assert seen == {"same", "mirrored"}


def test_photometric_only_keeps_geometry_and_greys():
    size = 40
    grey = torch.full((3, 50, 70), 0, dtype=torch.uint8)
    grey[:, :, :35] = 90
    grey[:, :, 35:] = 170
    image, target = make_sample(50, 70, [[5, 5, 30, 45]], image=grey)
    plain, plain_t = build_transform(False, size, MEAN, STD)(image, target)
    photometric = build_transform(True, size, MEAN, STD, AugmentConfig.only("photometric"))
    changed = 0
    for seed in range(30):
        out, tgt = run(photometric, image, target, seed)
        assert torch.equal(tgt["boxes"], plain_t["boxes"])
        pixels = unnormalise(out)
        assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3  # clamped to the pixel range
        # Brightness, contrast, saturation, hue and channel swap all keep greys grey.
        assert np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max() < 1e-2
        changed += not torch.equal(out, plain)
    assert changed >= 20  # 1 - 2^-5 of the images get at least one part


def test_expand_only_zooms_out_onto_the_mean():
    size = 60
    image, target = make_sample(60, 80, [[10, 10, 70, 50], [0, 0, 80, 60]], image=smooth_image(60, 80))
    plain_t = build_transform(False, size, MEAN, STD)(image, target)[1]
    expand = build_transform(True, size, MEAN, STD, AugmentConfig.only("expand"))
    zoomed = 0
    for seed in range(20):
        out, tgt = run(expand, image, target, seed)
        assert tgt["labels"].tolist() == [1, 2]
        widths = tgt["boxes"][:, 2:] - tgt["boxes"][:, :2]
        plain_widths = plain_t["boxes"][:, 2:] - plain_t["boxes"][:, :2]
        assert bool((widths <= plain_widths + 1e-4).all())
        # The second box is the whole image; outside it the output is the mean (0).
        x1, y1, x2, y2 = tgt["boxes"][1].tolist()
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[round(y1):round(y2), round(x1):round(x2)] = True
        assert abs(x1 - round(x1)) < 1e-4 and abs(y2 - round(y2)) < 1e-4
        assert torch.equal(out[:, ~inside], torch.zeros_like(out[:, ~inside]))
        assert bool((out[:, inside] != 0).any())
        zoomed += bool((~inside).any())
    assert 4 <= zoomed <= 16


def test_switching_a_step_off_keeps_the_other_steps_draws():
    image, target = make_sample(120, 160, [[10, 20, 90, 100], [100, 40, 150, 110]])
    full = build_transform(True, 64, MEAN, STD)
    no_photo = build_transform(True, 64, MEAN, STD, AugmentConfig(photometric=False))
    for seed in range(20):
        a_img, a = run(full, image, target, seed)
        b_img, b = run(no_photo, image, target, seed)
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
        # Same geometry: the mean-filled pixels coincide.
        assert torch.equal(a_img == 0, b_img == 0) or not bool((a_img == 0).any())


def test_determinism_under_manual_seed():
    image, target = make_sample(100, 130, [[10, 10, 70, 90], [60, 30, 120, 95]])
    transform = build_transform(True, 64, MEAN, STD)
    first = [run(transform, image, target, seed) for seed in range(6)]
    again = [run(transform, image, target, seed) for seed in range(6)]
    for (a, ta), (b, tb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    distinct = {tuple(t["boxes"].flatten().tolist()) for _, t in first}
    assert len(distinct) >= 4
    # A private generator gives the same stream as the global one with the same seed.
    private = build_transform(True, 64, MEAN, STD, generator=torch.Generator().manual_seed(3))
    a, ta = private(image, target)
    b, tb = run(transform, image, target, 3)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


# ----------------------------------------------------------------------- boxes
def test_zero_boxes_work():
    image, target = make_sample(70, 90, torch.zeros(0, 4))
    for train in (True, False):
        transform = build_transform(train, 48, MEAN, STD)
        for seed in range(10):
            out, tgt = run(transform, image, target, seed)
            assert out.shape == (3, 48, 48)
            assert tgt["boxes"].shape == (0, 4) and tgt["labels"].shape == (0,)
            assert tgt["labels"].dtype == torch.int64


def test_degenerate_boxes_are_dropped_with_their_labels_and_flags():
    boxes = [[10, 10, 50, 50], [30, 30, 30, 60], [60, 5, 61, 60], [5, 60, 90, 95]]
    image, target = make_sample(100, 200, boxes, labels=[4, 5, 6, 7])
    target["difficult"] = torch.tensor([False, True, False, True])
    _, tgt = build_transform(False, 50, MEAN, STD)(image, target)
    # Box 2 has zero width; box 3 is 1 px wide, 0.25 px in the output.
    assert tgt["labels"].tolist() == [4, 7]
    assert tgt["difficult"].tolist() == [False, True]
    assert tgt["boxes"].shape == (2, 4)


def test_sample_crop_honours_the_constraints():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[20.0, 30.0, 120.0, 140.0], [150.0, 10.0, 190.0, 60.0], [5.0, 150.0, 60.0, 195.0]])
    found = 0
    for _ in range(200):
        u = torch.rand(1 + 4 * CROP_TRIALS, generator=gen, dtype=torch.float64)
        mode = CROP_MIN_IOUS[int(u[0] * len(CROP_MIN_IOUS))]
        result = sample_crop(200, 210, boxes, u, "paper")
        if mode is None:
            assert result is None
            continue
        if result is None:
            continue
        found += 1
        (x1, y1, x2, y2), keep = result
        assert 0 <= x1 < x2 <= 210 and 0 <= y1 < y2 <= 200
        w, h = x2 - x1, y2 - y1
        assert w >= math.floor(0.3 * 210) - 1 and h >= math.floor(0.3 * 200) - 1
        assert 0.5 - 0.05 <= h / w <= 2.0 + 0.05
        iou = box_iou(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32), boxes)[0]
        assert float(iou.max()) >= mode - 1e-6
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1) & (centres[:, 1] < y2)
        assert torch.equal(keep, inside) and bool(keep.any())
    assert found > 50
    assert sample_crop(200, 210, torch.zeros(0, 4), torch.full((1 + 4 * CROP_TRIALS,), 0.5)) is None


@st.composite
def scenes(draw):
    """Non-overlapping coloured rectangles (one per quadrant) on a black image."""
    height = draw(st.integers(40, 140))
    width = draw(st.integers(40, 140))
    count = draw(st.integers(0, 4))
    quadrants = draw(st.permutations(range(4)))[:count]
    boxes = []
    for q in quadrants:
        cx0 = (q % 2) * (width // 2) + 2
        cy0 = (q // 2) * (height // 2) + 2
        cw, ch = width // 2 - 4, height // 2 - 4
        bw = draw(st.integers(6, cw))
        bh = draw(st.integers(6, ch))
        x0 = cx0 + draw(st.integers(0, cw - bw))
        y0 = cy0 + draw(st.integers(0, ch - bh))
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    size = draw(st.sampled_from([48, 64, 96]))
    seed = draw(st.integers(0, 2**31 - 1))
    return height, width, boxes, size, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_boxes_stay_inside_and_cover_their_objects(scene):
    height, width, boxes, size, seed = scene
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    labels = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image[:, y1:y2, x1:x2] = torch.tensor(COLOURS[i], dtype=torch.uint8).view(3, 1, 1)
        labels.append(i + 1)
    sample = make_sample(height, width, boxes, labels=labels, image=image.permute(1, 2, 0).contiguous().permute(2, 0, 1))
    transform = build_transform(True, size, MEAN, STD, AugmentConfig(photometric=False))
    # Output pixels per input pixel are at most size / (0.3 * side) (crop of >= 30 %).
    slack_x = 1.5 + 0.5 * size / (0.3 * width)
    slack_y = 1.5 + 0.5 * size / (0.3 * height)
    for repeat in range(3):
        out, tgt = run(transform, *sample, seed + repeat)
        assert out.shape == (3, size, size)
        out_boxes = tgt["boxes"].as_subclass(torch.Tensor)
        out_labels = tgt["labels"].tolist()
        assert len(out_labels) == out_boxes.shape[0] == len(set(out_labels))
        assert set(out_labels) <= set(labels)
        if out_boxes.numel():
            assert float(out_boxes.min()) >= 0 and float(out_boxes.max()) <= size
            assert bool((out_boxes[:, 2] - out_boxes[:, 0] >= 1).all())
            assert bool((out_boxes[:, 3] - out_boxes[:, 1] >= 1).all())
        pixels = unnormalise(out)
        for (x1, y1, x2, y2), label in zip(out_boxes.tolist(), out_labels):
            colour = np.array(COLOURS[label - 1], dtype=np.float32)
            ys, xs = np.nonzero(np.abs(pixels - colour).max(axis=2) <= 6)
            # Every pixel of the object's colour lies inside its box ...
            if len(xs):
                assert xs.min() + 0.5 >= x1 - 1.5 and xs.max() + 0.5 <= x2 + 1.5
                assert ys.min() + 0.5 >= y1 - 1.5 and ys.max() + 0.5 <= y2 + 1.5
            # ... and the box is not much larger than the coloured region.
            if x2 - x1 >= 3 * slack_x and y2 - y1 >= 3 * slack_y:
                assert len(xs), f"label {label}: box {x1, y1, x2, y2} has no pixels of its colour"
                assert xs.min() + 0.5 <= x1 + slack_x and xs.max() + 0.5 >= x2 - slack_x
                assert ys.min() + 0.5 <= y1 + slack_y and ys.max() + 0.5 >= y2 - slack_y


# ------------------------------------------------------------------ photometric
def _apply(matrix: torch.Tensor, offset: torch.Tensor, rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(rgb.reshape(-1, 3)).double()
    x = torch.cat([x, x.amax(dim=1, keepdim=True)], dim=1)
    return (x @ matrix.T + offset).numpy().reshape(rgb.shape)


def _hsv(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2HSV)


def test_photometric_matrix_matches_the_hsv_steps():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, size=(500, 1, 3)).astype(np.float32)
    # Saturation: exactly the HSV operation of the original code.
    for factor in (0.5, 1.4):
        hsv = _hsv(rgb)
        hsv[..., 1] *= factor
        expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        np.testing.assert_allclose(_apply(*photometric_matrix(saturation=factor), rgb), expected, atol=1e-2)
    # Brightness, contrast (either side) and channel swap.
    m, o = photometric_matrix(brightness=10.0, contrast=1.5, contrast_first=True, permutation=(2, 0, 1))
    np.testing.assert_allclose(_apply(m, o, rgb), ((rgb + 10.0) * 1.5)[..., [2, 0, 1]], rtol=1e-6, atol=1e-3)
    m, o = photometric_matrix(brightness=-20.0, contrast=0.5, contrast_first=False, saturation=1.2)
    hsv = _hsv(rgb - 20.0)
    hsv[..., 1] *= 1.2
    expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 0.5
    np.testing.assert_allclose(_apply(m, o, rgb), expected, atol=1e-2)


def test_hue_rotation_shifts_hue_like_hsv():
    rotation = hue_rotation(18.0)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(rotation @ torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 255, size=(2000, 1, 3)).astype(np.float32)
    before = _hsv(rgb)
    for degrees in (18.0, -10.0):
        after = _hsv(np.clip(_apply(*photometric_matrix(hue_degrees=degrees), rgb), 0, 255))
        saturated = before[..., 1] > 0.3
        shift = (after[..., 0] - before[..., 0] + 180.0) % 360.0 - 180.0
        assert abs(float(shift[saturated].mean()) - degrees) < 1.0
        # The HSV hexagon is not a circle: per colour the shift is off by up to ~35 %.
        assert float(np.abs(shift[saturated] - degrees).max()) < 0.4 * abs(degrees)


def test_fused_pipeline_matches_the_explicit_study_order():
    """Photometric -> canvas -> crop -> mirror -> resize -> normalise, done step by step."""
    height, width, size = 90, 120, 64
    image, target = make_sample(height, width, [[10, 10, 60, 70], [50, 30, 115, 85]],
                                image=smooth_image(height, width))
    transform = build_transform(True, size, MEAN, STD)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(3, 1, 1)
    compared, means = 0, []
    for seed in range(25):
        torch.manual_seed(seed)
        photo, geo, _ = transform.sample(height, width, target["boxes"].as_subclass(torch.Tensor))
        out, _ = run(transform, image, target, seed)
        x = image.as_subclass(torch.Tensor).double()
        if photo is not None:
            matrix, offset = photo.matrix()
            x = torch.einsum("ck,khw->chw", matrix, torch.cat([x, x.amax(0, keepdim=True)])) + offset.view(3, 1, 1)
        canvas = (mean * 255).expand(3, geo.canvas_height, geo.canvas_width).clone()
        canvas[:, geo.top:geo.top + height, geo.left:geo.left + width] = x
        covered = torch.zeros(1, geo.canvas_height, geo.canvas_width, dtype=torch.float64)
        covered[:, geo.top:geo.top + height, geo.left:geo.left + width] = 1
        x1, y1, x2, y2 = geo.window
        patch = torch.cat([canvas, covered])[:, y1:y2, x1:x2]
        patch = F.interpolate(patch[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        if geo.mirror:
            patch = patch.flip(-1)
        expected = (patch[:3].clamp(0, 255) / 255 - mean) / std
        # Compare away from the seam between image and canvas (2 px). The fused transform
        # resamples the image onto whole output pixels, so after a zoom-out its content
        # may sit up to half an output pixel off the nominal window (its boxes follow the
        # pixels exactly); with these gradients that is at most a few grey levels.
        interior = -F.max_pool2d(-patch[3:4][None], 5, stride=1, padding=2)[0, 0] > 0.999
        diff = (out.double() - expected).abs().amax(0)[interior]
        compared += int(interior.sum())
        assert float(diff.max()) < 0.06, f"seed {seed}: max diff {float(diff.max()):.3f}"
        assert float(diff.mean()) < 0.03
        means.append(float(diff.mean()))
    assert compared > 25 * size * size // 4
    assert sum(means) / len(means) < 0.015  # about 0.8 grey levels


# --------------------------------------------------------------------- benchmark
def test_benchmark_script_runs(tmp_path: Path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "augmentation.py"
    spec = importlib.util.spec_from_file_location("augmentation_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        assert module.main(["--images", "3", "--repeats", "1", "--json", str(tmp_path / "aug.json")]) == 0
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)
    figures = json.loads((tmp_path / "aug.json").read_text())
    assert figures["images_per_s"] > 0 and figures["reference_images_per_s"] > 0
    assert figures["threads"] == 1 and figures["repeats"] == 1
    # The numpy/OpenCV reference produces what the model expects too.
    ref = module.ReferenceAugmentation(64, MEAN, STD, seed=0)
    img, boxes, labels = module.make_images(1)[0]
    out, out_boxes, out_labels = ref(img[:, :, ::-1].copy(), boxes, labels)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert len(out_boxes) == len(out_labels) and (len(out_boxes) == 0 or out_boxes.max() <= 1 + 1e-6)


# ------------------------------------------------ the crop against the original's rule
def _original_random_sample_crop(rng: np.random.RandomState, width: int, height: int, boxes: np.ndarray):
    """The original code base's ``RandomSampleCrop``, written out plainly (numpy, its
    loops, its sample options, its IoU test and its ``uniform(width - w)``), for the
    geometry only: returns ``(rect, mask)`` or ``None`` when the image is kept."""
    options = (None, (0.1, None), (0.3, None), (0.7, None), (0.9, None), (None, None))
    while True:
        mode = options[rng.randint(len(options))]
        if mode is None:
            return None
        min_iou, max_iou = mode
        min_iou = float("-inf") if min_iou is None else min_iou
        max_iou = float("inf") if max_iou is None else max_iou
        for _ in range(50):
            w = rng.uniform(0.3 * width, width)
            h = rng.uniform(0.3 * height, height)
            if h / w < 0.5 or h / w > 2:
                continue
            left = rng.uniform(width - w)  # legacy numpy: low = width - w, high = 1.0, as written there
            top = rng.uniform(height - h)
            rect = np.array([int(left), int(top), int(left + w), int(top + h)])
            lt = np.maximum(boxes[:, :2], rect[:2])
            rb = np.minimum(boxes[:, 2:], rect[2:])
            inter = np.clip(rb - lt, 0, None).prod(axis=1)
            areas = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
            overlap = inter / (areas + (rect[2] - rect[0]) * (rect[3] - rect[1]) - inter)
            if overlap.min() < min_iou and max_iou < overlap.max():
                continue
            centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0
            mask = ((rect[0] < centers[:, 0]) & (rect[1] < centers[:, 1])
                    & (rect[2] > centers[:, 0]) & (rect[3] > centers[:, 1]))
            if not mask.any():
                continue
            return rect, mask


def _crop_statistics(draws, width, height, boxes):
    """Per draw: (kept whole, area fraction, aspect h/w, boxes kept, max IoU with a box)."""
    rows = []
    for d in draws:
        if d is None:
            rows.append((1.0, 1.0, height / width, len(boxes), 1.0))
            continue
        (x1, y1, x2, y2), mask = d
        rect = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64)
        iou = float(box_iou(rect, torch.as_tensor(boxes, dtype=torch.float64)).max())
        rows.append((0.0, (x2 - x1) * (y2 - y1) / (width * height), (y2 - y1) / (x2 - x1), int(np.asarray(mask).sum()), iou))
    return np.array(rows)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def test_original_crop_rule_draws_the_original_codes_distribution():
    """sample_crop(rule="original") against an independent, plain implementation of the
    original code: the same distributions of crop area, aspect, boxes kept and IoU (and of
    keeping the whole image); the paper rule, which enforces the minimum IoU, differs."""
    width, height, n = 500, 375, 3000
    boxes = np.array([[40.0, 50.0, 160.0, 200.0], [300.0, 30.0, 360.0, 90.0], [200.0, 250.0, 480.0, 360.0]])
    rng = np.random.RandomState(0)  # the original's `from numpy import random`
    reference = _crop_statistics([_original_random_sample_crop(rng, width, height, boxes) for _ in range(n)],
                                 width, height, boxes)
    gen = torch.Generator().manual_seed(0)

    def ours(rule):
        def draw():
            return torch.rand(1 + 4 * CROP_TRIALS, generator=gen, dtype=torch.float64)
        return _crop_statistics([sample_crop(height, width, torch.as_tensor(boxes), draw(), rule, draw)
                                 for _ in range(n)], width, height, boxes)

    original, paper = ours("original"), ours("paper")
    # two-sample KS at n = m = 3,000: 0.05 is the 0.1 % critical value
    critical = 1.95 * (2 / n) ** 0.5
    for column, name in enumerate(("kept whole", "area", "aspect", "boxes kept", "max IoU")):
        assert _ks(original[:, column], reference[:, column]) < critical, name
    assert abs(original[:, 0].mean() - 1 / 6) < 0.025  # the keep option, drawn once in six
    assert max(_ks(paper[:, c], reference[:, c]) for c in range(5)) > 2 * critical


def test_original_crop_rule_never_rejects_a_patch_for_its_iou():
    """With every trial's patch containing a box centre, the first trial is taken whatever
    its IoU (the original's test cannot reject); the paper rule skips low-IoU patches."""
    boxes = torch.tensor([[90.0, 90.0, 110.0, 110.0]])  # a small box at the centre of 200x200
    u = torch.full((1 + 4 * CROP_TRIALS,), 0.5, dtype=torch.float64)
    u[0] = 0.99  # the last mode: no constraint (original) / any patch (paper)
    window, keep = sample_crop(200, 200, boxes, u, "original")
    assert bool(keep.all())
    u[0] = 4.5 / 6  # original: min IoU 0.9, never enforced
    window, keep = sample_crop(200, 200, boxes, u, "original")
    iou = float(box_iou(torch.tensor([window], dtype=torch.float32), boxes).max())
    assert iou < 0.9 and bool(keep.all())
    u[0] = 5.5 / 7  # paper: min IoU 0.9 enforced, no trial reaches it: the image is kept
    assert sample_crop(200, 200, boxes, u, "paper") is None


def test_crop_rule_is_validated_and_changes_the_run_id():
    from ssdstudy.config import build_config
    from ssdstudy.errors import ConfigError

    assert AugmentConfig().crop_rule == "original"
    assert AugmentConfig.from_dict({"crop_rule": "paper"}).crop_rule == "paper"
    with pytest.raises(ConfigError, match="crop_rule"):
        AugmentConfig.from_dict({"crop_rule": "caffe"})
    with pytest.raises(ConfigError, match="run.yaml.*augment.crop_rule"):
        build_config(("run.yaml", {"augment": {"crop_rule": "caffe"}}))
    assert build_config(("a", {})).run_id != build_config(("b", {"augment": {"crop_rule": "paper"}})).run_id
