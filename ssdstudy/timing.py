"""Inference time against prediction time, per image, on each device.

* inference time: the forward pass alone;
* prediction time: forward pass, box decoding, per-class NMS and top-k — what a user
  of the detector waits for, split into its stages (forward, decode, NMS). The
  ``reference`` path reproduces the original code's per-class Python NMS loop on the
  CPU, to measure the study's NMS-bottleneck claim.

Both are measured at batch 1 on real test images, after warm-up, in inference mode,
with the device synchronised at each stage boundary. Several models (or thread counts)
are timed **interleaved**: image by image, each model in turn (:func:`time_models`), so
that a burst of other load on the machine hits all of them alike instead of whichever
was timed during it. Figures are medians with the interquartile range.

A measurement is flagged **busy** (:func:`busy_reasons`) when its spread is too large
(an interquartile range of inference times above :data:`BUSY_SPREAD` of their median)
or when other processes kept more CPUs busy than the measurement left
free (:data:`BUSY_MARGIN_CORES` of tolerance), as read from ``/proc/stat`` against
this process's own CPU time (:func:`watch_load`). Throughput is measured at a larger
batch. Memory is CUDA's peak allocation on a GPU, and the process's resident-set growth
and peak on the CPU; a run's timing also records the peak memory of a training step and
of a prediction, each in a fresh process (:mod:`ssdstudy.memory`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ssdstudy.memory import peak_rss_mb, rss_mb
from ssdstudy.predict import decode_outputs, select_detections
from ssdstudy.provenance import cpu_name, device_name

#: A measurement is busy when the interquartile range of its inference times is more than
#: this share of their median. Inference does the same work on every image, so its spread
#: is the machine's; prediction's also follows the boxes each image sends into NMS.
BUSY_SPREAD = 0.25
#: ... or when other processes kept more than ``CPUs - threads timed + this`` CPUs busy
#: on average while it ran (its threads could not each have a CPU of their own).
BUSY_MARGIN_CORES = 0.5
#: The rule in words, as recorded in hardware files and stated in the book.
BUSY_RULE = (f"busy: the interquartile range of inference times above {BUSY_SPREAD:.0%} of "
             f"their median, or other processes keeping more than (CPUs - threads timed + {BUSY_MARGIN_CORES:g}) "
             "CPUs busy on average while the models were timed")
#: Candidates per (image, class) that enter NMS (:func:`ssdstudy.predict.select_detections`).
CANDIDATE_SIZE = 200


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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


# --- the machine's other load -------------------------------------------------------------


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy_cpu_seconds(cpus: Sequence[int]) -> float | None:
    """CPU seconds the given CPUs spent on anything but idling (``/proc/stat``: user,
    nice, system, irq, softirq and steal; guest time is counted in user). None where
    ``/proc/stat`` cannot be read."""
    try:
        with open("/proc/stat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{i}" for i in cpus}
    ticks = 0
    found = False
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            v = [int(x) for x in parts[1:9]] + [0] * max(0, 8 - len(parts[1:9]))
            ticks += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def watch_load() -> Iterator[dict[str, Any]]:
    """Measure what else the machine did while the block ran; the yielded dict is filled
    on exit: ``cpus`` (CPUs this process may run on), ``wall_s``, ``process_cpu_s`` (this
    process's CPU time, all threads), ``process_cpu_per_wall`` (the CPUs it kept busy on
    average), ``other_cpu_cores`` (the CPUs everything else kept busy on average, from
    ``/proc/stat``; None where it cannot be read) and ``loadavg_before``/``_after``
    (1, 5 and 15 minutes)."""
    cpus = _cpus()
    out: dict[str, Any] = {"cpus": len(cpus), "loadavg_before": _loadavg()}
    busy0, cpu0, wall0 = _busy_cpu_seconds(cpus), time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        wall = time.perf_counter() - wall0
        own = time.process_time() - cpu0
        busy1 = _busy_cpu_seconds(cpus)
        other = None
        if busy0 is not None and busy1 is not None and wall > 0:
            # /proc/stat counts in clock ticks: never below zero for rounding
            other = max(0.0, (busy1 - busy0 - own) / wall)
        out.update(wall_s=wall, process_cpu_s=own, process_cpu_per_wall=own / wall if wall > 0 else None,
                   other_cpu_cores=other, loadavg_after=_loadavg())


def busy_reasons(timing: Mapping[str, Any], load: Mapping[str, Any] | None = None,
                 threads_timed: int | None = None) -> list[str]:
    """Why a measurement was taken on a busy machine (:data:`BUSY_RULE`); empty when it
    was not. ``timing``: one entry of :func:`time_models` (its ``inference_ms``
    summary); ``load``: :func:`watch_load`'s record; ``threads_timed``:
    the CPU threads the measurement used (1 for a GPU's launching thread)."""
    reasons = []
    s = timing.get("inference_ms") or {}
    med, iqr = s.get("median"), s.get("iqr")
    if med and iqr is not None and med > 0 and iqr / med > BUSY_SPREAD:
        reasons.append(f"inference spread: IQR {iqr / med:.0%} of the median (limit {BUSY_SPREAD:.0%})")
    other = (load or {}).get("other_cpu_cores")
    cpus = (load or {}).get("cpus")
    if other is not None and cpus and threads_timed:
        free = cpus - min(threads_timed, cpus)
        if other > free + BUSY_MARGIN_CORES:
            reasons.append(f"other processes kept {other:.1f} of {cpus} CPUs busy while "
                           f"{threads_timed} thread{'s were' if threads_timed != 1 else ' was'} timed")
    return reasons


# --- timing ------------------------------------------------------------------------------


@dataclass
class Subject:
    """One model to time: its test images (each (3, S, S), normalised) and their
    original sizes, the CPU threads to use (None: the process's default) and a name."""

    model: torch.nn.Module
    images: Sequence[torch.Tensor]
    image_sizes: Sequence[tuple[int, int]]
    cpu_threads: int | None = None
    name: str = ""


@dataclass
class _State:
    subject: Subject
    threads: int
    batch: list[torch.Tensor]
    samples: dict[str, list[float]] = field(default_factory=dict)
    rss_growth_mb: float = 0.0
    peak_memory_mb: float | None = None
    throughput_ms: list[float] = field(default_factory=list)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)


