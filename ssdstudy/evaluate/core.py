"""One call that computes every metric the study reports for a set of detections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssdstudy.evaluate.coco import evaluate_coco
from ssdstudy.evaluate.voc import (
    FlatDetections,
    FlatGroundTruth,
    RecordLike,
    VOCMatches,
    as_flat_detections,
    match_voc,
)


def evaluate(
    records: Sequence[RecordLike],
    detections: Mapping[str, Mapping[str, Any]] | FlatDetections,
    class_names: Sequence[str],
    *,
    keep_difficult_as_ignored: bool = True,
    iou_threshold: float = 0.5,
    coco: bool = True,
    size_bins: bool = True,
) -> dict[str, Any]:
    """VOC AP per class and mAP, COCO metrics and mAP per object-size bin.

    Args:
        records: the evaluated images (:class:`ssdstudy.data.Record` or any object with
            image_id, width, height, boxes (K,4) XYXY pixels, labels (K,) 1-based and
            difficult (K,) bool).
        detections: ``{image_id: {"boxes": (K,4) XYXY pixels of the original image,
            "scores": (K,), "labels": (K,) 1-based}}`` (images without an entry have no
            detections; an id outside ``records`` is a ValueError), or the flat form
            :class:`ssdstudy.evaluate.FlatDetections` whose ``image_index`` indexes
            ``records``.
        class_names: C names, class ``i`` is label ``i + 1``.
        keep_difficult_as_ignored: VOC's rule: difficult objects stay as ignored objects
            (detections on them count neither way, they are not in ``npos``). False
            counts them as ordinary objects. Records of a dataset loaded without
            difficult objects simply have none.
        iou_threshold: VOC matches when IoU > this (devkit ``ovmax > ovthresh``).
        coco: also run pycocotools' COCOeval (the slow part); ``result["coco"]`` is
            None when False.
        size_bins: also compute mAP per image-level object-size bin
            (:mod:`ssdstudy.data.bins`); ``result["size_bins"]`` is None when False.

    Returns:
        A dict (floats nan where undefined; :func:`ssdstudy.evaluate.to_json` makes a
        JSON-safe copy with null for them)::

            images, detections: counts; iou_threshold; difficult: "ignored" | "counted"
            voc07_map, voc_map: mean over classes with ground truth
            ap_per_class: {name: {"voc07", "voc", "npos", "detections"}}
            coco: {"AP", "AP50", "AP75", "APs", "APm", "APl"} | None
            size_bins: {"0-5": {"images", "voc07_map", "voc_map"}, ...} | None
            size_bins_unassigned: images in no bin (mixed sizes or no object) | None
    """
    gt = FlatGroundTruth.from_records(records, keep_difficult_as_ignored=keep_difficult_as_ignored)
    det = as_flat_detections(detections, records)
    matches = match_voc(gt, det, class_names, iou_threshold=iou_threshold)
    ap = matches.average_precision()
    result: dict[str, Any] = {
        "images": len(records),
        "detections": len(det),
        "iou_threshold": float(iou_threshold),
        "difficult": "ignored" if keep_difficult_as_ignored else "counted",
        "voc07_map": ap.voc07_map,
        "voc_map": ap.voc_map,
        "ap_per_class": {
            name: {
                "voc07": float(ap.voc07[c]),
                "voc": float(ap.voc[c]),
                "npos": int(ap.npos[c]),
                "detections": int(ap.detections[c]),
            }
            for c, name in enumerate(ap.class_names)
        },
        "coco": None,
        "size_bins": None,
        "size_bins_unassigned": None,
    }
    if coco:
        result["coco"] = evaluate_coco(
            records, det, class_names, keep_difficult_as_ignored=keep_difficult_as_ignored
        )
    if size_bins:
        bins, unassigned = size_bin_map(
            records, matches, keep_difficult_as_ignored=keep_difficult_as_ignored
        )
        result["size_bins"] = bins
        result["size_bins_unassigned"] = unassigned
    return result


def image_bins(
    records: Sequence[RecordLike], *, keep_difficult_as_ignored: bool = True
) -> np.ndarray:
    """Size-bin index of each record, -1 for images in no bin.

    An image's bin is :func:`ssdstudy.data.bins.image_bin` of its counted objects:
    difficult objects are left out when they are ignored, since they are not scored.

    Returns:
        (len(records),) int64.
    """
    from ssdstudy.data.bins import image_bin

    out = np.full(len(records), -1, dtype=np.int64)
    for i, record in enumerate(records):
        boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
        difficult = getattr(record, "difficult", None)
        if keep_difficult_as_ignored and difficult is not None:
            boxes = boxes[~np.asarray(difficult, dtype=bool).reshape(-1)]
        b = image_bin(boxes, record.width, record.height)
        if b is not None:
            out[i] = int(b)
    return out


def size_bin_map(
    records: Sequence[RecordLike],
    matches: VOCMatches,
    *,
    keep_difficult_as_ignored: bool = True,
) -> tuple[dict[str, dict[str, Any]], int]:
    """VOC mAP on the images of each size bin (their objects and their detections).

    The bins are the study's image-level bins (:data:`ssdstudy.data.bins.SIZE_BINS`).
    Matching is per image, so each bin reuses the outcomes of ``matches`` (made from
    the same records with the same ``keep_difficult_as_ignored``).

    Returns:
        ({bin name: {"images": n, "voc07_map": x, "voc_map": y}} with nan maps for
        empty bins, number of images in no bin).
    """
    from ssdstudy.data.bins import SIZE_BINS

    bin_of = image_bins(records, keep_difficult_as_ignored=keep_difficult_as_ignored)
    out: dict[str, dict[str, Any]] = {}
    for b, name in enumerate(SIZE_BINS):
        members = np.flatnonzero(bin_of == b)
        if len(members) == 0:
            out[name] = {"images": 0, "voc07_map": float("nan"), "voc_map": float("nan")}
            continue
        ap = matches.average_precision(members)
        out[name] = {"images": len(members), "voc07_map": ap.voc07_map, "voc_map": ap.voc_map}
    return out, int(np.count_nonzero(bin_of < 0))
