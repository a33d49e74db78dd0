"""The generated default dataset: textured shapes on cluttered backgrounds, VOC layout.

``generate(out_dir, train=2000, test=500, seed=0)`` writes::

    OUT_DIR/SYNTH/classes.txt                 the 8 class names, one per line
    OUT_DIR/SYNTH/synth.json                  the generator's parameters (seed, counts, version)
    OUT_DIR/SYNTH/ImageSets/Main/trainval.txt ids trainval_000000 ...
    OUT_DIR/SYNTH/ImageSets/Main/test.txt     ids test_000000 ...
    OUT_DIR/SYNTH/Annotations/<id>.xml        VOC XML (1-based inclusive integer boxes)
    OUT_DIR/SYNTH/JPEGImages/<id>.jpg         JPEG, quality 90

so that ``load_split(OUT_DIR, "trainval")`` reads it like VOC.

The task. Eight classes, each a shape with its own texture (circle/solid,
triangle/stripes, square/checker, star/dots, ring/gradient, cross/grid,
hexagon/speckle, crescent/bordered); colours, rotation, a stretch along the shape's
own axis and shading vary per object. Backgrounds are smooth colour fields with
mid-frequency noise, soft blobs and lines, and sharp distractors that are not
classes (lumpy blobs, sticks, ring-like arcs, L-shapes) wearing the same textures,
some of them in front of objects. Objects occlude each other and are cut by the image
border. Image sizes vary like VOC's (widths 300-500, heights 250-500).

Boxes are VOC-like: the tight box of the object's visible pixels, clipped to the
image. ``truncated`` is set when more than 10 % of the object lies outside the image;
``difficult`` when more than half of it lies outside, when more than half of its
in-image part is covered, or when fewer than 40 pixels remain visible.

Size bins. About 80 % of the images pick a target size bin (``ssdstudy.data.bins``)
and draw all their objects in it (1-6 small objects, down to a single object for the
40-100 % bins); an image is redrawn (same random stream) until its objects land in the
bin, so every bin holds about 11 % of the images of each split. The other 20 % mix
sizes freely (they train the detector but have no bin).

Determinism. Image ``i`` of a split draws from ``numpy.random.default_rng((seed,
split, i))``, so a file depends only on the seed, its split and its index, not on the
number of images or of worker processes. JPEGs are encoded by OpenCV at quality 90.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing as mp
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from ssdstudy.data.bins import SIZE_BINS, image_bin
from ssdstudy.data.voc import write_annotation
from ssdstudy.errors import DataError

#: Class names of the generated dataset, in label order (label = index + 1).
SYNTH_CLASSES: tuple[str, ...] = (
    "circle", "triangle", "square", "star", "ring", "cross", "hexagon", "crescent",
)  # fmt: skip

#: The texture each class wears.
CLASS_TEXTURES: dict[str, str] = {
    "circle": "solid",
    "triangle": "stripes",
    "square": "checker",
    "star": "dots",
    "ring": "gradient",
    "cross": "grid",
    "hexagon": "speckle",
    "crescent": "bordered",
}
_DISTRACTOR_TEXTURES = (*CLASS_TEXTURES.values(), "noise", "waves")

#: The name of the year folder the generator writes.
YEAR_DIR = "SYNTH"
#: Bumped whenever the generator's output changes for a given seed.
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
SPLIT_CODES = {"trainval": 0, "test": 1}

_BIN_RANGES = (
    (0.004, 0.05),
    (0.05, 0.10),
    (0.10, 0.20),
    (0.20, 0.40),
    (0.40, 0.60),
    (0.60, 0.80),
    (0.80, 1.0),
)
_MAX_OBJECTS = (6, 5, 4, 2, 1, 1, 1)
_P_BINNED = 0.8
_ATTEMPTS = 12


# --------------------------------------------------------------------------- shapes

Contours = tuple[
    list[np.ndarray], list[np.ndarray]
]  # (outer polygons, hole polygons), each (n, 2)


def _circle(
    n: int = 64, r: float = 1.0, cx: float = 0.0, cy: float = 0.0
) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _crescent() -> np.ndarray:
    # Unit circle minus a circle of radius rr centred at (d, 0).
    rr, d = 0.82, 0.42
    x = (1 + d * d - rr * rr) / (2 * d)
    y = math.sqrt(1 - x * x)
    a0 = math.atan2(y, x)
    outer = np.linspace(a0, 2 * np.pi - a0, 48)
    b0 = math.atan2(y, x - d)
    inner = np.linspace(2 * np.pi - b0, b0, 40)
    pts_outer = np.stack([np.cos(outer), np.sin(outer)], axis=1)
    pts_inner = np.stack([d + rr * np.cos(inner), rr * np.sin(inner)], axis=1)
    return np.concatenate([pts_outer, pts_inner])


@cache
def class_contours(name: str) -> Contours:
    """The unit shape of a class (extent about [-1, 1]^2), as polygons."""
    if name == "circle":
        return [_circle()], []
    if name == "triangle":
        return [_regular(3)], []
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)], []
    if name == "star":
        outer, inner = _regular(5), _regular(5, 0.42, -np.pi / 2 + np.pi / 5)
        return [np.stack([outer, inner], axis=1).reshape(-1, 2)], []
    if name == "ring":
        return [_circle()], [_circle(r=0.58)]
    if name == "cross":
        a = 0.33
        pts = [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
        return [np.array(pts, dtype=float)], []
    if name == "hexagon":
        return [_regular(6, phase=0.0)], []
    if name == "crescent":
        return [_crescent()], []
    raise KeyError(name)


def _distractor_contours(rng: np.random.Generator) -> Contours:
    """A shape that is no class: a lumpy blob, a stick, an arc or an L."""
    kind = rng.choice(["blob", "stick", "arc", "ell"], p=[0.4, 0.2, 0.25, 0.15])
    if kind == "blob":
        # Smooth and lumpy: no corners (triangle, square, ...), clearly not round.
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = np.ones_like(t)
        for k in (2, 3, 4, 5):
            r += rng.uniform(0.08, 0.25) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        r = np.clip(r, 0.3, None)
        return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)], []
    if kind == "stick":
        h = rng.uniform(0.08, 0.2)
        return [np.array([[-1, -h], [1, -h], [1, h], [-1, h]])], []
    if kind == "arc":
        span = rng.uniform(0.4, 1.1) * np.pi
        width = rng.uniform(0.12, 0.25)
        t = np.linspace(0, span, 40)
        outer = np.stack([np.cos(t), np.sin(t)], axis=1)
        inner = (1 - width) * outer[::-1]
        return [np.concatenate([outer, inner])], []
    a = rng.uniform(0.25, 0.45)
    pts = [
        (-1, -1),
        (-1 + 2 * a, -1),
        (-1 + 2 * a, 1 - 2 * a),
        (1, 1 - 2 * a),
        (1, 1),
        (-1, 1),
    ]
    return [np.array(pts, dtype=float)], []


def _transform(contours: Contours, theta: float, stretch: float) -> Contours:
    c, s = math.cos(theta), math.sin(theta)
    m = np.array([[stretch * c, stretch * s], [-s, c]])  # stretch along x, then rotate

    def apply(polys: list[np.ndarray]) -> list[np.ndarray]:
        return [p @ m for p in polys]

    return apply(contours[0]), apply(contours[1])


def _bounds(contours: Contours) -> tuple[float, float, float, float]:
    pts = np.concatenate(contours[0])
    return (
        float(pts[:, 0].min()),
        float(pts[:, 1].min()),
        float(pts[:, 0].max()),
        float(pts[:, 1].max()),
    )


def _render(
    contours: Contours, scale: float, ox: float, oy: float
) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage (h, w) float32 in [0, 1] of the shape scaled by ``scale``
    and moved to (ox, oy), on a local canvas whose top-left pixel is (x0, y0)."""
    x1, y1, x2, y2 = _bounds(contours)
    x0, y0 = math.floor(ox + scale * x1) - 1, math.floor(oy + scale * y1) - 1
    w = math.ceil(ox + scale * x2) + 2 - x0
    h = math.ceil(oy + scale * y2) + 2 - y0
    canvas = np.zeros((h, w), np.uint8)
    shift = 3

    def pts(polys: list[np.ndarray]) -> list[np.ndarray]:
        # Pixel (i, j) covers [j, j+1) x [i, i+1); cv2 samples pixel centres.
        return [
            np.round(
                ((p * scale) + (ox - x0 - 0.5, oy - y0 - 0.5)) * (1 << shift)
            ).astype(np.int32)
            for p in polys
        ]

    cv2.fillPoly(canvas, pts(contours[0]), 255, lineType=cv2.LINE_AA, shift=shift)
    if contours[1]:
        cv2.fillPoly(canvas, pts(contours[1]), 0, lineType=cv2.LINE_AA, shift=shift)
    return canvas.astype(np.float32) / 255.0, x0, y0


