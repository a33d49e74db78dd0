"""Checkpoint interoperability: the original code base's layouts, torchvision's, ours.

The state dicts here are written from the original code base's architecture
(qfgaohao/pytorch-ssd: vision/nn/vgg.py, vision/nn/mobilenet.py, vision/ssd/*.py),
with random tensors of the right shapes; nothing is downloaded. The reference
forward passes below recompute the original network from such a state dict with
plain functional calls, so they share no code with ssdstudy.model.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from ssdstudy.errors import UserError
from ssdstudy.model import CheckpointError, build_model, load_state, load_weights, save_weights

VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
VGG_BOXES = [4, 6, 6, 6, 4, 4]
VGG_SOURCES = [512, 1024, 512, 256, 256, 256]
VGG_EXTRAS = [(1024, 256, 512, 2, 1), (512, 128, 256, 2, 1), (256, 128, 256, 1, 0), (256, 128, 256, 1, 0)]
MB_LAYOUT = [(32, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
MB_SOURCES = [512, 1024, 512, 256, 256, 256]
MB_EXTRAS = [(1024, 256, 512, 2, 1), (512, 128, 256, 2, 1), (256, 128, 256, 2, 1), (256, 128, 256, 2, 1)]


# -- state dicts in the original layouts ------------------------------------------------
def _he(shape, gen):
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)


def _bias(n, gen):
    return torch.randn(n, generator=gen) * 0.05


def _bn(state, prefix, n, gen, counter=True):
    state[f"{prefix}.weight"] = torch.rand(n, generator=gen) + 0.5
    state[f"{prefix}.bias"] = torch.randn(n, generator=gen) * 0.1
    state[f"{prefix}.running_mean"] = torch.randn(n, generator=gen) * 0.1
    state[f"{prefix}.running_var"] = torch.rand(n, generator=gen) + 0.5
    if counter:
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def vgg_base_state(gen, prefix=""):
    """The original base_net (= vgg16_reducedfc.pth): convs at their list indices, fc6 at 31, fc7 at 33."""
    state, index, cin = OrderedDict(), 0, 3
    for v in VGG_CFG:
        if isinstance(v, str):
            index += 1
            continue
        state[f"{prefix}{index}.weight"] = _he((v, cin, 3, 3), gen)
        state[f"{prefix}{index}.bias"] = _bias(v, gen)
        index, cin = index + 2, v
    assert index == 30  # pool5 next
    state[f"{prefix}31.weight"] = _he((1024, 512, 3, 3), gen)
    state[f"{prefix}31.bias"] = _bias(1024, gen)
    state[f"{prefix}33.weight"] = _he((1024, 1024, 1, 1), gen)
    state[f"{prefix}33.bias"] = _bias(1024, gen)
    return state


def mobilenet_base_state(gen, prefix="", counter=True):
    """The original MobileNetV1(1001).model (= mobilenet_v1_with_relu_69_5.pth)."""
    state, cin = OrderedDict(), 3
    for i, (cout, _) in enumerate(MB_LAYOUT):
        if i == 0:
            state[f"{prefix}0.0.weight"] = _he((cout, 3, 3, 3), gen)
            _bn(state, f"{prefix}0.1", cout, gen, counter)
        else:
            state[f"{prefix}{i}.0.weight"] = _he((cin, 1, 3, 3), gen)
            _bn(state, f"{prefix}{i}.1", cin, gen, counter)
            state[f"{prefix}{i}.3.weight"] = _he((cout, cin, 1, 1), gen)
            _bn(state, f"{prefix}{i}.4", cout, gen, counter)
        cin = cout
    return state


def _extras_and_heads(state, extras, sources, boxes, num_classes, gen):
    for k, (cin, mid, cout, _, _) in enumerate(extras):
        state[f"extras.{k}.0.weight"] = _he((mid, cin, 1, 1), gen)
        state[f"extras.{k}.0.bias"] = _bias(mid, gen)
        state[f"extras.{k}.2.weight"] = _he((cout, mid, 3, 3), gen)
        state[f"extras.{k}.2.bias"] = _bias(cout, gen)
    for k, (c, b) in enumerate(zip(sources, boxes, strict=True)):
        state[f"classification_headers.{k}.weight"] = _he((b * num_classes, c, 3, 3), gen)
        state[f"classification_headers.{k}.bias"] = _bias(b * num_classes, gen)
        state[f"regression_headers.{k}.weight"] = _he((b * 4, c, 3, 3), gen)
        state[f"regression_headers.{k}.bias"] = _bias(b * 4, gen)
    return state


def original_vgg_ssd(num_classes=21, seed=0):
    """Keys and shapes of vgg16-ssd-mp-0_7726.pth (conv4_3 BatchNorm as source_layer_add_ons.0)."""
    gen = torch.Generator().manual_seed(seed)
    state = vgg_base_state(gen, "base_net.")
    _bn(state, "source_layer_add_ons.0", 512, gen)
    return _extras_and_heads(state, VGG_EXTRAS, VGG_SOURCES, VGG_BOXES, num_classes, gen)


def original_mobilenet_ssd(num_classes=21, seed=0, counter=True):
    """Keys and shapes of mobilenet-v1-ssd-mp-0_675.pth."""
    gen = torch.Generator().manual_seed(seed)
    state = mobilenet_base_state(gen, "base_net.", counter)
    return _extras_and_heads(state, MB_EXTRAS, MB_SOURCES, [6] * 6, num_classes, gen)


# -- the original forward pass, functionally ---------------------------------------------
def _bn_eval(x, s, p):
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                        False, 0.0, 1e-5)


def _heads(s, sources, num_classes):
    locs, confs = [], []
    for k, y in enumerate(sources):
        c = F.conv2d(y, s[f"classification_headers.{k}.weight"], s[f"classification_headers.{k}.bias"], padding=1)
        confs.append(c.permute(0, 2, 3, 1).contiguous().view(y.shape[0], -1, num_classes))
        r = F.conv2d(y, s[f"regression_headers.{k}.weight"], s[f"regression_headers.{k}.bias"], padding=1)
        locs.append(r.permute(0, 2, 3, 1).contiguous().view(y.shape[0], -1, 4))
    return torch.cat(locs, 1), torch.cat(confs, 1)


def _extras(s, x, extras, sources):
    for k, (_, _, _, stride, pad) in enumerate(extras):
        x = F.relu(F.conv2d(x, s[f"extras.{k}.0.weight"], s[f"extras.{k}.0.bias"]))
        x = F.relu(F.conv2d(x, s[f"extras.{k}.2.weight"], s[f"extras.{k}.2.bias"], stride=stride, padding=pad))
        sources.append(x)


def reference_vgg_ssd(s, x, num_classes):
    ops = []
    for v in VGG_CFG:
        ops += [("pool", v == "C")] if isinstance(v, str) else [("conv", 1, 1), ("relu",)]
    ops += [("pool5",), ("conv", 6, 6), ("relu",), ("conv", 0, 1), ("relu",)]
    sources = []
    for i, op in enumerate(ops):
        if i == 23:  # source_layer_indexes (23, BatchNorm2d(512))
            sources.append(_bn_eval(x, s, "source_layer_add_ons.0"))
        if op[0] == "conv":
            x = F.conv2d(x, s[f"base_net.{i}.weight"], s[f"base_net.{i}.bias"], padding=op[1], dilation=op[2])
        elif op[0] == "relu":
            x = F.relu(x)
        elif op[0] == "pool":
            x = F.max_pool2d(x, 2, 2, ceil_mode=op[1])
        else:
            x = F.max_pool2d(x, 3, 1, 1)
    sources.append(x)
    _extras(s, x, VGG_EXTRAS, sources)
    return _heads(s, sources, num_classes)


def reference_mobilenet_ssd(s, x, num_classes):
    sources = []
    for i, (_, stride) in enumerate(MB_LAYOUT):
        if i == 0:
            x = F.relu(_bn_eval(F.conv2d(x, s["base_net.0.0.weight"], stride=stride, padding=1), s, "base_net.0.1"))
        else:
            x = F.conv2d(x, s[f"base_net.{i}.0.weight"], stride=stride, padding=1, groups=x.shape[1])
            x = F.relu(_bn_eval(x, s, f"base_net.{i}.1"))
            x = F.relu(_bn_eval(F.conv2d(x, s[f"base_net.{i}.3.weight"]), s, f"base_net.{i}.4"))
        if i + 1 in (12, 14):  # source_layer_indexes [12, 14]
            sources.append(x)
    _extras(s, x, MB_EXTRAS, sources)
    return _heads(s, sources, num_classes)


def _close(a, b):
    scale = b.abs().max().item()
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vgg():
    return build_model("vgg16", 21).eval()


@pytest.fixture()
def mobilenet():
    return build_model("mobilenet_v1", 21).eval()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- the original whole-SSD files ------------------------------------------------------------
def test_original_mobilenet_ssd_gives_the_original_outputs(mobilenet):
    state = original_mobilenet_ssd()
    report = load_state(mobilenet, state)
    assert report.format == "original-ssd" and report.kept == ()
    x = torch.randn(1, 3, 300, 300)
    with torch.inference_mode():
        locs, logits = mobilenet(x)
        ref_locs, ref_conf = reference_mobilenet_ssd(state, x, 21)
    assert locs.shape == ref_locs.shape == (1, 3000, 4)
    assert _close(locs, ref_locs) and _close(logits, ref_conf)


def test_original_vgg_ssd_gives_the_original_outputs(vgg):
    state = original_vgg_ssd()
    report = load_weights_from_memory(vgg, state)
    assert report.format == "original-ssd"
    x = torch.randn(1, 3, 300, 300) * 60
    with torch.inference_mode():
        locs, logits = vgg(x)
        ref_locs, ref_conf = reference_vgg_ssd(state, x, 21)
    assert locs.shape == ref_locs.shape == (1, 8732, 4)
    assert _close(locs, ref_locs) and _close(logits, ref_conf)
    assert torch.equal(vgg.backbone.fc6.weight, state["base_net.31.weight"])
    assert torch.equal(vgg.backbone.conv4_3_norm.running_var, state["source_layer_add_ons.0.running_var"])


def load_weights_from_memory(model, state, **kw):
    return load_state(model, state, name="memory.pth", **kw)


def test_one_head_bias_lands_on_its_own_default_boxes(mobilenet):
    """Zero every head; give head 2 a bias per (box, class): each cell of map 2 then
    predicts exactly that bias, in the slots of map 2's default boxes, box by box."""
    state = original_mobilenet_ssd()
    for k in range(6):
        for kind in ("classification_headers", "regression_headers"):
            state[f"{kind}.{k}.weight"].zero_()
            state[f"{kind}.{k}.bias"].zero_()
    cls_bias = torch.arange(6 * 21, dtype=torch.float32)
    loc_bias = torch.arange(6 * 4, dtype=torch.float32) / 10
    state["classification_headers.2.bias"] = cls_bias.clone()
    state["regression_headers.2.bias"] = loc_bias.clone()
    load_state(mobilenet, state)
    with torch.inference_mode():
        locs, logits = mobilenet(torch.randn(1, 3, 300, 300))
    start = 19 * 19 * 6 + 10 * 10 * 6
    stop = start + 5 * 5 * 6
    assert torch.equal(logits[0, :start], torch.zeros(start, 21))
    assert torch.equal(logits[0, stop:], torch.zeros(3000 - stop, 21))
    assert torch.equal(logits[0, start:stop], cls_bias.view(6, 21).repeat(25, 1))
    assert torch.equal(locs[0, start:stop], loc_bias.view(6, 4).repeat(25, 1))
    # The same slots hold map 2's default boxes: 5x5 cells of step 64, box 0 the small square.
    priors = mobilenet.priors[start:stop]
    assert torch.allclose(priors[0::6, 2], torch.full((25,), 150 / 300))
    assert torch.allclose(priors[:6, :2], torch.full((6, 2), 0.5 / (300 / 64)))