def _staged(model: torch.nn.Module, x: torch.Tensor, sizes: list, device: torch.device, mode: str,
            kw: dict[str, Any]) -> tuple[dict[str, float], torch.Tensor, list]:
    """One prediction, the device synchronised at each stage boundary: ms of the whole and
    of forward, decode (boxes and softmax) and NMS (threshold, NMS, top-k, scaling)."""
    _sync(device)
    t0 = time.perf_counter()
    locs, logits = model(x)
    _sync(device)
    t1 = time.perf_counter()
    boxes, scores = decode_outputs(locs, logits, model.priors)
    _sync(device)
    t2 = time.perf_counter()
    dets = select_detections(boxes, scores, sizes, mode=mode, **kw)
    _sync(device)
    t3 = time.perf_counter()
    ms = {"total": (t3 - t0) * 1e3, "forward": (t1 - t0) * 1e3, "decode": (t2 - t1) * 1e3, "nms": (t3 - t2) * 1e3}
    return ms, scores, dets


def _set_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def time_models(
    subjects: Sequence[Subject],
    device: str | torch.device = "cpu",
    *,
    warmup: int = 5,
    throughput_batch: int = 8,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    reference: bool = True,
) -> list[dict[str, Any]]:
    """Time each of ``subjects`` on ``device``, interleaved; one result per subject.

    Each subject is warmed up on its own first. Then, image by image, each subject in
    turn (at its own thread count) is timed: its forward pass (inference), a prediction
    split into forward, decode and NMS, and (``reference``) the same with the reference
    NMS loop. Throughput repetitions are interleaved alike. The machine's other load is
    watched over the interleaved rounds (:func:`watch_load`) and each result flagged
    ``busy`` by :func:`busy_reasons`.

    Returns JSON-ready dicts: ``inference_ms``, ``prediction_ms`` (and
    ``reference_prediction_ms``) as summaries; ``stages_ms`` medians (``forward``,
    ``decode``, ``nms``, ``postprocess`` = decode + NMS, and ``reference_decode``,
    ``reference_nms``, ``reference_postprocess``); ``nms_candidates`` and ``detections``
    (medians per image of the boxes entering NMS and kept); throughput; memory; ``load``,
    ``busy``, ``busy_reasons``; the machine's names and ``interleaved_with``.
    """
    device = torch.device(device)
    default_threads = torch.get_num_threads()
    kw = {"score_threshold": score_threshold, "nms_iou": nms_iou, "top_k": top_k, "candidate_size": CANDIDATE_SIZE}
    states = []
    for s in subjects:
        s.model.to(device).eval()
        n = (s.cpu_threads or default_threads) if device.type == "cpu" else default_threads
        states.append(_State(s, n, [img.unsqueeze(0).to(device) for img in s.images]))
    try:
        with torch.inference_mode():
            for st in states:  # warm-up, one subject at a time
                _set_threads(st.threads)
                rss = rss_mb(trim=False)
                model, sizes = st.subject.model, st.subject.image_sizes
                for i in range(min(warmup, len(st.batch))):
                    _staged(model, st.batch[i], [sizes[i]], device, "batched", kw)
                st.rss_growth_mb = max(0.0, rss_mb(trim=False) - rss)
            with watch_load() as load:
                for i in range(max((len(st.batch) for st in states), default=0)):
                    for st in states:  # round robin: one image of each subject in turn
                        if i < len(st.batch):
                            _set_threads(st.threads)
                            _time_image(st, i, device, kw, reference)
            tbs = [max(1, min(throughput_batch, len(st.batch))) for st in states]
            bigs = [torch.cat(st.batch[:tb]) if st.batch else None for st, tb in zip(states, tbs)]
            for st, big, tb in zip(states, bigs, tbs):  # one untimed pass at the larger batch
                if big is not None:
                    _set_threads(st.threads)
                    _peak_memory(st, big, tb, device, kw)
            for _ in range(3):
                for st, big, tb in zip(states, bigs, tbs):
                    if big is not None:
                        _set_threads(st.threads)
                        ms, _ = _timed(partial(_predict, st.subject, big, tb, kw), device)
                        st.throughput_ms.append(ms)
    finally:
        torch.set_num_threads(default_threads)
    names = [st.subject.name for st in states]
    return [_result(st, tb, device, load, reference, [n for n in names if n and n != st.subject.name])
            for st, tb in zip(states, tbs)]


