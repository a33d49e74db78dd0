"""From network outputs to detections: decode, score threshold, per-class NMS, top-k.

Two implementations of the same post-processing:

* ``mode="batched"`` (default) works on the whole batch on the model's device: a
  ``topk`` keeps the ``candidate_size`` best-scoring priors of every (image, class)
  pair, the score threshold is applied, and one call to
  :func:`torchvision.ops.batched_nms` suppresses within each (image, class) group.
* ``mode="reference"`` is the original code base's computation (qfgaohao's
  ``Predictor`` and ``box_utils.hard_nms``, in :mod:`ssdstudy.original`): per image,
  the outputs are moved to the CPU, classes are visited in a Python loop, and NMS is a
  Python ``while`` loop that takes the best remaining box and drops the boxes
  overlapping it. It is kept to measure the cost the original study attributed to NMS,
  and to measure what the default's departures from it cost in mAP.

Both keep, per class, at most ``candidate_size`` candidates with scores strictly above
``score_threshold``, and remove boxes that overlap a better box of their class by more
than ``nms_iou``; NMS runs on the normalised boxes, as in the original, and the kept
boxes are scaled to the original image's pixels. The default departs from the
original in three ways (the fourth, the resize, is in the evaluation transform):

* its IoU has no ``eps``; the original's ``iou_of`` adds 1e-5 to the union, so a pair
  of small boxes whose IoU lies just above ``nms_iou`` is suppressed here and kept there;
* it clips the boxes to the image; the original does not;
* it keeps the ``top_k`` best detections of the image; the original's ``top_k`` caps
  each class (and its evaluation passes none, so only ``candidate_size`` caps a class).

On the same outputs the two agree on every detection both keep (same class, score and,
once clipped, box); those only one keeps come from these departures, or from exactly equal scores,
whose order each implementation's sort decides. With the departures switched off
(:func:`ssdstudy.original.select_reference`'s ``eps=0, clip=True,
per_class_top_k=False``) the loop returns the batched path's detections: the tests'
oracle. ``benchmarks/reference_mode.py`` measures the effect of each on mAP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ssdstudy.boxes import DEFAULT_VARIANCES, decode

__all__ = [
    "Detections",
    "decode_outputs",
    "postprocess",
    "predict",
    "select_detections",
    "timed_predict",
]

#: One image's detections: ``boxes`` (K, 4) float xyxy pixels of the original image,
#: ``scores`` (K,) float, ``labels`` (K,) int64 1-based; sorted by decreasing score.
Detections = dict[str, Tensor]

Mode = Literal["batched", "reference"]


def decode_outputs(
    locs: Tensor,
    logits: Tensor,
    priors: Tensor,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
) -> tuple[Tensor, Tensor]:
    """Decode offsets into boxes and logits into class probabilities.

    Args:
        locs: ``(N, P, 4)`` predicted offsets.
        logits: ``(N, P, C)`` class logits, class 0 = background.
        priors: ``(P, 4)`` priors, centre form.

    Returns:
        ``boxes (N, P, 4)`` normalised xyxy and ``scores (N, P, C)`` softmax probabilities.
    """
    return decode(locs, priors, variances), F.softmax(logits, dim=-1)


def _check_sizes(
    image_sizes: Sequence[Sequence[float]], n_images: int
) -> list[tuple[float, float]]:
    sizes = [(float(h), float(w)) for h, w in image_sizes]
    if len(sizes) != n_images:
        raise ValueError(
            f"got {len(sizes)} image sizes for a batch of {n_images} images"
        )
    return sizes


def _empty(device: torch.device) -> Detections:
    return {
        "boxes": torch.zeros((0, 4), device=device),
        "scores": torch.zeros((0,), device=device),
        "labels": torch.zeros((0,), dtype=torch.long, device=device),
    }


def _select_batched(
    boxes: Tensor,
    scores: Tensor,
    sizes: list[tuple[float, float]],
    score_threshold: float,
    nms_iou: float,
    top_k: int,
    candidate_size: int,
) -> list[Detections]:
    n_images, n_priors, n_classes = scores.shape
    device = boxes.device
    n_fg = n_classes - 1
    k = n_priors if candidate_size <= 0 else min(candidate_size, n_priors)
    # (N, k, C-1): the k best priors of each (image, class), best first.
    cand_scores, cand_prior = scores[..., 1:].topk(k, dim=1)
    keep = cand_scores > score_threshold
    image_idx, rank_idx, class_idx = keep.nonzero(as_tuple=True)
    prior_idx = cand_prior[image_idx, rank_idx, class_idx]
    cand_boxes = boxes[image_idx, prior_idx]
    kept_scores = cand_scores[image_idx, rank_idx, class_idx]
    group = image_idx * n_fg + class_idx
    kept = batched_nms(cand_boxes, kept_scores, group, nms_iou)  # by decreasing score
    image_idx, class_idx = image_idx[kept], class_idx[kept]
    # Group by image, keeping the score order inside each image, then cut at top_k.
    order = torch.sort(image_idx, stable=True).indices
    kept, image_idx, class_idx = kept[order], image_idx[order], class_idx[order]
    counts = torch.bincount(image_idx, minlength=n_images)
    if top_k > 0:
        starts = torch.cumsum(counts, 0) - counts
        within = torch.arange(image_idx.numel(), device=device) - starts[image_idx]
        cut = within < top_k
        kept, image_idx, class_idx = kept[cut], image_idx[cut], class_idx[cut]
        counts = counts.clamp(max=top_k)
    scale = torch.tensor(
        [[w, h, w, h] for h, w in sizes], dtype=boxes.dtype, device=device
    )
    limits = scale[image_idx]
    out_boxes = torch.minimum((cand_boxes[kept] * limits).clamp(min=0), limits)
    out_scores = kept_scores[kept]
    out_labels = class_idx + 1
    split = counts.tolist()
    return [
        {"boxes": b, "scores": s, "labels": lab}
        for b, s, lab in zip(
            out_boxes.split(split),
            out_scores.split(split),
            out_labels.split(split),
            strict=True,
        )
    ]


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    image_sizes: Sequence[Sequence[float]],
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    candidate_size: int = 200,
    mode: Mode = "batched",
) -> list[Detections]:
    """Threshold, per-class NMS and top-k on decoded outputs.

    Args:
        boxes: ``(N, P, 4)`` normalised xyxy boxes (from :func:`decode_outputs`).
        scores: ``(N, P, C)`` class probabilities, class 0 = background.
        image_sizes: ``N`` pairs ``(height, width)`` of the original images, in pixels.
        score_threshold: a candidate needs a score strictly above this.
        nms_iou: boxes of one class overlapping a better one by more than this are removed.
        top_k: detections kept per image (``<= 0``: all); per class for
            ``"reference"``, as the original's ``top_k``.
        candidate_size: best candidates per (image, class) that enter NMS (``<= 0``: all).
        mode: ``"batched"`` or ``"reference"`` (see the module docstring).

    Returns:
        ``N`` dicts with ``boxes (K, 4)`` xyxy pixels of the original image (clipped to it
        for ``"batched"``, not for ``"reference"``), ``scores (K,)`` and ``labels (K,)``
        int64 1-based, sorted by decreasing score; on the input's device for
        ``"batched"``, on the CPU for ``"reference"``.
    """
    sizes = _check_sizes(image_sizes, boxes.shape[0])
    args = (boxes, scores, sizes, score_threshold, nms_iou, top_k, candidate_size)
    if mode == "batched":
        return _select_batched(*args)
    if mode == "reference":
        from ssdstudy.original import select_reference

        return select_reference(*args)
    raise ValueError(
        f"unknown post-processing mode {mode!r}: use 'batched' or 'reference'"
    )


def postprocess(
    locs: Tensor,
    logits: Tensor,
    priors: Tensor,
    image_sizes: Sequence[Sequence[float]],
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    candidate_size: int = 200,
    mode: Mode = "batched",
    variances: tuple[float, float] = DEFAULT_VARIANCES,
) -> list[Detections]:
    """Turn network outputs into per-image detections.

    Args:
        locs: ``(N, P, 4)`` predicted offsets.
        logits: ``(N, P, C)`` class logits, class 0 = background.
        priors: ``(P, 4)`` priors, centre form.
        image_sizes: ``N`` pairs ``(height, width)`` of the original images.
        score_threshold, nms_iou, top_k, candidate_size, mode: see :func:`select_detections`.
        variances: encoding variances, see :func:`ssdstudy.boxes.encode`.

    Returns:
        ``N`` detection dicts, see :func:`select_detections`.
    """
    boxes, scores = decode_outputs(locs, logits, priors, variances)
    return select_detections(
        boxes,
        scores,
        image_sizes,
        score_threshold,
        nms_iou,
        top_k,
        candidate_size,
        mode,
    )


def _model_device(model: nn.Module) -> torch.device:
    priors = getattr(model, "priors", None)
    if isinstance(priors, Tensor):
        return priors.device
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_predict(
    model: nn.Module,
    images: Tensor,
    image_sizes: Sequence[Sequence[float]],
    **kw,
) -> tuple[list[Detections], dict[str, float]]:
    """Run :func:`predict` and time its stages.

    The model is put in eval mode for the call (and restored). On a GPU the device is
    synchronised at each stage boundary.

    Args:
        model: an SSD from :func:`ssdstudy.model.build_model` (``priors`` attribute).
        images: ``(N, 3, S, S)`` normalised network inputs.
        image_sizes: ``N`` pairs ``(height, width)`` of the original images.
        **kw: options of :func:`postprocess` (``score_threshold``, ``nms_iou``, ``top_k``,
            ``candidate_size``, ``mode``).

    Returns:
        The detections and ``{"forward_ms", "decode_ms", "nms_ms", "total_ms"}``:
        network forward; decode + softmax; threshold + NMS + top-k + scaling.
    """
    device = _model_device(model)
    variances = kw.pop("variances", DEFAULT_VARIANCES)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            images = images.to(device)
            _sync(device)
            t0 = time.perf_counter()
            locs, logits = model(images)
            _sync(device)
            t1 = time.perf_counter()
            boxes, scores = decode_outputs(locs, logits, model.priors, variances)
            _sync(device)
            t2 = time.perf_counter()
            detections = select_detections(boxes, scores, image_sizes, **kw)
            _sync(device)
            t3 = time.perf_counter()
    finally:
        model.train(was_training)
    times = {
        "forward_ms": (t1 - t0) * 1e3,
        "decode_ms": (t2 - t1) * 1e3,
        "nms_ms": (t3 - t2) * 1e3,
        "total_ms": (t3 - t0) * 1e3,
    }
    return detections, times


def predict(
    model: nn.Module,
    images: Tensor,
    image_sizes: Sequence[Sequence[float]],
    **kw,
) -> list[Detections]:
    """Detect objects: network forward plus :func:`postprocess`, under ``inference_mode``.

    The model is put in eval mode for the call (and restored).

    Args:
        model: an SSD from :func:`ssdstudy.model.build_model` (``priors`` attribute).
        images: ``(N, 3, S, S)`` normalised network inputs (moved to the model's device).
        image_sizes: ``N`` pairs ``(height, width)`` of the original images.
        **kw: options of :func:`postprocess`.

    Returns:
        ``N`` detection dicts, see :func:`select_detections`.
    """
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            locs, logits = model(images.to(device))
            return postprocess(locs, logits, model.priors, image_sizes, **kw)
    finally:
        model.train(was_training)
