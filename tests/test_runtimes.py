"""Runtimes (ssdstudy.runtimes): the same detections as ssdstudy.predict, however the network runs.

The model is MobileNetV1-SSD300 at width 0.25 with 9 classes and random weights
(seeded), whose batch norms have taken their statistics from random images (a forward
pass in training mode), as a trained network's would: its activations are of unit
scale throughout. With the initial statistics instead, they fade layer after layer and
many default boxes of the small maps see exactly zero features, so that many scores tie
exactly and which of two tied boxes NMS keeps turns on the last bit: eager and
onnxruntime then shared only 55-64 % of their post-NMS detections although their
decoded outputs differed by 1e-7. Random heads still give every class of nearly every
default box a probability above the 0.01 threshold (NMS's worst case), so the float32
runtimes are compared on the decoded boxes and scores of every default box, and on the
best post-NMS detections as well.

Tolerances of the float32 runtimes (``compile``: Inductor's kernels; ``onnxruntime``:
ONNX Runtime's) to eager float32, measured on this model over three seeds (a Xeon with
AVX-512, 1 thread): at most 7.9e-6 on the boxes (normalised coordinates) and 2.4e-5 on
the scores. The tests allow 2e-4 on both (8 to 25 times as much, room for other CPUs'
kernels), 0.13 pixel on a 640-pixel image. ``bf16`` and ``int8`` differ from eager by
up to 0.27 on the boxes and 0.65 on the scores of this untrained model; they are only
required to run and return well-formed detections: their cost in accuracy is measured
as mAP by ``benchmarks/runtimes.py --map``.
"""

from __future__ import annotations

import pytest
import torch

from ssdstudy.model import build_model
from ssdstudy.predict import decode_outputs, predict
from ssdstudy.runtimes import (
    RUNTIMES,
    build_runtime,
    detect_records_with,
    runtime_name,
    time_runtimes,
)

SIZE = 300
NUM_CLASSES = 9
SIZES = [(375, 500), (300, 300), (480, 640)]
#: Largest differences allowed to eager float32 for compile and onnxruntime (see above).
BOX_TOL = 2e-4  # normalised coordinates
SCORE_TOL = 2e-4
TOP = 50  # post-NMS detections compared per image


