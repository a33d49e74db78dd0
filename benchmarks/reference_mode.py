"""What the default prediction's departures from the original code cost in mAP.

A trained checkpoint's test split is scored (VOC07 11-point mAP, as a run's
``metrics.json``) with the project's default prediction and with the original code
base's (qfgaohao/pytorch-ssd, transcribed in :mod:`ssdstudy.original`), and with each
departure of the default alone undone; every variant's difference from the default
comes with its paired bootstrap interval over the test images
(:func:`ssdstudy.evaluate.bootstrap.paired_difference`).

Variants (the network runs once on each kind of input; the rest is post-processing):

* ``default``: the study's evaluation (``ssdstudy eval``, a run's metrics): torchvision's
  bilinear resize, batched NMS with the plain IoU, boxes clipped to the image, the best
  ``top_k`` detections of each image;
* ``reference``: the original's whole path (``predict_reference``): ``cv2.resize``, its
  decoding, per-class NMS loop with its IoU (``eps`` 1e-5), no clipping, ``top_k`` per
  class;
* ``original_postprocessing``: the default's inputs, the original's post-processing
  (all post-processing departures undone, the resize kept);
* ``resize``: the default with the original's ``cv2.resize`` inputs;
* ``iou_eps``: the default with the original's IoU in NMS;
* ``no_clipping``: the default without clipping the boxes;
* ``per_class_top_k``: the default with ``top_k`` per class instead of per image.

It also counts how far ``default`` and the original's post-processing agree on what
they both keep (matched by class and box). On the same network outputs their scores are
equal; detections only one keeps come from the departures, or from exactly tied
scores, whose order each implementation's sort decides (an untrained model ties a lot:
the share of tied NMS candidates is reported). The forward pass runs in batches for
every variant (the original runs one image at a time; the batch size changes only
rounding). Each variant's ``postprocessing_seconds`` sums its time after the forward
pass and the decoding (for ``reference``, the original's decoding included); for speed
see ``benchmarks/prediction.py``.

    python benchmarks/reference_mode.py --checkpoint results/default/runs/<id>/checkpoint.pt \\
        --data data/synth --threads 2 --json results/benchmarks/reference-mode-cpu-2core.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from ssdstudy import provenance
from ssdstudy.augment import build_transform
from ssdstudy.data import load_split
from ssdstudy.data.dataset import make_target, read_image
from ssdstudy.errors import DataError
from ssdstudy.evaluate import evaluate, image_bins, voc_matches
from ssdstudy.evaluate.bootstrap import Outcomes, paired_difference
from ssdstudy.original import (
    IOU_EPS,
    postprocess_reference,
    reference_preprocess,
    select_reference,
)
from ssdstudy.pipeline import load_model
from ssdstudy.predict import decode_outputs, select_detections
from ssdstudy.workspace import resolve_device

VARIANTS = {
    "default": "the study's prediction: torchvision resize, batched NMS with the plain IoU, "
               "boxes clipped, top_k per image",
    "reference": "the original's whole path: cv2.resize, per-class NMS loop with IoU eps 1e-5, "
                 "no clipping, top_k per class",
    "original_postprocessing": "the default's inputs, the original's post-processing "
                               "(IoU eps, no clipping, top_k per class)",
    "resize": "the default with cv2.resize inputs",
    "iou_eps": "the default with the IoU eps 1e-5 in NMS",
    "no_clipping": "the default without clipping",
    "per_class_top_k": "the default with top_k per class",
}
#: The single departures: computed unless --no-departures.
SINGLE = ("original_postprocessing", "resize", "iou_eps", "no_clipping", "per_class_top_k")


class TwoInputs(Dataset):
    """Each test image as the default's input and the original's, and its index."""

    def __init__(self, records: list, size: int, mean: tuple, std: tuple) -> None:
        self.records = records
        self.size, self.mean, self.std = size, mean, std
        self.transform = build_transform(False, size, mean, std)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        record = self.records[index]
        image = read_image(record.image_path)
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise DataError(record.image_path, f"image is {tuple(image.shape[-2:])} but its annotation says "
                            f"{(record.height, record.width)}")
        ours, _ = self.transform(image, make_target(record))
        theirs = reference_preprocess(image, self.size, self.mean, self.std)
        return ours, theirs, index


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    ours, theirs, index = zip(*batch, strict=True)
    return torch.stack(ours), torch.stack(theirs), list(index)


def _numpy(det: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in det.items()}


def tied_candidates(scores: torch.Tensor, score_threshold: float, candidate_size: int) -> tuple[int, int]:
    """NMS candidates (the best ``candidate_size`` of each image and class above the
    threshold) and how many of them share their score with another candidate of their
    image and class. Among equal scores the order, and so what NMS keeps, is up to each
    implementation's sort: an untrained model ties a lot, a trained one seldom."""
    k = min(candidate_size, scores.shape[1]) if candidate_size > 0 else scores.shape[1]
    top = scores[..., 1:].topk(k, dim=1).values  # (N, k, C-1), descending
    valid = top > score_threshold
    equal = (top[:, 1:] == top[:, :-1]) & valid[:, 1:]
    tied = torch.zeros_like(valid)
    tied[:, 1:] |= equal
    tied[:, :-1] |= equal
    return int(valid.sum()), int(tied.sum())


