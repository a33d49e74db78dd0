"""How the two crop rules differ: the original code's (default) against the SSD paper's.

Draws the crop window of one 500x375 image with three objects 3,000 times under each
rule (``ssdstudy.augment.sample_crop``) and prints, per rule, how often the whole image
is kept, the mean crop area, the mean number of objects kept and the mean best IoU of a
crop with an object; ``--json PATH`` writes them. The test suite checks the original
rule against a plain transcription of the original code.

    python benchmarks/crop_rules.py --json results/benchmarks/crop-rules.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from ssdstudy.augment import CROP_RULES, CROP_TRIALS, sample_crop

WIDTH, HEIGHT = 500, 375
BOXES = torch.tensor([[40.0, 50.0, 160.0, 200.0], [300.0, 30.0, 360.0, 90.0], [200.0, 250.0, 480.0, 360.0]],
                     dtype=torch.float64)


def draws(rule: str, n: int, seed: int = 0) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)

    def uniforms() -> torch.Tensor:
        return torch.rand(1 + 4 * CROP_TRIALS, generator=gen, dtype=torch.float64)

    kept_whole, areas, kept, ious = 0, [], [], []
    for _ in range(n):
        crop = sample_crop(HEIGHT, WIDTH, BOXES, uniforms(), rule, uniforms)
        if crop is None:
            kept_whole += 1
            areas.append(1.0)
            kept.append(len(BOXES))
            ious.append(1.0)
            continue
        (x1, y1, x2, y2), keep = crop
        areas.append((x2 - x1) * (y2 - y1) / (WIDTH * HEIGHT))
        kept.append(int(keep.sum()))
        ious.append(float(box_iou(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64), BOXES).max()))
    return {"whole_image_kept": kept_whole / n, "mean_area": float(np.mean(areas)),
            "mean_objects_kept": float(np.mean(kept)), "mean_best_iou": float(np.mean(ious))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    figures = {rule: draws(rule, args.draws) for rule in CROP_RULES}
    for rule, f in figures.items():
        print(f"{rule:9} whole image kept {f['whole_image_kept']:.1%}, mean crop area {f['mean_area']:.2f}, "
              f"objects kept {f['mean_objects_kept']:.2f} of 3, best IoU {f['mean_best_iou']:.2f}")
    if args.json:
        out = {"benchmark": "benchmarks/crop_rules.py", "draws": args.draws,
               "image": f"{WIDTH}x{HEIGHT}, 3 objects", "rules": figures}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
