"""Default boxes: the original configuration, by hand, box for box."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssdstudy.model import build_model, count_priors, generate_priors
from ssdstudy.model.priors import MOBILENET_V1_PRIORS, VGG16_PRIORS

# (feature-map size, step, min size, max size, aspect ratios) at 300 px, written out
# from the original code base's vgg_ssd_config.py / mobilenetv1_ssd_config.py.
VGG16_TABLE = [
    (38, 8, 30, 60, [2]),
    (19, 16, 60, 111, [2, 3]),
    (10, 32, 111, 162, [2, 3]),
    (5, 64, 162, 213, [2, 3]),
    (3, 100, 213, 264, [2]),
    (1, 300, 264, 315, [2]),
]
MOBILENET_TABLE = [
    (19, 16, 60, 105, [2, 3]),
    (10, 32, 105, 150, [2, 3]),
    (5, 64, 150, 195, [2, 3]),
    (3, 100, 195, 240, [2, 3]),
    (2, 150, 240, 285, [2, 3]),
    (1, 300, 285, 330, [2, 3]),
]


def hand_priors(table, image_size=300):
    """The original's recipe, in plain loops: per map, per cell (row, column), per box."""
    boxes = []
    for fmap, step, smin, smax, ratios in table:
        cells = image_size / step
        for row, col in itertools.product(range(fmap), repeat=2):
            cx, cy = (col + 0.5) / cells, (row + 0.5) / cells
            small = smin / image_size
            boxes.append([cx, cy, small, small])
            big = math.sqrt(smin * smax) / image_size
            boxes.append([cx, cy, big, big])
            for r in ratios:
                s = math.sqrt(r)
                boxes.append([cx, cy, small * s, small / s])
                boxes.append([cx, cy, small / s, small * s])
    return torch.tensor(boxes, dtype=torch.float32).clamp(0.0, 1.0)


def test_vgg16_priors_equal_the_original_configuration():
    expected = hand_priors(VGG16_TABLE)
    assert expected.shape == (8732, 4)
    got = generate_priors(VGG16_PRIORS)
    assert torch.equal(got, expected)
    assert count_priors(VGG16_PRIORS) == 8732


def test_mobilenet_priors_equal_the_original_configuration():
    expected = hand_priors(MOBILENET_TABLE)
    assert expected.shape == (3000, 4)
    assert torch.equal(generate_priors(MOBILENET_V1_PRIORS), expected)
    assert count_priors(MOBILENET_V1_PRIORS) == 3000


def test_model_priors_at_300_are_the_original_ones():
    model = build_model("mobilenet_v1", 21)
    assert model.priors.dtype == torch.float32
    assert torch.equal(model.priors, hand_priors(MOBILENET_TABLE))
    assert "priors" not in model.state_dict()  # derived from the configuration, not saved
    assert dict(model.named_buffers())["priors"] is model.priors


def test_a_few_boxes_by_value():
    p = generate_priors(VGG16_PRIORS)
    # First cell of conv4_3: centre 0.5 / 37.5, small square 30 px, big sqrt(30*60) px.
    assert p[0].tolist() == pytest.approx([0.5 / 37.5, 0.5 / 37.5, 0.1, 0.1])
    assert p[1].tolist() == pytest.approx([0.5 / 37.5, 0.5 / 37.5, math.sqrt(1800) / 300, math.sqrt(1800) / 300])
    assert p[2].tolist() == pytest.approx([0.5 / 37.5, 0.5 / 37.5, 0.1 * math.sqrt(2), 0.1 / math.sqrt(2)])
    # Second cell of the first row: x moves, y does not.
    assert p[4, :2].tolist() == pytest.approx([1.5 / 37.5, 0.5 / 37.5])
    # The last map: one cell in the middle, its big square clamped to 1.
    last = p[-4:]
    assert torch.allclose(last[:, :2], torch.full((4, 2), 0.5))
    assert last[1, 2] == pytest.approx(math.sqrt(264 * 315) / 300)
    assert last[2, 2] == 1.0  # 264 * sqrt 2 / 300 > 1, clamped


@pytest.mark.parametrize(
    ("backbone", "size", "maps", "count"),
    [
        ("vgg16", 160, (20, 10, 5, 3, 1, 1), 2412),
        ("vgg16", 192, (24, 12, 6, 3, 1, 1), 3446),
        ("vgg16", 224, (28, 14, 7, 4, 2, 2), 4734),
        ("vgg16", 256, (32, 16, 8, 4, 2, 2), 6144),
        ("mobilenet_v1", 160, (10, 5, 3, 2, 1, 1), 840),
        ("mobilenet_v1", 192, (12, 6, 3, 2, 1, 1), 1170),
        ("mobilenet_v1", 224, (14, 7, 4, 2, 1, 1), 1602),
        ("mobilenet_v1", 256, (16, 8, 4, 2, 1, 1), 2052),
    ],
)
def test_smaller_inputs_follow_the_measured_maps(backbone, size, maps, count):
    config = VGG16_PRIORS if backbone == "vgg16" else MOBILENET_V1_PRIORS
    per_cell = list(config.boxes_per_cell)
    assert sum(f * f * b for f, b in zip(maps, per_cell, strict=True)) == count
    priors = generate_priors(config, maps)
    assert priors.shape == (count, 4)
    assert bool(((priors >= 0) & (priors <= 1)).all())
    # Box sizes relative to the input do not change with the input size.
    assert torch.equal(priors[0, 2:], generate_priors(config)[0, 2:])
    # Every map tiles the whole input as the original's map does at 300 px: the first
    # and last centres add up to f * step / 300 there (1.0 when the grid fits exactly;
    # 38 cells of 8 px cover 304 px), whatever the number of cells here.
    unclamped = generate_priors(config, maps, clamp=False)
    start = 0
    for spec, f, b in zip(config.specs, maps, per_cell, strict=True):
        block = unclamped[start : start + f * f * b]
        assert (block[0, 0] + block[-1, 0]).item() == pytest.approx(spec.feature_map_size * spec.step / 300)
        start += f * f * b


def test_scaled_grid_by_hand_at_160():
    """Map k with f' cells tiles ``(300 / step) * f' / f`` grid cells across the input."""
    priors = generate_priors(VGG16_PRIORS, (20, 10, 5, 3, 1, 1))
    cells = (300 / 8) * 20 / 38
    xs = priors[: 20 * 4 : 4, 0]  # the first row of conv4_3, small squares
    expected = torch.tensor([(i + 0.5) / cells for i in range(20)], dtype=torch.float32)
    assert torch.allclose(xs, expected)


def test_wrong_number_of_maps_is_an_error():
    with pytest.raises(ValueError, match="6 prior specs"):
        generate_priors(VGG16_PRIORS, (38, 19))


def test_the_paper_scale_rule_gives_the_original_mobilenet_boxes():
    from ssdstudy.model.priors import MOBILENET_V1_PRIORS, scaled_priors

    assert scaled_priors(MOBILENET_V1_PRIORS, 0.2, 0.95, (2, 3)) == MOBILENET_V1_PRIORS
    smaller = scaled_priors(MOBILENET_V1_PRIORS, 0.1, 0.9, (2,))
    assert [s.min_size for s in smaller.specs] == [30.0, 78.0, 126.0, 174.0, 222.0, 270.0]
    assert smaller.specs[-1].max_size == 318.0 and smaller.boxes_per_cell == (4,) * 6
    assert [s.feature_map_size for s in smaller.specs] == [19, 10, 5, 3, 2, 1]
