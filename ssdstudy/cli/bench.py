"""``ssdstudy bench``: time the study's models on this machine's devices.

The result file (``--out``, e.g. ``results/hardware/<machine>.json``) holds one entry
per (backbone, device, thread count): inference and prediction times at batch 1 (with
post-processing split into decoding and NMS), throughput, memory (``timing.memory``: the
peak of a training step at the profile's batch size and of a prediction at batch 1, each
measured in a fresh process by :mod:`ssdstudy.memory`, on the CPU and CUDA), and the
measured training speed with the time per epoch it implies; the hardware chapter merges every
such file of its profile measured at its input size.

The models timed are the profile's own: when a run of the backbone in
``results/<profile>/runs/<run id>/`` holds its ``checkpoint.pt``, that trained model is
timed; else (checkpoints are not published) the same architecture with random weights,
and the entry says so (``"weights": "random (no checkpoint of run ... here)"``,
``"trained": false``). Random weights score nearly every default box above the score
threshold, so their post-processing and prediction times are a worst case
(``"postprocess_worst_case": true``); their inference times are unaffected.

All models (and thread counts) of a device are timed interleaved, image by image
(:func:`ssdstudy.timing.time_models`), and each entry records the machine's other load
and whether it was busy (:data:`ssdstudy.timing.BUSY_RULE`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="inference, prediction and training time on each device",
        description="Time the profile's models (trained when their runs' checkpoints are here, else random "
        "weights, said in the file) or a checkpoint on every device asked for, interleaved: inference "
        "(forward) and prediction (forward + decoding + NMS) per image at batch 1, throughput at a larger "
        "batch, memory (the peak of a training step at the profile's batch size and of a prediction at "
        "batch 1, each in a fresh process), training images/s, and whether the machine was busy.",
    )
    p.add_argument("--profile", default="default", help="profile whose data, input size and timing settings to use")
    p.add_argument("--checkpoint", help="time this trained model instead of the profile's models")
    p.add_argument("--backbones", nargs="+", default=["vgg16", "mobilenet_v1", "squeezenet"])
    p.add_argument("--width", type=float, default=1.0, help="MobileNetV1 width multiplier")
    p.add_argument("--image-size", type=int, help="input size (default: the profile's)")
    p.add_argument("--devices", nargs="+", help="cpu, cuda, mps (default: every one present)")
    p.add_argument("--threads", nargs="+", type=int, help="CPU thread counts (default: the process default)")
    p.add_argument("--images", type=int, help="test images timed (default: the profile's timing.images)")
    p.add_argument("--train-steps", type=int, default=5, help="training steps timed per device (0: skip)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak memory of a training step and of a prediction (each measured in a "
                   "fresh process, on the CPU and CUDA)")
    p.add_argument("--results", help="results folder whose <profile>/runs/ hold the runs whose checkpoints "
                   "are timed (default: the project's results/)")
    p.add_argument("--machine", default=platform.node(), help="name of this machine in the result file")
    p.add_argument("--out", help="write the result file here (JSON)")
    p.set_defaults(func=run)


#: Experiments whose runs stand for a backbone first (the baselines), then the others.
_FIRST = ("hardware", "backbone", "nms")


def profile_run(profile: Any, cfg: Any, results: Path) -> tuple[str | None, Path | None]:
    """The profile's run of ``cfg``'s model (backbone, width, input size): its id and its
    checkpoint when one is here. The runs are taken in order, those of the hardware,
    backbone and nms experiments (the baselines) first: the first with a checkpoint, else
    the first published, else the first. ``(None, None)`` when no experiment of the
    profile trains this model."""
    if not profile.study.experiments:
        return None, None
    from ssdstudy.study import read_experiment

    names = sorted(profile.study.experiments, key=lambda n: (n not in _FIRST, _FIRST.index(n) if n in _FIRST else 0))
    want = (cfg.model.backbone, cfg.model.width, cfg.model.image_size)
    # the same architecture: the backbone's own default boxes (not a tiling run's)
    ids = [run.run_id for name in names for run in read_experiment(name, profile).runs
           if (run.model.backbone, run.model.width, run.model.image_size) == want
           and run.model.priors is None and not run.model.stride8_map]
    ids = list(dict.fromkeys(ids))
    if not ids:
        return None, None
    folder = results / profile.name / "runs"
    for run_id in ids:
        if (folder / run_id / "checkpoint.pt").is_file():
            return run_id, folder / run_id / "checkpoint.pt"
    return next((r for r in ids if (folder / r).is_dir()), ids[0]), None


def _memory_text(memory: dict[str, Any] | None) -> str:
    """The peaks of an entry's memory record, for the printed line."""
    if not memory:
        return ""
    train, predict = memory.get("train_peak_mb"), memory.get("predict_peak_mb")
    if train is None and predict is None:
        return "  memory: not measured"
    return "  peak MB: " + ", ".join(f"{name} {'?' if v is None else f'{v:,.0f}'}"
                                     for name, v in (("train", train), ("predict", predict)))


