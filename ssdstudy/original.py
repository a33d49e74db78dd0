"""The original code base's prediction path (qfgaohao/pytorch-ssd), transcribed.

From a raw image to detections the original goes this way (``Predictor.predict`` with
``PredictionTransform``, as ``eval_ssd.py`` calls it):

1. **resize**: ``cv2.resize(image, (S, S))`` on the uint8 RGB image (bilinear,
   ``INTER_LINEAR``, OpenCV's fixed-point kernel), then ``(pixel - mean) / std`` in
   float32: :func:`reference_preprocess`;
2. the network, one image at a time; **decode** (``convert_locations_to_boxes`` then
   ``center_form_to_corner_form``) and softmax, then both moved to the CPU:
   :func:`decode_reference`;
3. for each class but background, in a Python loop: keep the scores above the
   threshold, then **greedy NMS** (``hard_nms``): the ``candidate_size`` best
   candidates, a Python ``while`` loop that takes the best remaining box and drops
   those whose IoU with it exceeds the threshold, stopping after ``top_k`` boxes *of
   the class*; the IoU is ``iou_of``, whose denominator carries ``eps = 1e-5``
   (:func:`iou_of`, :func:`hard_nms_reference`);
4. the kept boxes are scaled by the image's width and height and **not clipped** to
   the image (:func:`select_reference`).

:func:`predict_reference` runs the whole path; ``mode="reference"`` of
:func:`ssdstudy.predict.select_detections` (and so of ``postprocess``, the timing and
the NMS chapter) runs steps 3-4 on outputs the project decoded.

What the project's default prediction (``mode="batched"``) does differently, on
purpose (each is listed, with its effect on mAP measured by
``benchmarks/reference_mode.py``, in ``book/method/timing.md``):

* resize: torchvision's bilinear kernel instead of OpenCV's (up to one grey level
  apart on about an eighth of the values);
* IoU in NMS: no ``eps`` (torchvision's ``batched_nms``): a box whose IoU with a better
  one lies just above the threshold, within ``threshold * eps / union`` (union in
  normalised units), is suppressed there and kept here; this only touches small boxes;
* clipping: the default clips boxes to the image;
* top-k: the default keeps the ``top_k`` best detections of the *image*; the original
  stops NMS after ``top_k`` boxes of each *class*. ``eval_ssd.py`` passes
  ``top_k=-1`` (no limit), so its only cap is ``candidate_size`` (200) per class; with
  the study's settings (``top_k = candidate_size = 200``) the per-class cap of this
  module is that same cap.

Kept as the original has them, not departures: the score test is strict
(``> threshold``), suppression needs an IoU strictly above the threshold, and NMS runs
on the normalised boxes. Two liberties: the detections of an image are returned sorted
by decreasing score (a stable sort, so equal scores keep the original's class order;
the VOC evaluation sorts them anyway), and ``candidate_size <= 0`` means "all" (the
original's ``indexes[:candidate_size]`` would drop candidates).

It lives apart from :mod:`ssdstudy.predict` because no run's results depend on it: it
is not part of the code whose hash marks a published run stale
(:data:`ssdstudy.provenance.COMPUTE_MODULES`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssdstudy.boxes import DEFAULT_VARIANCES
from ssdstudy.predict import Detections, _check_sizes, _empty, _model_device

#: The ``eps`` of the original's ``iou_of`` (``box_utils.py``), added to the union.
IOU_EPS = 1e-5


def _area(left_top: Tensor, right_bottom: Tensor) -> Tensor:
    """The original's ``area_of``: area of boxes given two corners (0 when inverted)."""
    hw = torch.clamp(right_bottom - left_top, min=0.0)
    return hw[..., 0] * hw[..., 1]


def iou_of(boxes0: Tensor, boxes1: Tensor, eps: float = IOU_EPS) -> Tensor:
    """The original's ``iou_of``: IoU of xyxy boxes, ``eps`` added to the union.

    ``overlap / (area0 + area1 - overlap + eps)``. The shapes broadcast: ``(N, 4)`` with
    ``(1, 4)`` gives ``(N,)`` (NMS), ``(1, G, 4)`` with ``(P, 1, 4)`` gives ``(P, G)``
    (matching). ``eps=0`` gives the plain IoU (the same values as
    :func:`torchvision.ops.box_iou`).
    """
    overlap_left_top = torch.max(boxes0[..., :2], boxes1[..., :2])
    overlap_right_bottom = torch.min(boxes0[..., 2:], boxes1[..., 2:])
    overlap_area = _area(overlap_left_top, overlap_right_bottom)
    area0 = _area(boxes0[..., :2], boxes0[..., 2:])
    area1 = _area(boxes1[..., :2], boxes1[..., 2:])
    return overlap_area / (area0 + area1 - overlap_area + eps)


