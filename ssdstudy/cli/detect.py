"""``ssdstudy detect CHECKPOINT IMAGE... --out DIR``: draw detections on images."""

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
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


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
    from ssdstudy.predict import predict
    from ssdstudy.workspace import resolve_device

    device = resolve_device(args.device)
    model, config, class_names = load_model(args.checkpoint, device)
    transform = build_transform(False, config.model.image_size, model.mean, model.std)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        path = Path(name)
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such image") from None
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{path}: not a readable image ({err})") from None
        h, w = image.shape[:2]
        tensor = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
                  "labels": torch.zeros(0, dtype=torch.int64)}
        x, _ = transform(tensor, target)
        det = predict(model, x.unsqueeze(0).to(device), [(h, w)])[0]
        keep = det["scores"] >= args.threshold
        fig = draw_detections(image, det["boxes"][keep].cpu().numpy(), det["labels"][keep].cpu().numpy(),
                              det["scores"][keep].cpu().numpy(), class_names)
        dest = out / f"{path.stem}.png"
        fig.savefig(dest, dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        print(f"{dest}: {int(keep.sum())} detections")
    return 0
