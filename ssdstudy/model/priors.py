"""Default boxes ("priors") of SSD, laid out exactly as the original code base does.

One :class:`PriorSpec` per feature map, at the reference input size (300):

* ``feature_map_size`` f and ``step`` s (the original's "shrinkage"): the cell
  centres are ``(i + 0.5) / (300 / s)`` (so 38 cells of step 8 tile 304 px, not
  300: the original configuration's own rounding, kept for identical boxes);
* ``min_size`` and ``max_size`` in pixels: per cell a small square of side
  ``min``, a big square of side ``sqrt(min * max)``, then for every aspect ratio r
  the boxes ``(min * sqrt r, min / sqrt r)`` and ``(min / sqrt r, min * sqrt r)``.

Order: map by map, cells row by row (y outer, x inner), boxes per cell in the order
above; the heads' outputs (``permute(0, 2, 3, 1)`` then a reshape per map) follow
the same order, so prior k and prediction k belong together. Boxes are centre form
``(cx, cy, w, h)`` relative to the input, clamped to [0, 1].

Other input sizes. The maps then have other sizes f' (measured by a dry pass of
the network). Box sizes keep their size relative to the input (``min / 300``);
the tiling keeps the original's proportion between map and grid: the grid of map
k has ``(300 / s) * f' / f`` cells across the image, which is ``300 / s`` at the
reference size (identical to the original) and makes an f'-cell map cover the whole
input at any size. (Scaling the step with the input size instead would leave the
grid ``(i + 0.5) * s / 300`` unchanged and, with fewer cells, cover only part of
the image: at 160 px VGG16's 20x20 conv4_3 map would reach x = 0.52 only.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PriorSpec:
    """Default boxes of one feature map at the reference input size (pixels)."""

    feature_map_size: int
    step: float
    min_size: float
    max_size: float
    aspect_ratios: tuple[float, ...]

    @property
    def boxes_per_cell(self) -> int:
        """Two squares plus two boxes per aspect ratio."""
        return 2 + 2 * len(self.aspect_ratios)


@dataclass(frozen=True)
class PriorConfig:
    """The default boxes of every head, at ``image_size`` (the reference size)."""

    specs: tuple[PriorSpec, ...]
    image_size: int = 300

    @property
    def boxes_per_cell(self) -> tuple[int, ...]:
        return tuple(spec.boxes_per_cell for spec in self.specs)

    @property
    def feature_map_sizes(self) -> tuple[int, ...]:
        return tuple(spec.feature_map_size for spec in self.specs)


def count_priors(config: PriorConfig, feature_map_sizes: Sequence[int] | None = None) -> int:
    """Number of default boxes: sum over maps of ``f * f * boxes_per_cell``."""
    sizes = config.feature_map_sizes if feature_map_sizes is None else tuple(feature_map_sizes)
    return sum(f * f * b for f, b in zip(sizes, config.boxes_per_cell, strict=True))


def generate_priors(
    config: PriorConfig,
    feature_map_sizes: Sequence[int] | None = None,
    *,
    clamp: bool = True,
) -> Tensor:
    """The default boxes of ``config`` for maps of the given sizes.

    Args:
        config: the per-map specification at the reference size.
        feature_map_sizes: the maps' actual sizes (square maps); ``None`` uses the
            reference sizes, which gives the original's boxes exactly.
        clamp: clamp every coordinate to [0, 1], as the original does.

    Returns:
        ``(P, 4)`` float32 centre-form boxes ``(cx, cy, w, h)`` relative to the input,
        ``P = sum f_k**2 * boxes_per_cell_k``.
    """
    sizes = config.feature_map_sizes if feature_map_sizes is None else tuple(int(f) for f in feature_map_sizes)
    if len(sizes) != len(config.specs):
        raise ValueError(f"{len(sizes)} feature-map sizes for {len(config.specs)} prior specs")
    ref = config.image_size
    parts = []
    for spec, f in zip(config.specs, sizes, strict=True):
        if f < 1:
            raise ValueError(f"feature map of size {f} for prior spec {spec}")
        # Cells across the input; exactly ref / step at the reference map size.
        cells = (ref / spec.step) * (f / spec.feature_map_size)
        centres = (torch.arange(f, dtype=torch.float64) + 0.5) / cells
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # rows (y) outer
        small = spec.min_size / ref
        big = math.sqrt(spec.max_size * spec.min_size) / ref
        shapes = [(small, small), (big, big)]
        for ratio in spec.aspect_ratios:
            r = math.sqrt(ratio)
            shapes += [(small * r, small / r), (small / r, small * r)]
        wh = torch.tensor(shapes, dtype=torch.float64)  # (B, 2)
        n_cells, n_boxes = f * f, len(shapes)
        centre = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # (f*f, 2)
        boxes = torch.cat(
            [centre[:, None, :].expand(n_cells, n_boxes, 2), wh[None].expand(n_cells, n_boxes, 2)], dim=2
        )
        parts.append(boxes.reshape(-1, 4))
    priors = torch.cat(parts).to(torch.float32)
    if clamp:
        priors.clamp_(0.0, 1.0)
    return priors


def scaled_priors(
    base: PriorConfig, min_scale: float, max_scale: float, aspect_ratios: Sequence[float]
) -> PriorConfig:
    """``base``'s maps and steps with default boxes by the SSD paper's scale rule.

    Map k of m (k = 0 .. m - 1) gets the scale ``s_k = min_scale + (max_scale -
    min_scale) * k / (m - 1)``: its small square has side ``s_k * S`` and its big square
    ``sqrt(s_k * s_(k+1)) * S``, with ``s_m`` continuing the progression past the last
    map (the original code base's MobileNetV1 configuration is this rule with 0.2, 0.95
    and ratios 2 and 3: 60, 105, ..., 285 px, its last big square from 330); every map
    gets the same ``aspect_ratios``. Sides are rounded to 1e-6 px.
    """
    m = len(base.specs)
    if m < 2:
        raise ValueError("the scale rule needs at least two maps")
    ref = base.image_size
    scales = [min_scale + (max_scale - min_scale) * k / (m - 1) for k in range(m + 1)]
    specs = tuple(
        PriorSpec(spec.feature_map_size, spec.step, round(scales[k] * ref, 6), round(scales[k + 1] * ref, 6),
                  tuple(float(r) for r in aspect_ratios))
        for k, spec in enumerate(base.specs)
    )
    return PriorConfig(specs=specs, image_size=ref)


#: VGG16-SSD300 of the original code base (``vgg_ssd_config.py``): 8,732 boxes.
VGG16_PRIORS = PriorConfig(
    specs=(
        PriorSpec(38, 8, 30, 60, (2,)),
        PriorSpec(19, 16, 60, 111, (2, 3)),
        PriorSpec(10, 32, 111, 162, (2, 3)),
        PriorSpec(5, 64, 162, 213, (2, 3)),
        PriorSpec(3, 100, 213, 264, (2,)),
        PriorSpec(1, 300, 264, 315, (2,)),
    ),
    image_size=300,
)

#: MobileNetV1-SSD300 of the original code base (``mobilenetv1_ssd_config.py``): 3,000 boxes.
MOBILENET_V1_PRIORS = PriorConfig(
    specs=(
        PriorSpec(19, 16, 60, 105, (2, 3)),
        PriorSpec(10, 32, 105, 150, (2, 3)),
        PriorSpec(5, 64, 150, 195, (2, 3)),
        PriorSpec(3, 100, 195, 240, (2, 3)),
        PriorSpec(2, 150, 240, 285, (2, 3)),
        PriorSpec(1, 300, 285, 330, (2, 3)),
    ),
    image_size=300,
)
