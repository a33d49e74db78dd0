"""One run from parameters to results: train (resuming), evaluate, time, provenance.

This is what the run notebook calls; ``ssdstudy train`` calls it too. Each step is
skipped when its result file already exists, so an interrupted run resumes where it
stopped and a finished one costs nothing to call again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssdstudy import distributed, provenance
from ssdstudy.augment import build_transform
from ssdstudy.config import RunConfig, load_run_config
from ssdstudy.data import DetectionDataset, collate
from ssdstudy.errors import UserError
from ssdstudy.evaluate import evaluate
from ssdstudy.model import build_from_config
from ssdstudy.predict import postprocess
from ssdstudy.runs import RunPaths, read_config
from ssdstudy.timing import time_run
from ssdstudy.train import Trainer
from ssdstudy.workspace import Workspace, available_devices


def detect_records(
    model: torch.nn.Module,
    records: list,
    config: RunConfig,
    device: torch.device,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Detections for every record: ``{image_id: {boxes (K,4) pixels, scores, labels}}``."""
    transform = build_transform(False, config.model.image_size, model.mean, model.std)
    loader = DataLoader(
        DetectionDataset(records, transform), batch_size=batch_size, shuffle=False,
        collate_fn=collate, num_workers=config.train.workers,
    )
    model = model.to(device).eval()
    out: dict[str, dict[str, np.ndarray]] = {}
    e = config.eval
    index = 0
    with torch.inference_mode():
        for images, _targets in tqdm(loader, disable=not progress, desc="detecting", unit="batch", leave=False):
            batch = records[index:index + images.shape[0]]
            index += images.shape[0]
            locs, logits = model(images.to(device))
            dets = postprocess(
                locs, logits, model.priors, [(r.height, r.width) for r in batch],
                score_threshold=e.score_threshold, nms_iou=e.nms_iou, top_k=e.top_k,
            )
            for rec, det in zip(batch, dets):
                out[rec.image_id] = {k: v.detach().cpu().numpy() for k, v in det.items()}
    return out