# --------------------------------------------------------------------------- textures


def _colour(
    rng: np.random.Generator, s_range=(0.35, 1.0), v_range=(0.3, 1.0)
) -> tuple[np.ndarray, float]:
    h = float(rng.uniform())
    rgb = colorsys.hsv_to_rgb(
        h, float(rng.uniform(*s_range)), float(rng.uniform(*v_range))
    )
    return np.array(rgb, np.float32) * 255.0, h


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c1, h = _colour(rng)
    if rng.uniform() < 0.6:
        h2 = (h + rng.uniform(0.3, 0.7)) % 1.0
        c2 = (
            np.array(
                colorsys.hsv_to_rgb(h2, rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)),
                np.float32,
            )
            * 255
        )
    else:  # same hue, far in brightness
        v = float(c1.max()) / 255.0
        v2 = v - rng.uniform(0.35, 0.6) if v > 0.6 else v + rng.uniform(0.35, 0.6)
        c2 = np.clip(c1 * (max(v2, 0.05) / max(v, 1e-3)), 0, 255).astype(np.float32)
    return c1, c2


def _texture(
    kind: str,
    alpha: np.ndarray,
    x0: int,
    y0: int,
    cx: float,
    cy: float,
    theta: float,
    radius: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Colours (h, w, 3) float32 of a texture in the object's own rotated frame."""
    h, w = alpha.shape
    c1, c2 = _colour_pair(rng)
    period = float(np.clip(radius / rng.uniform(2.5, 4.5), 2.5, 14.0))
    xs = (np.arange(w, dtype=np.float32) + (x0 + 0.5 - cx))[None, :]
    ys = (np.arange(h, dtype=np.float32) + (y0 + 0.5 - cy))[:, None]
    c, s = math.cos(theta), math.sin(theta)
    u = xs * c + ys * s
    v = ys * c - xs * s
    if kind == "solid":
        t = np.zeros((h, w), np.float32)
    elif kind == "stripes":
        t = (np.floor(v / period) % 2).astype(np.float32)
    elif kind == "checker":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "dots":
        step = 1.7 * period
        du, dv = u / step - np.round(u / step), v / step - np.round(v / step)
        t = (du * du + dv * dv < 0.09).astype(np.float32)
    elif kind == "gradient":
        t = np.clip((u / max(radius, 1.0) + 1) / 2, 0, 1).astype(np.float32)
    elif kind == "grid":
        t = (((u / period) % 1 < 0.28) | ((v / period) % 1 < 0.28)).astype(np.float32)
    elif kind == "speckle":
        cell = max(period / 2.0, 1.5)
        gh, gw = max(int(h / cell), 2), max(int(w / cell), 2)
        field = rng.uniform(0, 1, (gh, gw)).astype(np.float32)
        t = (cv2.resize(field, (w, h), interpolation=cv2.INTER_NEAREST) > 0.5).astype(
            np.float32
        )
    elif kind == "bordered":
        size = max(2, round(radius * rng.uniform(0.15, 0.25)))
        inside = cv2.erode(
            (alpha >= 0.5).astype(np.uint8), np.ones((size, size), np.uint8)
        )
        t = 1.0 - inside.astype(np.float32)
    elif kind == "noise":
        t = np.clip(rng.normal(0.5, 0.3, (h, w)), 0, 1).astype(np.float32)
    elif kind == "waves":
        t = (
            0.5
            + 0.5
            * np.sin(
                2 * np.pi * v / (2 * period) + 2 * np.sin(2 * np.pi * u / (5 * period))
            )
        ).astype(np.float32)
    else:
        raise KeyError(kind)
    t = np.broadcast_to(t, (h, w))[..., None]
    colours = c1 + t * (c2 - c1)
    # Soft directional lighting.
    phi = rng.uniform(0, 2 * np.pi)
    k = np.float32(rng.uniform(0.0, 0.25) / max(radius, 1.0))
    light = 1.0 + (
        xs * np.float32(k * math.cos(phi)) + ys * np.float32(k * math.sin(phi))
    )
    colours *= light[..., None]
    return np.clip(colours, 0, 255, out=colours)


# --------------------------------------------------------------------------- images


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.uniform() < 0.7:  # landscape, mostly 500 wide
        width = 500 if rng.uniform() < 0.6 else int(rng.integers(300, 501))
        height = int(np.clip(round(width / rng.uniform(1.0, 1.6)), 250, 500))
    else:  # portrait
        height = 500 if rng.uniform() < 0.6 else int(rng.integers(375, 501))
        width = int(np.clip(round(height / rng.uniform(1.1, 1.6)), 300, 500))
    return width, height


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A cluttered background, float32 (H, W, 3): a smooth colour field, soft blobs,
    mid-frequency noise and lines, slightly blurred."""
    # The smooth part is drawn at a quarter of the size and scaled up (it is blurred anyway).
    sw, sh = max(width // 4, 8), max(height // 4, 8)
    gh, gw = (int(v) for v in rng.integers(2, 6, size=2))
    small = cv2.resize(
        rng.uniform(0, 255, (gh, gw, 3)).astype(np.float32),
        (sw, sh),
        interpolation=cv2.INTER_CUBIC,
    )
    small = np.clip(small, 0, 255).astype(np.uint8)
    overlay = small.copy()
    for _ in range(int(rng.integers(2, 10))):
        centre = (int(rng.integers(0, sw)), int(rng.integers(0, sh)))
        axes = (
            int(rng.integers(2, max(sw // 3, 3))),
            int(rng.integers(2, max(sh // 3, 3))),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(
            overlay,
            centre,
            axes,
            float(rng.uniform(0, 180)),
            0,
            360,
            colour,
            -1,
            cv2.LINE_AA,
        )
    small = cv2.addWeighted(small, 0.45, overlay, 0.55, 0)
    small = cv2.GaussianBlur(small, (0, 0), float(rng.uniform(0.75, 1.5)))
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).astype(
        np.float32
    )
    cell = int(rng.integers(6, 24))
    mid = rng.normal(0, 1, (max(height // cell, 2), max(width // cell, 2), 3)).astype(
        np.float32
    )
    image += cv2.resize(
        mid, (width, height), interpolation=cv2.INTER_LINEAR
    ) * rng.uniform(5, 25)
    image = np.clip(image, 0, 255, out=image).astype(np.uint8)
    # Lines: twigs, wires, edges.
    for _ in range(int(rng.integers(4, 25))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(image, p1, p2, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.8, 2.0)))
    return image.astype(np.float32)


@dataclass
class _Object:
    label: int
    visible: np.ndarray  # bool (H, W)
    full_area: int
    in_area: int


@dataclass
class SynthImage:
    """One generated image: BGR uint8 (H, W, 3) pixels and its annotation."""

    image: np.ndarray
    boxes: np.ndarray  # float32 (K, 4) XYXY, 0-based, integer-valued
    labels: np.ndarray  # int64 (K,), 0-based index into SYNTH_CLASSES
    difficult: np.ndarray
    truncated: np.ndarray
    target_bin: int | None


class _Canvas:
    def __init__(self, image: np.ndarray):
        self.image = image
        self.height, self.width = image.shape[:2]
        self.objects: list[_Object] = []

    def place(
        self,
        rng: np.random.Generator,
        contours: Contours,
        texture: str,
        ratio: float,
        *,
        label: int | None,
        p_truncate: float,
        large: bool,
        keep_visible: float,
        tries: int = 15,
    ) -> bool:
        """Try to draw a shape whose visible box covers ``ratio`` of the image."""
        W, H = self.width, self.height
        for _ in range(tries):
            theta = float(rng.uniform(0, 2 * np.pi))
            stretch = (
                float(rng.uniform(0.75, 1.33))
                if label is not None
                else float(rng.uniform(0.6, 1.6))
            )
            shape = _transform(contours, theta, stretch)
            bx1, by1, bx2, by2 = _bounds(shape)
            w1, h1 = bx2 - bx1, by2 - by1
            tx = ty = 0.0
            side_x = side_y = 0
            if rng.uniform() < p_truncate:
                lo, hi = (0.05, 0.3) if large else (0.1, 0.6)
                axis = rng.choice(["x", "y", "xy"], p=[0.45, 0.45, 0.1])
                if "x" in axis:
                    tx, side_x = float(rng.uniform(lo, hi)), int(rng.choice([-1, 1]))
                if "y" in axis:
                    ty, side_y = float(rng.uniform(lo, hi)), int(rng.choice([-1, 1]))
            scale = math.sqrt(ratio * W * H / (w1 * h1 * (1 - tx) * (1 - ty)))
            fw, fh = scale * w1, scale * h1
            if fw * (1 - tx) > W or fh * (1 - ty) > H:
                continue
            near_x = near_y = None
            if self.objects and rng.uniform() < 0.35:
                # Near an existing object, to make partial occlusions.
                other = self.objects[int(rng.integers(len(self.objects)))].visible
                cols, rows = (
                    np.flatnonzero(other.any(axis=0)),
                    np.flatnonzero(other.any(axis=1)),
                )
                if cols.size:
                    near_x, near_y = (
                        (int(cols[0]), int(cols[-1]) + 1),
                        (int(rows[0]), int(rows[-1]) + 1),
                    )
            left = self._position(rng, fw, W, tx, side_x, near_x)
            top = self._position(rng, fh, H, ty, side_y, near_y)
            ox, oy = left - scale * bx1, top - scale * by1
            alpha, x0, y0 = _render(shape, scale, ox, oy)
            solid = alpha >= 0.5
            full_area = int(solid.sum())
            ix0, iy0 = max(x0, 0), max(y0, 0)
            ix1, iy1 = min(x0 + alpha.shape[1], W), min(y0 + alpha.shape[0], H)
            if full_area < 20 or ix1 <= ix0 or iy1 <= iy0:
                continue
            mask = np.zeros((H, W), bool)
            mask[iy0:iy1, ix0:ix1] = solid[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            in_area = int(mask.sum())
            if in_area < 0.35 * full_area:
                continue
            if any(
                (obj.visible & ~mask).sum() < keep_visible * obj.in_area
                for obj in self.objects
            ):
                continue
            cx, cy = left + fw / 2, top + fh / 2
            colours = _texture(
                texture, alpha, x0, y0, cx, cy, theta, 0.5 * math.sqrt(fw * fh), rng
            )
            a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None]
            region = self.image[iy0:iy1, ix0:ix1]
            region *= 1 - a
            region += a * colours[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            for obj in self.objects:
                obj.visible &= ~mask
            if label is not None:
                self.objects.append(_Object(label, mask, full_area, in_area))
            return True
        return False

    @staticmethod
    def _position(
        rng: np.random.Generator,
        size: float,
        limit: int,
        cut: float,
        side: int,
        near: tuple[int, int] | None,
    ) -> float:
        """The low edge of a full box of ``size`` along an axis of length ``limit``:
        cut by the border on ``side`` (-1 low, +1 high) by ``cut`` of its size, or
        inside, centred near the pixel range ``near`` when given."""
        if side < 0:
            return -cut * size
        if side > 0:
            return limit - (1 - cut) * size
        room = max(limit - size, 0.0)
        if near is not None:
            centre = rng.uniform(near[0], near[1])
            return float(np.clip(centre - size / 2 + rng.normal(0, size / 3), 0, room))
        return float(rng.uniform(0, room)) if room > 0 else 0.0


def _sample_ratio(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Uniform in side length (sqrt of the area ratio), like object sizes in photos.
    return float(rng.uniform(math.sqrt(lo), math.sqrt(hi)) ** 2)


def _compose(
    rng: np.random.Generator, width: int, height: int, target: int | None
) -> SynthImage | None:
    canvas = _Canvas(_background(rng, width, height))
    if target is None:
        n_objects = int(rng.integers(2, 7))
        ratios = [_sample_ratio(rng, 0.005, 0.45) for _ in range(n_objects)]
    else:
        n_objects = int(rng.integers(1, _MAX_OBJECTS[target] + 1))
        lo, hi = _BIN_RANGES[target]
        ratios = [_sample_ratio(rng, lo, hi) for _ in range(n_objects)]
    large = target is not None and target >= 4
    n_distractors = int(rng.integers(1, 6))
    in_front = rng.uniform(size=n_distractors) < 0.25

    def distractor() -> None:
        canvas.place(
            rng,
            _distractor_contours(rng),
            str(rng.choice(_DISTRACTOR_TEXTURES)),
            _sample_ratio(rng, 0.002, 0.06),
            label=None,
            p_truncate=0.2,
            large=False,
            keep_visible=0.65,
        )

    for _ in range(int((~in_front).sum())):
        distractor()
    for ratio in ratios:
        label = int(rng.integers(len(SYNTH_CLASSES)))
        name = SYNTH_CLASSES[label]
        canvas.place(
            rng,
            class_contours(name),
            CLASS_TEXTURES[name],
            ratio,
            label=label,
            p_truncate=0.2 if large else 0.3,
            large=large,
            keep_visible=0.4,
        )
    for _ in range(int(in_front.sum())):
        distractor()
    if not canvas.objects:
        return None

    boxes, labels, difficult, truncated = [], [], [], []
    for obj in canvas.objects:
        visible_area = int(obj.visible.sum())
        if visible_area == 0:
            return None
        cols = np.flatnonzero(obj.visible.any(axis=0))
        rows = np.flatnonzero(obj.visible.any(axis=1))
        x1, x2, y1, y2 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
        if x2 - x1 < 3 or y2 - y1 < 3:
            return None
        outside = 1.0 - obj.in_area / obj.full_area
        covered = 1.0 - visible_area / obj.in_area
        boxes.append((x1, y1, x2, y2))
        labels.append(obj.label)
        truncated.append(outside > 0.1)
        difficult.append(outside > 0.5 or covered > 0.5 or visible_area < 40)
    difficult_arr = np.array(difficult, bool)
    if difficult_arr.all():
        return None

    # Sensor-like noise, the same on the three channels (cheaper; JPEG keeps little chroma).
    noise = rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(
        rng.uniform(2.0, 8.0)
    )
    noisy = np.add(canvas.image, noise + np.float32(0.5), out=canvas.image)
    return SynthImage(
        image=np.clip(noisy, 0, 255, out=noisy).astype(np.uint8),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
        difficult=difficult_arr,
        truncated=np.array(truncated, bool),
        target_bin=target,
    )


def make_image(seed: int, split: str, index: int) -> SynthImage:
    """Generate image ``index`` of ``split`` for ``seed`` (deterministic)."""
    rng = np.random.default_rng((int(seed), SPLIT_CODES[split], int(index)))
    width, height = _image_size(rng)
    target = int(rng.integers(len(SIZE_BINS))) if rng.uniform() < _P_BINNED else None
    last = None
    for _ in range(_ATTEMPTS):
        result = _compose(rng, width, height, target)
        if result is None:
            continue
        last = result
        if (
            target is None
            or image_bin(result.boxes, width, height, result.difficult) == target
        ):
            return result
    if (
        last is None
    ):  # pragma: no cover - every attempt failed; fall back to a mixed image
        while last is None:
            last = _compose(rng, width, height, None)
    return last


# --------------------------------------------------------------------------- writing


def image_id(split: str, index: int) -> str:
    """The id of image ``index`` of ``split``, e.g. ``trainval_000042``."""
    return f"{split}_{index:06d}"


def _write_one(task: tuple[str, int, str, int]) -> int:
    folder, seed, split, index = task
    folder_path = Path(folder)
    name = image_id(split, index)
    sample = make_image(seed, split, index)
    ok, data = cv2.imencode(
        ".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:  # pragma: no cover
        raise RuntimeError(f"JPEG encoding failed for {name}")
    (folder_path / "JPEGImages" / f"{name}.jpg").write_bytes(data.tobytes())
    height, width = sample.image.shape[:2]
    write_annotation(
        folder_path / "Annotations" / f"{name}.xml",
        filename=f"{name}.jpg",
        width=width,
        height=height,
        boxes=sample.boxes,
        names=[SYNTH_CLASSES[i] for i in sample.labels],
        difficult=sample.difficult,
        truncated=sample.truncated,
        folder=YEAR_DIR,
    )
    return len(sample.labels)


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _params(train: int, test: int, seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "trainval": int(train),
        "test": int(test),
    }


def is_up_to_date(out_dir: str | Path, train: int, test: int, seed: int) -> bool:
    """Whether ``out_dir/SYNTH`` already holds the dataset these arguments generate."""
    return _is_complete(Path(out_dir) / YEAR_DIR, _params(train, test, seed))


def _is_complete(folder: Path, params: dict) -> bool:
    try:
        stored = json.loads((folder / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    if stored.get("params") != params or not stored.get("complete", True):
        return False
    return (
        sum(1 for _ in (folder / "JPEGImages").glob("*.jpg"))
        == params["trainval"] + params["test"]
    )


def generate(
    out_dir: str | Path,
    train: int = 2000,
    test: int = 500,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write the generated dataset under ``out_dir/SYNTH`` and return that folder.

    Args:
        out_dir: dataset root; ``load_split(out_dir, "trainval")`` reads the result.
        train, test: number of images in the ``trainval`` and ``test`` image sets
            (a split of 0 images gets no image set file).
        seed: the seed; the same seed gives the same bytes.
        workers: processes (default ``min(2, cpu count)``; 1 = in this process).
        progress: show a tqdm bar on stderr.
        force: regenerate even when the folder already holds this exact dataset.

    An existing ``SYNTH`` folder written by the generator with other parameters is
    replaced; one not written by the generator raises :class:`DataError`. Worker
    processes are spawned: a script that calls this must guard its entry point with
    ``if __name__ == "__main__":``.
    """
    from tqdm import tqdm

    if train < 0 or test < 0:
        raise ValueError("train and test must be >= 0")
    folder = Path(out_dir) / YEAR_DIR
    params = _params(train, test, seed)
    if folder.exists():
        if not force and _is_complete(folder, params):
            return folder
        if not (folder / "synth.json").is_file() and any(folder.iterdir()):
            raise DataError(
                folder,
                "folder exists and was not written by `ssdstudy data synth`; choose another folder",
            )
    # written beside, then renamed into place: a generation killed midway leaves only
    # the partial folder, which the next call replaces; readers never see half a dataset
    partial = folder.with_name(f".{YEAR_DIR}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (partial / sub).mkdir(parents=True, exist_ok=True)
    (partial / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTH_CLASSES))
    splits = [("trainval", train), ("test", test)]
    for split, count in splits:
        if count:
            ids = "".join(f"{image_id(split, i)}\n" for i in range(count))
            (partial / "ImageSets" / "Main" / f"{split}.txt").write_text(ids)

    tasks = [
        (str(partial), int(seed), split, i)
        for split, count in splits
        for i in range(count)
    ]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    objects = 0
    with tqdm(total=len(tasks), desc="synth", unit="img", disable=not progress) as bar:
        for n in _run(tasks, workers):
            objects += n
            bar.update()
    info = {"params": params, "complete": True, "classes": list(SYNTH_CLASSES), "objects": objects}
    (partial / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


def _run(tasks: list[tuple[str, int, str, int]], workers: int) -> Iterator[int]:
    if workers <= 1 or len(tasks) < 32:  # a pool costs about a second to start
        for task in tasks:
            yield _write_one(task)
        return
    # "spawn": a forked child could inherit a broken OpenCV/OpenMP thread pool.
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_write_one, tasks, chunksize=8)
