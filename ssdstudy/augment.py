"""SSD training augmentation and the evaluation transform, on tv_tensors.

The training pipeline follows the SSD paper and the study's code base, in this order:

1. **photometric distortion** (each part with probability 0.5): brightness
   (add a delta in [-32, 32]), contrast (multiply by [0.5, 1.5], before or after the
   colour part at random), saturation (scale the HSV saturation by [0.5, 1.5]), hue
   (shift by up to 18 degrees), channel swap (a random permutation of R, G, B);
2. **expand** (probability 0.5): zoom out, placing the image at random on a canvas
   ``ratio`` times larger (``ratio`` uniform in [1, 4]) filled with the dataset mean;
3. **random crop**, by one of two rules (``AugmentConfig.crop_rule``):

   * ``"original"`` (default), what the study's code base computes: a mode drawn from
     (keep the image, min IoU 0.1, 0.3, 0.7, 0.9, no constraint); up to 50 candidate
     patches (sides ``uniform(0.3, 1)`` of the canvas, aspect h/w in 0.5-2, the left
     edge drawn as that code's ``numpy.random.uniform(W - w)``, i.e. between ``W - w``
     and 1); the first patch that contains the centre of at least one box is taken.
     Its IoU test (``min < min_iou and max_iou < max`` with ``max_iou`` infinite) can
     never reject a patch, so the mode only decides "keep or crop"; after 50 failed
     trials a new mode is drawn (the code's ``while True`` loop);
   * ``"paper"``, the SSD paper's rule: a mode drawn from (keep the image, min IoU 0.1,
     0.3, 0.5, 0.7, 0.9, any patch); the first of 50 patches (left edge uniform in
     ``[0, W - w]``) whose IoU with at least one box reaches the minimum and which
     contains a box centre is taken, else the image is kept;

   boxes whose centre lies inside the patch are kept and clipped to it;
4. **random horizontal mirror** (probability 0.5);

then every image is resized to ``S x S`` (bilinear, no antialiasing, like the original's
``cv2.resize`` but with torchvision's kernel: the two round differently and land up to
one grey level apart on about an eighth of the values) and normalised with the
backbone's ``mean`` and ``std``; boxes narrower or lower than one output pixel are
dropped together with their labels. The evaluation transform is the same resize; the
original's (``cv2.resize``) is :func:`ssdstudy.original.reference_preprocess`, and
``benchmarks/reference_mode.py`` measures what the difference does to mAP.

How it is made fast (see ``benchmarks/augmentation.py``): the pipeline is one fused
transform rather than a chain of image-to-image steps.

* All random numbers for one image come from a single ``torch.rand`` draw (torch's
  default generator, so ``torch.manual_seed`` and DataLoader worker seeding make runs
  reproducible). Each step always consumes its share of the draw, so switching one
  step off leaves the random choices of the others unchanged (clean ablations).
* Expand, crop, mirror and resize form one geometric map. The 50 crop trials are
  scored at once on the boxes (one ``box_iou`` call); the canvas is never built: only
  the part of the image inside the final window is resized (uint8, torchvision's fast
  kernel) into its place in the output, and the rest of the output is the fill value.
* Brightness, contrast, saturation, hue and channel swap are affine in
  ``[R, G, B, max(R, G, B)]`` (saturation scaling in HSV moves each channel towards
  the maximum; the hue shift is a rotation about the grey axis), so all of them and
  the normalisation are one 3x4 matrix applied to the resized pixels with one
  ``addmm``, clamped once to the valid pixel range. Because bilinear resampling
  averages pixels with weights summing to one, applying the affine parts after the
  resize gives the same result as applying them before; only the max column and the
  final clamp are evaluated on resampled pixels. The fill region is written after
  the distortion, so the canvas keeps the plain mean, as in the study's order.

Deviations from the original code, on purpose: the hue shift is the grey-axis rotation
(on average it moves the HSV hue by the drawn angle, per colour within about a third
of it, and leaves greys unchanged); pixel values are clamped to [0, 255] once after
the distortion (the original never clamps); images without boxes are not cropped
(the original fails on them); after a zoom-out the image lands on whole output pixels, up to half an
output pixel from the nominal window (boxes follow the pixels exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_convert, box_iou
from torchvision.transforms.v2 import functional as TF

from ssdstudy.errors import ConfigError

#: The switchable steps, in the order the pipeline applies them.
STEPS: tuple[str, ...] = ("photometric", "expand", "crop", "mirror")

#: Probability of each photometric part, of expand and of mirror.
STEP_PROBABILITY = 0.5
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA_DEGREES = 18.0
EXPAND_RATIO_RANGE = (1.0, 4.0)
#: The crop's modes per rule: ``None`` keeps the image; a number is a minimum IoU, 0.0
#: no constraint. The original code lists (keep, 0.1, 0.3, 0.7, 0.9, unconstrained) and
#: never enforces the minimum; the paper lists 0.5 too and enforces it.
CROP_MODES: dict[str, tuple[float | None, ...]] = {
    "original": (None, 0.1, 0.3, 0.7, 0.9, 0.0),
    "paper": (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0),
}
CROP_RULES: tuple[str, ...] = tuple(CROP_MODES)
#: The paper rule's modes (kept under its old name for callers).
CROP_MIN_IOUS: tuple[float | None, ...] = CROP_MODES["paper"]
CROP_TRIALS = 50
CROP_MIN_SCALE = 0.3
CROP_ASPECT_RANGE = (0.5, 2.0)
#: Boxes narrower or lower than this many output pixels are dropped.
MIN_BOX_SIZE = 1.0
#: Per-box entries of a target that are filtered together with the boxes.
PER_BOX_KEYS: tuple[str, ...] = ("labels", "difficult", "truncated", "iscrowd")

# The six channel orders the channel swap chooses from (the first one keeps the image).
_PERMUTATIONS: tuple[tuple[int, int, int], ...] = (
    (0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0),
)
# Layout of the per-image uniform draw: photometric, expand, crop, mirror.
_PHOTO_DRAWS = 11
_EXPAND_DRAWS = 4
_CROP_DRAWS = 1 + 4 * CROP_TRIALS
_MIRROR_DRAWS = 1
_DRAWS = _PHOTO_DRAWS + _EXPAND_DRAWS + _CROP_DRAWS + _MIRROR_DRAWS


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AugmentConfig:
    """Which training augmentation steps run.

    ``enabled=False`` turns the whole pipeline off (the training transform then only
    resizes and normalises, exactly like the evaluation transform); each step can also
    be switched off by name for the per-step ablation.
    """

    enabled: bool = True
    photometric: bool = True
    expand: bool = True
    crop: bool = True
    mirror: bool = True
    #: How the crop draws its patch: "original" (the study's code base, default) or
    #: "paper" (the SSD paper's enforced minimum IoU); see the module docstring.
    crop_rule: Literal["original", "paper"] = "original"

    def __post_init__(self) -> None:
        if self.crop_rule not in CROP_RULES:
            raise ConfigError(
                f"augment.crop_rule: expected one of {', '.join(CROP_RULES)}, got {self.crop_rule!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, where: str = "augment") -> AugmentConfig:
        """Build a config from a parameter file's mapping, validating every key.

        ``where`` names the place in the parameter file (for example
        ``"parameters/experiments/augmentation.yaml: augment"``) and prefixes every
        error message. Missing keys take their defaults; unknown keys and values that
        are not booleans raise :class:`~ssdstudy.errors.ConfigError` naming the key.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping of augmentation switches, got {type(data).__name__}"
            )
        known = [f.name for f in fields(cls)]
        values: dict[str, bool] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(
                    f"{where}.{key}: unknown augmentation switch; expected one of {', '.join(known)}"
                )
            if key == "crop_rule":
                if value not in CROP_RULES:
                    raise ConfigError(f"{where}.{key}: expected one of {', '.join(CROP_RULES)}, got {value!r}")
            elif not isinstance(value, bool):
                raise ConfigError(
                    f"{where}.{key}: expected true or false, got {value!r}"
                )
            values[key] = value
        return cls(**values)

    @classmethod
    def only(cls, *steps: str) -> AugmentConfig:
        """The pipeline with just ``steps`` switched on (e.g. ``only("mirror")``)."""
        _check_steps(steps)
        return cls(enabled=True, **{s: s in steps for s in STEPS})

    def without(self, *steps: str) -> AugmentConfig:
        """This config with ``steps`` switched off."""
        _check_steps(steps)
        return AugmentConfig(**{**self.to_dict(), **{s: False for s in steps}})

    def to_dict(self) -> dict[str, bool | str]:
        """The switches as a plain mapping (round-trips through :meth:`from_dict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def active_steps(self) -> tuple[str, ...]:
        """The steps that run, in pipeline order; empty when disabled."""
        if not self.enabled:
            return ()
        return tuple(s for s in STEPS if getattr(self, s))

    @property
    def label(self) -> str:
        """A short name for plots and tables: ``"none"`` or the steps joined by ``+``."""
        return "+".join(self.active_steps) or "none"


def _check_steps(steps: Sequence[str]) -> None:
    for step in steps:
        if step not in STEPS:
            raise ConfigError(f"augment.{step}: unknown augmentation step; expected one of {', '.join(STEPS)}")


# ----------------------------------------------------------------------- photometric
def hue_rotation(degrees: float) -> Tensor:
    """The (3, 3) float64 rotation of RGB about the grey axis by ``degrees``.

    Positive angles turn red towards green (the direction of increasing HSV hue);
    greys are fixed points.
    """
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    k = 1.0 / math.sqrt(3.0)
    # Rodrigues' formula with the unit axis (k, k, k).
    cross = torch.tensor([[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]], dtype=torch.float64)
    outer = torch.full((3, 3), k * k, dtype=torch.float64)
    return c * torch.eye(3, dtype=torch.float64) + s * cross + (1.0 - c) * outer


def photometric_matrix(
    brightness: float = 0.0,
    contrast: float = 1.0,
    contrast_first: bool = True,
    saturation: float = 1.0,
    hue_degrees: float = 0.0,
    permutation: Sequence[int] = (0, 1, 2),
) -> tuple[Tensor, Tensor]:
    """The photometric distortion as one affine map of ``[R, G, B, max(R, G, B)]``.

    Applies, in order: ``x + brightness``; ``x * contrast`` if ``contrast_first``;
    saturation (HSV saturation scaled by ``saturation``, i.e. each channel moved
    towards the pixel's maximum: ``V + s (x - V)``); hue (rotation about the grey axis
    by ``hue_degrees``); ``x * contrast`` if not ``contrast_first``; then output
    channel ``i`` takes channel ``permutation[i]``. Pixel units (0-255), no clamping.

    Returns ``(matrix (3, 4), offset (3,))`` in float64 so that the distorted pixel is
    ``matrix @ [r, g, b, max(r, g, b)] + offset``.
    """
    if contrast <= 0:
        raise ValueError(f"contrast must be positive, got {contrast}")
    scale, shift = 1.0, brightness  # the pixel so far is scale * x + shift (scalars)
    if contrast_first:
        scale, shift = scale * contrast, shift * contrast
    # Saturation: V' = scale * V + shift because scale > 0, so
    # V' + s (x' - V') = s * scale * x + (1 - s) * scale * V + shift.
    matrix = torch.zeros(3, 4, dtype=torch.float64)
    matrix[:, :3] = saturation * scale * torch.eye(3, dtype=torch.float64)
    matrix[:, 3] = (1.0 - saturation) * scale
    offset = torch.full((3,), shift, dtype=torch.float64)
    if hue_degrees != 0.0:
        rotation = hue_rotation(hue_degrees)
        matrix = rotation @ matrix
        offset = rotation @ offset
    if not contrast_first:
        matrix, offset = matrix * contrast, offset * contrast
    order = list(permutation)
    return matrix[order], offset[order]


@dataclass(frozen=True)
class PhotometricParams:
    """The photometric parts drawn for one image (neutral values where not applied)."""

    brightness: float = 0.0
    contrast: float = 1.0
    contrast_first: bool = True
    saturation: float = 1.0
    hue_degrees: float = 0.0
    permutation: tuple[int, int, int] = (0, 1, 2)

    @property
    def is_identity(self) -> bool:
        return self == PhotometricParams(contrast_first=self.contrast_first)

    def matrix(self) -> tuple[Tensor, Tensor]:
        """``photometric_matrix`` of these parameters: (3, 4) and (3,) float64."""
        return photometric_matrix(
            self.brightness, self.contrast, self.contrast_first,
            self.saturation, self.hue_degrees, self.permutation,
        )


def _uniform(u: float, low: float, high: float) -> float:
    return low + (high - low) * u


def sample_photometric(u: Sequence[float]) -> PhotometricParams:
    """Photometric parameters from 11 uniforms in [0, 1) (each part with p = 0.5)."""
    p = STEP_PROBABILITY
    perm_index = min(int(u[10] * len(_PERMUTATIONS)), len(_PERMUTATIONS) - 1)
    return PhotometricParams(
        brightness=_uniform(u[1], -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA) if u[0] < p else 0.0,
        contrast_first=u[2] < 0.5,
        contrast=_uniform(u[4], *CONTRAST_RANGE) if u[3] < p else 1.0,
        saturation=_uniform(u[6], *SATURATION_RANGE) if u[5] < p else 1.0,
        hue_degrees=_uniform(u[8], -HUE_DELTA_DEGREES, HUE_DELTA_DEGREES) if u[7] < p else 0.0,
        permutation=_PERMUTATIONS[perm_index] if u[9] < p else (0, 1, 2),
    )


# -------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Where the output comes from, for one image of ``height x width`` pixels.

    The (virtual) canvas is ``canvas_height x canvas_width`` with the image's top-left
    corner at ``(top, left)``; ``window`` = (x1, y1, x2, y2) is the integer patch of the
    canvas that becomes the ``S x S`` output; ``mirror`` flips the output horizontally.
    """

    height: int
    width: int
    canvas_height: int
    canvas_width: int
    top: int
    left: int
    window: tuple[int, int, int, int]
    mirror: bool = False

    @classmethod
    def identity(cls, height: int, width: int) -> Geometry:
        return cls(height, width, height, width, 0, 0, (0, 0, width, height))