def test_old_files_without_batchnorm_counters_load(mobilenet):
    state = original_mobilenet_ssd(counter=False)  # written by PyTorch < 0.4.1
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert load_state(mobilenet, state).format == "original-ssd"


# -- base networks ---------------------------------------------------------------------------
def test_original_mobilenet_base_fills_the_base_only(mobilenet):
    before = _snapshot(mobilenet)
    base = mobilenet_base_state(torch.Generator().manual_seed(1), counter=False)
    report = load_state(mobilenet, base)
    assert report.format == "original-base"
    assert all(k.startswith("backbone.") for k in report.loaded)
    assert {k.split(".")[0] for k in report.kept} == {"extras", "loc_heads", "cls_heads"}
    assert torch.equal(mobilenet.backbone.layers[13][3].weight, base["13.3.weight"])
    assert torch.equal(mobilenet.extras[0][0].weight, before["extras.0.0.weight"])


def test_whole_mobilenet_classifier_file_skips_the_classifier(mobilenet):
    base = mobilenet_base_state(torch.Generator().manual_seed(2), prefix="model.")
    base["fc.weight"], base["fc.bias"] = torch.zeros(1001, 1024), torch.zeros(1001)
    report = load_state(mobilenet, base)
    assert report.format == "original-mobilenet" and report.skipped == ("fc.weight", "fc.bias")
    assert torch.equal(mobilenet.backbone.layers[0][1].running_mean, base["model.0.1.running_mean"])


