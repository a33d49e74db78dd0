"""Peak memory of a training step and of a prediction, each in a fresh process.

:func:`measure_memory` starts ``python -m ssdstudy.memory --child`` twice, once per
task, so that one model's (or one task's) peak cannot hide another's: a process's peak
resident set only ever grows. In the child:

1. torch, torchvision and the study's modules are imported (on CUDA, the CUDA context is
   made too), and the resident set read: ``baseline_mb``, the interpreter and libraries;
2. the model is built (:func:`ssdstudy.model.build_from_config`) and moved to the
   device; the growth is ``model_mb``; ``params_mb`` and ``buffers_mb`` count the bytes
   of its parameters and buffers (default boxes, BatchNorm statistics);
3. **train**: as :class:`ssdstudy.train.Trainer` does it: channels-last, the optimiser's
   state made beforehand (one step on zero gradients: AdamW's two moments, SGD's
   momentum; ``optimizer_mb`` counts their bytes), a batch of random images at the
   model's input size with random boxes matched to the default boxes
   (:func:`ssdstudy.boxes.match`, so the MultiBox loss and its hard-negative mining run
   on real positives), then one step: forward (bf16 autocast when the precision says
   so), loss, backward, optimiser step. ``gradients_mb`` counts the gradients' bytes;
   **predict**: one image, batch 1, through :func:`ssdstudy.predict.predict` (forward,
   decoding, NMS, top-k) in fp32, twice;
4. ``before_mb`` is the resident set just before the step (model, optimiser state and
   batch resident), ``peak_mb`` the process's peak resident set (``VmHWM``) and
   ``activations_mb = peak_mb - before_mb``: the step's own working memory (activations
   and the autograd graph, gradients, temporaries; for prediction, the forward pass's
   and NMS's), library code first read during the step included (``files_growth_mb``
   says how much).

Freed memory is handed back to the operating system (``malloc_trim``) before each
reading of the resident set, so that it counts live memory. On CUDA the same figures
come from the allocator too: ``torch.cuda.max_memory_allocated`` over the step, its peak
statistics reset just before (``cuda_peak_mb``, ``cuda_before_mb``,
``cuda_activations_mb``); the device's peak is then the CUDA one.

A failure of a child (a model that cannot be built, memory exhausted, a timeout) is
recorded as ``{"error": "..."}`` and warned about; it never raises, so a run that is
being timed goes on.

``python -m ssdstudy.memory --backbone vgg16_bn --batch-size 16 --precision bf16``
prints one model's figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

#: Written before the child's JSON result on its standard output.
MARKER = "SSDSTUDY-MEMORY "
#: Seconds a child may take before it is abandoned.
TIMEOUT_S = 900.0
#: The method in one sentence, as recorded with every measurement and stated in the book.
METHOD = (
    "each figure measured in a fresh Python process per model and task: on the CPU the process's peak "
    "resident set (VmHWM) over one training step (the profile's batch of random images with random boxes "
    "matched to the default boxes, its precision, channels-last, forward, MultiBox loss with hard-negative "
    "mining, backward, optimiser step with its state already made) or over one prediction at batch 1 "
    "(forward, decoding, NMS, fp32), the interpreter and libraries included (baseline_mb); parameters "
    "(params_mb) and the step's working memory (activations_mb = peak - resident set just before the step) "
    "given apart; on CUDA torch.cuda.max_memory_allocated over the step"
)


def _mb(n_bytes: float) -> float:
    return float(n_bytes) / 2**20


# --- the child ---------------------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _trim() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc), so that the
    resident set counts live memory only."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb(trim: bool = True) -> float:
    """The process's resident set now (MiB), with ``trim`` freed memory handed back
    first; where ``/proc`` is missing, its peak."""
    if trim:
        _trim()
    now = _status_mb("VmRSS")
    return now if now is not None else _maxrss_mb()


def peak_rss_mb() -> float:
    """The process's peak resident set so far (MiB): ``VmHWM``, else ``ru_maxrss``."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else _maxrss_mb()


