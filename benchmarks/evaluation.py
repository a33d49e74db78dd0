"""Speed of the VOC evaluation: vectorised ssdstudy.evaluate against a devkit-style loop.

Synthetic work of the size of a VOC2007 test run: 5,000 images with 1 to 5 objects
each over 20 classes (about 10 % of them difficult) and 100 detections per image,
some near the objects (jittered copies, mostly with the right class) and the rest at
random. The timed call is the VOC part only: flattening the per-image detections,
matching and the 11-point (and all-point) AP of every class, as
``evaluate_voc(records, detections, classes).voc07_map``. The reference is a plain
loop over the detections of each class in score order, as the devkit's ``voc_eval``
and the original study's code do; both must give the same mAP.

Usage::

    python benchmarks/evaluation.py [--images 5000] [--detections 100] [--repeats 5]
        [--skip-reference] [--coco] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdstudy.evaluate import (
    FlatDetections,
    FlatGroundTruth,
    evaluate_coco,
    evaluate_voc,
)
from ssdstudy.evaluate.reference import reference_map

CLASSES = tuple(f"class{i:02d}" for i in range(20))


@dataclass
class SyntheticRecord:
    """The record fields evaluation reads."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def random_boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """(n, 4) float32 XYXY boxes inside a width x height image, sides >= 4 pixels."""
    w = rng.uniform(4, width * 0.8, n)
    h = rng.uniform(4, height * 0.8, n)
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def make_workload(
    images: int, detections_per_image: int, num_classes: int = 20, seed: int = 0
) -> tuple[list[SyntheticRecord], dict[str, dict[str, np.ndarray]]]:
    """Synthetic records and per-image detections (see the module docstring)."""
    rng = np.random.default_rng(seed)
    records: list[SyntheticRecord] = []
    detections: dict[str, dict[str, np.ndarray]] = {}
    for i in range(images):
        width, height = int(rng.integers(300, 501)), int(rng.integers(300, 501))
        k = int(rng.integers(1, 6))
        boxes = random_boxes(rng, k, width, height)
        labels = rng.integers(1, num_classes + 1, k).astype(np.int64)
        difficult = rng.random(k) < 0.1
        image_id = f"{i:06d}"
        records.append(SyntheticRecord(image_id, width, height, boxes, labels, difficult))

        near = min(detections_per_image, int(rng.integers(k, 4 * k + 1)))
        source = rng.integers(0, k, near)
        sides = np.concatenate([boxes[source, 2:] - boxes[source, :2]] * 2, axis=1)
        jitter = rng.normal(0.0, 0.08, (near, 4)) * sides
        near_boxes = boxes[source] + jitter
        near_boxes[:, 2:] = np.maximum(near_boxes[:, 2:], near_boxes[:, :2] + 1.0)
        near_labels = np.where(
            rng.random(near) < 0.85, labels[source], rng.integers(1, num_classes + 1, near)
        )
        far = detections_per_image - near
        det_boxes = np.concatenate([near_boxes, random_boxes(rng, far, width, height)])
        det_labels = np.concatenate([near_labels, rng.integers(1, num_classes + 1, far)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, near), rng.uniform(0.0, 0.7, far)])
        detections[image_id] = {
            "boxes": det_boxes.astype(np.float32),
            "scores": scores.astype(np.float32),
            "labels": det_labels.astype(np.int64),
        }
    return records, detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true",
                        help="do not time the devkit-style loop (about 15 s)")
    parser.add_argument("--coco", action="store_true",
                        help="also time pycocotools' COCOeval on the same work")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)

    records, detections = make_workload(args.images, args.detections, seed=args.seed)
    total = sum(len(d["scores"]) for d in detections.values())
    print(f"workload: {args.images} images, {args.detections} detections each "
          f"({total} in all), {len(CLASSES)} classes")

    times = []
    result = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluate_voc(records, detections, CLASSES)
        voc07_map = result.voc07_map
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"ssdstudy.evaluate (vectorised): median {seconds:.3f} s over {args.repeats} "
          f"repeats (min {min(times):.3f} s, max {max(times):.3f} s); "
          f"VOC07 mAP {voc07_map:.6f}, all-point mAP {result.voc_map:.6f}")

    figures: dict[str, object] = {
        "images": args.images,
        "detections_per_image": args.detections,
        "seconds": seconds,
        "repeats": times,
        "voc07_map": voc07_map,
        "voc_map": result.voc_map,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
    }

    if not args.skip_reference:
        gt = FlatGroundTruth.from_records(records)
        flat = FlatDetections.from_mapping(detections, [r.image_id for r in records])
        start = time.perf_counter()
        ref07, ref = reference_map(gt, flat, CLASSES)
        ref_seconds = time.perf_counter() - start
        agree = abs(ref07 - voc07_map) < 1e-9 and abs(ref - result.voc_map) < 1e-9
        print(f"reference loop (devkit algorithm): {ref_seconds:.3f} s; VOC07 mAP {ref07:.6f}, "
              f"all-point mAP {ref:.6f}; speed-up {ref_seconds / seconds:.1f}x; "
              f"{'same mAP' if agree else 'MISMATCH'}")
        figures["reference_seconds"] = ref_seconds
        figures["reference_voc07_map"] = ref07
        figures["reference_voc_map"] = ref
        figures["agree"] = agree
        if not agree:
            print("error: the vectorised evaluation disagrees with the reference", file=sys.stderr)

    if args.coco:
        start = time.perf_counter()
        coco = evaluate_coco(records, detections, CLASSES)
        coco_seconds = time.perf_counter() - start
        print(f"pycocotools COCOeval: {coco_seconds:.3f} s; AP50 {coco['AP50']:.6f}")
        figures["coco_seconds"] = coco_seconds

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if figures.get("agree", True) else 1


if __name__ == "__main__":
    sys.exit(main())