def agreement(first: dict[str, dict[str, np.ndarray]], second: dict[str, dict[str, np.ndarray]],
              records: list, min_iou: float) -> dict[str, Any]:
    """Detections kept by both (same class, box IoU above ``min_iou`` once ``second``'s
    boxes are clipped to the image), by one only, and the largest score difference of
    those kept by both."""
    both = only_first = only_second = 0
    largest = 0.0
    for rec in records:
        a, b = first[rec.image_id], second[rec.image_id]
        a_boxes = torch.from_numpy(a["boxes"]).reshape(-1, 4).float()
        b_boxes = torch.from_numpy(b["boxes"]).reshape(-1, 4).float().clone()
        b_boxes[:, 0::2] = b_boxes[:, 0::2].clamp(0, rec.width)
        b_boxes[:, 1::2] = b_boxes[:, 1::2].clamp(0, rec.height)
        same = (box_iou(a_boxes, b_boxes) > min_iou) & torch.from_numpy(
            a["labels"][:, None] == b["labels"][None])
        taken = torch.zeros(len(b_boxes), dtype=torch.bool)
        for i in range(len(a_boxes)):
            candidates = torch.nonzero(same[i] & ~taken).squeeze(1)
            if len(candidates):
                j = int(candidates[0])
                taken[j] = True
                both += 1
                largest = max(largest, abs(float(a["scores"][i]) - float(b["scores"][j])))
            else:
                only_first += 1
        only_second += int((~taken).sum())
    return {"kept_by_both": both, "only_first": only_first, "only_second": only_second,
            "largest_score_difference": largest, "box_iou_at_least": min_iou}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an ssdstudy checkpoint")
    parser.add_argument("--data", required=True, help="dataset root (VOCdevkit layout)")
    parser.add_argument("--split", help="image set (default: the run's test split)")
    parser.add_argument("--years", nargs="*", help="VOC years to read (default: the run's)")
    parser.add_argument("--limit", type=int, help="score only the first N images (a quick look)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--no-departures", action="store_true",
                        help="only default and reference, not each departure alone")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)

    started = time.time()
    git = provenance.git_state()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, config, class_names = load_model(args.checkpoint, device)
    d = config.data
    keep_difficult = d.test_difficult == "ignore"
    records = load_split(args.data, args.split or d.test_split, years=args.years or d.test_years,
                         class_names=class_names, keep_difficult=keep_difficult)
    limit = args.limit or d.max_test_images
    if limit:
        records = records[:limit]
    e = config.eval
    candidate_size = 200  # select_detections' default, as the study's evaluation uses it
    settings = {"score_threshold": e.score_threshold, "nms_iou": e.nms_iou, "top_k": e.top_k,
                "candidate_size": candidate_size}
    positional = (e.score_threshold, e.nms_iou, e.top_k, candidate_size)
    names = ["default", "reference"] + ([] if args.no_departures else list(SINGLE))
    dets: dict[str, dict[str, dict[str, np.ndarray]]] = {name: {} for name in names}
    seconds = dict.fromkeys(names, 0.0)
    candidates = [0, 0]  # NMS candidates of the default's outputs, and those with a tied score

    def timed(name: str, batch: list, fn, *fn_args, **fn_kw) -> None:
        start = time.perf_counter()
        out = fn(*fn_args, **fn_kw)
        seconds[name] += time.perf_counter() - start
        for rec, det in zip(batch, out, strict=True):
            dets[name][rec.image_id] = _numpy(det)

    loader = DataLoader(TwoInputs(records, model.image_size, model.mean, model.std),
                        batch_size=args.batch_size, shuffle=False, collate_fn=_collate,
                        num_workers=args.workers)
    model = model.to(device).eval()
    priors = model.priors
    with torch.inference_mode():
        for ours, theirs, index in tqdm(loader, disable=args.quiet, desc="scoring", unit="batch"):
            batch = [records[i] for i in index]
            sizes = [(r.height, r.width) for r in batch]
            locs, logits = model(ours.to(device))
            boxes, scores = decode_outputs(locs, logits, priors)
            n, tied = tied_candidates(scores, e.score_threshold, candidate_size)
            candidates[0] += n
            candidates[1] += tied
            timed("default", batch, select_detections, boxes, scores, sizes, **settings)
            if not args.no_departures:
                cpu_boxes, cpu_scores = boxes.cpu(), scores.cpu()
                for name, switches in (
                    ("original_postprocessing", {"eps": IOU_EPS, "clip": False, "per_class_top_k": True}),
                    ("iou_eps", {"eps": IOU_EPS, "clip": True, "per_class_top_k": False}),
                    ("no_clipping", {"eps": 0.0, "clip": False, "per_class_top_k": False}),
                    ("per_class_top_k", {"eps": 0.0, "clip": True, "per_class_top_k": True}),
                ):
                    timed(name, batch, select_reference, cpu_boxes, cpu_scores, sizes, *positional, **switches)
            locs, logits = model(theirs.to(device))
            timed("reference", batch, postprocess_reference, locs, logits, priors, sizes, **settings)
            if not args.no_departures:
                theirs_boxes, theirs_scores = decode_outputs(locs, logits, priors)
                timed("resize", batch, select_detections, theirs_boxes, theirs_scores, sizes, **settings)

    ids = [r.image_id for r in records]
    bins = image_bins(records)
    outcomes = {}
    variants: dict[str, Any] = {}
    for name in names:
        result = evaluate(records, dets[name], class_names, coco=False, size_bins=False)
        outcomes[name] = Outcomes.from_matches(voc_matches(records, dets[name], class_names), ids, bins)
        variants[name] = {
            "description": VARIANTS[name],
            "voc07_map": float(result["voc07_map"]),
            "detections": int(sum(len(v["scores"]) for v in dets[name].values())),
            "postprocessing_seconds": seconds[name],
        }
    for name in names[1:]:
        diff = paired_difference(outcomes[name], outcomes["default"], resamples=args.resamples, seed=args.seed)
        variants[name]["minus_default"] = {
            "difference": diff.difference, "low": diff.low, "high": diff.high, "level": diff.level,
            "resamples": diff.resamples, "settled": diff.settled,
        }
    agree = {"whole_path": {"first": "default", "second": "reference",
                            **agreement(dets["default"], dets["reference"], records, 0.99)}}
    if "original_postprocessing" in dets:
        agree["same_inputs"] = {"first": "default", "second": "original_postprocessing",
                                **agreement(dets["default"], dets["original_postprocessing"], records, 0.999)}

    print(f"{len(records)} images of {args.data} ({args.split or d.test_split}), {config.model.backbone} "
          f"{config.model.image_size}px, run {config.run_id}; threshold {e.score_threshold}, "
          f"NMS IoU {e.nms_iou}, top_k {e.top_k}, candidates {candidate_size}")
    print(f"{'variant':26}{'VOC07 mAP':>10}{'minus default (95% interval)':>40}")
    for name in names:
        v = variants[name]
        m = v.get("minus_default")
        text = "" if m is None else f"{m['difference']:+.4f} ({m['low']:+.4f} to {m['high']:+.4f})"
        print(f"{name:26}{v['voc07_map']:10.4f}{text:>40}")
    tied_share = candidates[1] / max(candidates[0], 1)
    print(f"{candidates[0]} NMS candidates, {tied_share:.1%} with a score tied within their image and class")
    for key, a in agree.items():
        print(f"agreement ({key}): {a['kept_by_both']} kept by both, {a['only_first']} by {a['first']} only, "
              f"{a['only_second']} by {a['second']} only; largest score difference of those kept by both "
              f"{a['largest_score_difference']:.2e}")

    figures = {
        "benchmark": "reference_mode",
        "checkpoint": str(args.checkpoint),
        "run_id": config.run_id,
        "backbone": config.model.backbone,
        "width": config.model.width,
        "image_size": config.model.image_size,
        "data": str(args.data),
        "split": args.split or d.test_split,
        "images": len(records),
        "difficult": d.test_difficult,
        "settings": {**settings, "iou_eps": IOU_EPS},
        "batch_size": args.batch_size,
        "variants": variants,
        "agreement": agree,
        "nms_candidates": candidates[0],
        "tied_candidates_share": tied_share,
        "wall_seconds": time.time() - started,
        "provenance": provenance.collect(str(device), seed=args.seed, git=git,
                                         compute_code=provenance.compute_code(backbone=config.model.backbone)),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        provenance.write_json(args.json, figures)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