def with_batch_statistics(model: torch.nn.Module, size: int, seed: int = 3) -> torch.nn.Module:
    """``model`` with batch-norm statistics of 8 random images (see the module docstring)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the pass
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return with_batch_statistics(build_model("mobilenet_v1", NUM_CLASSES, width=0.25, image_size=SIZE), SIZE)


@pytest.fixture(scope="module")
def images():
    return torch.randn(len(SIZES), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def eager(model, images):
    runtime = build_runtime("eager", model)
    return runtime, runtime.decoded(images), runtime.detect(images, SIZES)


def assert_well_formed(dets, sizes, num_classes=NUM_CLASSES, top_k=200):
    assert len(dets) == len(sizes)
    for det, (h, w) in zip(dets, sizes, strict=True):
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        k = scores.shape[0]
        assert 0 < k <= top_k
        assert boxes.shape == (k, 4) and boxes.dtype == torch.float32
        assert scores.dtype == torch.float32 and labels.dtype == torch.int64
        assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
        assert bool((scores[:-1] >= scores[1:]).all()), "scores must be sorted"
        assert bool((scores > 0.01).all()) and bool((scores <= 1).all())
        assert bool(((labels >= 1) & (labels < num_classes)).all())
        assert bool((boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all())
        assert bool((boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all())


def assert_agrees(runtime, images, eager):
    """Decoded outputs within the tolerances; the top post-NMS detections the same."""
    _, (ref_boxes, ref_scores), ref_dets = eager
    boxes, scores = runtime.decoded(images)
    assert boxes.shape == ref_boxes.shape and scores.shape == ref_scores.shape
    assert boxes.dtype == scores.dtype == torch.float32
    torch.testing.assert_close(boxes, ref_boxes, atol=BOX_TOL, rtol=0)
    torch.testing.assert_close(scores, ref_scores, atol=SCORE_TOL, rtol=0)
    dets = runtime.detect(images, SIZES)
    assert_well_formed(dets, SIZES)
    for det, ref, (h, w) in zip(dets, ref_dets, SIZES, strict=True):
        torch.testing.assert_close(det["scores"][:TOP], ref["scores"][:TOP], atol=SCORE_TOL, rtol=0)
        # the same box of the same class for each of eager's best detections
        for box, label in zip(ref["boxes"][:TOP], ref["labels"][:TOP], strict=True):
            same = (det["labels"] == label) & ((det["boxes"] - box).abs().amax(dim=1) <= BOX_TOL * max(h, w))
            assert bool(same.any()), f"eager's detection {box.tolist()} of class {int(label)} is missing"


def test_names():
    assert runtime_name("eager") == "eager_fp32"
    assert set(RUNTIMES) == {"eager_fp32", "bf16", "compile", "int8", "onnxruntime"}
    with pytest.raises(ValueError, match="unknown runtime"):
        runtime_name("tensorrt")


def test_int8_needs_calibration(model):
    with pytest.raises(ValueError, match="calibration"):
        build_runtime("int8", model)


def test_eager_runtime_is_predict(model, images, eager):
    runtime, (boxes, scores), dets = eager
    with torch.inference_mode():
        ref_boxes, ref_scores = decode_outputs(*model(images), model.priors)
    assert torch.equal(boxes, ref_boxes) and torch.equal(scores, ref_scores)
    for det, ref in zip(dets, predict(model, images, SIZES), strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(det[key], ref[key])
    kw = {"score_threshold": 0.11, "nms_iou": 0.3, "top_k": 7, "candidate_size": 50}
    for det, ref in zip(runtime.detect(images, SIZES, **kw), predict(model, images, SIZES, **kw), strict=True):
        assert torch.equal(det["boxes"], ref["boxes"]) and torch.equal(det["labels"], ref["labels"])
    assert_well_formed(dets, SIZES)


def test_bf16_runs_and_returns_detections(model, images, eager):
    runtime = build_runtime("bf16", model)
    locs, logits = runtime.infer(images)
    assert locs.dtype == logits.dtype == torch.bfloat16  # the forward pass ran in bf16
    boxes, scores = runtime.decoded(images)
    assert boxes.dtype == scores.dtype == torch.float32
    assert boxes.shape == eager[1][0].shape and scores.shape == eager[1][1].shape
    assert_well_formed(runtime.detect(images, SIZES), SIZES)
    assert not torch.is_autocast_enabled("cpu")


def test_onnxruntime_agrees_with_eager(model, images, eager):
    runtime = build_runtime("onnxruntime", model)
    assert_agrees(runtime, images, eager)
    one = runtime.detect(images[:1], SIZES[:1])  # the batch size is dynamic
    assert_well_formed(one, SIZES[:1])


@pytest.mark.slow
def test_compile_agrees_with_eager(model, images, eager):
    """torch.compile with freezing: about 10-60 s of compilation on 2 busy CPU cores."""
    assert_agrees(build_runtime("compile", model), images, eager)


@pytest.mark.slow
def test_int8_runs_and_leaves_the_model_alone(model, images, eager):
    """PT2E int8: export, calibration, conversion and compilation (10-60 s)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    runtime = build_runtime("int8", model, calibration=calibration)
    assert runtime.calibration_images == 4
    boxes, scores = runtime.decoded(images)
    assert boxes.dtype == scores.dtype == torch.float32
    assert boxes.shape == eager[1][0].shape and scores.shape == eager[1][1].shape
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
    assert_well_formed(runtime.detect(images, SIZES), SIZES)
    assert_well_formed(runtime.detect(images[:1], SIZES[:1]), SIZES[:1])  # another batch size
    for key, value in model.state_dict().items():  # batch norms folded into a copy only
        assert torch.equal(value, before[key]), key


def test_time_runtimes_interleaves_and_compares_with_eager(model, images):
    runtimes = {"eager_fp32": build_runtime("eager", model), "bf16": build_runtime("bf16", model)}
    result = time_runtimes(runtimes, list(images), SIZES, warmup=1, throughput_batch=2, throughput_repeats=1)
    assert set(result) == {"eager_fp32", "bf16"}
    eager = result["eager_fp32"]
    assert eager["ratio_to_eager"] == {"inference": 1.0, "prediction": 1.0}
    for entry in result.values():
        assert entry["runs"] == len(SIZES)
        assert 0 < entry["inference_ms"] and 0 < entry["prediction_ms"]
        assert entry["inference_iqr_ms"] >= 0 and entry["throughput_batch"] == 2
        assert entry["throughput_images_per_s"] > 0
        assert entry["detections_per_image"] == 200  # random weights: every image reaches top_k
        assert entry["load"]["wall_s"] > 0 and entry["busy"] == bool(entry["busy_reasons"])
    with pytest.raises(ValueError, match="reference"):
        time_runtimes({"bf16": runtimes["bf16"]}, list(images), SIZES)


