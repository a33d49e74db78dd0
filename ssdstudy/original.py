"""The original code base's post-processing (qfgaohao's ``Predictor`` and
``box_utils.hard_nms``): per image on the CPU, a Python loop over the classes and a
Python ``while`` loop of greedy NMS. :func:`ssdstudy.predict.select_detections` runs it
with ``mode="reference"``; the timing measures it (the cost the original study put on
NMS) and the tests use it as an oracle for the batched path.

It lives apart from :mod:`ssdstudy.predict` because no run's results depend on it: it
is not part of the code whose hash marks a published run stale
(:data:`ssdstudy.provenance.COMPUTE_MODULES`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ssdstudy.predict import Detections, _empty


def hard_nms_reference(
    boxes: Tensor, scores: Tensor, iou_threshold: float, candidate_size: int
) -> Tensor:
    """Greedy NMS as a Python loop, the original code's way. Returns kept indices."""
    indexes = scores.argsort(descending=True)
    if candidate_size > 0:
        indexes = indexes[:candidate_size]
    picked: list[int] = []
    while len(indexes) > 0:
        current = indexes[0]
        picked.append(int(current))
        if len(indexes) == 1:
            break
        indexes = indexes[1:]
        iou = box_iou(boxes[indexes], boxes[current].unsqueeze(0)).squeeze(1)
        indexes = indexes[iou <= iou_threshold]
    return torch.tensor(picked, dtype=torch.long)


def select_reference(
    boxes: Tensor,
    scores: Tensor,
    sizes: list[tuple[float, float]],
    score_threshold: float,
    nms_iou: float,
    top_k: int,
    candidate_size: int,
) -> list[Detections]:
    cpu = torch.device("cpu")
    results: list[Detections] = []
    for i, (height, width) in enumerate(sizes):
        image_boxes = boxes[i].to(cpu)
        image_scores = scores[i].to(cpu)
        picked_boxes, picked_scores, picked_labels = [], [], []
        for class_index in range(1, image_scores.shape[1]):
            probs = image_scores[:, class_index]
            mask = probs > score_threshold
            probs = probs[mask]
            if probs.numel() == 0:
                continue
            subset = image_boxes[mask]
            keep = hard_nms_reference(subset, probs, nms_iou, candidate_size)
            picked_boxes.append(subset[keep])
            picked_scores.append(probs[keep])
            picked_labels.extend([class_index] * len(keep))
        if not picked_boxes:
            results.append(_empty(cpu))
            continue
        det_boxes = torch.cat(picked_boxes)
        det_scores = torch.cat(picked_scores)
        det_labels = torch.tensor(picked_labels, dtype=torch.long)
        order = det_scores.argsort(descending=True)
        if top_k > 0:
            order = order[:top_k]
        det_boxes, det_scores, det_labels = (
            det_boxes[order],
            det_scores[order],
            det_labels[order],
        )
        det_boxes = det_boxes * torch.tensor([width, height, width, height])
        det_boxes[:, 0::2] = det_boxes[:, 0::2].clamp(0, width)
        det_boxes[:, 1::2] = det_boxes[:, 1::2].clamp(0, height)
        results.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels})
    return results


__all__ = ["hard_nms_reference", "select_reference"]