def hard_nms_reference(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    candidate_size: int,
    *,
    top_k: int = -1,
    eps: float = IOU_EPS,
) -> Tensor:
    """The original's ``hard_nms``: greedy NMS as a Python loop. Returns kept indices.

    Args:
        boxes: ``(K, 4)`` xyxy boxes of one class.
        scores: ``(K,)`` their scores.
        iou_threshold: a box whose IoU (:func:`iou_of`) with a kept one exceeds this is
            dropped.
        candidate_size: only the best ``candidate_size`` enter (``<= 0``: all).
        top_k: stop after this many kept boxes (``<= 0``: no limit).
        eps: the IoU's ``eps`` (0: the plain IoU of the default path).

    Returns:
        ``(M,)`` int64 indices into ``boxes``, by decreasing score.
    """
    _, indexes = scores.sort(descending=True)
    if candidate_size > 0:
        indexes = indexes[:candidate_size]
    picked: list[int] = []
    while len(indexes) > 0:
        current = indexes[0]
        picked.append(int(current))
        if 0 < top_k == len(picked) or len(indexes) == 1:
            break
        indexes = indexes[1:]
        iou = iou_of(boxes[indexes], boxes[current].unsqueeze(0), eps)
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
    *,
    eps: float = IOU_EPS,
    clip: bool = False,
    per_class_top_k: bool = True,
) -> list[Detections]:
    """The original's post-processing on decoded outputs, image by image on the CPU.

    The positional arguments are those of :func:`ssdstudy.predict.select_detections`
    (which calls this for ``mode="reference"``), with one change of meaning: ``top_k``
    caps the detections of each *class* (the original's ``hard_nms(top_k=...)``), not
    of the image. The keyword switches turn the departures of the default path on one
    at a time; with ``eps=0, clip=True, per_class_top_k=False`` this returns what
    ``mode="batched"`` returns (the tests check it).

    Args:
        boxes: ``(N, P, 4)`` normalised xyxy boxes.
        scores: ``(N, P, C)`` class probabilities, class 0 = background.
        sizes: ``N`` pairs ``(height, width)`` of the original images, in pixels.
        score_threshold: a candidate needs a score strictly above this.
        nms_iou: NMS drops boxes overlapping a kept one of their class by more than this.
        top_k: detections kept per class (``per_class_top_k``) or per image (``<= 0``: all).
        candidate_size: best candidates per class that enter NMS (``<= 0``: all).
        eps: the IoU's ``eps`` (the original's 1e-5; 0: the default path's IoU).
        clip: clip the boxes to the image (the default path does; the original does not).
        per_class_top_k: ``top_k`` per class (the original) or per image (the default).

    Returns:
        ``N`` dicts ``boxes (K, 4)`` xyxy pixels, ``scores (K,)``, ``labels (K,)`` int64,
        on the CPU, sorted by decreasing score (stable: ties stay in class order).
    """
    cpu = torch.device("cpu")
    class_top_k = top_k if per_class_top_k else -1
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
            keep = hard_nms_reference(
                subset, probs, nms_iou, candidate_size, top_k=class_top_k, eps=eps
            )
            picked_boxes.append(subset[keep])
            picked_scores.append(probs[keep])
            picked_labels.extend([class_index] * len(keep))
        if not picked_boxes:
            results.append(_empty(cpu))
            continue
        det_boxes = torch.cat(picked_boxes)
        det_scores = torch.cat(picked_scores)
        det_labels = torch.tensor(picked_labels, dtype=torch.long)
        order = torch.sort(det_scores, descending=True, stable=True).indices
        if top_k > 0 and not per_class_top_k:
            order = order[:top_k]
        det_boxes, det_scores, det_labels = (
            det_boxes[order],
            det_scores[order],
            det_labels[order],
        )
        det_boxes = det_boxes * torch.tensor([width, height, width, height])
        if clip:
            det_boxes[:, 0::2] = det_boxes[:, 0::2].clamp(0, width)
            det_boxes[:, 1::2] = det_boxes[:, 1::2].clamp(0, height)
        results.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels})
    return results