def test_vgg16_reducedfc_fills_convs_and_fc6_fc7(vgg):
    before = _snapshot(vgg)
    base = vgg_base_state(torch.Generator().manual_seed(3))
    report = load_state(vgg, base)
    assert report.format == "original-base"
    assert torch.equal(vgg.backbone.fc7.weight, base["33.weight"])
    assert torch.equal(vgg.backbone.features[28].bias, base["28.bias"])
    assert {k.split(".")[0] for k in report.kept} == {"backbone", "extras", "loc_heads", "cls_heads"}
    assert all(k.startswith("backbone.conv4_3_norm.") for k in report.kept if k.startswith("backbone."))
    assert torch.equal(vgg.cls_heads[0].weight, before["cls_heads.0.weight"])


def _torchvision_vgg16_state(gen):
    """Keys and shapes of torchvision's vgg16-397923af.pth (classifier as zero-cost views)."""
    state, index, cin = OrderedDict(), 0, 3
    for v in VGG_CFG + ["M"]:
        if isinstance(v, str):
            index += 1
            continue
        state[f"features.{index}.weight"] = _he((v, cin, 3, 3), gen)
        state[f"features.{index}.bias"] = _bias(v, gen)
        index, cin = index + 2, v
    for i, (o, n) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
        state[f"classifier.{i}.weight"] = torch.zeros(()).expand(o, n)
        state[f"classifier.{i}.bias"] = torch.zeros(o)
    return state


