"""``ssdstudy detect CHECKPOINT IMAGE... --out DIR [--runtime R]``: draw detections on images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssdstudy.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect", help="draw a checkpoint's detections on images",
        description="Run a trained model on images and write each with its labelled boxes "
        "and scores as a PNG in --out.",
    )
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--threshold", type=float, default=0.4, help="lowest score drawn (default 0.4)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or mps (default auto; the runtimes other than eager run on the CPU)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="eager",
                   help="how to run the network (default eager: float32 PyTorch); bf16: CPU bfloat16 "
                   "autocast; compile: torch.compile; int8: post-training int8 quantization, calibrated on "
                   "--calibration-images training images of --calibration-data; onnxruntime: the exported "
                   "ONNX graph (see ssdstudy/runtimes.py)")
    p.add_argument("--calibration-data", metavar="ROOT",
                   help="int8: dataset whose training split calibrates the quantization "
                   "(default: the checkpoint's data.root)")
    p.add_argument("--calibration-images", type=int, default=32, metavar="N",
                   help="int8: training images to calibrate on (default 32)")
    p.set_defaults(func=run)


#: ``--runtime`` choices (``eager`` is :data:`ssdstudy.runtimes.RUNTIMES`' ``eager_fp32``).
RUNTIME_CHOICES = ("eager", "bf16", "compile", "int8", "onnxruntime")


def calibration_images(root: str | Path, config, class_names, count: int, model):
    """The first ``count`` images of ``root``'s training split (``config.data.train_split``),
    preprocessed as for evaluation: an ``(N, 3, S, S)`` tensor."""
    import torch

    from ssdstudy.augment import build_transform
    from ssdstudy.data import DetectionDataset, load_split
    from ssdstudy.paths import resolve_path

    folder = resolve_path(root)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such dataset for the int8 calibration; give --calibration-data ROOT")
    if count < 1:
        raise UserError(f"--calibration-images: need at least 1, got {count}")
    records = load_split(folder, config.data.train_split, years=config.data.train_years,
                         class_names=class_names, keep_difficult=True)[:count]
    if not records:
        raise UserError(f"{folder}: no {config.data.train_split} images to calibrate the int8 quantization on")
    transform = build_transform(False, config.model.image_size, model.mean, model.std)
    dataset = DetectionDataset(records, transform)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def make_runtime(name: str, model, config, class_names, args: argparse.Namespace):
    """The runtime ``name`` of ``model`` (on the CPU), as ``ssdstudy detect`` asks for it."""
    from ssdstudy.runtimes import build_runtime

    calibration = None
    if name == "int8":
        root = args.calibration_data or config.data.root
        calibration = calibration_images(root, config, class_names, args.calibration_images, model)
    try:
        return build_runtime(name, model, calibration=calibration, class_names=class_names)
    except ModuleNotFoundError as err:
        raise UserError(f"--runtime {name}: a package it needs is missing ({err})") from None


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision import tv_tensors

    from ssdstudy.augment import build_transform
    from ssdstudy.pipeline import load_model
    from ssdstudy.plots import draw_detections
    from ssdstudy.workspace import resolve_device

    if args.runtime != "eager":
        if args.device not in ("auto", "cpu"):
            raise UserError(f"--runtime {args.runtime} runs on the CPU; leave out --device {args.device}")
        device = torch.device("cpu")
    else:
        device = resolve_device(args.device)
    model, config, class_names = load_model(args.checkpoint, device)
    runtime = make_runtime(args.runtime, model, config, class_names, args)
    transform = build_transform(False, config.model.image_size, model.mean, model.std)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        path = Path(name)
        try:
            image = np.array(Image.open(path).convert("RGB"))  # writable, for torch.from_numpy
        except FileNotFoundError:
            raise UserError(f"{path}: no such image") from None
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{path}: not a readable image ({err})") from None
        h, w = image.shape[:2]
        tensor = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
                  "labels": torch.zeros(0, dtype=torch.int64)}
        x, _ = transform(tensor, target)
        det = runtime.detect(x.unsqueeze(0).to(device), [(h, w)])[0]
        keep = det["scores"] >= args.threshold
        fig = draw_detections(image, det["boxes"][keep].cpu().numpy(), det["labels"][keep].cpu().numpy(),
                              det["scores"][keep].cpu().numpy(), class_names)
        dest = out / f"{path.stem}.png"
        fig.savefig(dest, dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        print(f"{dest}: {int(keep.sum())} detections")
    return 0