def sample_expand(height: int, width: int, u: Sequence[float]) -> tuple[int, int, int, int]:
    """Canvas ``(canvas_height, canvas_width, top, left)`` from 4 uniforms (p = 0.5)."""
    if u[0] >= STEP_PROBABILITY:
        return height, width, 0, 0
    ratio = _uniform(u[1], *EXPAND_RATIO_RANGE)
    canvas_h, canvas_w = max(height, int(height * ratio)), max(width, int(width * ratio))
    left = min(int(u[2] * (canvas_w - width + 1)), canvas_w - width)
    top = min(int(u[3] * (canvas_h - height + 1)), canvas_h - height)
    return canvas_h, canvas_w, top, left


def sample_crop(
    canvas_height: int, canvas_width: int, boxes: Tensor, u: Tensor, rule: str = "original",
    redraw: Callable[[], Tensor] | None = None,
) -> tuple[tuple[int, int, int, int], Tensor] | None:
    """The SSD random crop, scored on the boxes only.

    Args:
        canvas_height, canvas_width: size of the (expanded) image.
        boxes: (K, 4) float XYXY boxes in canvas pixels.
        u: (1 + 4 * CROP_TRIALS,) uniforms in [0, 1): the mode's choice, then the
            width, height, left and top of each trial patch.
        rule: ``"original"`` or ``"paper"`` (see the module docstring).
        redraw: for the original rule, returns fresh uniforms like ``u`` when all 50
            trials failed (the original draws a new mode then); default
            ``torch.rand``.

    Returns:
        ``(window (x1, y1, x2, y2) ints, keep (K,) bool)`` for the patch taken, or
        ``None`` to keep the whole canvas (mode "keep", the paper rule's 50 failed
        trials, or no boxes).
    """
    modes = CROP_MODES[rule]
    if boxes.shape[0] == 0:
        return None
    b = boxes.double()
    cx = (b[:, 0] + b[:, 2]) * 0.5
    cy = (b[:, 1] + b[:, 3]) * 0.5
    while True:
        mode = modes[min(int(float(u[0]) * len(modes)), len(modes) - 1)]
        if mode is None:
            return None
        t = u[1:].view(CROP_TRIALS, 4).double()
        w = canvas_width * (CROP_MIN_SCALE + (1.0 - CROP_MIN_SCALE) * t[:, 0])
        h = canvas_height * (CROP_MIN_SCALE + (1.0 - CROP_MIN_SCALE) * t[:, 1])
        aspect = h / w
        ok = (aspect >= CROP_ASPECT_RANGE[0]) & (aspect <= CROP_ASPECT_RANGE[1])
        if rule == "original":
            # numpy.random.uniform(W - w) draws between low = W - w and high = 1.0
            left = (canvas_width - w) + (1.0 - (canvas_width - w)) * t[:, 2]
            top = (canvas_height - h) + (1.0 - (canvas_height - h)) * t[:, 3]
            x1, y1 = left.floor(), top.floor()
            x2 = (left + w).floor().clamp_(max=canvas_width)
            y2 = (top + h).floor().clamp_(max=canvas_height)
        else:
            x1 = ((canvas_width - w) * t[:, 2]).floor()
            y1 = ((canvas_height - h) * t[:, 3]).floor()
            x2 = torch.maximum((x1 + w).floor(), x1 + 1).clamp_(max=canvas_width)
            y2 = torch.maximum((y1 + h).floor(), y1 + 1).clamp_(max=canvas_height)
        inside = (
            (cx[None] > x1[:, None]) & (cx[None] < x2[:, None])
            & (cy[None] > y1[:, None]) & (cy[None] < y2[:, None])
        )  # (T, K)
        valid = ok & inside.any(dim=1)
        if rule == "paper" and mode > 0.0:
            rects = torch.stack([x1, y1, x2, y2], dim=1)
            valid &= box_iou(rects, b).amax(dim=1) >= mode
        first = int(torch.argmax(valid.to(torch.uint8)))
        if bool(valid[first]):
            window = (int(x1[first]), int(y1[first]), int(x2[first]), int(y2[first]))
            return window, inside[first]
        if rule == "paper":
            return None
        u = redraw() if redraw is not None else torch.rand(_CROP_DRAWS, dtype=torch.float64)


