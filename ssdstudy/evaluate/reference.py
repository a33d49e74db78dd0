"""A plain, loop-per-detection transcription of the VOC devkit's evaluation.

It walks the detections of each class one by one in descending score, the way the
devkit's ``VOCevaldet.m`` and its Python ports (``voc_eval.py``, the original study's
``compute_average_precision_per_class``) do. It is slow (seconds for a VOC-sized test
set) and exists only as an oracle: the tests and ``benchmarks/evaluation.py`` check
that the vectorised :mod:`ssdstudy.evaluate.voc` gives the same numbers.

Differences from the devkit, shared with the fast path: boxes are continuous (IoU
without ``+ 1``) and score ties keep their input order (stable sort).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssdstudy.evaluate.voc import FlatDetections, FlatGroundTruth


def reference_outcomes(
    gt: FlatGroundTruth,
    det: FlatDetections,
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Outcome of every detection by the devkit's loop.

    Returns:
        (N,) int8 in the order of ``det``: 1 true positive, 0 false positive, -1
        ignored (its best object is difficult).
    """
    outcome = np.zeros(len(det), dtype=np.int8)
    for c in range(num_classes):
        label = c + 1
        # Ground truth of the class, per image: boxes, difficult flags, "taken" flags.
        objects: dict[int, dict[str, np.ndarray]] = {}
        gt_of_class = np.flatnonzero(gt.labels == label)
        for image in np.unique(gt.image_index[gt_of_class]):
            rows = gt_of_class[gt.image_index[gt_of_class] == image]
            objects[int(image)] = {
                "boxes": gt.boxes[rows],
                "difficult": gt.ignored[rows],
                "taken": np.zeros(len(rows), dtype=bool),
            }
        rows = np.flatnonzero(det.labels == label)
        rows = rows[np.argsort(-det.scores[rows], kind="stable")]
        for row in rows:
            box = det.boxes[row]
            entry = objects.get(int(det.image_index[row]))
            ovmax = -np.inf
            if entry is not None:
                boxes = entry["boxes"]
                ixmin = np.maximum(boxes[:, 0], box[0])
                iymin = np.maximum(boxes[:, 1], box[1])
                ixmax = np.minimum(boxes[:, 2], box[2])
                iymax = np.minimum(boxes[:, 3], box[3])
                iw = np.maximum(ixmax - ixmin, 0.0)
                ih = np.maximum(iymax - iymin, 0.0)
                inter = iw * ih
                union = (
                    (box[2] - box[0]) * (box[3] - box[1])
                    + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                    - inter
                )
                overlaps = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
                jmax = int(np.argmax(overlaps))
                ovmax = overlaps[jmax]
            if ovmax > iou_threshold:
                if not entry["difficult"][jmax]:
                    if not entry["taken"][jmax]:
                        outcome[row] = 1
                        entry["taken"][jmax] = True
                    else:
                        outcome[row] = 0
                else:
                    outcome[row] = -1
            else:
                outcome[row] = 0
    return outcome


def reference_average_precision(
    gt: FlatGroundTruth,
    det: FlatDetections,
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """AP per class by the devkit's algorithm.

    Ignored detections stay in the cumulative sums with neither a true nor a false
    positive, as in the devkit.

    Returns:
        (voc07 (C,), voc (C,)) float64: 11-point and all-point AP; nan for classes
        without non-ignored ground truth.
    """
    outcome = reference_outcomes(gt, det, num_classes, iou_threshold=iou_threshold)
    voc07 = np.full(num_classes, np.nan)
    voc = np.full(num_classes, np.nan)
    for c in range(num_classes):
        label = c + 1
        npos = int(np.count_nonzero((gt.labels == label) & ~gt.ignored))
        if npos == 0:
            continue
        rows = np.flatnonzero(det.labels == label)
        rows = rows[np.argsort(-det.scores[rows], kind="stable")]
        tp = np.cumsum(outcome[rows] == 1).astype(np.float64)
        fp = np.cumsum(outcome[rows] == 0).astype(np.float64)
        recall = tp / float(npos)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        voc07[c] = _ap_11_point(precision, recall)
        voc[c] = _ap_all_points(precision, recall)
    return voc07, voc


def _ap_11_point(precision: np.ndarray, recall: np.ndarray) -> float:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        above = recall >= t
        ap += (np.max(precision[above]) if np.any(above) else 0.0) / 11.0
    return float(ap)


def _ap_all_points(precision: np.ndarray, recall: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def reference_map(
    gt: FlatGroundTruth, det: FlatDetections, class_names: Sequence[str], *,
    iou_threshold: float = 0.5,
) -> tuple[float, float]:
    """(11-point mAP, all-point mAP) by the reference algorithm, nan classes skipped."""
    voc07, voc = reference_average_precision(
        gt, det, len(class_names), iou_threshold=iou_threshold
    )
    return _mean(voc07), _mean(voc)


def _mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")
