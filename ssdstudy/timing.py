"""Inference time against prediction time, per image, on each device.

* inference time: the forward pass alone;
* prediction time: forward pass, box decoding, per-class NMS and top-k — what a user
  of the detector waits for. The ``reference`` path reproduces the original code's
  per-class Python NMS loop on the CPU, to measure the study's NMS-bottleneck claim.

Both are measured at batch 1 on real test images, after warm-up, in inference mode,
with CUDA synchronised around each timed call; the two are interleaved image by image
so that drifts of the machine touch both alike. Figures are medians with the
interquartile range. Throughput is measured at a larger batch. Memory is CUDA's peak
allocation on a GPU, and the process's resident-set growth and peak on the CPU.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ssdstudy.predict import postprocess
from ssdstudy.provenance import cpu_name, device_name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux: fall back on the peak
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """The process's peak resident set (ru_maxrss: bytes on macOS, KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1), "mean": float(a.mean()), "n": int(a.size)}


@contextlib.contextmanager
def threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3, out


def time_model(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    device: str | torch.device = "cpu",
    *,
    cpu_threads: int | None = None,
    warmup: int = 5,
    throughput_batch: int = 8,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    reference: bool = True,
) -> dict[str, Any]:
    """Time ``model`` on ``images`` (each (3, S, S), normalised) on ``device``.

    Returns a JSON-ready dict: ``inference_ms``, ``prediction_ms`` (and
    ``reference_prediction_ms``) as summaries, ``stages_ms`` (forward, postprocess),
    ``throughput_images_per_s``, memory figures, and the machine's names.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    priors = model.priors
    kw = dict(score_threshold=score_threshold, nms_iou=nms_iou, top_k=top_k)
    with threads(cpu_threads if device.type == "cpu" else None) as n_threads, torch.inference_mode():
        batch = [img.unsqueeze(0).to(device) for img in images]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_before = _rss_mb()
        for i in range(min(warmup, len(batch))):
            locs, logits = model(batch[i])
            postprocess(locs, logits, priors, [image_sizes[i]], **kw)
        inference, prediction, post, reference_ms = [], [], [], []
        for x, size in zip(batch, image_sizes):
            ms, _ = _timed(lambda: model(x), device)
            inference.append(ms)

            def full():
                locs, logits = model(x)
                return postprocess(locs, logits, priors, [size], **kw)

            ms, _ = _timed(full, device)
            prediction.append(ms)
            locs, logits = model(x)
            ms, _ = _timed(lambda: postprocess(locs, logits, priors, [size], **kw), device)
            post.append(ms)
            if reference:
                def ref():
                    locs, logits = model(x)
                    return postprocess(locs, logits, priors, [size], mode="reference", **kw)

                ms, _ = _timed(ref, device)
                reference_ms.append(ms)
        rss_after = _rss_mb()
        # throughput at a larger batch
        tb = max(1, min(throughput_batch, len(batch)))
        big = torch.cat(batch[:tb])
        model(big)
        reps = []
        for _ in range(3):
            ms, _ = _timed(lambda: postprocess(*model(big), priors, list(image_sizes[:tb]), **kw), device)
            reps.append(ms)
        throughput = tb / (float(np.median(reps)) / 1e3)
    result: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(str(device)),
        "cpu": cpu_name(),
        "threads": n_threads,
        "images": len(batch),
        "batch": 1,
        "inference_ms": summary(inference),
        "prediction_ms": summary(prediction),
        "stages_ms": {"forward": summary(inference)["median"], "postprocess": summary(post)["median"]},
        "throughput_batch": tb,
        "throughput_images_per_s": throughput,
    }
    if reference:
        result["reference_prediction_ms"] = summary(reference_ms)
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["memory_kind"] = "cuda_max_allocated"
    else:
        result["peak_memory_mb"] = _peak_rss_mb()
        result["rss_growth_mb"] = max(0.0, rss_after - rss_before)
        result["memory_kind"] = "process_rss"
    return result


def time_run(model: torch.nn.Module, images: list, sizes: list, config: Any, devices: Sequence[str]) -> dict[str, Any]:
    """A run's ``timing.json``: :func:`time_model` on each of ``config.timing.devices``
    that is among ``devices`` (CPU entries per ``config.timing.cpu_threads``), with the
    run's post-processing settings. Keys: ``"cpu"``, ``"cpu-2t"``, ``"cuda"``...

    It lives here, not in the run pipeline, so that what timing measures can grow
    without changing the code that computes a run's model and scores.
    """
    timing = {}
    for dev in (d for d in config.timing.devices if d in devices):
        thread_counts = (config.timing.cpu_threads or [None]) if dev == "cpu" else [None]
        for n in thread_counts:
            key = dev if n is None else f"{dev}-{n}t"
            timing[key] = time_model(
                model, images, sizes, dev, cpu_threads=n,
                warmup=config.timing.warmup, throughput_batch=config.timing.throughput_batch,
                score_threshold=config.eval.score_threshold, nms_iou=config.eval.nms_iou,
                top_k=config.eval.top_k,
            )
    return timing
