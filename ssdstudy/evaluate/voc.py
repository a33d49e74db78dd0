"""Pascal VOC average precision, vectorised with numpy.

The matching follows the VOC devkit (``VOCevaldet.m`` and its Python port
``voc_eval.py``) exactly:

* a detection is compared with every ground-truth object of its class in its
  image (difficult ones included) and keeps only the one of largest IoU (the first
  one on ties, in the record's order);
* if that IoU is strictly greater than the threshold (``ovmax > ovthresh``, 0.5)
  and the object is difficult, the detection is *ignored*: neither a true nor a false
  positive, however many detections fall on it;
* if the object is not difficult and not yet taken by a detection of higher score,
  the detection is a true positive and takes it; otherwise (taken already, or the
  best IoU is not above the threshold, or the image has no object of the class) it is
  a false positive. A detection whose best object is taken is a false positive even
  when another free object overlaps it above the threshold;
* detections are processed in descending score; ties keep their input order (a
  stable sort; the devkit's quicksort leaves the order of ties unspecified).

Boxes are continuous pixel coordinates, so IoU uses widths ``x2 - x1`` with no
``+ 1`` (the devkit adds one because its boxes are inclusive integer pixels).

Vectorisation rests on one observation: which object a detection compares with,
and its IoU, do not depend on the other detections. Only the "already taken" test
does, and it is settled by keeping, for every object, the highest-scored detection
that chose it. So all (detection, object) pairs of the same image and class are
formed at once, the best object of each detection is found with segment maxima, and
the first detection per object in score order becomes the true positive.

Classes with no (non-difficult) ground truth in the evaluated images have no
defined recall: their AP is ``nan`` and the mean over classes skips them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: Recall thresholds of the VOC2007 11-point metric, as the Python ports of the devkit
#: (and the original study's code) compute them: ``np.arange(0, 1.1, 0.1)``. They are
#: ``k * 0.1`` in floating point, so 0.3 is 0.30000000000000004: a recall of exactly
#: 3/10 does not reach it. Kept as is so our numbers equal theirs.
VOC07_RECALL_THRESHOLDS: np.ndarray = np.arange(0.0, 1.1, 0.1)

#: Outcome codes of a matched detection.
TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 1, 0, -1


class RecordLike(Protocol):
    """What evaluation reads from a record (:class:`ssdstudy.data.Record` fits)."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) XYXY continuous pixels
    labels: np.ndarray  # (K,) int64, 1-based
    difficult: np.ndarray  # (K,) bool


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class FlatDetections:
    """All detections of an evaluation as flat arrays, N detections in total.

    Attributes:
        image_index: (N,) int64, position of the detection's image in the records.
        boxes: (N, 4) float64 XYXY continuous pixels of the original image.
        scores: (N,) float64.
        labels: (N,) int64, 1-based class labels (class ``i`` of the class list is ``i + 1``).

    This is also the flat input form :func:`ssdstudy.evaluate.evaluate` accepts in place
    of the per-image mapping.
    """

    image_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.image_index)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                "FlatDetections: expected image_index (N,), boxes (N,4), scores (N,), labels (N,); "
                f"got {self.image_index.shape}, {self.boxes.shape}, {self.scores.shape}, "
                f"{self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.image_index)

    @classmethod
    def from_arrays(
        cls, image_index: Any, boxes: Any, scores: Any, labels: Any
    ) -> FlatDetections:
        """Build from array-likes (numpy arrays, lists, CPU tensors)."""
        return cls(
            image_index=np.asarray(image_index, dtype=np.int64).reshape(-1),
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float64).reshape(-1),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        )

    @classmethod
    def from_mapping(
        cls, detections: Mapping[str, Mapping[str, Any]], image_ids: Sequence[str]
    ) -> FlatDetections:
        """Flatten ``{image_id: {"boxes": (K,4), "scores": (K,), "labels": (K,)}}``.

        The arrays may be numpy arrays, lists or torch tensors (as
        :func:`ssdstudy.predict.postprocess` returns them, on any device).

        Images of ``image_ids`` missing from the mapping have no detections. An image id
        of the mapping that is not in ``image_ids`` is an error (ValueError).
        """
        position = {image_id: i for i, image_id in enumerate(image_ids)}
        unknown = [key for key in detections if key not in position]
        if unknown:
            shown = ", ".join(repr(k) for k in unknown[:5])
            raise ValueError(
                f"detections for {len(unknown)} image id(s) not among the records: {shown}"
            )
        index_parts, box_parts, score_parts, label_parts = [], [], [], []
        for image_id, det in detections.items():
            boxes = _numpy(det["boxes"], np.float64)
            scores = _numpy(det["scores"], np.float64).reshape(-1)
            labels = _numpy(det["labels"], np.int64).reshape(-1)
            k = len(scores)
            if boxes.size == 0 and k == 0:
                continue
            if boxes.shape != (k, 4) or labels.shape != (k,):
                raise ValueError(
                    f"detections of image {image_id!r}: expected boxes (K,4), scores (K,), "
                    f"labels (K,); got {boxes.shape}, {scores.shape}, {labels.shape}"
                )
            index_parts.append(np.full(k, position[image_id], dtype=np.int64))
            box_parts.append(boxes)
            score_parts.append(scores)
            label_parts.append(labels)
        if not index_parts:
            return cls.empty()
        return cls(
            image_index=np.concatenate(index_parts),
            boxes=np.concatenate(box_parts),
            scores=np.concatenate(score_parts),
            labels=np.concatenate(label_parts),
        )

    @classmethod
    def empty(cls) -> FlatDetections:
        return cls(
            image_index=np.zeros(0, np.int64),
            boxes=np.zeros((0, 4), np.float64),
            scores=np.zeros(0, np.float64),
            labels=np.zeros(0, np.int64),
        )


