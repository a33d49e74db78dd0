"""Evaluation of detections: Pascal VOC AP, COCO AP and mAP per object-size bin.

Main entry point: :func:`evaluate`. Modules:

* :mod:`~ssdstudy.evaluate.voc`: VOC matching and AP (11-point and all-point), vectorised;
* :mod:`~ssdstudy.evaluate.coco`: COCO metrics through pycocotools;
* :mod:`~ssdstudy.evaluate.core`: :func:`evaluate` and the size-bin breakdown;
* :mod:`~ssdstudy.evaluate.io`: the JSON detections file;
* :mod:`~ssdstudy.evaluate.report`: a JSON-safe copy of a result and a text table;
* :mod:`~ssdstudy.evaluate.bootstrap`: bootstrap intervals of mAP differences (paired runs);
* :mod:`~ssdstudy.evaluate.reference`: a slow loop transcription of the devkit, an oracle.
"""

from ssdstudy.evaluate.coco import COCO_METRICS, evaluate_coco, run_cocoeval
from ssdstudy.evaluate.core import evaluate, image_bins, size_bin_map
from ssdstudy.evaluate.io import read_detections, write_detections
from ssdstudy.evaluate.report import format_table, from_json, to_json
from ssdstudy.evaluate.voc import (
    VOC07_RECALL_THRESHOLDS,
    FlatDetections,
    FlatGroundTruth,
    VOCAveragePrecision,
    VOCMatches,
    average_precision_voc,
    average_precision_voc07,
    evaluate_voc,
    interpolated_precision,
    match_outcomes,
    match_voc,
    precision_recall,
    voc_matches,
)

__all__ = [
    "COCO_METRICS",
    "VOC07_RECALL_THRESHOLDS",
    "FlatDetections",
    "FlatGroundTruth",
    "VOCAveragePrecision",
    "VOCMatches",
    "average_precision_voc",
    "average_precision_voc07",
    "evaluate",
    "evaluate_coco",
    "evaluate_voc",
    "format_table",
    "from_json",
    "image_bins",
    "interpolated_precision",
    "match_outcomes",
    "match_voc",
    "precision_recall",
    "read_detections",
    "run_cocoeval",
    "size_bin_map",
    "to_json",
    "voc_matches",
    "write_detections",
]