def _time_image(st: _State, i: int, device: torch.device, kw: dict[str, Any], reference: bool) -> None:
    model, x, size = st.subject.model, st.batch[i], [st.subject.image_sizes[i]]
    ms, _ = _timed(lambda: model(x), device)
    st.add("inference", ms)
    ms, scores, dets = _staged(model, x, size, device, "batched", kw)
    st.add("prediction", ms["total"])
    st.add("decode", ms["decode"])
    st.add("nms", ms["nms"])
    st.add("postprocess", ms["decode"] + ms["nms"])
    # outside the clock: how many boxes entered NMS, how many were kept
    k = min(CANDIDATE_SIZE, scores.shape[1]) if CANDIDATE_SIZE > 0 else scores.shape[1]
    st.add("candidates", float((scores[0, :, 1:].topk(k, dim=0).values > kw["score_threshold"]).sum()))
    st.add("detections", float(dets[0]["scores"].numel()))
    if reference:
        ms, _, _ = _staged(model, x, size, device, "reference", kw)
        st.add("reference_prediction", ms["total"])
        st.add("reference_decode", ms["decode"])
        st.add("reference_nms", ms["nms"])
        st.add("reference_postprocess", ms["decode"] + ms["nms"])


def _predict(subject: Subject, big: torch.Tensor, tb: int, kw: dict[str, Any]) -> list:
    """Prediction of the first ``tb`` images of ``subject``, batched as ``big``."""
    model = subject.model
    return select_detections(*decode_outputs(*model(big), model.priors), list(subject.image_sizes[:tb]), **kw)


def _peak_memory(st: _State, big: torch.Tensor, tb: int, device: torch.device, kw: dict[str, Any]) -> None:
    """CUDA: the peak this subject allocates at the larger batch, its weights included
    and the other subjects' left out."""
    model = st.subject.model
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    _predict(st.subject, big, tb, kw)
    if device.type == "cuda":
        _sync(device)
        own = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        st.peak_memory_mb = (torch.cuda.max_memory_allocated(device) - base + own) / 2**20