def run(args: argparse.Namespace) -> int:
    from ssdstudy import provenance
    from ssdstudy.config import read_profile
    from ssdstudy.memory import memory_for_config
    from ssdstudy.model import build_from_config
    from ssdstudy.pipeline import load_model, timing_images
    from ssdstudy.runs import RESULTS, RunPaths, locked_workspace
    from ssdstudy.timing import (
        BUSY_RULE,
        MEMORY_DEVICES,
        Subject,
        busy_reasons,
        threads,
        time_models,
        watch_load,
    )
    from ssdstudy.train import Trainer
    from ssdstudy.workspace import available_devices

    profile = read_profile(args.profile)
    results = Path(args.results) if args.results else RESULTS

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
    models = []  # (config, workspace, model, what the weights are)
    if args.checkpoint:
        model, cfg, _ = load_model(args.checkpoint)
        # the trained model fixes the input size and width
        cfg = bench_config(cfg.model.backbone, {"width": cfg.model.width, "image_size": cfg.model.image_size})
        weights = {"weights": f"trained ({Path(args.checkpoint).name})", "trained": True}
        models.append((cfg, locked_workspace(cfg), model, weights))
    else:
        for backbone in args.backbones:
            cfg = bench_config(backbone, {"width": args.width if backbone == "mobilenet_v1" else 1.0,
                                          "pretrained": None})
            run_id, checkpoint = profile_run(profile, cfg, results)
            if checkpoint is not None:
                model, trained_cfg, _ = load_model(checkpoint)
                cfg = bench_config(trained_cfg.model.backbone, {"width": trained_cfg.model.width,
                                                                "image_size": trained_cfg.model.image_size,
                                                                "pretrained": None})
                workspace = locked_workspace(cfg)
                weights = {"weights": f"trained (run {run_id})", "trained": True, "run_id": run_id}
            else:
                workspace = locked_workspace(cfg)
                model = build_from_config(cfg.model, len(workspace.class_names) + 1)
                why = (f"no checkpoint of run {run_id} here" if run_id
                       else f"profile {profile.name} trains no such model")
                weights = {"weights": f"random ({why})", "trained": False, "run_id": run_id,
                           # nearly every default box passes the score threshold: NMS's worst case
                           "postprocess_worst_case": True}
            models.append((cfg, workspace, model, weights))
            print(f"{cfg.model.backbone:13} {cfg.model.image_size} px, weights: {weights['weights']}")
    prepared = []
    for cfg, workspace, model, weights in models:
        images, sizes = timing_images(model, workspace.test_records, cfg)
        prepared.append((cfg, workspace, model, weights, images, sizes))
    first = prepared[0][0]
    entries = []
    memories: dict[tuple[str, str], dict[str, Any]] = {}  # (run id, device): measured once per model
    for dev in devices:
        counts = (args.threads or [None]) if dev == "cpu" else [None]
        subjects, meta = [], []
        for cfg, workspace, model, weights, images, sizes in prepared:
            for n in counts:
                name = f"{cfg.model.backbone} x{cfg.model.width:g} {cfg.model.image_size}px {dev}" + (f" {n}t" if n else "")
                subjects.append(Subject(model, images, sizes, n, name))
                meta.append((cfg, workspace, weights, n))
        # every model and thread count of this device interleaved, image by image
        timings = time_models(subjects, dev, warmup=first.timing.warmup,
                              throughput_batch=first.timing.throughput_batch,
                              score_threshold=first.eval.score_threshold, nms_iou=first.eval.nms_iou,
                              top_k=first.eval.top_k)
        for (cfg, workspace, weights, n), timing in zip(meta, timings):
            if args.memory and dev in MEMORY_DEVICES:
                key = (cfg.run_id, dev)
                if key not in memories:
                    memories[key] = memory_for_config(cfg, len(workspace.class_names) + 1, dev)
                timing["memory"] = memories[key]
            entry: dict[str, Any] = {"backbone": cfg.model.backbone, "width": cfg.model.width,
                                     "image_size": cfg.model.image_size, "timing": timing, **weights}
            if args.train_steps:
                train_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=dev, threads=None))
                with tempfile.TemporaryDirectory() as tmp, threads(n if dev == "cpu" else None) as used:
                    trainer = Trainer(train_cfg, RunPaths(Path(tmp)), progress=False)
                    with watch_load() as load:
                        ips = trainer.throughput(args.train_steps)
                entry["train_images_per_s"] = ips
                entry["epoch_seconds"] = len(workspace.train_records) / ips
                entry["train_images"] = len(workspace.train_records)
                reasons = busy_reasons({}, load, used if dev == "cpu" else 1)
                entry.update(train_load=load, train_busy=bool(reasons), train_busy_reasons=reasons)
            entries.append(entry)
            t = timing
            print(f"{cfg.model.backbone:13} {dev:5} {t['device_name'][:40]:40} threads {t['threads']:>2}  "
                  f"inference {t['inference_ms']['median']:8.2f} ms  prediction {t['prediction_ms']['median']:8.2f} ms"
                  + (f"  train {entry['train_images_per_s']:6.1f} img/s" if "train_images_per_s" in entry else "")
                  + _memory_text(t.get("memory"))
                  + ("  BUSY: " + "; ".join(t["busy_reasons"]) if t["busy"] else ""))
    result = {"machine": args.machine, "profile": args.profile, "image_size": first.model.image_size,
              "interleaved": True, "busy_rule": BUSY_RULE,
              "provenance": provenance.collect("cpu"), "entries": entries}
    if any(e["timing"]["busy"] for e in entries):
        print("some measurements were taken on a busy machine (see BUSY above): the book flags them and "
              "the claims do not test them; time again on a quiet machine")
    if args.out:
        provenance.write_json(args.out, result)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(result, indent=1, default=str)[:2000])
    return 0
