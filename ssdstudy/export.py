"""An SSD as an ONNX file that runs without this project: network, softmax and box decoding.

:func:`export_onnx` writes a graph of :class:`DecodedSSD`: the network followed by
the softmax over classes and the decoding of the offsets against the default boxes
(:func:`ssdstudy.predict.decode_outputs`, variances 0.1 / 0.2), so that the file's two
outputs are boxes and class probabilities. What is left to the user is what
:func:`ssdstudy.predict.select_detections` does after decoding: the score threshold,
per-class NMS, the top-k and the scaling of the boxes to the original image (in this
project, :class:`ssdstudy.runtimes.OnnxRuntime` calls it, so NMS is torchvision's
``batched_nms`` on the file's outputs; NMS is not in the graph).

The file::

    input   images  float32 (N, 3, S, S): RGB, channel-first; the image resized to S x S
                    (bilinear, no antialiasing), then x = (pixel / 255 - mean) / std
    output  boxes   float32 (N, P, 4): x1, y1, x2, y2 as fractions of the input's width
                    and height (multiply by the original image's width and height;
                    not clipped)
    output  scores  float32 (N, P, C): softmax probabilities, column 0 the background,
                    column c the class ``class_names[c - 1]``

N is dynamic. Its ``metadata_props`` (:data:`METADATA_KEYS`; ``onnxruntime``'s
``session.get_modelmeta().custom_metadata_map``) hold what a user needs to prepare the
input and read the outputs without the project: ``class_names``, ``image_size``,
``mean`` and ``std`` (JSON), the post-processing settings the study evaluates with, and
the architecture. The default boxes are constants inside the graph (they are not
needed outside it, so they are not repeated in the metadata).

The graph is made by PyTorch's ``torch.export``-based exporter (``dynamo=True``, ONNX
opset 18, which needs the ``onnxscript`` package); the legacy TorchScript exporter
also works for this model but is deprecated in torch 2.14.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssdstudy.boxes import DEFAULT_VARIANCES
from ssdstudy.predict import decode_outputs

__all__ = [
    "FORMAT",
    "METADATA_KEYS",
    "OPSET",
    "DecodedSSD",
    "export_onnx",
    "onnx_metadata",
    "read_onnx_metadata",
]

#: ONNX opset of the exported graph.
OPSET = 18
#: Value of the ``format`` metadata entry: what the file's inputs and outputs are.
FORMAT = "ssdstudy-decoded-v1"
#: The metadata entries every exported file carries (strings; JSON where structured).
METADATA_KEYS = (
    "format", "class_names", "image_size", "mean", "std", "input", "outputs", "postprocess",
    "backbone", "width", "num_classes", "num_priors", "variances", "ssdstudy_version", "torch_version",
)

_INPUT = (
    "images: float32 (N, 3, S, S), S = image_size; RGB, channel-first; resize the image to S x S "
    "(bilinear, no antialiasing), then x = (pixel / 255 - mean) / std per channel"
)
_OUTPUTS = (
    "boxes: float32 (N, P, 4) x1, y1, x2, y2 as fractions of the input's width and height "
    "(multiply by the original image's width and height; not clipped); "
    "scores: float32 (N, P, C) softmax probabilities, column 0 the background, column c the class "
    "class_names[c - 1]. Detections: per class, the candidate_size best boxes with a score above "
    "score_threshold, greedy NMS at nms_iou per class, then the top_k best of the image"
)


class DecodedSSD(nn.Module):
    """An SSD whose outputs are decoded: ``images (N, 3, S, S)`` -> ``boxes (N, P, 4)``
    normalised xyxy and ``scores (N, P, C)`` softmax probabilities, exactly
    :func:`ssdstudy.predict.decode_outputs` of the SSD's outputs."""

    def __init__(self, model: nn.Module, variances: tuple[float, float] = DEFAULT_VARIANCES):
        super().__init__()
        self.model = model
        self.variances = tuple(variances)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        locs, logits = self.model(images)
        return decode_outputs(locs, logits, self.model.priors, self.variances)


def onnx_metadata(
    model: nn.Module,
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    candidate_size: int = 200,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported SSD (see the module docstring)."""
    import ssdstudy

    if len(class_names) + 1 != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes "
                         "(background included)")
    meta = {
        "format": FORMAT,
        "class_names": json.dumps(list(class_names)),
        "image_size": str(int(model.image_size)),
        "mean": json.dumps(list(model.mean)),
        "std": json.dumps(list(model.std)),
        "input": _INPUT,
        "outputs": _OUTPUTS,
        "postprocess": json.dumps({"score_threshold": score_threshold, "nms_iou": nms_iou, "top_k": top_k,
                                   "candidate_size": candidate_size}),
        "backbone": model.backbone_name,
        "width": repr(float(model.width)),
        "num_classes": str(int(model.num_classes)),
        "num_priors": str(int(model.priors.shape[0])),
        "variances": json.dumps(list(DEFAULT_VARIANCES)),
        "ssdstudy_version": ssdstudy.__version__,
        "torch_version": torch.__version__,
    }
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    opset: int = OPSET,
    metadata: dict[str, Any] | None = None,
    **postprocess: Any,
) -> Path:
    """Write ``model`` (an :class:`ssdstudy.model.SSD`) as a self-contained ONNX file.

    The graph is :class:`DecodedSSD` of a copy of the model in eval mode on the CPU,
    with a dynamic batch dimension; the file is written atomically (weights inside it,
    no external data file).

    Args:
        model: the SSD (left as it was).
        path: the ``.onnx`` file to write.
        class_names: the C - 1 names of the foreground classes, label order.
        opset: ONNX opset.
        metadata: more ``metadata_props`` entries (JSON-encoded unless strings), such as
            the checkpoint the weights came from.
        **postprocess: ``score_threshold``, ``nms_iou``, ``top_k``, ``candidate_size``
            to record in the metadata (defaults: those of :func:`ssdstudy.predict.postprocess`).

    Returns:
        The path written.

    Raises:
        ModuleNotFoundError: ``onnx`` or ``onnxscript`` is not installed.
    """
    import copy
    import warnings

    from ssdstudy.files import atomic_path

    path = Path(path)
    meta = onnx_metadata(model, class_names, extra=metadata, **postprocess)
    wrapper = DecodedSSD(copy.deepcopy(model).cpu().eval()).eval()
    example = torch.zeros(2, 3, model.image_size, model.image_size)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        # the exporter's notes on its own progress and deprecations are not the user's business
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=opset, verbose=False,
            input_names=["images"], output_names=["boxes", "scores"],
            dynamic_shapes={"images": {0: batch}},
        )
    program.model.metadata_props.update(meta)
    program.model.doc_string = (
        f"SSD {model.describe()} exported by ssdstudy: {_INPUT}. Outputs: {_OUTPUTS}."
    )
    with atomic_path(path, suffix=".onnx") as tmp:
        program.save(tmp, external_data=False)
    return path


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a file :func:`export_onnx` wrote, JSON entries decoded.

    Raises:
        ValueError: the file is not one of this module's exports.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    raw = {p.key: p.value for p in model.metadata_props}
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ssdstudy ONNX export (metadata format {raw.get('format')!r})")
    out: dict[str, Any] = dict(raw)
    for key in ("class_names", "mean", "std", "postprocess", "variances"):
        out[key] = json.loads(raw[key])
    for key in ("image_size", "num_classes", "num_priors"):
        out[key] = int(raw[key])
    out["width"] = float(raw["width"])
    return out
