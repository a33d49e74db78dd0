"""``ssdstudy bench``: time the study's models on this machine's devices.

The result file (``--out``, e.g. ``results/hardware/<machine>.json``) holds one entry
per (backbone, device, thread count): inference and prediction times at batch 1,
throughput, memory, and the measured training speed with the time per epoch it
implies; the hardware chapter merges every such file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="inference, prediction and training time on each device",
        description="Time the baseline models (or a checkpoint) on every device asked for: "
        "inference (forward) and prediction (forward + decoding + NMS) per image at batch 1, "
        "throughput at a larger batch, memory, and training images/s.",
    )
    p.add_argument("--profile", default="default", help="profile whose data, input size and timing settings to use")
    p.add_argument("--checkpoint", help="time this trained model instead of the baselines")
    p.add_argument("--backbones", nargs="+", default=["vgg16", "mobilenet_v1"])
    p.add_argument("--width", type=float, default=1.0, help="MobileNetV1 width multiplier")
    p.add_argument("--image-size", type=int, help="input size (default: the profile's)")
    p.add_argument("--devices", nargs="+", help="cpu, cuda, mps (default: every one present)")
    p.add_argument("--threads", nargs="+", type=int, help="CPU thread counts (default: the process default)")
    p.add_argument("--images", type=int, help="test images timed (default: the profile's timing.images)")
    p.add_argument("--train-steps", type=int, default=5, help="training steps timed per device (0: skip)")
    p.add_argument("--machine", default=platform.node(), help="name of this machine in the result file")
    p.add_argument("--out", help="write the result file here (JSON)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssdstudy import provenance
    from ssdstudy.config import read_profile
    from ssdstudy.model import build_model
    from ssdstudy.pipeline import load_model, timing_images
    from ssdstudy.runs import RunPaths
    from ssdstudy.timing import threads, time_model
    from ssdstudy.train import Trainer
    from ssdstudy.workspace import Workspace, available_devices

    profile = read_profile(args.profile)

    def bench_config(backbone: str, model: dict | None = None):
        """The profile's run of ``backbone`` (its study.backbones layer included), as asked."""
        asked = {"model": {"backbone": backbone}}
        if args.image_size:
            asked["model"]["image_size"] = args.image_size
        asked["model"].update(model or {})
        if args.images:
            asked["timing"] = {"images": args.images}
        return profile.run_config(("ssdstudy bench", asked))

    devices = args.devices or available_devices()
    models = []
    if args.checkpoint:
        model, cfg, _ = load_model(args.checkpoint)
        # the trained model fixes the input size and width
        cfg = bench_config(cfg.model.backbone, {"width": cfg.model.width, "image_size": cfg.model.image_size})
        models.append((cfg, Workspace(cfg), model))
    else:
        for backbone in args.backbones:
            cfg = bench_config(backbone, {"width": args.width if backbone == "mobilenet_v1" else 1.0,
                                          "pretrained": None})
            workspace = Workspace(cfg)
            models.append((cfg, workspace, build_model(backbone, len(workspace.class_names) + 1,
                                                       width=cfg.model.width, image_size=cfg.model.image_size)))
    entries = []
    for cfg, workspace, model in models:
        images, sizes = timing_images(model, workspace.test_records, cfg)
        for dev in devices:
            for n in (args.threads or [None]) if dev == "cpu" else [None]:
                timing = time_model(model, images, sizes, dev, cpu_threads=n, warmup=cfg.timing.warmup,
                                    throughput_batch=cfg.timing.throughput_batch,
                                    score_threshold=cfg.eval.score_threshold, nms_iou=cfg.eval.nms_iou,
                                    top_k=cfg.eval.top_k)
                entry = {"backbone": cfg.model.backbone, "width": cfg.model.width,
                         "image_size": cfg.model.image_size, "timing": timing,
                         # prediction time depends on the weights (how many boxes pass the score
                         # threshold and enter NMS): an untrained model is NMS's worst case
                         "weights": f"trained ({Path(args.checkpoint).name})" if args.checkpoint
                         else "untrained (random initialisation)"}
                if args.train_steps:
                    train_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=dev, threads=None))
                    with tempfile.TemporaryDirectory() as tmp, threads(n if dev == "cpu" else None):
                        trainer = Trainer(train_cfg, RunPaths(Path(tmp)), progress=False)
                        ips = trainer.throughput(args.train_steps)
                    entry["train_images_per_s"] = ips
                    entry["epoch_seconds"] = len(workspace.train_records) / ips
                    entry["train_images"] = len(workspace.train_records)
                entries.append(entry)
                t = timing
                print(f"{cfg.model.backbone:13} {dev:5} {t['device_name'][:40]:40} threads {t['threads']:>2}  "
                      f"inference {t['inference_ms']['median']:8.2f} ms  prediction {t['prediction_ms']['median']:8.2f} ms"
                      + (f"  train {entry['train_images_per_s']:6.1f} img/s" if "train_images_per_s" in entry else ""))
    result = {"machine": args.machine, "profile": args.profile,
              "provenance": provenance.collect("cpu"), "entries": entries}
    if args.out:
        provenance.write_json(args.out, result)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(result, indent=1, default=str)[:2000])
    return 0
