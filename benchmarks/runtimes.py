"""Prediction time where SSD is deployed: each CPU runtime against eager float32, and its mAP.

For MobileNetV1-SSD300 (and VGG16-BN-SSD300 with ``--backbones mobilenet_v1 vgg16_bn``)
at 300x300, the runtimes of :mod:`ssdstudy.runtimes` are timed in one process with the
study's timing method (:mod:`ssdstudy.timing`): after warm-up (which includes the
compilations of ``compile`` and ``int8``), every image is run at batch 1 by every
runtime, in a random order drawn per image, each timing its inference (:meth:`infer`:
the forward pass; for onnxruntime forward + softmax + box decoding, which are in its
graph) and its prediction (:meth:`detect`: forward + decoding + score threshold +
per-class NMS + top-k). Figures are medians with the interquartile range over the
images, and the ratio of each runtime's median to eager float32's (and the median of
the per-image ratios, steadier on a busy machine). Throughput: ``detect`` at
``--throughput-batch``. Each runtime's figures are flagged ``busy`` by the study's rule
(:data:`ssdstudy.timing.BUSY_RULE`: a wide spread, or other processes keeping the
benchmark's cores busy, from the load watched while the runtimes were timed, warm-up and
its compilations excluded).

Weights: without ``--checkpoint``, random initialisation, with which nearly every class
of every default box passes the 0.01 score threshold: NMS's worst case, which makes the
post-processing a larger share of the prediction time than a trained model's. The JSON
says which weights were timed. Inputs: the test split of ``--data`` (evaluation
transform), or random normal tensors without it. int8 is calibrated on the first
``--calibration-images`` training images of ``--data`` (random tensors without it:
fine for timing, meaningless for accuracy).

``--map`` (with ``--checkpoint`` and ``--data``): VOC07 mAP of each runtime's detections
on the test split (ssdstudy's evaluation, the checkpoint's post-processing settings),
and the paired bootstrap interval of its difference to eager float32's.

    python benchmarks/runtimes.py --json results/benchmarks/runtimes-cpu-2core.json
    python benchmarks/runtimes.py --checkpoint results/default/runs/<id>/checkpoint.pt \\
        --data data/synth --map --json results/benchmarks/runtimes-trained-cpu-2core.json
    python benchmarks/runtimes.py --images 3 --warmup 1 --throughput-batch 2   # a quick look

JSON: ``{"runtimes": {NAME: {"inference_ms", "inference_iqr_ms", "prediction_ms",
"prediction_iqr_ms", "ratio_to_eager": {"inference", "prediction"}, ...}}, "model",
"map" (with --map), "backbones": {backbone: the same three, for each backbone timed},
"machine", "conditions"}``; the top-level ``runtimes``, ``model`` and ``map`` are the
first backbone's. Eager float32 is ``eager_fp32``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import torch

from ssdstudy import provenance
from ssdstudy.runtimes import (
    RUNTIMES,
    build_runtime,
    detect_records_with,
    runtime_name,
    time_runtimes,
)
from ssdstudy.timing import BUSY_RULE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v1"],
                        help="backbones of the random-weight models (default mobilenet_v1; vgg16_bn is the "
                        "study's VGG16); ignored with --checkpoint")
    parser.add_argument("--width", type=float, default=1.0, help="MobileNetV1 width multiplier (default 1.0)")
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--num-classes", type=int, default=21,
                        help="classes with the background, random models without --data (default 21, VOC's)")
    parser.add_argument("--checkpoint", type=Path, help="time this trained model (ssdstudy checkpoint)")
    parser.add_argument("--data", help="dataset root: test images to time (and score), training images to "
                        "calibrate int8 on")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), metavar="NAME",
                        help=f"runtimes to time (default all: {' '.join(RUNTIMES)}); eager_fp32 is always timed")
    parser.add_argument("--images", type=int, default=50, help="images timed at batch 1 (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed images first (default 5)")
    parser.add_argument("--throughput-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, torch's and onnxruntime's (default 2)")
    parser.add_argument("--calibration-images", type=int, default=32, help="int8 calibration images (default 32)")
    parser.add_argument("--map", action="store_true", help="also score each runtime on the test split "
                        "(needs --checkpoint and --data)")
    parser.add_argument("--map-images", type=int, help="score only the first N test images (a quick look)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for --map (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        names = [runtime_name(n) for n in args.runtimes]
    except ValueError as err:
        parser.error(str(err))
    args.runtimes = ["eager_fp32", *[n for n in dict.fromkeys(names) if n != "eager_fp32"]]
    if args.map and not (args.checkpoint and args.data):
        parser.error("--map needs --checkpoint and --data (a trained model and its test split)")
    return args


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def models(args: argparse.Namespace) -> list[tuple[torch.nn.Module, Any, tuple[str, ...], str]]:
    """(model, run config, class names, weights description) for each model to time."""
    from ssdstudy.config import RunConfig
    from ssdstudy.data import read_class_names
    from ssdstudy.model import build_model
    from ssdstudy.pipeline import load_model

    if args.checkpoint:
        model, config, names = load_model(args.checkpoint, "cpu")
        weights = f"trained: {args.checkpoint} (sha256 {file_digest(args.checkpoint)})"
        return [(model, config, names, weights)]
    names = tuple(read_class_names(args.data)) if args.data else tuple(
        f"class{i}" for i in range(1, args.num_classes))
    out = []
    for backbone in args.backbones:
        torch.manual_seed(args.seed)
        width = args.width if backbone == "mobilenet_v1" else 1.0
        model = build_model(backbone, len(names) + 1, width=width, image_size=args.image_size).eval()
        config = RunConfig()
        config.model.backbone, config.model.width, config.model.image_size = backbone, width, args.image_size
        weights = (f"untrained: random initialisation (torch seed {args.seed}); nearly every default box "
                   "passes the score threshold (NMS's worst case)")
        out.append((model, config, names, weights))
    return out


def workspace_for(config: Any, root: str, class_names: tuple[str, ...]):
    """The run's splits read from ``root`` (never generated)."""
    from ssdstudy.workspace import Workspace

    config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=root, synth=None))
    workspace = Workspace(config, progress=False)
    if tuple(workspace.class_names) != tuple(class_names):
        raise SystemExit(f"{root}: classes {list(workspace.class_names)} differ from the model's {list(class_names)}")
    return config, workspace