def test_torchvision_vgg16_fills_the_13_convolutions(vgg):
    before = _snapshot(vgg)
    tv = _torchvision_vgg16_state(torch.Generator().manual_seed(4))
    report = load_state(vgg, tv)
    assert report.format == "torchvision-vgg16"
    assert len(report.loaded) == 26 and len(report.skipped) == 6
    assert torch.equal(vgg.backbone.features[21].weight, tv["features.21.weight"])
    assert torch.equal(vgg.backbone.fc6.weight, before["backbone.fc6.weight"])  # not in the file
    # conv1_1 is rewritten for our input normalisation: same response to the same image.
    pixels = torch.rand(1, 3, 32, 32)
    tv_x = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    our_x = (pixels - torch.tensor(vgg.mean).view(1, 3, 1, 1)) / torch.tensor(vgg.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = F.conv2d(tv_x, tv["features.0.weight"], tv["features.0.bias"], padding=1)
        got = vgg.backbone.features[0](our_x)
    assert torch.allclose(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-3)


def test_a_base_network_file_must_be_complete(vgg):
    tv = _torchvision_vgg16_state(torch.Generator().manual_seed(5))
    del tv["features.28.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(features.28.weight\)"):
        load_weights_from_memory(vgg, tv)


# -- clear errors -------------------------------------------------------------------------------
def test_another_backbones_file_is_refused_with_the_keys_named(vgg):
    before = _snapshot(vgg)
    with pytest.raises(CheckpointError) as info:
        load_weights_from_memory(vgg, original_mobilenet_ssd())
    message = str(info.value)
    assert message.startswith("memory.pth: does not fit vgg16")
    assert "original-ssd layout" in message
    # 30 VGG tensors and the 4 of the conv4_3 BatchNorm (its counter is optional).
    assert "34 missing keys (base_net.0.weight, base_net.0.bias," in message
    assert "(24 more)" in message  # the first ten shown, and the count
    assert "shape mismatches (regression_headers.0.weight (file (24, 512, 3, 3), model (16, 512, 3, 3))" in message
    assert "unexpected keys (base_net.0.0.weight" in message
    assert isinstance(info.value, UserError)
    after = vgg.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing copied


def test_a_missing_tensor_is_named(mobilenet):
    state = original_mobilenet_ssd()
    del state["regression_headers.4.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(regression_headers.4.bias\)"):
        load_weights_from_memory(mobilenet, state)
    state = original_mobilenet_ssd()
    state["extras.9.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(extras.9.0.weight\)"):
        load_weights_from_memory(mobilenet, state)


def test_another_class_count_is_a_shape_mismatch():
    model = build_model("mobilenet_v1", 5)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(classification_headers.0.weight "
                                              r"\(file \(126, 512, 3, 3\), model \(30, 512, 3, 3\)\)"):
        load_weights_from_memory(model, original_mobilenet_ssd(num_classes=21))


def test_another_width_is_refused(mobilenet):
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights_from_memory(build_model("mobilenet_v1", 21, width=0.5), original_mobilenet_ssd())


def test_vgg_norm_variant_gets_a_hint():
    state = original_vgg_ssd()
    l2 = build_model("vgg16", 21, conv4_3_norm="l2")
    with pytest.raises(CheckpointError, match=r"Hint: only the conv4_3 normalisation differs.*'l2'"):
        load_weights_from_memory(l2, state)
    # An old original file with the ScaledL2Norm (its parameter "scale") fits the l2 variant.
    for key in [k for k in state if k.startswith("source_layer_add_ons.")]:
        del state[key]
    state["source_layer_add_ons.0.scale"] = torch.full((512,), 20.0)
    assert load_weights_from_memory(l2, state).format == "original-ssd"


def test_unrelated_and_unreadable_files(tmp_path, mobilenet):
    with pytest.raises(CheckpointError, match=r"none of its 2 keys \(bar, foo\)"):
        load_weights_from_memory(mobilenet, {"foo": torch.zeros(1), "bar": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_weights(mobilenet, tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk.pth: not a readable PyTorch weights file"):
        load_weights(mobilenet, junk)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_weights_from_memory(mobilenet, {"backbone.layers.0.0.weight": [1, 2]})
    with pytest.raises(CheckpointError, match="choose from: auto, ssdstudy, original-ssd, original-base"):
        load_weights_from_memory(mobilenet, original_mobilenet_ssd(), source="caffe")
    # Naming a layout the file is not in lists everything as missing / unexpected.
    with pytest.raises(CheckpointError, match="original-base layout"):
        load_weights_from_memory(mobilenet, original_mobilenet_ssd(), source="original-base")


# -- our own checkpoints ------------------------------------------------------------------------
def test_round_trip_original_to_ours_and_back_from_disk(tmp_path, mobilenet):
    state = original_mobilenet_ssd(seed=7)
    load_state(mobilenet, state)
    path = save_weights(mobilenet, tmp_path / "w" / "mb.pth", epoch=3)
    fresh = build_model("mobilenet_v1", 21).eval()
    report = load_weights(fresh, path)
    assert report.format == "ssdstudy" and report.metadata["epoch"] == 3
    assert report.metadata["backbone"] == "mobilenet_v1"
    assert all(torch.equal(v, mobilenet.state_dict()[k]) for k, v in fresh.state_dict().items())
    x = torch.randn(1, 3, 300, 300)
    with torch.inference_mode():
        ref = reference_mobilenet_ssd(state, x, 21)
        got = fresh(x)
    assert _close(got[0], ref[0]) and _close(got[1], ref[1])


def test_plain_and_training_checkpoints_load(tmp_path, mobilenet):
    plain = tmp_path / "plain.pth"
    torch.save(mobilenet.state_dict(), plain)
    fresh = build_model("mobilenet_v1", 21)
    assert load_weights(fresh, plain).format == "ssdstudy"
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    training = {"format": "ssdstudy-checkpoint-1", "epoch": 2, "model": fresh.state_dict(),
                "optimizer": optimizer.state_dict(),
                "config": {"model": {"backbone": "mobilenet_v1", "width": 1.0, "image_size": 300}},
                "class_names": ["a"] * 20}
    path = tmp_path / "run.pth"
    torch.save(training, path)
    assert load_weights(build_model("mobilenet_v1", 21), path).metadata["epoch"] == 2
    with pytest.raises(CheckpointError, match=r"checkpoint is for another model: width 1.0 \(model: 0.5\)"):
        load_weights(build_model("mobilenet_v1", 21, width=0.5), path)
    with pytest.raises(CheckpointError, match=r"num_classes 21 \(model: 5\)"):
        load_weights(build_model("mobilenet_v1", 5), path)
    parallel = {"module." + k: v for k, v in mobilenet.state_dict().items()}
    assert load_weights_from_memory(build_model("mobilenet_v1", 21), parallel).format == "ssdstudy"


@pytest.mark.parametrize("backbone", ["vgg16_bn", "mobilenet_v1", "squeezenet"])
def test_every_backbone_reads_its_own_checkpoint(backbone, tmp_path):
    """A trained run's checkpoint is read back whatever the backbone, including those the
    original code base never had (VGG16-BN, SqueezeNet)."""
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=3, width=1.0, image_size=96)
    path = save_weights(model, tmp_path / "weights.pt")
    again = build_model(backbone, num_classes=3, width=1.0, image_size=96)
    report = load_weights(again, path)
    assert report.format == "ssdstudy" and not report.skipped
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