def _numpy(values: Any, dtype: type) -> np.ndarray:
    """An array of ``dtype`` from a numpy array, a list or a torch tensor (any device)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


@dataclass(frozen=True)
class FlatGroundTruth:
    """All ground-truth objects of the evaluated records as flat arrays (M objects).

    Attributes:
        image_index: (M,) int64, position of the object's image in the records.
        boxes: (M, 4) float64 XYXY continuous pixels.
        labels: (M,) int64, 1-based.
        ignored: (M,) bool, True for difficult objects that VOC ignores.
        num_images: number of records.
    """

    image_index: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignored: np.ndarray
    num_images: int

    @classmethod
    def from_records(
        cls, records: Sequence[RecordLike], *, keep_difficult_as_ignored: bool = True
    ) -> FlatGroundTruth:
        """Collect the objects of ``records``.

        With ``keep_difficult_as_ignored`` (VOC's rule) difficult objects are kept as
        ignored objects; without it they count as ordinary objects (the devkit's
        ``use_difficult=True``). A record without difficult flags (``difficult`` None)
        has none.
        """
        index_parts, box_parts, label_parts, ignored_parts = [], [], [], []
        for i, record in enumerate(records):
            boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
            k = len(boxes)
            if k == 0:
                continue
            labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
            difficult = getattr(record, "difficult", None)
            if difficult is None or not keep_difficult_as_ignored:
                ignored = np.zeros(k, dtype=bool)
            else:
                ignored = np.asarray(difficult, dtype=bool).reshape(-1)
            if labels.shape != (k,) or ignored.shape != (k,):
                raise ValueError(
                    f"record {record.image_id!r}: boxes, labels and difficult disagree in "
                    f"length ({k}, {labels.shape[0]}, {ignored.shape[0]})"
                )
            index_parts.append(np.full(k, i, dtype=np.int64))
            box_parts.append(boxes)
            label_parts.append(labels)
            ignored_parts.append(ignored)
        if not index_parts:
            return cls(
                np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64),
                np.zeros(0, bool), len(records),
            )
        return cls(
            image_index=np.concatenate(index_parts),
            boxes=np.concatenate(box_parts),
            labels=np.concatenate(label_parts),
            ignored=np.concatenate(ignored_parts),
            num_images=len(records),
        )


# ------------------------------------------------------------------ AP of a PR curve
def precision_recall(outcomes: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection of one class.

    Args:
        outcomes: (D,) outcome codes in descending score order (1 TP, 0 FP,
            -1 ignored; ignored detections are dropped: they move neither count).
        npos: number of non-ignored ground-truth objects of the class.

    Returns:
        (precision (D',), recall (D',)) float64, D' = non-ignored detections. Recall is
        nan when ``npos`` is 0.
    """
    outcomes = np.asarray(outcomes)
    kept = outcomes[outcomes != IGNORED]
    tp = np.cumsum(kept == TRUE_POSITIVE, dtype=np.float64)
    fp = np.cumsum(kept == FALSE_POSITIVE, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / float(npos) if npos > 0 else np.full_like(tp, np.nan)
    return precision, recall


def interpolated_precision(
    precision: np.ndarray, recall: np.ndarray, recall_thresholds: np.ndarray
) -> np.ndarray:
    """Interpolated precision at each recall threshold.

    The interpolated precision at recall ``t`` is the largest precision among points
    whose recall is at least ``t`` (0 if recall never reaches ``t``). This is both the
    VOC2007 11-point rule (``max(prec[rec >= t])``) and COCO's rule (precision
    envelope sampled with ``searchsorted(rec, t, "left")``).

    Args:
        precision, recall: (D,) a precision-recall curve, recall non-decreasing.
        recall_thresholds: (T,) thresholds.

    Returns:
        (T,) float64.
    """
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    thresholds = np.asarray(recall_thresholds, dtype=np.float64)
    out = np.zeros(len(thresholds), dtype=np.float64)
    if len(precision) == 0:
        return out
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    first = np.searchsorted(recall, thresholds, side="left")
    reached = first < len(recall)
    out[reached] = envelope[first[reached]]
    return out


def average_precision_voc07(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2007 11-point AP: the mean interpolated precision at recall 0, 0.1, ..., 1.

    See :data:`VOC07_RECALL_THRESHOLDS` for the exact thresholds. nan when the recall
    is nan (no ground truth).
    """
    recall = np.asarray(recall, dtype=np.float64)
    if len(recall) and np.isnan(recall[0]):
        return float("nan")
    return float(np.mean(interpolated_precision(precision, recall, VOC07_RECALL_THRESHOLDS)))


def average_precision_voc(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2010+ AP: the area under the monotone precision envelope ("all points").

    The curve is extended with (recall 0, precision 0) and (recall 1, precision 0);
    precision is replaced by its running maximum from the right, and the area is the
    sum of ``(r[i+1] - r[i]) * p[i+1]`` over the points where recall changes. nan when
    the recall is nan (no ground truth).
    """
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    if len(recall) and np.isnan(recall[0]):
        return float("nan")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


# ------------------------------------------------------------------------- matching
def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes: a (P,4), b (P,4) XYXY continuous -> (P,) float64 (0 if union is 0)."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    iou = np.zeros(len(a), dtype=np.float64)
    positive = union > 0
    iou[positive] = inter[positive] / union[positive]
    return iou


def match_outcomes(
    gt: FlatGroundTruth,
    det: FlatDetections,
    *,
    iou_threshold: float = 0.5,
    score_order: np.ndarray | None = None,
) -> np.ndarray:
    """VOC outcome of every detection (see the module docstring for the rules).

    Args:
        gt: the ground truth of the evaluated images.
        det: N detections; ``det.image_index`` indexes the same records as ``gt``.
        iou_threshold: a detection matches its best object when IoU > this.
        score_order: (N,) ``np.argsort(-det.scores, kind="stable")`` if the caller
            has it already.

    Returns:
        (N,) int8 outcomes in the order of ``det``: 1 true positive, 0 false
        positive, -1 ignored (its best object is difficult).
    """
    n = len(det)
    outcome = np.full(n, FALSE_POSITIVE, dtype=np.int8)
    if n == 0 or len(gt.labels) == 0:
        return outcome
    # One key per (image, class); labels outside the gt range simply never match.
    stride = int(max(gt.labels.max(), det.labels.max())) + 1
    gt_key = gt.image_index * stride + gt.labels
    det_key = det.image_index * stride + det.labels
    gt_order = np.argsort(gt_key, kind="stable")  # keeps the record's order on ties
    sorted_key = gt_key[gt_order]
    start = np.searchsorted(sorted_key, det_key, side="left")
    count = np.searchsorted(sorted_key, det_key, side="right") - start
    # All (detection, object of the same image and class) pairs, grouped by detection.
    pair_det = np.repeat(np.arange(n), count)
    offset = np.cumsum(count) - count
    within = np.arange(len(pair_det)) - offset[pair_det]
    pair_gt = gt_order[start[pair_det] + within]
    iou = _pair_iou(det.boxes[pair_det], gt.boxes[pair_gt])
    if len(iou) == 0:
        return outcome
    has = count > 0
    best_iou = np.full(n, -1.0)
    best_iou[has] = np.maximum.reduceat(iou, offset[has])
    # First pair reaching the maximum of its detection: the devkit's argmax.
    at_max = np.flatnonzero(iou == best_iou[pair_det])
    first = np.concatenate(([True], pair_det[at_max[1:]] != pair_det[at_max[:-1]]))
    best_gt = np.full(n, -1, dtype=np.int64)
    best_gt[pair_det[at_max[first]]] = pair_gt[at_max[first]]

    matched = best_iou > iou_threshold
    on_ignored = np.zeros(n, dtype=bool)
    on_ignored[matched] = gt.ignored[best_gt[matched]]
    outcome[on_ignored] = IGNORED
    candidates = np.flatnonzero(matched & ~on_ignored)
    if len(candidates):
        # Rank in descending score, stable on ties; the best-ranked candidate of each
        # object takes it.
        if score_order is None:
            score_order = np.argsort(-det.scores, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[score_order] = np.arange(n)
        cand_gt = best_gt[candidates]
        order = np.lexsort((rank[candidates], cand_gt))
        cand_gt = cand_gt[order]
        winner = np.concatenate(([True], cand_gt[1:] != cand_gt[:-1]))
        outcome[candidates[order[winner]]] = TRUE_POSITIVE
    return outcome


# -------------------------------------------------------------------------- results
@dataclass(frozen=True)
class VOCAveragePrecision:
    """Per-class VOC average precision, C classes.

    Attributes:
        class_names: C names; class ``i`` has label ``i + 1``.
        npos: (C,) int64 non-ignored ground-truth objects.
        detections: (C,) int64 detections (ignored ones included).
        voc07: (C,) float64 11-point AP (nan where ``npos`` is 0).
        voc: (C,) float64 all-point AP (nan where ``npos`` is 0).
    """

    class_names: tuple[str, ...]
    npos: np.ndarray
    detections: np.ndarray
    voc07: np.ndarray
    voc: np.ndarray

    @property
    def voc07_map(self) -> float:
        """Mean 11-point AP over the classes that have ground truth (nan if none)."""
        return _nanmean(self.voc07)

    @property
    def voc_map(self) -> float:
        """Mean all-point AP over the classes that have ground truth (nan if none)."""
        return _nanmean(self.voc)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")


@dataclass(frozen=True)
class VOCMatches:
    """Matched detections of a whole evaluation, sorted by descending score (N of them).

    The outcome of a detection depends only on the detections of its own image, so the
    AP of any subset of images is computed from these flags without matching again
    (:meth:`average_precision` with ``images``).

    Attributes:
        class_names: C names.
        labels, image_index, scores: (N,) of the detections, descending score.
        outcome: (N,) int8: 1 TP, 0 FP, -1 ignored.
        gt: the ground truth (for the counts of positives).
    """

    class_names: tuple[str, ...]
    labels: np.ndarray
    image_index: np.ndarray
    scores: np.ndarray
    outcome: np.ndarray
    gt: FlatGroundTruth

    def average_precision(self, images: np.ndarray | None = None) -> VOCAveragePrecision:
        """AP per class over all images, or over ``images`` ((num_images,) bool mask or
        an index array) only."""
        num_classes = len(self.class_names)
        labels, outcome = self.labels, self.outcome
        gt_labels = self.gt.labels[~self.gt.ignored]
        if images is not None:
            mask = np.zeros(self.gt.num_images, dtype=bool)
            mask[np.asarray(images)] = True
            keep = mask[self.image_index]
            labels, outcome = labels[keep], outcome[keep]
            gt_labels = self.gt.labels[~self.gt.ignored & mask[self.gt.image_index]]
        npos = np.bincount(gt_labels, minlength=num_classes + 1)[1 : num_classes + 1]
        # Group detections by class keeping the score order (stable sort on labels).
        by_class = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[by_class], np.arange(1, num_classes + 2))
        voc07 = np.full(num_classes, np.nan)
        voc = np.full(num_classes, np.nan)
        counts = np.zeros(num_classes, dtype=np.int64)
        for c in range(num_classes):
            class_outcome = outcome[by_class[bounds[c] : bounds[c + 1]]]
            counts[c] = len(class_outcome)
            if npos[c] == 0:
                continue
            precision, recall = precision_recall(class_outcome, int(npos[c]))
            voc07[c] = average_precision_voc07(precision, recall)
            voc[c] = average_precision_voc(precision, recall)
        return VOCAveragePrecision(
            class_names=self.class_names,
            npos=npos.astype(np.int64),
            detections=counts,
            voc07=voc07,
            voc=voc,
        )

    def precision_recall(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """The precision-recall curve of class ``label`` (1-based) over all images."""
        npos = int(np.count_nonzero((self.gt.labels == label) & ~self.gt.ignored))
        return precision_recall(self.outcome[self.labels == label], npos)


def match_voc(
    gt: FlatGroundTruth,
    det: FlatDetections,
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
) -> VOCMatches:
    """Match every detection the VOC way and sort the result by descending score.

    Args:
        gt: ground truth (:meth:`FlatGroundTruth.from_records`).
        det: detections on the same records.
        class_names: C names; labels must lie in 1..C.
        iou_threshold: match when IoU > this (VOC: 0.5).
    """
    num_classes = len(class_names)
    for name, labels in (("detection", det.labels), ("ground-truth", gt.labels)):
        if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(
                f"{name} labels must lie in 1..{num_classes} (the class list); "
                f"found {int(labels.min())}..{int(labels.max())}"
            )
    if len(det) and (det.image_index.min() < 0 or det.image_index.max() >= gt.num_images):
        raise ValueError("detection image_index outside the records")
    order = np.argsort(-det.scores, kind="stable")
    outcome = match_outcomes(gt, det, iou_threshold=iou_threshold, score_order=order)
    return VOCMatches(
        class_names=tuple(class_names),
        labels=det.labels[order],
        image_index=det.image_index[order],
        scores=det.scores[order],
        outcome=outcome[order],
        gt=gt,
    )


def evaluate_voc(
    records: Sequence[RecordLike],
    detections: Mapping[str, Mapping[str, Any]] | FlatDetections,
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
    keep_difficult_as_ignored: bool = True,
) -> VOCAveragePrecision:
    """VOC AP per class (11-point and all-point) of ``detections`` on ``records``.

    ``detections`` is ``{image_id: {"boxes": (K,4), "scores": (K,), "labels": (K,)}}``
    or a :class:`FlatDetections` indexing ``records``.
    """
    return voc_matches(
        records, detections, class_names,
        iou_threshold=iou_threshold, keep_difficult_as_ignored=keep_difficult_as_ignored,
    ).average_precision()


def voc_matches(
    records: Sequence[RecordLike],
    detections: Mapping[str, Mapping[str, Any]] | FlatDetections,
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
    keep_difficult_as_ignored: bool = True,
) -> VOCMatches:
    """Flatten ``records`` and ``detections`` and match them (:func:`match_voc`)."""
    gt = FlatGroundTruth.from_records(records, keep_difficult_as_ignored=keep_difficult_as_ignored)
    det = as_flat_detections(detections, records)
    return match_voc(gt, det, class_names, iou_threshold=iou_threshold)


def as_flat_detections(
    detections: Mapping[str, Mapping[str, Any]] | FlatDetections, records: Sequence[RecordLike]
) -> FlatDetections:
    """Accept either input form of detections and return the flat one."""
    if isinstance(detections, FlatDetections):
        return detections
    return FlatDetections.from_mapping(detections, [r.image_id for r in records])