def preprocess(model: torch.nn.Module, records: list) -> list[torch.Tensor]:
    from ssdstudy.augment import build_transform
    from ssdstudy.data import DetectionDataset

    dataset = DetectionDataset(records, build_transform(False, model.image_size, model.mean, model.std))
    return [dataset[i][0] for i in range(len(dataset))]


def score(runtimes: dict, config: Any, workspace: Any, class_names: tuple[str, ...], args: argparse.Namespace) -> dict:
    """VOC07 mAP of each runtime on the test split, and its paired bootstrap difference to eager."""
    from ssdstudy.evaluate import evaluate, voc_matches
    from ssdstudy.evaluate.bootstrap import Outcomes, map_interval, paired_difference

    records = workspace.test_records[: args.map_images] if args.map_images else workspace.test_records
    outcomes, maps = {}, {}
    for name, runtime in runtimes.items():
        dets = detect_records_with(runtime, records, config, progress=True)
        maps[name] = float(evaluate(records, dets, class_names, coco=False, size_bins=False)["voc07_map"])
        outcomes[name] = Outcomes.from_matches(voc_matches(records, dets, class_names), [r.image_id for r in records])
    result = {"split": config.data.test_split, "images": len(records), "resamples": args.resamples, "runtimes": {}}
    for name in runtimes:
        low, high = map_interval(outcomes[name], resamples=args.resamples, seed=args.seed)
        entry: dict[str, Any] = {"voc07_map": maps[name], "voc07_map_interval": [low, high]}
        if name != "eager_fp32":
            diff = paired_difference(outcomes[name], outcomes["eager_fp32"], resamples=args.resamples,
                                     seed=args.seed)
            entry["difference_to_eager"] = {"difference": diff.difference, "low": diff.low, "high": diff.high,
                                            "level": diff.level, "settled": diff.settled}
        result["runtimes"][name] = entry
    return result


