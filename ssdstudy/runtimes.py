"""One SSD, several ways to run it on a CPU, each giving ``ssdstudy.predict``'s detections.

A *runtime* takes a batch of preprocessed images, the ``(N, 3, S, S)`` float32 tensors
:func:`ssdstudy.predict.predict` takes (the evaluation transform's output), and returns
detections in :func:`ssdstudy.predict.select_detections`' format: per image a dict of
``boxes (K, 4)`` pixels of the original image, ``scores (K,)``, ``labels (K,)``. It
does so in two steps, timed apart by :func:`time_runtimes`:

* :meth:`Runtime.infer`: what the runtime computes (its *inference time*);
* :meth:`Runtime.detect`: ``infer``, then what is left of decoding, and the score
  threshold, per-class NMS and top-k of :func:`ssdstudy.predict.select_detections`,
  always in float32 eager PyTorch with torchvision's ``batched_nms`` (its *prediction
  time*).

The runtimes (:data:`RUNTIMES`):

``eager_fp32``
    Today's path: the model's forward pass in float32 eager PyTorch. ``infer`` is the
    forward pass; ``detect`` is exactly :func:`ssdstudy.predict.predict`.
``bf16``
    The forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the
    layers the model marks stay in float32 there, see :mod:`ssdstudy.model.layers`);
    its bfloat16 outputs are cast to float32 before decoding. ``infer``: the forward
    pass under autocast; the casts, decoding and NMS are in ``detect``.
``compile``
    ``torch.compile`` (Inductor, static shapes: one compilation per batch size, done by
    the first call of that size) of the forward pass, with Inductor's *freezing*
    (weights as constants: batch norms folded into the convolutions, oneDNN weight
    packing), the setting PyTorch recommends for CPU inference and the one ``int8``
    needs, so that the two differ only by quantization. ``infer``: the compiled forward
    pass. Needs a C++ compiler.
``int8``
    Post-training static quantization with the PT2E flow of ``torchao``
    (``torchao.quantization.pt2e``; ``torch.ao.quantization``'s PT2E modules are no
    longer in torch 2.14): ``torch.export.export(model).module()`` (dynamic batch),
    ``prepare_pt2e`` with ``X86InductorQuantizer`` and
    ``get_default_x86_inductor_quantization_config()`` (uint8 activations per tensor,
    histogram observers; int8 weights per channel), calibration on the images given
    (a few training images), ``convert_pt2e``, then ``torch.compile`` with freezing as
    ``compile``, which lowers the quantize / dequantize patterns to oneDNN's int8
    convolutions. Max pools with ``ceil_mode=True`` (VGG16's pool3) are left in float32:
    Inductor lowers their quantized form wrongly (see :class:`Int8Runtime`). The outputs
    are float32. ``infer``: the compiled quantized forward pass. Needs a C++ compiler.
``onnxruntime``
    The model exported with :func:`ssdstudy.export.export_onnx`, whose graph holds the
    network, the softmax and the box decoding, run by ONNX Runtime's CPU execution
    provider (all graph optimisations; as many intra-op threads as torch uses; idle
    threads do not spin).
    ``infer``: ``session.run`` (network + softmax + decoding, and the numpy views of
    input and outputs); ``detect`` adds :func:`ssdstudy.predict.select_detections`
    (threshold, torchvision's ``batched_nms``, top-k, scaling) on its outputs: NMS is
    not in the ONNX graph.

So *inference* is the forward pass for every runtime except ``onnxruntime``, where it
also holds the softmax and decoding (about 0.1 ms of the eager path at batch 1);
*prediction* is forward + decoding + threshold + NMS + top-k for every runtime.

The runtimes run on the CPU only and are built for the weights the model has when
they are built (``compile``, ``int8`` and ``onnxruntime`` take them as constants).
"""

from __future__ import annotations

import abc
import contextlib
import copy
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssdstudy.boxes import DEFAULT_VARIANCES
from ssdstudy.predict import Detections, decode_outputs, select_detections
from ssdstudy.timing import busy_reasons, watch_load

__all__ = [
    "ALIASES",
    "RUNTIMES",
    "Bf16Runtime",
    "CompileRuntime",
    "EagerRuntime",
    "Int8Runtime",
    "OnnxRuntime",
    "Runtime",
    "build_runtime",
    "detect_records_with",
    "runtime_name",
    "time_runtimes",
]