def _result(st: _State, tb: int, device: torch.device, load: dict[str, Any], reference: bool,
            others: list[str]) -> dict[str, Any]:
    med = {k: float(np.median(v)) for k, v in st.samples.items()}
    result: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(str(device)),
        "cpu": cpu_name(),
        "threads": st.threads if device.type == "cpu" else torch.get_num_threads(),
        "images": len(st.batch),
        "batch": 1,
        "inference_ms": summary(st.samples["inference"]),
        "prediction_ms": summary(st.samples["prediction"]),
        "stages_ms": {"forward": med["inference"], "decode": med["decode"], "nms": med["nms"],
                      "postprocess": med["postprocess"]},
        "nms_candidates": med["candidates"],
        "detections": med["detections"],
        "throughput_batch": tb,
        "throughput_images_per_s": tb / (float(np.median(st.throughput_ms)) / 1e3),
        "interleaved_with": others,
    }
    if reference:
        result["reference_prediction_ms"] = summary(st.samples["reference_prediction"])
        result["stages_ms"].update(reference_decode=med["reference_decode"], reference_nms=med["reference_nms"],
                                   reference_postprocess=med["reference_postprocess"])
    if device.type == "cuda":
        result["peak_memory_mb"] = st.peak_memory_mb
        result["memory_kind"] = "cuda_max_allocated"
    else:
        result["peak_memory_mb"] = peak_rss_mb()
        result["rss_growth_mb"] = st.rss_growth_mb
        result["memory_kind"] = "process_rss"
    result["load"] = dict(load)
    reasons = busy_reasons(result, load, st.threads if device.type == "cpu" else 1)
    result["busy"] = bool(reasons)
    result["busy_reasons"] = reasons
    return result


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
    """Time one model on ``images`` (each (3, S, S), normalised) on ``device``: the
    result of :func:`time_models` for it alone."""
    return time_models([Subject(model, images, image_sizes, cpu_threads)], device, warmup=warmup,
                       throughput_batch=throughput_batch, score_threshold=score_threshold, nms_iou=nms_iou,
                       top_k=top_k, reference=reference)[0]


#: Devices whose memory :func:`time_run` measures (:mod:`ssdstudy.memory`).
MEMORY_DEVICES = ("cpu", "cuda")


def time_run(model: torch.nn.Module, images: list, sizes: list, config: Any, devices: Sequence[str], *,
             memory: bool = True) -> dict[str, Any]:
    """A run's ``timing.json``: :func:`time_models` on each of ``config.timing.devices``
    that is among ``devices``, with the run's post-processing settings; on the CPU one
    entry per thread count of ``config.timing.cpu_threads``, the counts interleaved.
    Keys: ``"cpu"``, ``"cpu-2t"``, ``"cuda"``...

    With ``memory``, each entry of a CPU or CUDA device also holds ``"memory"``: the peak
    memory of a training step at the run's batch size and precision and of a prediction
    at batch 1, each measured in a fresh process (:func:`ssdstudy.memory.memory_for_config`;
    once per device, the same for each of its thread counts). A failed measurement is
    recorded as ``{"error": ...}`` with a warning, and the timing goes on.

    It lives here, not in the run pipeline, so that what timing measures can grow
    without changing the code that computes a run's model and scores.
    """
    timing = {}
    for dev in (d for d in config.timing.devices if d in devices):
        thread_counts = (config.timing.cpu_threads or [None]) if dev == "cpu" else [None]
        keys = [dev if n is None else f"{dev}-{n}t" for n in thread_counts]
        results = time_models(
            [Subject(model, images, sizes, n, key) for n, key in zip(thread_counts, keys)], dev,
            warmup=config.timing.warmup, throughput_batch=config.timing.throughput_batch,
            score_threshold=config.eval.score_threshold, nms_iou=config.eval.nms_iou, top_k=config.eval.top_k,
        )
        if memory and getattr(config.timing, "memory", True) and dev in MEMORY_DEVICES:
            from ssdstudy.memory import memory_for_config

            mem = memory_for_config(config, int(getattr(model, "num_classes", 0)), dev)
            for result in results:
                result["memory"] = mem
        timing.update(zip(keys, results))
    return timing
