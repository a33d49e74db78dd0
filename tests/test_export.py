"""ONNX export (ssdstudy.export, ``ssdstudy export``) and ``ssdstudy detect --runtime``.

The exported file must run where the project is not installed: the test runs it in a
Python started with ``-I -S`` (no site-packages, no user paths, no current folder),
whose only import path holds numpy and onnxruntime, so that neither ssdstudy nor torch
can be imported there (the child checks it). It reads the input size and the
normalisation from the file's metadata, prepares a uint8 image with numpy alone, and
its boxes and scores are compared with eager float32 PyTorch on the evaluation
transform's tensor of the same image.

Tolerance: measured at most 7.9e-6 on the boxes (normalised coordinates) and 2.4e-5 on
the scores between onnxruntime and eager on a MobileNetV1 x0.25 with unit-scale
activations (tests/test_runtimes.py); the numpy normalisation differs from the
transform's by rounding only (about 1e-7). Allowed: 2e-4 on both, as there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdstudy.cli import main
from ssdstudy.model import build_model

SIZE = 96
TOL = 2e-4

CHILD = textwrap.dedent('''
    import json, sys
    site, model_path, image_path, out_path = sys.argv[1:]
    sys.path.append(site)
    for name in ("ssdstudy", "torch", "torchvision"):
        try:
            __import__(name)
        except ImportError:
            continue
        raise SystemExit(f"{name} is importable in the isolated interpreter")
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    size = int(meta["image_size"])
    mean = np.array(json.loads(meta["mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["std"]), dtype=np.float32)
    image = np.load(image_path)  # uint8 (size, size, 3) RGB: no resizing needed
    assert image.shape == (size, size, 3), image.shape
    x = ((image.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
    boxes, scores = session.run(["boxes", "scores"], {"images": np.ascontiguousarray(x, dtype=np.float32)})
    classes = json.loads(meta["class_names"])
    assert scores.shape[-1] == len(classes) + 1
    np.savez(out_path, boxes=boxes, scores=scores, x=x)
    print(json.dumps({"modules": sorted(m for m in sys.modules if "." not in m)}))
''')


def isolated_site(tmp_path: Path) -> Path:
    """A folder holding only numpy and onnxruntime (links to the installed packages)."""
    import onnxruntime

    site = tmp_path / "site"
    site.mkdir()
    for package in (np, onnxruntime):
        folder = Path(package.__file__).parent
        for path in folder.parent.glob(f"{folder.name}*"):
            if path.is_dir() and (path == folder or path.name == f"{folder.name}.libs"):
                (site / path.name).symlink_to(path)
    return site


def make_checkpoint(path: Path, class_names, data_root: str | None = None) -> Path:
    from ssdstudy.config import RunConfig

    config = RunConfig()
    config.model.backbone, config.model.width, config.model.image_size = "mobilenet_v1", 0.25, SIZE
    if data_root is not None:
        config.data.root = data_root
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", len(class_names) + 1, width=0.25, image_size=SIZE)
    torch.save({"model": model.state_dict(), "config": config.to_dict(), "class_names": list(class_names)}, path)
    return path


def test_onnx_file_runs_with_numpy_and_onnxruntime_alone(tmp_path):
    from ssdstudy.augment import build_transform
    from ssdstudy.export import export_onnx, read_onnx_metadata
    from ssdstudy.predict import decode_outputs

    torch.manual_seed(0)
    model = build_model("mobilenet_v1", 4, width=0.25, image_size=SIZE).eval()
    for module in model.modules():  # unit-scale activations, as in tests/test_runtimes.py
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)))
    model.eval()
    names = ["circle", "square", "triangle"]
    path = export_onnx(model, tmp_path / "ssd.onnx", names, top_k=100)
    meta = read_onnx_metadata(path)
    assert meta["class_names"] == names and meta["image_size"] == SIZE
    assert meta["mean"] == list(model.mean) and meta["std"] == list(model.std)
    assert meta["postprocess"]["top_k"] == 100 and meta["num_priors"] == model.num_priors

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(script), str(isolated_site(tmp_path)), str(path),
         str(tmp_path / "image.npy"), str(tmp_path / "out.npz")],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.splitlines()[-1])["modules"]
    assert "torch" not in modules and "ssdstudy" not in modules
    out = np.load(tmp_path / "out.npz")

    transform = build_transform(False, SIZE, model.mean, model.std)
    x, _ = transform(torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                     {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    np.testing.assert_allclose(out["x"][0], x.numpy(), atol=1e-5, rtol=0)  # the metadata's normalisation
    with torch.inference_mode():
        boxes, scores = decode_outputs(*model(x[None]), model.priors)
    assert out["boxes"].shape == tuple(boxes.shape) and out["scores"].shape == tuple(scores.shape)
    np.testing.assert_allclose(out["boxes"], boxes.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(out["scores"], scores.numpy(), atol=TOL, rtol=0)


def test_export_command_writes_the_checkpoints_names(tmp_path, capsys):
    from ssdstudy.export import read_onnx_metadata

    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", ["a", "b"])
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", str(out)]) == 0
    meta = read_onnx_metadata(out)
    assert meta["class_names"] == ["a", "b"] and meta["checkpoint"] == "checkpoint.pt"
    assert meta["backbone"] == "mobilenet_v1" and meta["width"] == 0.25
    printed = capsys.readouterr().out
    assert "checked with onnxruntime" in printed
    difference = float(printed.split("PyTorch ")[1].split(" on boxes")[0])
    assert difference < TOL


def one_clear_line(capsys, argv: list[str], *needles: str) -> None:
    """``ssdstudy ARGV`` fails with one ``ssdstudy: error`` line holding ``needles``
    (in-process: :func:`ssdstudy.cli.main` is what turns a UserError into that line)."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ssdstudy: error")]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_export_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    one_clear_line(capsys, ["export", str(missing), str(tmp_path / "m.onnx")], str(missing), "no such checkpoint")
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", ["a"])
    one_clear_line(capsys, ["export", str(ckpt), str(tmp_path)], str(tmp_path), "is a folder")
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    one_clear_line(capsys, ["export", str(ckpt), str(blocker / "m.onnx")], str(blocker / "m.onnx"), "cannot write")