def _mark_before_step(out: dict[str, Any], device: Any, cuda: bool) -> float | None:
    """Record the resident set (and on CUDA the allocated memory, its peak reset) just
    before the step measured; returns the file-backed resident memory then."""
    import torch

    out["before_mb"] = rss_mb()
    file_before = _status_mb("RssFile")
    if cuda:
        torch.cuda.synchronize(device)
        out["cuda_before_mb"] = _mb(torch.cuda.memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)
    return file_before


def _synthetic_targets(n: int, num_classes: int, generator: Any) -> tuple[list, list]:
    """``n`` images' worth of 1 to 4 random boxes (normalised xyxy) and labels."""
    import torch

    boxes, labels = [], []
    for _ in range(n):
        k = int(torch.randint(1, 5, (1,), generator=generator))
        centre = 0.2 + 0.6 * torch.rand(k, 2, generator=generator)
        size = 0.1 + 0.4 * torch.rand(k, 2, generator=generator)
        b = torch.cat([centre - size / 2, centre + size / 2], dim=1).clamp(0.0, 1.0)
        boxes.append(b)
        labels.append(torch.randint(1, max(2, num_classes), (k,), generator=generator))
    return boxes, labels


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (``spec["mode"]``: train or predict) in this process."""
    import torch
    import torchvision  # noqa: F401  (its memory belongs to the baseline)

    from ssdstudy.boxes import match
    from ssdstudy.config import ModelConfig, from_dict
    from ssdstudy.loss import MultiBoxLoss
    from ssdstudy.model import build_from_config
    from ssdstudy.predict import predict

    mode = spec["mode"]
    if mode not in ("train", "predict"):
        raise ValueError(f"unknown mode {mode!r}: use train or predict")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    cuda = device.type == "cuda"
    if cuda:  # the context is part of the baseline
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    torch.manual_seed(int(spec.get("seed", 0)))
    out: dict[str, Any] = {"mode": mode, "device": device.type, "threads": torch.get_num_threads(),
                           "pid": os.getpid()}
    out["baseline_mb"] = rss_mb()
    out["baseline_peak_mb"] = peak_rss_mb()  # the imports' own peak

    cfg = from_dict(ModelConfig, spec["model"], "<memory>", prefix="model.")
    model = build_from_config(cfg, int(spec["num_classes"]))
    size = cfg.image_size
    train = mode == "train"
    if train:  # as the trainer holds it
        model.to(device, memory_format=torch.channels_last)
    else:  # as timing and prediction hold it
        model.to(device)
    out["image_size"] = size
    out["params_mb"] = _mb(sum(p.numel() * p.element_size() for p in model.parameters()))
    out["buffers_mb"] = _mb(sum(b.numel() * b.element_size() for b in model.buffers()))
    out["model_mb"] = rss_mb() - out["baseline_mb"]
    if cuda:
        torch.cuda.synchronize(device)
        out["cuda_model_mb"] = _mb(torch.cuda.memory_allocated(device))

    if train:
        batch = int(spec["batch_size"])
        precision = spec.get("precision", "fp32")
        out.update(batch_size=batch, precision=precision, optimizer=spec.get("optimizer", "adamw"))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if out["optimizer"] == "adamw":
            optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=float(spec.get("weight_decay", 5e-4)))
        else:
            optimizer = torch.optim.SGD(params, lr=1e-3, momentum=float(spec.get("momentum", 0.9)),
                                        weight_decay=float(spec.get("weight_decay", 5e-4)))
        # the optimiser's state, made as its first step makes it: resident before the step
        # measured, as in every step of a training run but the first
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out["optimizer_mb"] = _mb(sum(t.numel() * t.element_size() for state in optimizer.state.values()
                                      for t in state.values() if torch.is_tensor(t)))
        generator = torch.Generator().manual_seed(int(spec.get("seed", 0)))
        images = torch.randn(batch, 3, size, size, generator=generator)
        boxes, labels = _synthetic_targets(batch, int(spec["num_classes"]), generator)
        loc_t, cls_t = match(boxes, labels, model.priors.cpu(), float(spec.get("iou_threshold", 0.5)))
        images = images.to(device, memory_format=torch.channels_last)
        loc_t, cls_t = loc_t.to(device), cls_t.to(device)
        out["positives"] = int((cls_t > 0).sum())
        criterion = MultiBoxLoss(neg_pos_ratio=spec.get("neg_pos_ratio", 3.0))
        file_before = _mark_before_step(out, device, cuda)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            locs, logits = model(images)
        loc_loss, cls_loss = criterion(locs.float(), logits.float(), loc_t, cls_t)
        loss = loc_loss + cls_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        out["gradients_mb"] = _mb(sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None))
        optimizer.step()
        out["loss"] = float(loss.detach())
    else:
        out.update(batch_size=1, precision="fp32")
        image = torch.randn(1, 3, size, size)
        file_before = _mark_before_step(out, device, cuda)
        kw = {k: spec[k] for k in ("score_threshold", "nms_iou", "top_k") if spec.get(k) is not None}
        for _ in range(2):
            dets = predict(model, image, [(size, size)], **kw)
        out["detections"] = int(dets[0]["scores"].numel())
    if cuda:
        torch.cuda.synchronize(device)
        out["cuda_peak_mb"] = _mb(torch.cuda.max_memory_allocated(device))
        out["cuda_activations_mb"] = out["cuda_peak_mb"] - out["cuda_before_mb"]
    out["peak_mb"] = peak_rss_mb()
    file_after = _status_mb("RssFile")
    if file_before is not None and file_after is not None:
        # library code and data first read during the step: counted in its working memory
        out["files_growth_mb"] = file_after - file_before
    out["activations_mb"] = max(0.0, out["peak_mb"] - out["before_mb"])
    out["seconds"] = time.perf_counter() - started
    return out


# --- the parent --------------------------------------------------------------------------


def _run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh process; its result, or ``{"error": ...}``."""
    env = dict(os.environ)
    # the child imports this package from where this process found it
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ssdstudy.memory", "--child"], input=json.dumps(spec),
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result after {timeout:g} s"}
    except OSError as err:
        return {"error": f"could not start {sys.executable}: {err}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    why = f"exit status {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode in (-9, 137) else "")
    return {"error": f"{why}: " + " | ".join(tail) if tail else why}


def _model_dict(model_config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(model_config):
        return dataclasses.asdict(model_config)
    return dict(model_config)


def measure_memory(
    model_config: Any,
    num_classes: int,
    *,
    batch_size: int,
    precision: str = "fp32",
    device: str = "cpu",
    optimizer: str = "adamw",
    neg_pos_ratio: float | None = 3.0,
    iou_threshold: float = 0.5,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    threads: int | None = None,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    top_k: int | None = None,
    timeout: float = TIMEOUT_S,
) -> dict[str, Any]:
    """Peak memory of one training step (``batch_size`` images, ``precision``) and of one
    prediction at batch 1 of the model ``model_config`` (a
    :class:`ssdstudy.config.ModelConfig` or its dict) with ``num_classes`` classes
    (background included) on ``device``, each in its own fresh process (see the module
    docstring).

    Returns ``train_peak_mb`` and ``predict_peak_mb`` (on CUDA the allocator's peaks,
    elsewhere the processes' peak resident sets), ``params_mb``, ``activations_mb`` and
    ``predict_activations_mb`` (the steps' working memory), ``kind``, ``method``, and
    ``train`` and ``predict``: every figure of each child. A child that failed gives
    ``{"error": ...}`` in its place, None for its figures and ``error`` at the top; a
    warning says so. Never raises for a failed measurement.
    """
    dev = str(device)
    base = {"model": _model_dict(model_config), "num_classes": int(num_classes), "device": dev,
            "threads": threads, "seed": 0}
    train_spec = {**base, "mode": "train", "batch_size": int(batch_size), "precision": precision,
                  "optimizer": optimizer, "neg_pos_ratio": neg_pos_ratio, "iou_threshold": iou_threshold,
                  "weight_decay": weight_decay, "momentum": momentum}
    predict_spec = {**base, "mode": "predict", "score_threshold": score_threshold, "nms_iou": nms_iou,
                    "top_k": top_k}
    cuda = dev.split(":")[0] == "cuda"
    m = base["model"]
    out: dict[str, Any] = {"backbone": m.get("backbone"), "width": m.get("width", 1.0),
                           "image_size": m.get("image_size"), "device": dev.split(":")[0],
                           "kind": "cuda_max_allocated" if cuda else "process_peak_rss",
                           "batch_size": int(batch_size), "precision": precision, "method": METHOD}
    errors = []
    for mode, spec in (("train", train_spec), ("predict", predict_spec)):
        try:
            result = _run_child(spec, timeout)
        except Exception as err:  # noqa: BLE001 (a measurement must never stop a run)
            result = {"error": f"{type(err).__name__}: {err}"}
        out[mode] = result
        if "error" in result:
            errors.append(f"{mode}: {result['error']}")
    train, predict = out["train"], out["predict"]
    peak = "cuda_peak_mb" if cuda else "peak_mb"
    work = "cuda_activations_mb" if cuda else "activations_mb"
    out["train_peak_mb"] = train.get(peak)
    out["predict_peak_mb"] = predict.get(peak)
    out["params_mb"] = train.get("params_mb", predict.get("params_mb"))
    out["activations_mb"] = train.get(work)
    out["predict_activations_mb"] = predict.get(work)
    out["optimizer_mb"] = train.get("optimizer_mb")
    out["baseline_mb"] = train.get("baseline_mb", predict.get("baseline_mb"))
    if errors:
        out["error"] = "; ".join(errors)
        warnings.warn(f"memory of {m.get('backbone')} on {dev} not measured: {out['error']}", RuntimeWarning, stacklevel=2)
    return out


def memory_for_config(config: Any, num_classes: int, device: str = "cpu", **kw: Any) -> dict[str, Any]:
    """:func:`measure_memory` of a run's model with its training settings (batch size,
    precision, optimiser, mining) and post-processing settings. Never raises: a config
    that lacks them gives an error entry."""
    try:
        t, loss, ev = config.train, config.loss, config.eval
        args = {"batch_size": t.batch_size, "precision": t.precision, "optimizer": t.optimizer,
                "weight_decay": t.weight_decay, "momentum": t.momentum, "threads": t.threads,
                "neg_pos_ratio": loss.neg_pos_ratio, "iou_threshold": loss.iou_threshold,
                "score_threshold": ev.score_threshold, "nms_iou": ev.nms_iou, "top_k": ev.top_k}
        model = config.model
    except AttributeError as err:
        warnings.warn(f"memory not measured: {err}", RuntimeWarning, stacklevel=2)
        return {"error": f"not a run's configuration: {err}", "device": str(device).split(":")[0],
                "train_peak_mb": None, "predict_peak_mb": None, "method": METHOD}
    args.update(kw)
    return measure_memory(model, num_classes, device=device, **args)


# --- the command line --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssdstudy.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help="measure the JSON spec on stdin (what the parent runs)")
    p.add_argument("--backbone", default="mobilenet_v1")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=300)
    p.add_argument("--classes", type=int, default=9, help="classes, background included (default: the "
                   "generated dataset's 8 + 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.child:
        try:
            result = _child(json.loads(sys.stdin.read()))
        except Exception as err:  # noqa: BLE001 (reported to the parent)
            print(MARKER + json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
            return 1
        print(MARKER + json.dumps(result), flush=True)
        return 0
    model = {"backbone": args.backbone, "width": args.width, "image_size": args.image_size}
    result = measure_memory(model, args.classes, batch_size=args.batch_size, precision=args.precision,
                            device=args.device, optimizer=args.optimizer)
    print(json.dumps(result, indent=1))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