def reference_preprocess(
    image: np.ndarray | Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """The original's ``PredictionTransform``: ``cv2.resize`` then normalisation.

    Args:
        image: a uint8 RGB image, ``(H, W, 3)`` (as ``cv2.imread`` plus ``cvtColor``
            gives it) or a ``(3, H, W)`` tensor (as :func:`ssdstudy.data.read_image`).
        size: ``S``, the side of the square network input.
        mean, std: the model's normalisation of pixels scaled to [0, 1]
            (``model.mean``, ``model.std``); applied as the original does, on the raw
            pixel values: ``(pixel - 255 mean) / (255 std)`` (for MobileNet,
            ``(pixel - 127) / 128``).

    Returns:
        ``(3, S, S)`` float32 network input.
    """
    if isinstance(image, Tensor):
        image = image.as_subclass(Tensor).permute(1, 2, 0).numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(
            f"reference_preprocess expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}"
        )
    resized = cv2.resize(np.ascontiguousarray(image), (size, size))
    mean_px = np.array([255.0 * m for m in mean], dtype=np.float32)
    std_px = np.array([255.0 * s for s in std], dtype=np.float32)
    pixels = resized.astype(np.float32)
    pixels -= mean_px
    pixels = pixels / std_px
    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)


def decode_reference(
    locs: Tensor,
    logits: Tensor,
    priors: Tensor,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
) -> tuple[Tensor, Tensor]:
    """The original's decoding: softmax, ``convert_locations_to_boxes`` (in its order of
    operations) and ``center_form_to_corner_form``; the results moved to the CPU.

    Args:
        locs: ``(N, P, 4)`` offsets; logits: ``(N, P, C)``; priors: ``(P, 4)`` centre form.

    Returns:
        ``boxes (N, P, 4)`` normalised xyxy and ``scores (N, P, C)``, on the CPU.
    """
    center_variance, size_variance = variances
    scores = F.softmax(logits, dim=2)
    priors = priors.unsqueeze(0)
    centre = torch.cat(
        [
            locs[..., :2] * center_variance * priors[..., 2:] + priors[..., :2],
            torch.exp(locs[..., 2:] * size_variance) * priors[..., 2:],
        ],
        dim=locs.dim() - 1,
    )
    boxes = torch.cat(
        [centre[..., :2] - centre[..., 2:] / 2, centre[..., :2] + centre[..., 2:] / 2],
        dim=centre.dim() - 1,
    )
    cpu = torch.device("cpu")
    return boxes.to(cpu), scores.to(cpu)


def postprocess_reference(
    locs: Tensor,
    logits: Tensor,
    priors: Tensor,
    image_sizes: Sequence[Sequence[float]],
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    candidate_size: int = 200,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
    **switches: bool | float,
) -> list[Detections]:
    """Network outputs to detections the original's way: :func:`decode_reference` then
    :func:`select_reference` (``switches``: its ``eps``, ``clip``, ``per_class_top_k``)."""
    sizes = _check_sizes(image_sizes, locs.shape[0])
    boxes, scores = decode_reference(locs, logits, priors, variances)
    return select_reference(
        boxes, scores, sizes, score_threshold, nms_iou, top_k, candidate_size, **switches
    )


def predict_reference(
    model: nn.Module,
    images: Sequence[np.ndarray | Tensor],
    *,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    candidate_size: int = 200,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
    batch_size: int = 1,
) -> list[Detections]:
    """Detect objects in raw images the original's whole way (module docstring, 1-4).

    Args:
        model: an SSD of :func:`ssdstudy.model.build_model` (``priors``, ``mean``,
            ``std`` and ``image_size`` attributes); run in eval mode (restored after).
        images: uint8 RGB images, ``(H, W, 3)`` arrays or ``(3, H, W)`` tensors, any sizes.
        score_threshold, nms_iou, candidate_size: as in :func:`select_reference`.
        top_k: detections kept per class (the original's meaning).
        batch_size: images per forward pass. The original runs one at a time (the
            default); a larger batch changes only the rounding of the forward pass.

    Returns:
        One detection dict per image (see :func:`select_reference`), on the CPU, boxes in
        pixels of the image, not clipped.
    """
    device = _model_device(model)
    size = int(model.image_size)
    was_training = model.training
    model.eval()
    results: list[Detections] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), max(1, batch_size)):
                chunk = images[start : start + max(1, batch_size)]
                sizes = []
                inputs = []
                for image in chunk:
                    shape = image.shape[1:] if isinstance(image, Tensor) else image.shape[:2]
                    sizes.append((int(shape[0]), int(shape[1])))
                    inputs.append(reference_preprocess(image, size, model.mean, model.std))
                locs, logits = model(torch.stack(inputs).to(device))
                results.extend(
                    postprocess_reference(
                        locs, logits, model.priors, sizes, score_threshold, nms_iou,
                        top_k, candidate_size, variances,
                    )
                )
    finally:
        model.train(was_training)
    return results


__all__ = [
    "IOU_EPS",
    "decode_reference",
    "hard_nms_reference",
    "iou_of",
    "postprocess_reference",
    "predict_reference",
    "reference_preprocess",
    "select_reference",
]