def test_detect_with_onnxruntime_finds_what_eager_finds(tmp_path, capsys):
    from PIL import Image

    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", ["a", "b"])
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(image)
    counts = {}
    for runtime in ("eager", "onnxruntime"):
        out = tmp_path / runtime
        assert main(["detect", str(ckpt), str(image), "--out", str(out), "--threshold", "0.1",
                     "--runtime", runtime]) == 0
        assert (out / "photo.png").is_file()
        counts[runtime] = capsys.readouterr().out.split(": ")[-1]
    assert counts["eager"] == counts["onnxruntime"]


def test_detect_int8_without_calibration_data_is_one_line(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", ["a"], data_root=str(tmp_path / "no-data"))
    one_clear_line(capsys, ["detect", str(ckpt), "x.jpg", "--out", str(tmp_path), "--runtime", "int8"],
                   str(tmp_path / "no-data"), "calibration")
    one_clear_line(capsys, ["detect", str(ckpt), "x.jpg", "--out", str(tmp_path), "--runtime", "bf16",
                            "--device", "cuda"], "runs on the CPU")


@pytest.mark.slow
def test_detect_int8_calibrates_on_the_training_split(tmp_path, tiny_synth, capsys):
    """Quantization and compilation: 10-60 s."""
    from ssdstudy.data import read_class_names

    ckpt = make_checkpoint(tmp_path / "checkpoint.pt", read_class_names(tiny_synth), data_root=str(tiny_synth))
    image = min((tiny_synth / "SYNTH" / "JPEGImages").glob("test_*.jpg"))
    assert main(["detect", str(ckpt), str(image), "--out", str(tmp_path / "drawn"), "--runtime", "int8",
                 "--calibration-images", "4", "--threshold", "0"]) == 0
    assert (tmp_path / "drawn" / f"{image.stem}.png").is_file()
    assert "detections" in capsys.readouterr().out
