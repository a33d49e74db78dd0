"""``ssdstudy export CHECKPOINT --format onnx OUT``: a checkpoint as a file other programs run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssdstudy.errors import UserError

FORMATS = ("onnx",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as an ONNX file that runs without this project",
        description="Write the checkpoint's network, softmax and box decoding as one ONNX graph "
        "(input images (N, 3, S, S); outputs boxes (N, P, 4) normalised xyxy and scores (N, P, C)), "
        "with the class names, input size and normalisation in its metadata. Score threshold, "
        "per-class NMS and top-k are left to the program that runs it (see ssdstudy/export.py).",
    )
    p.add_argument("checkpoint", help="an ssdstudy checkpoint (checkpoint.pt of a run)")
    p.add_argument("out", metavar="OUT", help="the file to write (e.g. model.onnx)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default: onnx)")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the written file with onnxruntime against the checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssdstudy.pipeline import load_model

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    model, config, class_names = load_model(args.checkpoint, "cpu")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot write the ONNX file there ({err.strerror or err})") from None
    try:
        from ssdstudy.export import export_onnx
    except ModuleNotFoundError as err:  # pragma: no cover - dependencies of the project
        raise UserError(f"ONNX export needs the onnx and onnxscript packages ({err})") from None
    e = config.eval
    try:
        export_onnx(model, out, class_names, score_threshold=e.score_threshold, nms_iou=e.nms_iou, top_k=e.top_k,
                    metadata={"checkpoint": Path(args.checkpoint).name})
    except ModuleNotFoundError as err:
        raise UserError(f"ONNX export needs the onnx and onnxscript packages ({err})") from None
    except OSError as err:
        raise UserError(f"{out}: cannot write the ONNX file ({err.strerror or err})") from None
    size_mb = out.stat().st_size / 2**20
    print(f"{out}: {model.describe()}, {model.num_priors} default boxes, {size_mb:.1f} MB")
    if not args.no_check:
        import onnxruntime as ort

        from ssdstudy.predict import decode_outputs

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        x = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
        boxes, scores = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.inference_mode():
            ref_boxes, ref_scores = decode_outputs(*model(x), model.priors)
        db = float(abs(torch.from_numpy(boxes) - ref_boxes).max())
        ds = float(abs(torch.from_numpy(scores) - ref_scores).max())
        print(f"checked with onnxruntime {ort.__version__} on 2 random inputs: largest difference to the "
              f"checkpoint in PyTorch {db:.2g} on boxes (fractions of the image), {ds:.2g} on scores")
    return 0