def timing_images(model: torch.nn.Module, records: list, config: RunConfig) -> tuple[list, list]:
    transform = build_transform(False, config.model.image_size, model.mean, model.std)
    dataset = DetectionDataset(records[: config.timing.images], transform)
    images = [dataset[i][0] for i in range(len(dataset))]
    sizes = [(r.height, r.width) for r in records[: len(images)]]
    return images, sizes


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig, tuple[str, ...]]:
    """A trained model from one of our checkpoints, with its config and class names."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a corrupt or foreign file
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise UserError(f"{path}: not an ssdstudy checkpoint (no 'config' and 'model' entries)")
    from ssdstudy.config import build_config

    config = build_config((str(path), state["config"]))
    class_names = tuple(state["class_names"])
    model = build_from_config(config.model, len(class_names) + 1)
    from ssdstudy.model import load_state

    try:
        load_state(model, state["model"], source="ssdstudy", name=path)
    except UserError as err:
        raise UserError(f"checkpoint does not fit {config.model.backbone}: {err}") from None
    return model.to(device).eval(), config, class_names


def execute_run(config_path: str | Path | RunConfig, run_dir: str | Path, *, progress: bool = True) -> dict[str, Any] | None:
    """Train, evaluate and time the run of ``config_path`` in ``run_dir``, resuming.

    Returns ``{"metrics", "timing", "history" (DataFrame), "run_dir"}``. In a run trained
    by several processes (:mod:`ssdstudy.distributed`) the first process validates,
    scores, times and writes the results; the others train their share and return None.
    """
    config = config_path if isinstance(config_path, RunConfig) else load_run_config(config_path)
    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    code = provenance.git_state()  # the code this process imported, whatever changes on disk later
    trainer = Trainer(config, paths, progress=progress)
    workspace = trainer.workspace
    device = trainer.device

    def validate(model: torch.nn.Module) -> float:
        """VOC07 mAP on the validation split (never the test split)."""
        records = workspace.val_records
        dets = detect_records(model, records, config, device, progress=False)
        return evaluate(records, dets, workspace.class_names, coco=False, size_bins=False)["voc07_map"]

    trainer.fit(resume=True, validate=validate if config.data.val_images else None)
    processes = distributed.describe()
    if not distributed.is_main():
        return None
    model = trainer.model.eval()

    if not paths.metrics.is_file():
        dets = detect_records(model, workspace.test_records, config, device, progress=progress)
        metrics = evaluate(workspace.test_records, dets, workspace.class_names)
        from ssdstudy.evaluate import image_bins, to_json, voc_matches
        from ssdstudy.evaluate.bootstrap import Outcomes, map_interval

        records = workspace.test_records
        matches = voc_matches(records, dets, workspace.class_names)
        outcomes = Outcomes.from_matches(matches, [r.image_id for r in records], image_bins(records))
        outcomes.save(paths.outcomes)
        metrics["voc07_map_interval"] = list(map_interval(outcomes))
        provenance.write_json(paths.metrics, to_json(metrics))
    metrics = json.loads(paths.metrics.read_text())

    if not paths.samples.is_file():
        records = workspace.test_records[:SAMPLE_IMAGES]
        dets = detect_records(model, records, config, device, progress=False)
        provenance.write_json(paths.samples, {
            "score_threshold": SAMPLE_SCORE, "class_names": list(workspace.class_names),
            "images": [{"image_id": r.image_id, **{k: v[dets[r.image_id]["scores"] >= SAMPLE_SCORE].tolist()
                                                   for k, v in dets[r.image_id].items()}} for r in records],
        })

    if not paths.timing.is_file():
        images, sizes = timing_images(model, workspace.test_records, config)
        timing = time_run(model, images, sizes, config, available_devices())
        model.to(device)
        provenance.write_json(paths.timing, timing)
    timing = json.loads(paths.timing.read_text())

    if not paths.provenance.is_file():
        history = pd.read_csv(paths.history)
        provenance.write_json(paths.provenance, provenance.collect(
            str(device), seed=config.train.seed, git=code, run_id=config.run_id, compute_code=trainer.compute_code,
            wall_seconds_finalise=time.time() - started,
            training_seconds=float(history["epoch_seconds"].sum()), **processes,
        ))
    return {
        "metrics": metrics,
        "timing": timing,
        "history": pd.read_csv(paths.history),
        "run_dir": str(paths.root),
    }


#: Test images whose detections a run keeps in ``samples.json``, and their lowest score.
SAMPLE_IMAGES = 4
SAMPLE_SCORE = 0.3


def sample_detections(run_dir: str | Path, n: int = 4, score_threshold: float = 0.4) -> list[tuple[np.ndarray, dict, tuple[str, ...]]]:
    """A few test images of a finished run with its detections, for notebooks: from the
    run's ``samples.json`` (published; no checkpoint needed) or, for more images than it
    holds, from the checkpoint."""
    paths = RunPaths(Path(run_dir))
    config = read_config(paths.config)
    records = Workspace(config, progress=False).test_records[:n]
    if paths.samples.is_file() and n <= SAMPLE_IMAGES and score_threshold >= SAMPLE_SCORE:
        saved = json.loads(paths.samples.read_text())
        class_names = tuple(saved["class_names"])
        by_id = {d["image_id"]: d for d in saved["images"]}
        dets = {r.image_id: {k: np.asarray(by_id[r.image_id][k], dtype=np.float32 if k != "labels" else np.int64)
                             for k in ("boxes", "scores", "labels")} for r in records}
        for d in dets.values():
            d["boxes"] = d["boxes"].reshape(-1, 4)
    else:
        model, _, class_names = load_model(paths.checkpoint)
        dets = detect_records(model, records, config, torch.device("cpu"), progress=False)
    out = []
    from PIL import Image

    for rec in records:
        image = np.asarray(Image.open(rec.image_path).convert("RGB"))
        d = dets[rec.image_id]
        keep = d["scores"] >= score_threshold
        out.append((image, {k: v[keep] for k, v in d.items()}, class_names))
    return out


__all__ = ["execute_run", "detect_records", "load_model", "sample_detections", "timing_images"]