def _axis(win_lo: int, win_hi: int, offset: int, length: int, size: int) -> tuple[int, int, int, int] | None:
    """Map one axis: the image span [offset, offset + length) seen through the window.

    Returns ``(a0, a1, p0, p1)``: image pixels [a0, a1) are resampled onto output
    pixels [p0, p1), or ``None`` if the window does not see the image.
    """
    lo, hi = max(win_lo, offset), min(win_hi, offset + length)
    if hi <= lo:
        return None
    scale = size / (win_hi - win_lo)
    p0 = min(max(math.floor((lo - win_lo) * scale + 0.5), 0), size - 1)
    p1 = min(max(math.floor((hi - win_lo) * scale + 0.5), p0 + 1), size)
    return lo - offset, hi - offset, p0, p1


# ------------------------------------------------------------------------- transform
class SSDTransform:
    """Callable ``(image, target) -> (image, target)`` for SSD training or evaluation.

    Input: ``image`` a uint8 (3, H, W) tensor or ``tv_tensors.Image``; ``target`` a
    dict with ``"boxes"`` (K, 4) ``tv_tensors.BoundingBoxes`` (any format, converted to
    XYXY; a plain tensor is read as XYXY pixels), ``"labels"`` (K,) int64, and any
    other entries (``"image_id"``...), which are passed through.

    Output: a float32 (3, S, S) tensor normalised with ``mean`` and ``std``, and a new
    target dict whose ``"boxes"`` are XYXY ``BoundingBoxes`` in pixels of the S x S
    output (canvas_size (S, S)); ``"labels"`` and the other per-box entries
    (:data:`PER_BOX_KEYS`) keep only the boxes that survive.
    """

    def __init__(
        self,
        train: bool,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        config: AugmentConfig | None = None,
        *,
        fill: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image_size: expected a positive integer, got {image_size!r}")
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
        if mean_t.numel() != 3 or std_t.numel() != 3:
            raise ValueError(f"mean and std need 3 values each, got {list(mean)} and {list(std)}")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {list(std)}")
        fill_t = mean_t if fill is None else torch.as_tensor(fill, dtype=torch.float64).flatten()
        self.train = bool(train)
        self.image_size = image_size
        self.mean = tuple(float(v) for v in mean_t)
        self.std = tuple(float(v) for v in std_t)
        self.config = config if config is not None else AugmentConfig()
        self.generator = generator
        self._steps = frozenset(self.config.active_steps) if self.train else frozenset()
        # Normalisation as an affine map of pixel values 0..255: y = x * gain + bias.
        self._gain = 1.0 / (255.0 * std_t)
        self._bias = -mean_t / std_t
        self._fill = ((fill_t - mean_t) / std_t).to(torch.float32).view(3, 1, 1)
        self._fill_is_zero = bool((self._fill == 0).all())
        self._low = [float(v) for v in self._bias]  # pixel 0
        self._high = [float(v) for v in (255.0 * self._gain + self._bias)]  # pixel 255
        self._plain = self._affine(None)

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        return (f"SSDTransform({kind}, image_size={self.image_size}, steps={self.config.label if self.train else 'none'}, "
                f"mean={self.mean}, std={self.std})")

    # ---------------------------------------------------------------- sampling
    def sample(self, height: int, width: int, boxes: Tensor) -> tuple[PhotometricParams | None, Geometry, Tensor | None]:
        """Draw the random choices for one image.

        Args:
            height, width: the input image size.
            boxes: (K, 4) float XYXY boxes in input pixels.

        Returns:
            ``(photometric or None, geometry, keep (K,) bool or None)``; ``keep`` marks
            the boxes whose centre lies in the crop (``None``: all kept).
        """
        if not self._steps:
            return None, Geometry.identity(height, width), None
        u = torch.rand(_DRAWS, generator=self.generator, dtype=torch.float64)
        scalars = u[:_PHOTO_DRAWS + _EXPAND_DRAWS].tolist()
        photo = sample_photometric(scalars[:_PHOTO_DRAWS]) if "photometric" in self._steps else None
        if photo is not None and photo.is_identity:
            photo = None
        ch, cw, top, left = height, width, 0, 0
        if "expand" in self._steps:
            ch, cw, top, left = sample_expand(height, width, scalars[_PHOTO_DRAWS:])
        window: tuple[int, int, int, int] = (0, 0, cw, ch)
        keep = None
        if "crop" in self._steps:
            start = _PHOTO_DRAWS + _EXPAND_DRAWS
            shift = boxes.new_tensor([left, top, left, top]) if (left or top) else None
            crop = sample_crop(ch, cw, boxes + shift if shift is not None else boxes,
                               u[start:start + _CROP_DRAWS], self.config.crop_rule, self._redraw_crop)
            if crop is not None:
                window, keep = crop
        mirror = "mirror" in self._steps and float(u[-1]) < STEP_PROBABILITY
        return photo, Geometry(height, width, ch, cw, top, left, window, mirror), keep

    def _redraw_crop(self) -> Tensor:
        """Fresh crop uniforms, for the original rule's redraw after 50 failed trials."""
        return torch.rand(_CROP_DRAWS, generator=self.generator, dtype=torch.float64)

    # ---------------------------------------------------------------- applying
    def _affine(self, photo: PhotometricParams | None) -> tuple[Tensor, Tensor, bool]:
        """Photometric distortion then normalisation: (3, k) matrix, (3, 1) bias, uses max."""
        if photo is None:
            matrix = torch.diag(self._gain)
            offset = self._bias
            uses_max = False
        else:
            m, o = photo.matrix()
            uses_max = photo.saturation != 1.0
            if not uses_max:
                m = m[:, :3]
            matrix = m * self._gain[:, None]
            offset = o * self._gain + self._bias
        return matrix.to(torch.float32), offset.to(torch.float32).view(3, 1), uses_max

    def apply(
        self, image: Tensor, boxes: Tensor, photo: PhotometricParams | None, geo: Geometry, keep: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Apply drawn choices: uint8 (3, H, W) image, (K, 4) XYXY boxes ->
        (float (3, S, S) image, (K', 4) boxes in output pixels, (K,) bool kept)."""
        size = self.image_size
        x1, y1, x2, y2 = geo.window
        ax = _axis(x1, x2, geo.left, geo.width, size)
        ay = _axis(y1, y2, geo.top, geo.height, size)
        if ax is None or ay is None:  # the window sees only the fill
            out = self._fill.expand(3, size, size).clone()
            k = boxes.shape[0]
            return out, boxes.new_zeros((0, 4)), torch.zeros(k, dtype=torch.bool)
        ax0, ax1, px0, px1 = ax
        ay0, ay1, py0, py1 = ay
        nx, ny = px1 - px0, py1 - py0

        # Pixels: resample the visible part of the image (uint8), then one affine map.
        region = image[:, ay0:ay1, ax0:ax1]
        if (ay1 - ay0, ax1 - ax0) != (ny, nx):
            region = TF.resize_image(region, [ny, nx], antialias=False)
        if geo.mirror:
            region = region.flip(-1)
        ox0 = size - px1 if geo.mirror else px0  # output columns [ox0, ox0 + nx)
        matrix, offset, uses_max = self._plain if photo is None else self._affine(photo)
        n = ny * nx
        inputs = torch.empty(4 if uses_max else 3, n, dtype=torch.float32)
        flat = region.reshape(3, n)
        inputs[:3].copy_(flat)
        if uses_max:
            inputs[3].copy_(flat.amax(dim=0))
        full = (nx, ny) == (size, size)
        if full:
            out = torch.empty(3, size, size, dtype=torch.float32)
            pixels = out.view(3, n)
        else:
            pixels = torch.empty(3, n, dtype=torch.float32)
        torch.addmm(offset, matrix, inputs, out=pixels)
        if photo is not None:
            for c in range(3):
                pixels[c].clamp_(self._low[c], self._high[c])
        if not full:
            if self._fill_is_zero:
                out = torch.zeros(3, size, size, dtype=torch.float32)
            else:
                out = self._fill.expand(3, size, size).clone()
            out[:, py0:py1, ox0:ox0 + nx] = pixels.view(3, ny, nx)

        # Boxes: keep by crop centre, clip to the visible part, map like the pixels.
        if keep is not None:
            boxes = boxes[keep]
        sx = nx / (ax1 - ax0)
        sy = ny / (ay1 - ay0)
        bx = (boxes[:, 0::2].clamp(ax0, ax1) - ax0) * sx + px0
        by = (boxes[:, 1::2].clamp(ay0, ay1) - ay0) * sy + py0
        if geo.mirror:
            bx = size - bx.flip(-1)
        out_boxes = torch.stack([bx[:, 0], by[:, 0], bx[:, 1], by[:, 1]], dim=1).clamp_(0, size)
        good = ((out_boxes[:, 2] - out_boxes[:, 0]) >= MIN_BOX_SIZE) & (
            (out_boxes[:, 3] - out_boxes[:, 1]) >= MIN_BOX_SIZE
        )
        kept = good if keep is None else keep.clone().masked_scatter_(keep, good)
        return out, out_boxes[good], kept

    def __call__(self, image: Tensor, target: Mapping[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            desc = f"{type(image).__name__} {getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))}"
            raise TypeError(f"SSDTransform expects a uint8 (3, H, W) image, got {desc}")
        height, width = int(image.shape[-2]), int(image.shape[-1])
        boxes = _xyxy(target["boxes"])
        count = boxes.shape[0]
        for key in PER_BOX_KEYS:
            value = target.get(key)
            if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != count):
                raise ValueError(f"target[{key!r}] has shape {tuple(value.shape)} but there are {count} boxes")
        photo, geo, keep = self.sample(height, width, boxes)
        out, out_boxes, kept = self.apply(image.as_subclass(Tensor), boxes, photo, geo, keep)
        result = dict(target)
        result["boxes"] = tv_tensors.BoundingBoxes(
            out_boxes.to(torch.float32), format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(self.image_size, self.image_size),
        )
        if not bool(kept.all()):
            for key in PER_BOX_KEYS:
                value = result.get(key)
                if isinstance(value, Tensor):
                    result[key] = value[kept]
        return out, result


def _xyxy(boxes: Any) -> Tensor:
    """(K, 4) float32 XYXY plain tensor from BoundingBoxes (any format) or a tensor."""
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        fmt = boxes.format
        plain = boxes.as_subclass(Tensor)
        if fmt != tv_tensors.BoundingBoxFormat.XYXY:
            plain = box_convert(plain, in_fmt=fmt.name.lower(), out_fmt="xyxy")
    else:
        plain = torch.as_tensor(boxes)
    return plain.to(torch.float32).reshape(-1, 4)


def build_transform(
    train: bool,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: AugmentConfig | None = None,
    *,
    fill: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> SSDTransform:
    """The SSD transform: training augmentation (per ``config``) or evaluation.

    Args:
        train: ``True`` for the training pipeline, ``False`` for evaluation (resize and
            normalise only; ``config`` is ignored).
        image_size: ``S``, the side of the square network input.
        mean, std: the backbone's input normalisation (3 values each, for pixels scaled
            to [0, 1]); the expand canvas is filled with ``mean``.
        config: which augmentation steps run (default: all of them).
        fill: the expand canvas colour on [0, 1] (default ``mean``, i.e. 0 after
            normalisation).
        generator: where the random numbers come from (default torch's global
            generator, which DataLoader seeds per worker).

    Returns:
        A callable ``(image uint8 (3, H, W), target) -> (float (3, S, S), target)``;
        see :class:`SSDTransform`.
    """
    return SSDTransform(train, image_size, mean, std, config, fill=fill, generator=generator)


__all__ = [
    "CROP_MODES",
    "CROP_RULES",
    "STEPS",
    "AugmentConfig",
    "Geometry",
    "PhotometricParams",
    "SSDTransform",
    "build_transform",
    "hue_rotation",
    "photometric_matrix",
    "sample_crop",
    "sample_expand",
    "sample_photometric",
]