#: The runtimes, in the order tables list them.
RUNTIMES = ("eager_fp32", "bf16", "compile", "int8", "onnxruntime")
#: Short names the command line accepts.
ALIASES = {"eager": "eager_fp32", "fp32": "eager_fp32", "ort": "onnxruntime"}


def runtime_name(name: str) -> str:
    """The canonical name of ``name`` (an entry of :data:`RUNTIMES` or :data:`ALIASES`)."""
    name = ALIASES.get(name, name)
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}: use one of {', '.join(RUNTIMES)} (or eager)")
    return name


class Runtime(abc.ABC):
    """A way to run one SSD: :meth:`infer`, then :meth:`decoded` / :meth:`detect`.

    Attributes:
        name: the entry of :data:`RUNTIMES`.
        model: the float32 eager SSD the runtime was built from (its ``priors``,
            ``image_size``... describe the runtime's model too).
        infer_covers: what :meth:`infer` computes (what its time includes).
        setup_seconds: the time taken to build the runtime (export, calibration...;
            not the compilations, which happen on each new batch size's first call).
    """

    name: str = ""
    infer_covers: str = "the network's forward pass"
    setup_seconds: float = 0.0
    #: Whether the runtime needs the model on the CPU (all but ``eager_fp32``).
    cpu_only: bool = True

    def __init__(self, model: nn.Module):
        device = model.priors.device
        if self.cpu_only and device.type != "cpu":
            raise ValueError(f"runtime {self.name!r} runs on the CPU; the model is on {device}")
        self.model = model.eval()
        self.variances: tuple[float, float] = DEFAULT_VARIANCES

    @abc.abstractmethod
    def _infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        ...

    def infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The runtime's own computation on ``images (N, 3, S, S)``: ``(locs, logits)`` (or,
        for ``onnxruntime``, already ``(boxes, scores)``), in the runtime's dtype."""
        with torch.inference_mode():
            return self._infer(images)

    def decode(self, outputs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """:meth:`infer`'s outputs -> float32 ``boxes (N, P, 4)`` normalised xyxy and
        ``scores (N, P, C)`` probabilities, as :func:`ssdstudy.predict.decode_outputs`."""
        locs, logits = outputs
        return decode_outputs(locs.float(), logits.float(), self.model.priors, self.variances)

    def decoded(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`infer` then :meth:`decode`: the boxes and scores before NMS."""
        with torch.inference_mode():
            return self.decode(self._infer(images))

    def detect(self, images: Tensor, image_sizes: Sequence[Sequence[float]], **kw: Any) -> list[Detections]:
        """Detections for ``images``: :meth:`decoded`, then
        :func:`ssdstudy.predict.select_detections` with ``**kw`` (``score_threshold``,
        ``nms_iou``, ``top_k``, ``candidate_size``; defaults as there)."""
        with torch.inference_mode():
            boxes, scores = self.decode(self._infer(images))
            return select_detections(boxes, scores, image_sizes, **kw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.describe()})"


class EagerRuntime(Runtime):
    """Float32 eager PyTorch: what :func:`ssdstudy.predict.predict` does (on any device
    the model is on; the images are moved there)."""

    name = "eager_fp32"
    cpu_only = False

    def _infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(images.to(self.model.priors.device))


class Bf16Runtime(Runtime):
    """The forward pass under CPU bfloat16 autocast; decoding and NMS in float32."""

    name = "bf16"
    infer_covers = "the network's forward pass under CPU bfloat16 autocast (bfloat16 outputs)"

    def _infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(images)


@contextlib.contextmanager
def _freezing() -> Iterator[None]:
    """Inductor's freezing on, for the compilations made inside the block.

    Inductor reads ``freezing`` from its global configuration when it compiles; the
    ``options={"freezing": True}`` of ``torch.compile`` did not reach the freezing
    passes in torch 2.14 (the quantized graph then fails with
    ``UnsupportedOperatorException: onednn.qconv_prepack.default``).
    """
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


class _Compiled:
    """A ``torch.compile``'d module whose compilations (one per input shape, made by
    the first call with that shape) happen with freezing on; calls with a shape
    already compiled go straight to the compiled code."""

    def __init__(self, module: nn.Module):
        self.module = torch.compile(module, dynamic=False)
        self.shapes: set[tuple[int, ...]] = set()

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        shape = tuple(images.shape)
        if shape in self.shapes:
            return self.module(images)
        with _freezing():
            out = self.module(images)
        self.shapes.add(shape)
        return out


class CompileRuntime(Runtime):
    """``torch.compile`` (Inductor, static shapes, freezing) of the float32 forward pass."""

    name = "compile"
    infer_covers = "the forward pass compiled by torch.compile (Inductor, freezing)"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.compiled = _Compiled(self.model)

    def _infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.compiled(images)


class Int8Runtime(Runtime):
    """PT2E post-training static int8 quantization (torchao, X86InductorQuantizer),
    compiled by Inductor with freezing. See the module docstring."""

    name = "int8"
    infer_covers = "the int8-quantized forward pass compiled by torch.compile (Inductor, freezing)"

    def __init__(self, model: nn.Module, calibration: Tensor | Sequence[Tensor]):
        super().__init__(model)
        start = time.perf_counter()
        try:
            from torchao.quantization.pt2e.quantize_pt2e import (
                convert_pt2e,
                prepare_pt2e,
            )
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )
        except ImportError as err:  # pragma: no cover - torchao is a dependency
            raise ModuleNotFoundError(
                "the int8 runtime needs torchao (PT2E quantization moved out of torch.ao.quantization): "
                f"pip install torchao ({err})"
            ) from None
        batches = [calibration] if isinstance(calibration, Tensor) else list(calibration)
        batches = [b.unsqueeze(0) if b.dim() == 3 else b for b in batches]
        if not batches or not sum(b.shape[0] for b in batches):
            raise ValueError("the int8 runtime needs calibration images")
        float_model = copy.deepcopy(self.model).eval()  # quantization folds batch norms into its copy
        size = self.model.image_size
        example = (torch.zeros(2, 3, size, size),)
        exported = torch.export.export(
            float_model, example, dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}
        ).module()
        quantizer = X86InductorQuantizer()
        quantizer.set_global(get_default_x86_inductor_quantization_config())
        self.float_pools = tuple(name for name, m in float_model.named_modules()
                                 if isinstance(m, nn.MaxPool2d) and m.ceil_mode)
        for name in self.float_pools:
            # Inductor lowers a quantized max pool with ceil_mode=True to a map one row
            # and column short (VGG16's pool3: 37x37 instead of 38x38, and the compilation
            # fails on the heads' reshape; torch 2.14.1, torchao 0.18; the quantized
            # module run eagerly is right): such pools stay in float32.
            quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        self.quantized = convert_pt2e(prepared)
        self.calibration_images = int(sum(b.shape[0] for b in batches))
        self.compiled = _Compiled(self.quantized)
        self.setup_seconds = time.perf_counter() - start

    def _infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.compiled(images)


class OnnxRuntime(Runtime):
    """The exported ONNX graph (network + softmax + decoding) in ONNX Runtime on the
    CPU; NMS by torchvision's ``batched_nms`` on its outputs (see the module docstring)."""

    name = "onnxruntime"
    infer_covers = ("onnxruntime's session.run of the exported graph: forward pass, softmax and box "
                    "decoding (and the numpy views of input and outputs)")

    def __init__(self, model: nn.Module, path: str | Path | None = None, *, class_names: Sequence[str] | None = None,
                 threads: int | None = None):
        """Export ``model`` to ``path`` (a temporary file when None, removed once loaded)
        and open it with ``threads`` intra-op threads (default: ``torch.get_num_threads()``)."""
        super().__init__(model)
        import onnxruntime as ort

        from ssdstudy.export import export_onnx

        start = time.perf_counter()
        names = list(class_names) if class_names is not None else [
            f"class{i}" for i in range(1, self.model.num_classes)]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # ONNX Runtime's idle threads spin by default after a run, taking the cores that
        # the next computation (another runtime timed right after, PyTorch's NMS) needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(path) if path is not None else Path(tmp) / "model.onnx"
            export_onnx(self.model, file, names)
            self.path = None if path is None else file
            self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.setup_seconds = time.perf_counter() - start

    def _infer(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        boxes, scores = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(boxes), torch.from_numpy(scores)

    def decode(self, outputs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return outputs  # decoded inside the graph


def build_runtime(
    name: str,
    model: nn.Module,
    *,
    calibration: Tensor | Sequence[Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    onnx_path: str | Path | None = None,
    threads: int | None = None,
) -> Runtime:
    """The runtime ``name`` (see :data:`RUNTIMES`, :data:`ALIASES`) of ``model``.

    Args:
        name: the runtime.
        model: a float32 SSD on the CPU (not changed).
        calibration: ``int8`` only: the calibration images, a ``(N, 3, S, S)`` tensor or
            a sequence of such batches (or of single ``(3, S, S)`` images).
        class_names: ``onnxruntime`` only: names for the exported file's metadata.
        onnx_path: ``onnxruntime`` only: where to write the ONNX file (default: a
            temporary file, removed once loaded).
        threads: ``onnxruntime`` only: intra-op threads (default torch's).

    Raises:
        ValueError: unknown name, or ``int8`` without calibration images.
    """
    name = runtime_name(name)
    start = time.perf_counter()
    if name == "eager_fp32":
        runtime: Runtime = EagerRuntime(model)
    elif name == "bf16":
        runtime = Bf16Runtime(model)
    elif name == "compile":
        runtime = CompileRuntime(model)
    elif name == "int8":
        if calibration is None:
            raise ValueError("the int8 runtime needs calibration images")
        runtime = Int8Runtime(model, calibration)
    else:
        runtime = OnnxRuntime(model, onnx_path, class_names=class_names, threads=threads)
    runtime.setup_seconds = time.perf_counter() - start
    return runtime


# ------------------------------------------------------------------------- datasets
def detect_records_with(
    runtime: Runtime,
    records: Sequence[Any],
    config: Any,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`ssdstudy.pipeline.detect_records` with ``runtime`` instead of the eager
    model: the same transform, batches and post-processing settings (``config.eval``),
    the same ``{image_id: {boxes, scores, labels}}`` numpy output."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ssdstudy.augment import build_transform
    from ssdstudy.data import DetectionDataset, collate

    model = runtime.model
    transform = build_transform(False, config.model.image_size, model.mean, model.std)
    loader = DataLoader(DetectionDataset(records, transform), batch_size=batch_size, shuffle=False,
                        collate_fn=collate, num_workers=0)
    e = config.eval
    out: dict[str, dict[str, np.ndarray]] = {}
    index = 0
    for images, _targets in tqdm(loader, disable=not progress, desc=f"detecting ({runtime.name})", unit="batch",
                                 leave=False):
        batch = records[index:index + images.shape[0]]
        index += images.shape[0]
        dets = runtime.detect(images, [(r.height, r.width) for r in batch], score_threshold=e.score_threshold,
                              nms_iou=e.nms_iou, top_k=e.top_k)
        for rec, det in zip(batch, dets, strict=True):
            out[rec.image_id] = {k: v.detach().cpu().numpy() for k, v in det.items()}
    return out


# ------------------------------------------------------------------------- timing
def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds ``fn()`` took, and what it returned."""
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def _spread(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1), "q1": float(q1), "q3": float(q3), "mean": float(a.mean())}


def time_runtimes(
    runtimes: Mapping[str, Runtime],
    images: Sequence[Tensor],
    image_sizes: Sequence[Sequence[float]],
    *,
    warmup: int = 5,
    throughput_batch: int = 8,
    throughput_repeats: int = 3,
    reference: str = "eager_fp32",
    seed: int = 0,
    threads: int | None = None,
    **post: Any,
) -> dict[str, dict[str, Any]]:
    """Time each runtime's inference and prediction at batch 1, interleaved.

    The study's timing method (:mod:`ssdstudy.timing`) for several runtimes at once:
    after warm-up (``warmup`` images at batch 1, and one call at the throughput batch,
    so that ``compile`` and ``int8`` have compiled both shapes before any timed call),
    each image is timed by every runtime, in a random order drawn per image (seeded),
    each runtime timing :meth:`Runtime.infer` then :meth:`Runtime.detect` on it, so that
    drifts of a shared machine touch all alike. Throughput: ``throughput_repeats``
    timed calls of ``detect`` on a batch of the first ``throughput_batch`` images, the
    runtimes again interleaved; images per second from the median call.

    Args:
        runtimes: name -> runtime; ``reference`` must be among them.
        images: ``(3, S, S)`` preprocessed images.
        image_sizes: their original ``(height, width)``.
        **post: post-processing settings (``score_threshold``, ``nms_iou``, ``top_k``,
            ``candidate_size``).

    Returns:
        name -> ``{"inference_ms", "prediction_ms"`` (medians), ``"inference_iqr_ms"``,
        ``"prediction_iqr_ms"``, ``"inference_spread_ms"``, ``"prediction_spread_ms"``
        (median, iqr, q1, q3, mean), ``"runs"``, ``"first_call_s"`` (the first call
        at batch 1 and at the throughput batch: the compilations), ``"setup_s"``,
        ``"throughput_batch"``, ``"throughput_images_per_s"``, ``"ratio_to_eager"``
        (``{"inference", "prediction"}``: this runtime's median over the reference's),
        ``"load"`` (what else the machine did while the runtimes were timed, warm-up and
        its compilations excluded: :func:`ssdstudy.timing.watch_load`), ``"busy"`` and
        ``"busy_reasons"`` (:func:`ssdstudy.timing.busy_reasons`, with ``threads`` the CPU
        threads the runtimes use),
        ``"paired_ratio_to_eager"`` (the median over images of the ratio of the two
        runs of the same image), ``"detections_per_image"`` (median),
        ``"infer_covers"``}``.
    """
    if reference not in runtimes:
        raise ValueError(f"the reference runtime {reference!r} is not among {list(runtimes)}")
    if not images:
        raise ValueError("no images to time")
    rng = random.Random(seed)
    names = list(runtimes)
    batches = [img.unsqueeze(0) for img in images]
    sizes = [tuple(s) for s in image_sizes]
    tb = max(1, min(throughput_batch, len(batches)))
    big = torch.cat(batches[:tb])
    big_sizes = sizes[:tb]
    samples: dict[str, dict[str, list[float]]] = {n: {"inference": [], "prediction": [], "detections": []}
                                                   for n in names}
    first_call: dict[str, float] = {}
    with torch.inference_mode():
        for name in names:
            rt = runtimes[name]
            start = time.perf_counter()
            rt.detect(batches[0], [sizes[0]], **post)
            rt.detect(big, big_sizes, **post)
            first_call[name] = time.perf_counter() - start
            for i in range(1, min(warmup, len(batches))):
                rt.detect(batches[i], [sizes[i]], **post)
        # the load of the timed rounds only: the compilations of the warm-up spawn processes
        with watch_load() as load:
            for x, size in zip(batches, sizes, strict=True):
                order = names[:]
                rng.shuffle(order)
                for name in order:
                    rt = runtimes[name]
                    ms, _ = _timed(lambda rt=rt, x=x: rt.infer(x))
                    samples[name]["inference"].append(ms)
                    ms, dets = _timed(lambda rt=rt, x=x, size=size: rt.detect(x, [size], **post))
                    samples[name]["prediction"].append(ms)
                    samples[name]["detections"].append(float(dets[0]["scores"].numel()))
            throughput: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(throughput_repeats):
                order = names[:]
                rng.shuffle(order)
                for name in order:
                    rt = runtimes[name]
                    throughput[name].append(_timed(lambda rt=rt: rt.detect(big, big_sizes, **post))[0])
    result: dict[str, dict[str, Any]] = {}
    ref = samples[reference]
    for name in names:
        s = samples[name]
        inf, pred = _spread(s["inference"]), _spread(s["prediction"])
        ref_inf, ref_pred = np.median(ref["inference"]), np.median(ref["prediction"])
        result[name] = {
            "inference_ms": inf["median"],
            "inference_iqr_ms": inf["iqr"],
            "prediction_ms": pred["median"],
            "prediction_iqr_ms": pred["iqr"],
            "inference_spread_ms": inf,
            "prediction_spread_ms": pred,
            "runs": len(s["inference"]),
            "ratio_to_eager": {"inference": float(inf["median"] / ref_inf),
                               "prediction": float(pred["median"] / ref_pred)},
            "paired_ratio_to_eager": {
                "inference": float(np.median(np.divide(s["inference"], ref["inference"]))),
                "prediction": float(np.median(np.divide(s["prediction"], ref["prediction"]))),
            },
            "throughput_batch": tb,
            "throughput_images_per_s": tb / (float(np.median(throughput[name])) / 1e3),
            "first_call_s": first_call[name],
            "setup_s": runtimes[name].setup_seconds,
            "detections_per_image": float(np.median(s["detections"])),
            "infer_covers": runtimes[name].infer_covers,
        }
        reasons = busy_reasons({"inference_ms": inf}, load, threads)
        result[name].update(load=load, busy=bool(reasons), busy_reasons=reasons)
    return result