def bench_model(model: torch.nn.Module, config: Any, class_names: tuple[str, ...], weights: str,
                args: argparse.Namespace) -> dict[str, Any]:
    if args.data:
        config, workspace = workspace_for(config, args.data, class_names)
        records = workspace.test_records[: args.images]
        images = preprocess(model, records)
        sizes = [(r.height, r.width) for r in records]
        inputs = f"the first {len(images)} images of the {config.data.test_split} split of {args.data}"
        calibration = torch.stack(preprocess(model, workspace.train_records[: args.calibration_images]))
        calibrated_on = (f"the first {calibration.shape[0]} images of the training split of {args.data} "
                         f"({config.data.train_split}, less the {config.data.val_images} validation images)")
    else:
        workspace = None
        g = torch.Generator().manual_seed(args.seed)
        s = model.image_size
        images = list(torch.randn(args.images, 3, s, s, generator=g))
        sizes = [(375, 500)] * len(images)  # a typical VOC image's size, for the boxes' scaling
        inputs = f"{len(images)} random normal tensors (seed {args.seed}), original size 375x500"
        calibration = torch.randn(args.calibration_images, 3, s, s, generator=g)
        calibrated_on = f"{calibration.shape[0]} random normal tensors (timing only: no meaningful accuracy)"
    runtimes = {}
    for name in args.runtimes:
        print(f"building {name}...", file=sys.stderr, flush=True)
        runtimes[name] = build_runtime(name, model, calibration=calibration if name == "int8" else None,
                                       class_names=class_names, threads=args.threads)
    e = config.eval
    post = {"score_threshold": e.score_threshold, "nms_iou": e.nms_iou, "top_k": e.top_k}
    print(f"timing {len(images)} images...", file=sys.stderr, flush=True)
    # each runtime flagged busy by the study's rule: a wide spread, or other processes on our cores
    timed = time_runtimes(runtimes, images, sizes, warmup=args.warmup, throughput_batch=args.throughput_batch,
                          seed=args.seed, threads=args.threads, **post)
    entry: dict[str, Any] = {
        "model": {"backbone": model.backbone_name, "width": model.width, "image_size": model.image_size,
                  "num_classes": model.num_classes, "num_priors": model.num_priors, "weights": weights,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "runtimes": timed,
        "busy_rule": BUSY_RULE,
        "inputs": inputs,
        "int8_calibration": calibrated_on if "int8" in runtimes else None,
        "postprocess": {**post, "candidate_size": 200},
    }
    if args.map:
        entry["map"] = score(runtimes, config, workspace, class_names, args)
    return entry


def print_table(entry: dict[str, Any]) -> None:
    m = entry["model"]
    print(f"\n{m['backbone']} (width {m['width']:g}), {m['image_size']}x{m['image_size']}, batch 1 "
          f"({m['weights'].split(':')[0]} weights); medians (IQR) over {next(iter(entry['runtimes'].values()))['runs']} "
          "images, ms")
    print(f"{'runtime':13}{'inference':>18}{'prediction':>18}{'/ eager':>9}{'paired':>8}{'img/s':>8}"
          f"{'1st call s':>11}" + ("    VOC07 mAP  difference to eager [95 %]" if "map" in entry else ""))
    for name, t in entry["runtimes"].items():
        line = (f"{name:13}{t['inference_ms']:10.2f} ({t['inference_iqr_ms']:5.2f})"
                f"{t['prediction_ms']:10.2f} ({t['prediction_iqr_ms']:5.2f})"
                f"{t['ratio_to_eager']['prediction']:9.2f}{t['paired_ratio_to_eager']['prediction']:8.2f}"
                f"{t['throughput_images_per_s']:8.1f}{t['first_call_s']:11.1f}")
        if t["busy"]:
            line += "  BUSY: " + "; ".join(t["busy_reasons"])
        if "map" in entry:
            s = entry["map"]["runtimes"][name]
            line += f"    {s['voc07_map']:.4f}"
            if "difference_to_eager" in s:
                d = s["difference_to_eager"]
                line += f"     {d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
        print(line)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in ("onnxruntime", "onnx", "onnxscript", "torchao"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    git = provenance.git_state()
    entries = {}
    for model, config, names, weights in models(args):
        entry = bench_model(model, config, names, weights, args)
        entries[model.backbone_name] = entry
        print_table(entry)
    first = next(iter(entries.values()))
    result: dict[str, Any] = {
        "benchmark": "benchmarks/runtimes.py",
        "runtimes": first["runtimes"],
        "model": first["model"],
        **({"map": first["map"]} if "map" in first else {}),
        "backbones": entries,
        "conditions": {
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "batch": 1,
            "throughput_batch": first["runtimes"]["eager_fp32"]["throughput_batch"],
            "images": first["runtimes"]["eager_fp32"]["runs"],
            "warmup": args.warmup,
            "inputs": first["inputs"],
            "order": "each image run by every runtime in a random order drawn per image (seeded), each runtime "
                     "timing inference then prediction; medians and IQR over the images",
            "inference": {name: t["infer_covers"] for name, t in first["runtimes"].items()},
            "prediction": "inference + the rest of decoding + score threshold + per-class NMS (torchvision "
                          "batched_nms) + top-k + scaling to the image, in float32 eager PyTorch",
            "postprocess": first["postprocess"],
            "int8_calibration": first["int8_calibration"],
            "onnxruntime": "CPUExecutionProvider, all graph optimisations, intra-op threads = threads, "
                           "idle threads not spinning",
            "compile": "torch.compile, Inductor, static shapes, freezing (compile and int8)",
            "weights": first["model"]["weights"],
            "seed": args.seed,
            "packages": versions(),
        },
        "machine": provenance.collect("cpu", seed=args.seed, git=git),
    }
    if args.json:
        provenance.write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
