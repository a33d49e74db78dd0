"""Training augmentation speed: ssdstudy.augment against a numpy/OpenCV reference.

The reference below is the original SSD augmentation as the study's code base runs it
(numpy arrays in BGR, OpenCV for colour conversion and resizing): convert to float,
photometric distortion through ``cv2.cvtColor`` HSV, expand onto a mean-filled canvas,
random IoU crop with a Python trial loop, random mirror, ``cv2.resize``, normalise.
It follows the same rules as ``ssdstudy.augment`` (same minimum-IoU options and IoU
test, 50 trials, keep the image when no trial fits) so both do the same work; its
random numbers come from numpy.

Both run on one thread, on the same generated VOC-like images (about 500 x 375, 2-4
boxes; in each side's native layout: HWC BGR arrays for OpenCV, decoded-JPEG-layout
uint8 tensors for torchvision), in interleaved repeats; the median time per pass over
all images gives images per second. The naive torchvision.transforms.v2 chain
(RandomPhotometricDistort, RandomZoomOut, RandomIoUCrop, RandomHorizontalFlip, Resize,
SanitizeBoundingBoxes, ToDtype, Normalize) is timed too, for context.

    python benchmarks/augmentation.py [--images 200] [--repeats 7] [--json PATH] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ssdstudy.augment import (
    BRIGHTNESS_DELTA,
    CONTRAST_RANGE,
    CROP_ASPECT_RANGE,
    CROP_MIN_IOUS,
    CROP_MIN_SCALE,
    CROP_TRIALS,
    EXPAND_RATIO_RANGE,
    HUE_DELTA_DEGREES,
    SATURATION_RANGE,
    STEP_PROBABILITY,
    build_transform,
)

IMAGE_SIZE = 300
MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1]
STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ the reference
def _iou_one(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """IoU of (K, 4) boxes with one XYXY rectangle, as the original's jaccard_numpy."""
    lt = np.maximum(boxes[:, :2], rect[:2])
    rb = np.minimum(boxes[:, 2:], rect[2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_r = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return inter / (area_b + area_r - inter)


class ReferenceAugmentation:
    """The original SSD training augmentation in numpy and OpenCV.

    Call with a uint8 (H, W, 3) BGR array, float32 (K, 4) XYXY pixel boxes and (K,)
    labels; returns a float32 (3, S, S) tensor (BGR, normalised), boxes scaled to
    [0, 1] and labels, like the code base's ``TrainAugmentation``.
    """

    permutations = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(self, size: int, mean_rgb: tuple[float, ...], std_rgb: tuple[float, ...], seed: int = 0):
        self.size = size
        self.mean = np.array(mean_rgb[::-1], dtype=np.float32) * 255.0  # BGR, pixel units
        self.std = np.array(std_rgb[::-1], dtype=np.float32) * 255.0
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _coin(self) -> bool:
        return bool(self.rng.random() < STEP_PROBABILITY)

    def _contrast(self, image: np.ndarray) -> np.ndarray:
        if self._coin():
            image *= self.rng.uniform(*CONTRAST_RANGE)
        return image

    def photometric(self, image: np.ndarray) -> np.ndarray:
        if self._coin():
            image += self.rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
        contrast_first = self._coin()
        if contrast_first:
            image = self._contrast(image)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        if self._coin():
            image[:, :, 1] *= self.rng.uniform(*SATURATION_RANGE)
        if self._coin():
            hue = image[:, :, 0]
            hue += self.rng.uniform(-HUE_DELTA_DEGREES, HUE_DELTA_DEGREES)
            hue[hue > 360.0] -= 360.0
            hue[hue < 0.0] += 360.0
        image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
        if not contrast_first:
            image = self._contrast(image)
        if self._coin():
            image = image[:, :, list(self.permutations[self.rng.integers(6)])]
        return image

    def expand(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._coin():
            return image, boxes
        height, width, depth = image.shape
        ratio = self.rng.uniform(*EXPAND_RATIO_RANGE)
        left = int(self.rng.uniform(0, width * ratio - width))
        top = int(self.rng.uniform(0, height * ratio - height))
        canvas = np.empty((int(height * ratio), int(width * ratio), depth), dtype=image.dtype)
        canvas[:, :] = self.mean
        canvas[top:top + height, left:left + width] = image
        boxes = boxes.copy()
        boxes[:, :2] += (left, top)
        boxes[:, 2:] += (left, top)
        return canvas, boxes

    def crop(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        height, width, _ = image.shape
        min_iou = CROP_MIN_IOUS[self.rng.integers(len(CROP_MIN_IOUS))]
        if min_iou is None or len(boxes) == 0:
            return image, boxes, labels
        for _ in range(CROP_TRIALS):
            w = self.rng.uniform(CROP_MIN_SCALE * width, width)
            h = self.rng.uniform(CROP_MIN_SCALE * height, height)
            if h / w < CROP_ASPECT_RANGE[0] or h / w > CROP_ASPECT_RANGE[1]:
                continue
            left = self.rng.uniform(0.0, width - w)
            top = self.rng.uniform(0.0, height - h)
            rect = np.array([int(left), int(top), int(left + w), int(top + h)])
            if _iou_one(boxes, rect).max() < min_iou:
                continue
            centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0
            mask = ((rect[0] < centers[:, 0]) & (rect[1] < centers[:, 1])
                    & (rect[2] > centers[:, 0]) & (rect[3] > centers[:, 1]))
            if not mask.any():
                continue
            patch = image[rect[1]:rect[3], rect[0]:rect[2], :]
            kept = boxes[mask].copy()
            kept[:, :2] = np.maximum(kept[:, :2], rect[:2]) - rect[:2]
            kept[:, 2:] = np.minimum(kept[:, 2:], rect[2:]) - rect[:2]
            return patch, kept, labels[mask]
        return image, boxes, labels

    def mirror(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._coin():
            width = image.shape[1]
            image = image[:, ::-1]
            boxes = boxes.copy()
            boxes[:, 0::2] = width - boxes[:, 2::-2]
        return image, boxes

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        image = image.astype(np.float32)
        image = self.photometric(image)
        image, boxes = self.expand(image, boxes)
        image, boxes, labels = self.crop(image, boxes, labels)
        image, boxes = self.mirror(image, boxes)
        height, width, _ = image.shape
        boxes = boxes / np.array([width, height, width, height], dtype=np.float32)
        image = cv2.resize(image, (self.size, self.size))
        image = (image - self.mean) / self.std
        return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1), boxes, labels


# ------------------------------------------------------------------- naive v2 chain
def naive_v2(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Transform:
    """The same steps as a plain chain of torchvision.transforms.v2 transforms."""
    fill = tuple(round(m * 255) for m in mean)
    return v2.Compose([
        v2.RandomPhotometricDistort(p=STEP_PROBABILITY),
        v2.RandomZoomOut(fill={tv_tensors.Image: fill, "others": 0}, side_range=EXPAND_RATIO_RANGE,
                         p=STEP_PROBABILITY),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(p=STEP_PROBABILITY),
        v2.Resize((size, size), antialias=False),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


# ---------------------------------------------------------------------- the data
def make_images(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """VOC-like samples: (uint8 (H, W, 3) RGB image, float32 (K, 4) boxes, int64 labels).

    Three in four images are landscape (500 wide, 330-375 high), the rest portrait;
    2-4 boxes each with sides 10-90 % of the image's. The pixels are smooth colour
    gradients plus noise (content does not change the cost of any step).
    """
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        short = int(rng.integers(330, 376))
        height, width = (short, 500) if rng.random() < 0.75 else (500, short)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200.0
        image = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
        k = int(rng.integers(2, 5))
        wh = rng.uniform(0.1, 0.9, size=(k, 2)) * (width, height)
        xy = rng.uniform(0, 1, size=(k, 2)) * ((width, height) - wh)
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        labels = rng.integers(1, 21, size=k).astype(np.int64)
        samples.append((image, boxes, labels))
    return samples


# ---------------------------------------------------------------------- timing
def _time_pass(fn: Callable[[int], object], count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return time.perf_counter() - start


def run(images: int = 200, repeats: int = 7, seed: int = 0, naive: bool = True) -> dict[str, float | int]:
    """Time the implementations; returns images per second (medians) and the setup."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    samples = make_images(images, seed)
    # Native inputs: BGR HWC arrays for OpenCV; for torchvision, tensors laid out as
    # torchvision.io.decode_image returns them (CHW view of HWC memory).
    ref_inputs = [(np.ascontiguousarray(img[:, :, ::-1]), b, l) for img, b, l in samples]
    tv_inputs = []
    for img, b, l in samples:
        h, w = img.shape[:2]
        tv_inputs.append((
            tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1)),
            {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(b), format="XYXY", canvas_size=(h, w)),
             "labels": torch.from_numpy(l)},
        ))

    ours = build_transform(True, IMAGE_SIZE, MEAN, STD)
    reference = ReferenceAugmentation(IMAGE_SIZE, MEAN, STD, seed)
    chain = naive_v2(IMAGE_SIZE, MEAN, STD)

    def run_ours(i: int) -> object:
        return ours(*tv_inputs[i])

    def run_reference(i: int) -> object:
        return reference(*ref_inputs[i])

    def run_naive(i: int) -> object:
        return chain(*tv_inputs[i])

    impls: dict[str, Callable[[int], object]] = {"ours": run_ours, "reference": run_reference}
    if naive:
        impls["naive_v2"] = run_naive
    for fn in impls.values():  # warm up
        for i in range(min(10, images)):
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            torch.manual_seed(seed + r)
            reference.reseed(seed + r)
            times[name].append(_time_pass(impls[name], images))
    result: dict[str, float | int] = {
        "images_per_s": images / statistics.median(times["ours"]),
        "reference_images_per_s": images / statistics.median(times["reference"]),
    }
    if naive:
        result["naive_v2_images_per_s"] = images / statistics.median(times["naive_v2"])
    result.update({"images": images, "repeats": repeats, "threads": torch.get_num_threads(),
                   "image_size": IMAGE_SIZE})
    return result


def _timed(owner: object, name: str, totals: dict[str, float], label: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds its run time to ``totals[label]``."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
        return result

    setattr(owner, name, wrapper)


def breakdown(images: int = 100, seed: int = 0) -> dict[str, dict[str, float]]:
    """Milliseconds per image spent in each step of each implementation (one pass)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    samples = make_images(images, seed)
    result: dict[str, dict[str, float]] = {}

    reference = ReferenceAugmentation(IMAGE_SIZE, MEAN, STD, seed)
    totals: dict[str, float] = {}
    for step in ("photometric", "expand", "crop", "mirror"):
        _timed(reference, step, totals, step)
    start = time.perf_counter()
    for img, b, l in samples:
        reference(np.ascontiguousarray(img[:, :, ::-1]), b, l)
    total = time.perf_counter() - start
    totals["convert+resize+normalise"] = total - sum(totals.values())
    result["reference"] = {k: 1e3 * v / images for k, v in totals.items()} | {"total": 1e3 * total / images}

    inputs = []
    for img, b, l in samples:
        h, w = img.shape[:2]
        inputs.append((tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1)),
                       {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(b), format="XYXY", canvas_size=(h, w)),
                        "labels": torch.from_numpy(l)}))
    torch.manual_seed(seed)
    chain = naive_v2(IMAGE_SIZE, MEAN, STD)
    totals = {}
    for step in chain.transforms:
        _timed(step, "forward", totals, type(step).__name__)
    start = time.perf_counter()
    for x in inputs:
        chain(*x)
    total = time.perf_counter() - start
    result["naive_v2"] = {k: 1e3 * v / images for k, v in totals.items()} | {"total": 1e3 * total / images}

    torch.manual_seed(seed)
    ours = build_transform(True, IMAGE_SIZE, MEAN, STD)
    totals = {}
    _timed(ours, "sample", totals, "sample (draws, crop trials on boxes)")
    _timed(ours, "apply", totals, "apply (resample, photometric+normalise, boxes)")
    start = time.perf_counter()
    for x in inputs:
        ours(*x)
    total = time.perf_counter() - start
    totals["input checks, target"] = total - sum(totals.values())
    result["ours"] = {k: 1e3 * v / images for k, v in totals.items()} | {"total": 1e3 * total / images}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved passes per implementation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive v2 chain")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print milliseconds per image spent in each step")
    args = parser.parse_args(argv)
    if args.breakdown:
        for impl, steps in breakdown(min(args.images, 100), args.seed).items():
            print(f"{impl}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in steps.items()))
    result = run(args.images, args.repeats, args.seed, naive=not args.no_naive)
    for key, value in result.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    ratio = result["images_per_s"] / result["reference_images_per_s"]
    print(f"speed-up over the reference: {ratio:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
