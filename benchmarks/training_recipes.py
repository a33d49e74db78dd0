"""Which training recipe learns fastest per image? Short runs of MobileNetV1-SSD300 from scratch.

Each variant trains MobileNetV1-SSD300 (width 1.0, 300x300, bf16 autocast, AdamW,
warm-up and a cosine schedule over the run) from scratch on the generated dataset's
2,000 training images for ``--epochs`` epochs and is scored on its test split (VOC07
mAP). All variants see the same images in the same order, so their mAPs compare
sample efficiency: what the 30-minute budget of ``benchmarks/training.py`` needs.

Variants: the baseline (batch 16, lr 2e-3, augmentation and 3:1 mining), batch 8,
lr 4e-3, a background-prior bias in the classification heads (as RetinaNet
initialises its heads), batch norm after every convolution of the extra layers (as
ScratchDet trains detectors from scratch), and no augmentation (for scale). The last
two change the model or the data and are measured only to explain the budget.

Three epochs show which recipes start faster, not which end better: over a longer run
the schedule matters most. A cosine over 15 epochs lowers the learning rate before the
model has learnt (results/benchmarks/training-curve-cpu-2core.json), which is why
``benchmarks/training.py`` keeps its peak rate until late steps.

    python benchmarks/training_recipes.py --json results/benchmarks/training-recipes-cpu-2core.json
    python benchmarks/training_recipes.py --only baseline no_augmentation --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ssdstudy import provenance
from ssdstudy.config import build_config
from ssdstudy.evaluate import evaluate
from ssdstudy.pipeline import detect_records
from ssdstudy.runs import RunPaths
from ssdstudy.train import Trainer, lr_factor


def background_bias(trainer: Trainer) -> None:
    """Classification heads start out predicting background with probability 0.99."""
    c = trainer.model.num_classes
    for head, boxes in zip(trainer.model.cls_heads, trainer.model.boxes_per_cell, strict=True):
        bias = head.bias.data.view(boxes, c)
        bias.zero_()
        bias[:, 0] = math.log(0.99 * (c - 1) / 0.01)


def batchnorm_extras(trainer: Trainer) -> None:
    """A BatchNorm2d after every convolution of the extra layers; optimiser rebuilt."""
    for block in trainer.model.extras:
        layers = []
        for layer in block:
            layers.append(layer)
            if isinstance(layer, nn.Conv2d):
                layers.append(nn.BatchNorm2d(layer.out_channels))
        block._modules.clear()
        for i, layer in enumerate(layers):
            block.add_module(str(i), layer)
    trainer.model.to(memory_format=torch.channels_last)
    t = trainer.config.train
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda step: lr_factor(trainer.config, step, trainer.steps_per_epoch)
    )


#: name -> (parameter overrides, a change to the trainer before training)
VARIANTS = {
    "baseline": ({}, None),
    "batch_8": ({"train": {"batch_size": 8}}, None),
    "lr_4e-3": ({"train": {"lr": 4e-3}}, None),
    "background_bias": ({}, background_bias),
    "batchnorm_extras": ({}, batchnorm_extras),
    "no_augmentation": ({"augment": {"enabled": False}}, None),
}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    overrides, change = VARIANTS[name]
    layers = {
        "data": {"root": args.data, "synth": {"train": 2000, "test": 500, "seed": 0}},
        "model": {"backbone": "mobilenet_v1", "width": 1.0, "image_size": 300},
        "augment": {"enabled": True},
        "loss": {"neg_pos_ratio": 3},
        "train": {"epochs": args.epochs, "batch_size": 16, "optimizer": "adamw", "lr": 2e-3,
                  "warmup_epochs": 0.5, "scheduler": "cosine", "precision": "bf16",
                  "threads": args.threads, "device": "cpu"},
    }
    for section, values in overrides.items():
        layers[section] = {**layers[section], **values}
    config = build_config((f"benchmarks/training_recipes.py ({name})", layers))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RunPaths(Path(tmp)), progress=not args.quiet)
        if change is not None:
            change(trainer)
        start = time.perf_counter()
        stats = trainer.fit(resume=False)
        minutes = (time.perf_counter() - start) / 60
    ws = trainer.workspace
    dets = detect_records(trainer.model.eval(), ws.test_records, config, torch.device("cpu"), progress=False)
    metrics = evaluate(ws.test_records, dets, ws.class_names, coco=False, size_bins=False)
    return {
        "variant": name, "images_seen": len(stats) * trainer.steps_per_epoch * config.train.batch_size,
        "epoch_losses": [s.loss for s in stats], "final_loss": stats[-1].loss,
        "loc_loss": stats[-1].loc_loss, "cls_loss": stats[-1].cls_loss,
        "voc07_map": float(metrics["voc07_map"]), "wall_minutes": minutes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth", help="generated dataset (written if missing)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    rows = []
    for name in args.only or VARIANTS:
        row = run_variant(name, args)
        rows.append(row)
        print(f"{name:18s} {row['images_seen']:6d} images  loss {row['final_loss']:.3f}  "
              f"VOC07 mAP {row['voc07_map']:.3f}  ({row['wall_minutes']:.1f} min)", flush=True)
    if args.json:
        figures = {"benchmark": "benchmarks/training_recipes.py", "epochs": args.epochs, "threads": args.threads,
                   "variants": rows, "provenance": provenance.collect("cpu", seed=0)}
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
