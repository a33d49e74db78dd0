"""Tests of ssdstudy.evaluate: VOC AP, difficult objects, COCO agreement, files, size bins."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ssdstudy.errors import DataError
from ssdstudy.evaluate import (
    VOC07_RECALL_THRESHOLDS,
    FlatDetections,
    FlatGroundTruth,
    average_precision_voc,
    average_precision_voc07,
    evaluate,
    evaluate_voc,
    format_table,
    from_json,
    image_bins,
    interpolated_precision,
    match_outcomes,
    precision_recall,
    read_detections,
    run_cocoeval,
    to_json,
    voc_matches,
    write_detections,
)
from ssdstudy.evaluate.reference import reference_average_precision, reference_outcomes

from ssdstudy.data import Record


def record(image_id, boxes, labels, difficult=None, width=100, height=100):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    k = len(boxes)
    difficult = np.zeros(k, bool) if difficult is None else np.asarray(difficult, bool)
    return Record(
        image_id=image_id,
        image_path=Path(f"{image_id}.jpg"),
        width=width,
        height=height,
        boxes=boxes,
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        difficult=difficult,
        truncated=np.zeros(k, bool),
        annotation_path=Path(f"{image_id}.xml"),
    )


def dets(boxes, scores, labels):
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=np.float32),
        "labels": np.asarray(labels, dtype=np.int64),
    }


CLASSES = ("cat", "dog")

# Four cats in a row, 10 pixels apart: no two overlap.
CATS = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
MISS = [0, 50, 10, 60]  # overlaps no object


# ------------------------------------------------------------- AP of a known curve
def test_known_curve_gives_hand_computed_ap():
    # Outcomes in score order: TP FP TP TP FP with 4 objects.
    #   cumulative TP 1 1 2 3 3, FP 0 1 1 1 2
    #   precision 1, 1/2, 2/3, 3/4, 3/5; recall 1/4, 1/4, 1/2, 3/4, 3/4
    # All-point: envelope from the right is 1, 3/4, 3/4, 3/4, 3/5; recall steps
    #   0->1/4 at precision 1, 1/4->1/2 at 3/4, 1/2->3/4 at 3/4, 3/4->1 at 0
    #   AP = 1/4 + 3/16 + 3/16 = 0.625
    # 11-point: t = 0, .1, .2 -> 1 (the first point already has recall 1/4);
    #   t = .3 .. .7 -> 3/4 (points of recall 1/2 and 3/4); t = .8, .9, 1 -> 0
    #   AP = (3 + 5 * 0.75) / 11 = 6.75 / 11
    precision, recall = precision_recall(np.array([1, 0, 1, 1, 0]), npos=4)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 4, 1 / 4, 1 / 2, 3 / 4, 3 / 4])
    assert average_precision_voc(precision, recall) == pytest.approx(0.625, abs=1e-12)
    assert average_precision_voc07(precision, recall) == pytest.approx(6.75 / 11, abs=1e-12)

    # The same curve from boxes: detections on cats 0, (miss), 1, 2, (miss).
    records = [record("a", CATS, [1, 1, 1, 1])]
    detections = {"a": dets([CATS[0], MISS, CATS[1], CATS[2], MISS], [0.9, 0.8, 0.7, 0.6, 0.5],
                            [1, 1, 1, 1, 1])}
    ap = evaluate_voc(records, detections, CLASSES)
    assert ap.voc[0] == pytest.approx(0.625, abs=1e-12)
    assert ap.voc07[0] == pytest.approx(6.75 / 11, abs=1e-12)
    assert ap.npos.tolist() == [4, 0]
    assert math.isnan(ap.voc[1]) and math.isnan(ap.voc07[1])  # no dog: nan ...
    assert ap.voc_map == pytest.approx(0.625)  # ... and left out of the mean


def test_eleven_point_thresholds_are_the_python_ports():
    # 3 of 10 objects found at precision 1: recall is exactly 0.3, which is below the
    # threshold 3 * 0.1 = 0.30000000000000004 of np.arange(0, 1.1, 0.1); so only
    # t = 0, 0.1, 0.2 count: AP = 3/11 (as in voc_eval.py and the original code).
    assert VOC07_RECALL_THRESHOLDS[3] > 0.3
    precision, recall = precision_recall(np.array([1, 1, 1]), npos=10)
    assert average_precision_voc07(precision, recall) == pytest.approx(3 / 11)
    # All-point: 0.3 * 1.
    assert average_precision_voc(precision, recall) == pytest.approx(0.3)


def test_perfect_and_empty_detections():
    records = [record("a", CATS[:2], [1, 2])]
    perfect = {"a": dets(CATS[:2], [0.9, 0.8], [1, 2])}
    ap = evaluate_voc(records, perfect, CLASSES)
    assert ap.voc07.tolist() == [1.0, 1.0] and ap.voc.tolist() == [1.0, 1.0]
    none = evaluate_voc(records, {}, CLASSES)
    assert none.voc07.tolist() == [0.0, 0.0] and none.voc_map == 0.0


def test_interpolated_precision_rule():
    precision = np.array([1.0, 0.5, 2 / 3])
    recall = np.array([0.5, 0.5, 1.0])
    # Max precision among points with recall >= t; 0 beyond the last recall.
    out = interpolated_precision(precision, recall, np.array([0.0, 0.5, 0.6, 1.0]))
    np.testing.assert_allclose(out, [1.0, 1.0, 2 / 3, 2 / 3])
    assert interpolated_precision(precision[:2], recall[:2], np.array([0.7])).tolist() == [0.0]


# ------------------------------------------------------ duplicates, VOC's rule, IoU
def test_duplicates_are_false_positives():
    records = [record("a", [CATS[0]], [1])]
    detections = {"a": dets([CATS[0], [0.5, 0, 10.5, 10]], [0.9, 0.95], [1, 1])}
    gt = FlatGroundTruth.from_records(records)
    flat = FlatDetections.from_mapping(detections, ["a"])
    # The higher-scored one (the second) takes the object; the other is a duplicate.
    assert match_outcomes(gt, flat).tolist() == [0, 1]
    ap = evaluate_voc(records, detections, CLASSES)
    assert ap.voc[0] == pytest.approx(1.0)  # recall 1 reached at precision 1
    assert ap.detections.tolist() == [2, 0]


def test_best_object_taken_means_false_positive_even_if_another_is_free():
    # A = [0,0,10,10], B = [1,0,11,10]. The first detection is A exactly and takes it.
    # The second, [0.2,0,10.2,10], has IoU 98/102 = 0.96 with A and 92/108 = 0.85 with
    # B: VOC compares it with A only, which is taken: a false positive although B is
    # free and overlaps it above 0.5.
    records = [record("a", [[0, 0, 10, 10], [1, 0, 11, 10]], [1, 1])]
    detections = {"a": dets([[0, 0, 10, 10], [0.2, 0, 10.2, 10]], [0.9, 0.8], [1, 1])}
    gt = FlatGroundTruth.from_records(records)
    flat = FlatDetections.from_mapping(detections, ["a"])
    assert match_outcomes(gt, flat).tolist() == [1, 0]


def test_iou_threshold_is_strict_and_continuous():
    # Detection [0,0,10,5] on object [0,0,10,10]: IoU exactly 50/100 = 0.5, not > 0.5.
    records = [record("a", [[0, 0, 10, 10]], [1])]
    at_half = {"a": dets([[0, 0, 10, 5]], [0.9], [1])}
    assert evaluate_voc(records, at_half, CLASSES).voc[0] == 0.0
    # IoU 51/100 matches. (With the devkit's +1 widths it would be 11*6/121 = 0.545.)
    above = {"a": dets([[0, 0, 10, 5.1]], [0.9], [1])}
    assert evaluate_voc(records, above, CLASSES).voc[0] == 1.0
    # A looser threshold makes the first one match too.
    assert evaluate_voc(records, at_half, CLASSES, iou_threshold=0.4).voc[0] == 1.0


def test_wrong_class_and_wrong_image_do_not_match():
    records = [record("a", [CATS[0]], [1]), record("b", [CATS[1]], [1])]
    detections = {"a": dets([CATS[0]], [0.9], [2]), "b": dets([CATS[0]], [0.8], [1])}
    ap = evaluate_voc(records, detections, CLASSES)
    assert ap.voc[0] == 0.0 and math.isnan(ap.voc[1])


# ------------------------------------------------------------------- difficult objects
def difficult_case():
    # Object A (normal) and B (difficult), both cats. Detections in score order:
    # on B (0.9), on nothing (0.85), on A (0.8), on B again (0.7).
    A, B = CATS[0], CATS[2]
    records = [record("a", [A, B], [1, 1], difficult=[False, True])]
    detections = {"a": dets([B, MISS, A, B], [0.9, 0.85, 0.8, 0.7], [1, 1, 1, 1])}
    return records, detections


def test_detections_on_difficult_objects_are_ignored():
    records, detections = difficult_case()
    gt = FlatGroundTruth.from_records(records)
    flat = FlatDetections.from_mapping(detections, ["a"])
    # Both detections on B: neither TP nor FP (-1), however many there are.
    assert match_outcomes(gt, flat).tolist() == [-1, 0, 1, -1]
    result = evaluate(records, detections, CLASSES, coco=False, size_bins=False)
    cat = result["ap_per_class"]["cat"]
    assert cat["npos"] == 1  # B is not counted
    # Remaining curve: FP, TP -> precision 0, 1/2; recall 0, 1.
    # All-point: 1 * 1/2. 11-point: every threshold sees precision 1/2.
    assert cat["voc"] == pytest.approx(0.5)
    assert cat["voc07"] == pytest.approx(0.5)


def test_difficult_counted_when_not_ignored():
    records, detections = difficult_case()
    result = evaluate(records, detections, CLASSES, keep_difficult_as_ignored=False,
                      coco=False, size_bins=False)
    cat = result["ap_per_class"]["cat"]
    # Now B is an ordinary object: TP, FP, TP, FP(duplicate on B), npos 2.
    # precision 1, 1/2, 2/3, 1/2; recall 1/2, 1/2, 1, 1.
    # All-point: 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # 11-point: t <= 0.5 -> 1 (6 thresholds), t > 0.5 -> 2/3 (5): (6 + 10/3) / 11.
    assert cat["npos"] == 2
    assert cat["voc"] == pytest.approx(5 / 6)
    assert cat["voc07"] == pytest.approx((6 + 10 / 3) / 11)
    assert result["difficult"] == "counted"


def test_dataset_without_difficult_objects():
    # A dataset loaded without difficult objects: B simply is not there, so a
    # detection on it is a plain false positive.
    records = [record("a", [CATS[0]], [1])]
    detections = {"a": dets([CATS[2], CATS[0]], [0.9, 0.8], [1, 1])}
    ap = evaluate_voc(records, detections, CLASSES)
    assert ap.npos[0] == 1 and ap.voc[0] == pytest.approx(0.5)


# -------------------------------------------------------- fast path == reference loop
def random_case(seed: int, images: int = 150, per_image: int = 25, num_classes: int = 3):
    """Crowded small images (many overlaps), difficult objects, copies and tied scores."""
    rng = np.random.default_rng(seed)
    records, detections = [], {}
    for i in range(images):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 30, (k, 2))
        wh = rng.uniform(4, 30, (k, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(1, num_classes + 1, k)
        records.append(record(f"{i:04d}", boxes, labels, rng.random(k) < 0.2, 60, 60))
        n = int(rng.integers(0, per_image + 1))
        dxy = rng.uniform(0, 30, (n, 2))
        dwh = rng.uniform(4, 30, (n, 2))
        det_boxes = np.concatenate([dxy, dxy + dwh], axis=1)
        if k and n:
            copies = rng.random(n) < 0.4  # near or exact copies of objects
            src = rng.integers(0, k, n)
            noise = rng.normal(0, 1.5, (n, 4)) * (rng.random((n, 1)) < 0.7)
            det_boxes[copies] = boxes[src[copies]] + noise[copies]
            det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 0.5)
        scores = np.round(rng.random(n) * 20) / 20  # many ties
        detections[f"{i:04d}"] = dets(det_boxes, scores, rng.integers(1, num_classes + 1, n))
    return records, detections


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_vectorised_equals_reference(seed, threshold):
    records, detections = random_case(seed)
    names = ("a", "b", "c")
    fast = evaluate_voc(records, detections, names, iou_threshold=threshold)
    gt = FlatGroundTruth.from_records(records)
    flat = FlatDetections.from_mapping(detections, [r.image_id for r in records])
    # Detection by detection, the same outcome ...
    outcome = match_outcomes(gt, flat, iou_threshold=threshold)
    np.testing.assert_array_equal(outcome, reference_outcomes(gt, flat, 3, iou_threshold=threshold))
    assert {-1, 0, 1} <= set(outcome.tolist())  # ignored, FP and TP all occur
    # ... and the same AP per class.
    ref07, ref = reference_average_precision(gt, flat, 3, iou_threshold=threshold)
    np.testing.assert_allclose(fast.voc07, ref07, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.voc, ref, rtol=0, atol=1e-12)
    assert np.isfinite(fast.voc).all()  # the cases do exercise every class


def test_flat_input_equals_mapping_input():
    records, detections = random_case(7, images=40)
    flat = FlatDetections.from_mapping(detections, [r.image_id for r in records])
    a = evaluate(records, detections, ("a", "b", "c"), coco=False)
    b = evaluate(records, flat, ("a", "b", "c"), coco=False)
    assert json.dumps(to_json(a)) == json.dumps(to_json(b))


def test_torch_tensors_are_accepted():
    import torch

    records = [record("a", [CATS[0]], [1])]
    detections = {"a": {"boxes": torch.tensor([CATS[0]], dtype=torch.float32),
                        "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}}
    assert evaluate_voc(records, detections, CLASSES).voc[0] == 1.0


def test_bad_inputs_raise():
    records = [record("a", [CATS[0]], [1])]
    with pytest.raises(ValueError, match="'zzz'"):
        evaluate_voc(records, {"zzz": dets([CATS[0]], [0.9], [1])}, CLASSES)
    with pytest.raises(ValueError, match=r"1\.\.2"):
        evaluate_voc(records, {"a": dets([CATS[0]], [0.9], [3])}, CLASSES)
    with pytest.raises(ValueError, match="expected boxes"):
        evaluate_voc(records, {"a": {"boxes": np.zeros((2, 4)), "scores": [1.0],
                                     "labels": [1]}}, CLASSES)


# ---------------------------------------------------------------------- pycocotools
def separated_case(seed: int):
    """One class; objects in separate cells of a grid (a detection overlaps at most one
    object); detections either clearly on an object (IoU > 0.6) or clearly off
    (IoU < 0.4); distinct scores; under 100 detections per image. Here VOC's and
    COCO's matching agree."""
    rng = np.random.default_rng(seed)
    records, detections = [], {}
    for i in range(30):
        cells = rng.choice(16, size=int(rng.integers(1, 6)), replace=False)
        boxes = []
        for c in cells:
            x0, y0 = (c % 4) * 100, (c // 4) * 100
            w, h = rng.uniform(30, 60, 2)
            x, y = x0 + rng.uniform(5, 90 - w), y0 + rng.uniform(5, 90 - h)
            boxes.append([x, y, x + w, y + h])
        boxes = np.array(boxes)
        det_boxes = []
        for _ in range(int(rng.integers(0, 3 * len(boxes) + 1))):
            g = boxes[rng.integers(len(boxes))]
            while True:
                shift = rng.normal(0, 0.15, 4) * np.tile(g[2:] - g[:2], 2)
                cand = g + shift
                if cand[2] - cand[0] < 2 or cand[3] - cand[1] < 2:
                    continue
                iou = _iou(cand, g)
                if iou > 0.6 or iou < 0.4:
                    det_boxes.append(cand)
                    break
        records.append(record(f"{i:03d}", boxes, np.ones(len(boxes)), width=400, height=400))
        n = len(det_boxes)
        detections[f"{i:03d}"] = dets(np.array(det_boxes).reshape(-1, 4), rng.random(n), np.ones(n))
    return records, detections


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_ap50_curve_equals_ours(seed):
    # COCO samples the same precision envelope at 101 recall points: with one class,
    # no ties and no ambiguous overlaps its AP50 precision array equals our
    # interpolation of our own PR curve at np.linspace(0, 1, 101).
    records, detections = separated_case(seed)
    names = ("thing",)
    matches = voc_matches(records, detections, names)
    precision, recall = matches.precision_recall(1)
    ours = interpolated_precision(precision, recall, np.linspace(0, 1, 101))
    evaluator = run_cocoeval(records, detections, names)
    theirs = evaluator.eval["precision"][0, :, 0, 0, 2]  # IoU 0.5, class, area all, 100 dets
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert evaluator.stats[1] == pytest.approx(ours.mean(), abs=1e-9)
    assert 0.2 < ours.mean() < 0.99  # a real curve, neither trivial nor empty


def test_coco_metrics_perfect_with_size_ranges_and_difficult():
    # A small (20x20 = 400 < 32^2), a medium (50x50) and a large (200x200) object, all
    # detected exactly; plus a difficult object with a detection on it, which COCO
    # ignores (marked iscrowd), so every AP is 1.
    small, medium = [0, 0, 20, 20], [50, 50, 100, 100]
    large, hard = [0, 100, 200, 300], [250, 0, 290, 40]
    records = [record("a", [small, medium, large, hard], [1, 1, 2, 1],
                      difficult=[0, 0, 0, 1], width=300, height=300)]
    detections = {"a": dets([small, medium, large, hard], [0.9, 0.8, 0.7, 0.95], [1, 1, 2, 1])}
    result = evaluate(records, detections, CLASSES)
    assert result["coco"] == pytest.approx(
        {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0, "APm": 1.0, "APl": 1.0}
    )
    assert result["voc07_map"] == 1.0
    # Counted as an ordinary object and not detected, the difficult cat costs cat a
    # third of its recall: precision 1 up to recall 2/3, so AP = 2/3.
    missed = {"a": dets([small, medium, large], [0.9, 0.8, 0.7], [1, 1, 2])}
    counted = evaluate(records, missed, CLASSES, keep_difficult_as_ignored=False)
    assert counted["coco"]["AP50"] < 1.0
    assert counted["ap_per_class"]["cat"]["voc"] == pytest.approx(2 / 3)


def test_coco_without_detections_or_medium_objects():
    records = [record("a", [[0, 0, 20, 20]], [1], width=300, height=300)]
    result = evaluate(records, {}, CLASSES)
    assert result["coco"]["AP"] == 0.0 and result["coco"]["APs"] == 0.0
    assert math.isnan(result["coco"]["APm"])  # no medium object: COCO's -1 -> nan


# -------------------------------------------------------------------------- size bins
def test_size_bins_on_a_tiny_case():
    # 100x100 images (area 10,000 px):
    #   a: one 10x10 object (1 %)        -> "0-5", detected exactly
    #   b: one 30x30 object (9 %)        -> "5-10", missed (a detection elsewhere)
    #   c: 10x10 and 30x30 objects       -> mixed bins: no bin
    #   d: a 50x50 object (25 %) and a difficult 10x10 one -> "20-40" (difficult left
    #      out of binning); detected exactly
    #   e: a 100x100 object (100 %)      -> "80-100", detected at IoU 0.81 with score
    #      0.5 after a false positive of score 0.6
    small, mid = [0, 0, 10, 10], [50, 50, 80, 80]
    records = [
        record("a", [small], [1]),
        record("b", [mid], [1]),
        record("c", [small, mid], [1, 2]),
        record("d", [[0, 0, 50, 50], [60, 60, 70, 70]], [2, 1], difficult=[0, 1]),
        record("e", [[0, 0, 100, 100]], [2]),
    ]
    detections = {
        "a": dets([small], [0.9], [1]),
        "b": dets([small], [0.9], [1]),
        "c": dets([small, mid], [0.9, 0.9], [1, 2]),
        "d": dets([[0, 0, 50, 50]], [0.9], [2]),
        "e": dets([[0, 0, 90, 90], [0, 0, 50, 50]], [0.5, 0.6], [2, 2]),
    }
    result = evaluate(records, detections, CLASSES, coco=False)
    bins = result["size_bins"]
    assert list(bins) == ["0-5", "5-10", "10-20", "20-40", "40-60", "60-80", "80-100"]
    assert bins["0-5"] == {"images": 1, "voc07_map": 1.0, "voc_map": 1.0}
    assert bins["5-10"] == {"images": 1, "voc07_map": 0.0, "voc_map": 0.0}
    assert bins["20-40"] == {"images": 1, "voc07_map": 1.0, "voc_map": 1.0}
    # e: FP then TP -> precision 0, 1/2 at recall 0, 1: 0.5 both ways.
    assert bins["80-100"]["images"] == 1 and bins["80-100"]["voc_map"] == pytest.approx(0.5)
    for empty in ("10-20", "40-60", "60-80"):
        assert bins[empty]["images"] == 0 and math.isnan(bins[empty]["voc07_map"])
    assert result["size_bins_unassigned"] == 1
    # A bin's figures equal evaluating its images alone.
    alone = evaluate([records[4]], {"e": detections["e"]}, CLASSES, coco=False, size_bins=False)
    assert alone["voc_map"] == bins["80-100"]["voc_map"]


def test_size_bin_reuse_equals_subset_evaluation():
    records, detections = random_case(3, images=80)
    names = ("a", "b", "c")
    result = evaluate(records, detections, names, coco=False)
    bin_of = image_bins(records)
    for b, (name, row) in enumerate(result["size_bins"].items()):
        subset = [r for r, x in zip(records, bin_of) if x == b]
        assert row["images"] == len(subset)
        if subset:
            subset_detections = {r.image_id: detections[r.image_id] for r in subset}
            alone = evaluate_voc(subset, subset_detections, names)
            assert row["voc07_map"] == pytest.approx(alone.voc07_map, nan_ok=True)
            assert row["voc_map"] == pytest.approx(alone.voc_map, nan_ok=True)


# ---------------------------------------------------------------- detections file
def test_write_then_read_detections_round_trip(tmp_path):
    records, detections = random_case(11, images=12)
    names = ("a", "b", "c")
    path = tmp_path / "sub" / "detections.json"
    write_detections(path, detections, names)
    entries = json.loads(path.read_text())
    assert sum(len(d["scores"]) for d in detections.values()) == len(entries)
    assert set(entries[0]) == {"image_id", "label", "bbox", "score"}
    back = read_detections(path, records, names)
    assert list(back) == [r.image_id for r in records]
    for image_id, det in detections.items():
        np.testing.assert_array_equal(back[image_id]["boxes"], det["boxes"])
        np.testing.assert_array_equal(back[image_id]["scores"], det["scores"])
        np.testing.assert_array_equal(back[image_id]["labels"], det["labels"])
        assert back[image_id]["boxes"].dtype == np.float32
        assert back[image_id]["boxes"].shape == (len(det["scores"]), 4)


def test_read_detections_valid_file(tmp_path):
    records = [record("000001", [CATS[0]], [1]), record("000002", [CATS[1]], [2])]
    path = tmp_path / "d.json"
    path.write_text(json.dumps([
        {"image_id": "000001", "label": "dog", "bbox": [1, 2, 3, 4.5], "score": 0.9},
        {"image_id": "000001", "label": "cat", "bbox": [0, 0, 10, 10], "score": 1, "extra": 1},
    ]))
    out = read_detections(path, records, CLASSES)
    np.testing.assert_array_equal(out["000001"]["labels"], [2, 1])
    np.testing.assert_allclose(out["000001"]["boxes"], [[1, 2, 3, 4.5], [0, 0, 10, 10]])
    np.testing.assert_allclose(out["000001"]["scores"], [0.9, 1.0])
    assert out["000002"]["boxes"].shape == (0, 4)
    assert evaluate_voc(records, out, CLASSES).voc[0] == 1.0


GOOD = {"image_id": "000001", "label": "cat", "bbox": [0, 0, 10, 10], "score": 0.5}


def _with(**changes):
    entry = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            del entry[key]
        else:
            entry[key] = value
    return entry


_DROP = object()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{\"image_id\": ", "invalid JSON at line 1"),
        (json.dumps({"image_id": "000001"}), "expected a JSON list of detections, found dict"),
        (json.dumps([GOOD, 3]), "entry 1: expected an object"),
        (json.dumps([GOOD, _with(score=_DROP)]), "entry 1: missing key 'score'"),
        (json.dumps([GOOD, _with(bbox=_DROP)]), "entry 1: missing key 'bbox'"),
        (json.dumps([_with(label="dgo")]), "entry 0: unknown label 'dgo'"),
        (json.dumps([_with(label=1)]), "entry 0: unknown label 1"),
        (json.dumps([GOOD, GOOD, _with(image_id="999999")]),
         "entry 2: image_id '999999' is not in the evaluated images"),
        (json.dumps([_with(image_id=1)]), "entry 0: image_id must be a string"),
        (json.dumps([_with(bbox=[0, 0, 10])]), "entry 0: bbox must be 4 finite numbers"),
        (json.dumps([_with(bbox=[10, 0, 0, 10])]), "entry 0: bbox must be 4 finite numbers"),
        (json.dumps([_with(bbox=[0, 0, "10", 10])]), "entry 0: bbox must be"),
        ('[{"image_id": "000001", "label": "cat", "bbox": [0, 0, NaN, 10], "score": 1}]',
         "entry 0: bbox must be"),
        (json.dumps([_with(score="high")]), "entry 0: score must be a finite number"),
        (json.dumps([_with(score=True)]), "entry 0: score must be a finite number"),
    ],
)
def test_read_detections_bad_entries(tmp_path, content, message):
    records = [record("000001", [CATS[0]], [1])]
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_detections(path, records, CLASSES)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_read_detections_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_detections(tmp_path / "nope.json", [], CLASSES)


def test_write_detections_rejects_bad_labels(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        write_detections(tmp_path / "d.json", {"a": dets([CATS[0]], [0.5], [5])}, CLASSES)


# ------------------------------------------------------------------------- reporting
def test_json_and_table():
    records, detections = difficult_case()
    result = evaluate(records, detections, CLASSES)
    text = json.dumps(to_json(result), allow_nan=False)  # JSON-safe: no NaN literal
    data = json.loads(text)
    assert data["ap_per_class"]["dog"]["voc07"] is None  # nan -> null
    assert data["size_bins"]["10-20"]["voc07_map"] is None  # an empty bin
    assert set(data["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    back = from_json(text)
    assert math.isnan(back["ap_per_class"]["dog"]["voc07"])
    assert back["voc_map"] == result["voc_map"]
    assert to_json(from_json(data)) == data  # parsed dict in, same result out
    without = to_json(evaluate(records, detections, CLASSES, coco=False, size_bins=False))
    assert from_json(without)["coco"] is None and from_json(without)["size_bins"] is None
    table = format_table(result)
    assert "cat" in table and "dog" in table and "0.5000" in table
    dog_line = next(line for line in table.splitlines() if line.startswith("dog"))
    assert dog_line.split()[-2:] == ["-", "-"]
