"""COCO metrics of VOC-style detections, computed by pycocotools' ``COCOeval``.

The ground truth is built in memory from the records (no annotation file):

* image ids are 1-based positions in the records, annotation ids start at 1
  (``COCOeval`` reads a match id of 0 as "unmatched");
* boxes become ``[x, y, w, h]`` in pixels of the original image and ``area = w * h``,
  so COCO's small / medium / large ranges (below 32², 32² to 96², above 96² pixels)
  apply to the original image, as for COCO itself;
* difficult objects are marked ``iscrowd = 1`` when they are ignored. ``COCOeval``
  overwrites any ``ignore`` flag with ``iscrowd``, so a crowd mark is its only way to
  ignore an object: detections matched to it count neither way, as in VOC. Unlike
  VOC, COCO measures the overlap with a crowd region as intersection over the
  detection's own area and lets several detections match it.

COCO and VOC differ in other ways too: COCO matches at IoU >= threshold (VOC: > 0.5),
lets a detection take the best *free* object (VOC: the best object, free or not),
keeps the 100 best detections per image and class, and averages precision at 101
recall points.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssdstudy.evaluate.voc import FlatDetections, RecordLike, as_flat_detections

#: Names of the statistics returned, in ``COCOeval.stats`` order (the first six).
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def build_coco_ground_truth(
    records: Sequence[RecordLike],
    class_names: Sequence[str],
    *,
    keep_difficult_as_ignored: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """The COCO ground-truth dataset dict (images, annotations, categories) of ``records``."""
    images = [
        {"id": i + 1, "width": int(r.width), "height": int(r.height), "file_name": str(r.image_id)}
        for i, r in enumerate(records)
    ]
    annotations: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
        difficult = getattr(record, "difficult", None)
        if difficult is None or not keep_difficult_as_ignored:
            crowd = np.zeros(len(boxes), dtype=bool)
        else:
            crowd = np.asarray(difficult, dtype=bool).reshape(-1)
        for box, label, is_crowd in zip(boxes, labels, crowd):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": int(is_crowd),
                }
            )
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def run_cocoeval(
    records: Sequence[RecordLike],
    detections: Mapping[str, Mapping[str, Any]] | FlatDetections,
    class_names: Sequence[str],
    *,
    keep_difficult_as_ignored: bool = True,
):
    """Run ``COCOeval`` (bbox) quietly: evaluate, accumulate and summarize.

    Returns:
        the ``pycocotools.cocoeval.COCOeval`` object; ``.stats`` holds the twelve
        summary numbers, ``.eval["precision"]`` the (T=10, R=101, K, A=4, M=3) array.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    det = as_flat_detections(detections, records)
    dataset = build_coco_ground_truth(
        records, class_names, keep_difficult_as_ignored=keep_difficult_as_ignored
    )
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if len(det):
            rows = np.column_stack(
                [
                    det.image_index + 1,
                    det.boxes[:, 0],
                    det.boxes[:, 1],
                    det.boxes[:, 2] - det.boxes[:, 0],
                    det.boxes[:, 3] - det.boxes[:, 1],
                    det.scores,
                    det.labels,
                ]
            ).astype(np.float64)
            coco_dt = coco_gt.loadRes(rows)
        else:  # loadRes cannot take an empty result list
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(dataset["images"]),
                "annotations": [],
                "categories": list(dataset["categories"]),
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def evaluate_coco(
    records: Sequence[RecordLike],
    detections: Mapping[str, Mapping[str, Any]] | FlatDetections,
    class_names: Sequence[str],
    *,
    keep_difficult_as_ignored: bool = True,
) -> dict[str, float]:
    """COCO AP, AP50, AP75, APs, APm, APl (fractions in [0, 1]; nan where COCO reports
    -1, i.e. no ground truth in that range)."""
    if not records:
        return {name: float("nan") for name in COCO_METRICS}
    evaluator = run_cocoeval(
        records, detections, class_names, keep_difficult_as_ignored=keep_difficult_as_ignored
    )
    stats = np.asarray(evaluator.stats, dtype=np.float64)[: len(COCO_METRICS)]
    return {name: (float(v) if v > -1 else float("nan")) for name, v in zip(COCO_METRICS, stats)}