def test_detect_records_with_eager_is_the_pipelines(tiny_synth):
    from ssdstudy.config import RunConfig
    from ssdstudy.data import load_split, read_class_names
    from ssdstudy.pipeline import detect_records

    names = read_class_names(tiny_synth)
    records = load_split(tiny_synth, "test", class_names=names)[:5]
    config = RunConfig()
    config.model.width, config.model.image_size = 0.25, 96
    torch.manual_seed(0)
    small = build_model("mobilenet_v1", len(names) + 1, width=0.25, image_size=96).eval()
    ours = detect_records_with(build_runtime("eager", small), records, config, batch_size=2)
    ref = detect_records(small, records, config, torch.device("cpu"), batch_size=2, progress=False)
    assert list(ours) == list(ref)
    for image_id, det in ref.items():
        for key, value in det.items():
            assert (ours[image_id][key] == value).all()


@pytest.mark.slow
def test_int8_vgg16_keeps_its_ceil_mode_pool_in_float32():
    """VGG16's pool3 rounds up (ceil_mode): at 140 px its 35x35 input gives 18x18. Inductor
    lowers the quantized pool to 17x17 and the compilation fails on the heads' reshape;
    the runtime leaves that pool unquantized (10-40 s)."""
    torch.manual_seed(0)
    vgg = build_model("vgg16_bn", NUM_CLASSES, image_size=140).eval()
    runtime = build_runtime("int8", vgg, calibration=torch.randn(2, 3, 140, 140))
    assert runtime.float_pools == ("backbone.features.23",)
    boxes, scores = runtime.decoded(torch.randn(1, 3, 140, 140))
    assert boxes.shape == (1, vgg.num_priors, 4) and scores.shape == (1, vgg.num_priors, NUM_CLASSES)


def test_published_runtime_files_are_read_and_drawn(tmp_path):
    """A file of benchmarks/runtimes.py in results/<profile>/runtimes/ gives one row per
    runtime, with its ratio to eager, its share after the forward pass and its mAP."""
    import json

    from ssdstudy.plots import runtime_tradeoff
    from ssdstudy.results import load_runtimes

    folder = tmp_path / "smoke" / "runtimes"
    folder.mkdir(parents=True)
    timed = {"eager_fp32": {"inference_ms": 15.0, "prediction_ms": 20.0, "inference_iqr_ms": 1.0,
                            "prediction_iqr_ms": 2.0, "ratio_to_eager": {"prediction": 1.0}},
             "int8": {"inference_ms": 5.0, "prediction_ms": 8.0, "inference_iqr_ms": 0.5,
                      "prediction_iqr_ms": 1.0, "ratio_to_eager": {"prediction": 0.4},
                      "busy": True, "busy_reasons": ["other processes kept 1.5 of 2 CPUs busy"]}}
    scores = {"runtimes": {"eager_fp32": {"voc07_map": 0.6},
                           "int8": {"voc07_map": 0.58,
                                    "difference_to_eager": {"difference": -0.02, "low": -0.03, "high": -0.01}}}}
    entry = {"model": {"backbone": "mobilenet_v1", "width": 1.0, "weights": "trained"}, "runtimes": timed,
             "map": scores}
    (folder / "m.json").write_text(json.dumps({"machine": {"device_name": "CPU X"}, "backbones": {"mobilenet_v1": entry}}))
    df = load_runtimes("smoke", results=tmp_path)
    assert list(df["runtime"]) == ["eager_fp32", "int8"]
    int8 = df.set_index("runtime").loc["int8"]
    assert int8["prediction_vs_eager"] == 0.4 and int8["after_inference_share"] == pytest.approx(3 / 8)
    assert int8["map_difference_low"] == -0.03 and int8["machine"] == "CPU X"
    assert int8["busy"] and "1.5 of 2 CPUs" in int8["busy_reason"] and not df["busy"].iloc[0]
    assert len(runtime_tradeoff(df).axes) == 1
    assert load_runtimes("smoke", results=tmp_path / "none").empty
