"""SqueezeNet-SSD300: Fire modules, map sizes, parameter count, width, bf16 training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ssdstudy
from ssdstudy.boxes import match
from ssdstudy.loss import MultiBoxLoss
from ssdstudy.model import ModelConfigError, build_model
from ssdstudy.model.layers import Float32AutocastConv2d
from ssdstudy.model.priors import MOBILENET_V1_PRIORS
from ssdstudy.model.squeezenet import Fire
from ssdstudy.model.ssd import dry_run


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_macs(model) -> int:
    """Multiply-accumulates of every convolution of ``model`` for one image (shapes only)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        dry_run(model, torch.empty(1, 3, model.image_size, model.image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total


@pytest.fixture(scope="module")
def squeeze() -> torch.nn.Module:
    return build_model("squeezenet", 21).eval()


def test_built_by_name_from_the_package():
    model = ssdstudy.build_model("squeezenet", 9, 1.0)
    assert model.backbone_name == "squeezenet" and model.num_classes == 9
    assert model.metadata() == {"backbone": "squeezenet", "width": 1.0, "num_classes": 9, "image_size": 300,
                                "options": {}}


def test_forward_shapes_maps_and_priors_at_300(squeeze):
    assert squeeze.feature_map_sizes == (19, 10, 5, 3, 2, 1)
    assert squeeze.boxes_per_cell == (6,) * 6
    assert squeeze.num_priors == 3000
    # the same default boxes as MobileNetV1-SSD300, box for box
    assert squeeze.prior_config is MOBILENET_V1_PRIORS
    assert torch.equal(squeeze.priors, build_model("mobilenet_v1", 21).priors)
    with torch.inference_mode():
        maps = squeeze.backbone(torch.randn(2, 3, 300, 300))
        locs, logits = squeeze(torch.randn(2, 3, 300, 300))
    assert [tuple(m.shape) for m in maps] == [(2, 512, 19, 19), (2, 640, 10, 10)]
    assert locs.shape == (2, 3000, 4) and logits.shape == (2, 3000, 21)
    assert torch.isfinite(locs).all() and torch.isfinite(logits).all()


def test_the_sources_are_fire9_and_fire11(squeeze):
    layers = dict(squeeze.backbone.layers.named_children())
    fires = [name for name, m in layers.items() if isinstance(m, Fire)]
    assert fires == [f"fire{i}" for i in range(2, 12)]
    assert [m.out_channels for m in layers.values() if isinstance(m, Fire)] == [
        128, 128, 256, 256, 384, 384, 512, 512, 640, 640]
    sizes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape[1:])))
             for n, m in layers.items()]
    try:
        dry_run(squeeze.backbone, torch.empty(1, 3, 300, 300, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    assert sizes["conv1"] == (64, 150, 150) and sizes["pool1"] == (64, 75, 75)
    assert sizes["fire9"] == (512, 19, 19) and sizes["fire11"] == (640, 10, 10)
    assert squeeze.backbone.out_channels == (512, 640)
    assert squeeze.cls_heads[0].in_channels == 512 and squeeze.cls_heads[1].in_channels == 640
    assert squeeze.extras[0][0].in_channels == 640


def test_fire_module_is_squeeze_then_two_expands_concatenated():
    fire = Fire(8, 2, 3, 5).eval()
    assert fire.squeeze[0].kernel_size == (1, 1) and fire.squeeze[0].out_channels == 2
    assert fire.expand1x1[0].kernel_size == (1, 1) and fire.expand3x3[0].kernel_size == (3, 3)
    assert all(isinstance(part[1], nn.BatchNorm2d) and part[0].bias is None
               for part in (fire.squeeze, fire.expand1x1, fire.expand3x3))
    x = torch.randn(2, 8, 7, 7)
    y = fire(x)
    s = fire.squeeze(x)
    assert y.shape == (2, 8, 7, 7)
    assert torch.equal(y[:, :3], fire.expand1x1(s)) and torch.equal(y[:, 3:], fire.expand3x3(s))


def test_parameter_count_by_hand(squeeze):
    # Per Fire module (in, s, e1, e3), convolutions without bias, BatchNorm 2 per channel:
    # in*s + 2s + s*e1 + 2*e1 + 9*s*e3 + 2*e3. conv1 3*64*9 + 128 = 1,856; fire2..fire11:
    # 11,552 + 12,576 + 45,632 + 49,728 + 105,312 + 111,456 + 189,568 + 197,760 + 298,400
    # + 308,640: base network 1,332,480. (Cross-check: torchvision's squeezenet1_1 has
    # 722,496 parameters up to fire9, biases instead of BatchNorm; BatchNorm adds one
    # parameter per channel of conv1 and of each of fire2..fire9's convolutions,
    # 64 + 2,880, and 722,496 + 2,944 = 725,440 = 1,332,480 - fire10 - fire11.)
    # Extras, with biases: (640*256+256 + 9*256*512+512) + (512*128+128 + 9*128*256+256)
    # + 2 * (256*128+128 + 9*128*256+256) = 2,361,216.
    # Heads on 512, 640, 512, 256, 256, 256 channels (2,432 in all), 6 boxes per cell:
    # loc 9*2432*24 + 6*24 = 525,456; cls 9*2432*6*21 + 6*6*21 = 2,758,644 for 21 classes
    # and 9*2432*54 + 6*54 = 1,182,276 for 9.
    base = sum(p.numel() for p in squeeze.backbone.parameters())
    assert base == 1_332_480
    assert sum(p.numel() for p in squeeze.extras.parameters()) == 2_361_216
    assert n_params(squeeze) == 1_332_480 + 2_361_216 + 525_456 + 2_758_644 == 6_977_796
    assert n_params(build_model("squeezenet", 9)) == 1_332_480 + 2_361_216 + 525_456 + 1_182_276 == 5_401_428
    assert n_params(squeeze) < n_params(build_model("mobilenet_v1", 21))


def test_multiply_accumulates_at_300(squeeze):
    # Base network, per output pixel summed over the layer's convolutions, times pixels:
    # conv1 150^2*27*64 = 38,880,000; fire2 75^2*11,264; fire3 75^2*12,288; fire4 38^2*45,056;
    # fire5 38^2*49,152; fire6 19^2*104,448; fire7 19^2*110,592; fire8 19^2*188,416;
    # fire9 19^2*196,608; fire10 10^2*296,960; fire11 10^2*307,200: 584,435,456.
    # Extras 52,068,352; heads 9 * (361*512 + 100*640 + 25*512 + (9+4+1)*256) * (24 + 6K).
    assert conv_macs(squeeze) == 584_435_456 + 52_068_352 + 265_216 * 9 * 150 == 994_545_408
    assert conv_macs(build_model("squeezenet", 9)) == 584_435_456 + 52_068_352 + 265_216 * 9 * 78 == 822_685_440


@pytest.mark.parametrize(("size", "maps", "count"), [(160, (10, 5, 3, 2, 1, 1), 840), (192, (12, 6, 3, 2, 1, 1), 1170),
                                                     (224, (14, 7, 4, 2, 1, 1), 1602), (256, (16, 8, 4, 2, 1, 1), 2052),
                                                     (128, (8, 4, 2, 1, 1, 1), 522), (96, (6, 3, 2, 1, 1, 1), 312)])
def test_other_input_sizes_give_mobilenets_maps(size, maps, count):
    model = build_model("squeezenet", 5, image_size=size).eval()
    assert model.feature_map_sizes == maps == build_model("mobilenet_v1", 5, image_size=size).feature_map_sizes
    with torch.inference_mode():
        locs, logits = model(torch.randn(1, 3, size, size))
    assert locs.shape == (1, count, 4) and logits.shape == (1, count, 5) and model.priors.shape == (count, 4)
    assert torch.isfinite(locs).all() and torch.isfinite(logits).all()


def test_width_scales_every_fire_channel():
    counts = {w: n_params(build_model("squeezenet", 21, width=w)) for w in (0.25, 0.5, 0.75, 1.0)}
    assert counts[0.25] < counts[0.5] < counts[0.75] < counts[1.0] == 6_977_796
    half = build_model("squeezenet", 21, width=0.5)
    layers = dict(half.backbone.layers.named_children())
    assert layers["conv1"][0].out_channels == 32
    fire2 = layers["fire2"]
    assert (fire2.squeeze[0].out_channels, fire2.expand1x1[0].out_channels, fire2.expand3x3[0].out_channels) == (8, 32, 32)
    assert half.backbone.out_channels == (256, 320)
    assert half.cls_heads[0].in_channels == 256 and half.cls_heads[1].in_channels == 320
    assert half.extras[0][0].in_channels == 320 and half.extras[0][2].out_channels == 512  # the extras' own widths stay
    # the base network shrinks by about alpha^2
    base = sum(p.numel() for p in half.backbone.parameters())
    assert 0.24 < base / 1_332_480 < 0.27
    # floor, at least one channel
    assert build_model("squeezenet", 21, width=0.3).backbone.out_channels == (2 * 76, 2 * 96)
    assert build_model("squeezenet", 21, width=0.001).backbone.out_channels == (2, 2)
    with pytest.raises(ModelConfigError, match="model.width"):
        build_model("squeezenet", 21, width=1.5)


def test_checkpoint_round_trip_and_no_foreign_layout(squeeze, tmp_path):
    from ssdstudy.model import load_state
    from ssdstudy.model.weights import key_tables

    assert [t.format for t in key_tables(squeeze)] == ["ssdstudy", "original-ssd"]
    other = build_model("squeezenet", 21)
    report = load_state(other, squeeze.state_dict(), source="ssdstudy")
    assert report.format == "ssdstudy" and not report.kept
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), squeeze.state_dict().values()))


def _bf16_steps(model: nn.Module, size: int, steps: int = 2) -> None:
    """A few SGD steps as the trainer takes them under bf16 autocast; every gradient finite."""
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = MultiBoxLoss(neg_pos_ratio=3)
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.5]]), torch.tensor([[0.3, 0.2, 0.9, 0.9], [0.0, 0.5, 0.3, 1.0]])]
    labels = [torch.tensor([1]), torch.tensor([2, 3])]
    loc_t, cls_t = match(boxes, labels, model.priors)
    images = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            locs, logits = model(images)
        loss = sum(criterion(locs.float(), logits.float(), loc_t, cls_t))
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not bad, f"missing or non-finite gradients: {bad[:5]}"
        optimizer.step()


def test_bf16_training_steps_give_finite_gradients():
    model = build_model("squeezenet", 9, width=0.25, image_size=96)
    # maps 6, 3, 2, 1, 1, 1: the extras and heads on 1x1 maps compute in float32
    assert model.float32_convs == ("extras.1.2", "extras.2.2", "extras.3.2", "loc_heads.3", "loc_heads.4", "loc_heads.5",
                                   "cls_heads.3", "cls_heads.4", "cls_heads.5")
    _bf16_steps(model, 96)


def test_fire_expands_on_a_1x1_map_compute_in_float32_under_autocast():
    # at 32 px fire10 and fire11 see a 1x1 map: eight taps of their 3x3 expands read padding
    model = build_model("squeezenet", 9, width=0.25, image_size=32)
    assert model.feature_map_sizes == (2, 1, 1, 1, 1, 1)
    backbone = [n for n in model.float32_convs if n.startswith("backbone.")]
    assert backbone == ["backbone.layers.fire10.expand3x3.0", "backbone.layers.fire11.expand3x3.0"]
    assert all(isinstance(model.get_submodule(n), Float32AutocastConv2d) for n in backbone)
    _bf16_steps(model, 32)
    conv = model.get_submodule(backbone[0])
    border = conv.weight.grad.clone()
    border[:, :, 1, 1] = 0
    assert torch.count_nonzero(border) == 0  # the exact gradient of taps without input
    # the guard changes no parameter: the same keys as a model built at 300 px
    assert model.state_dict().keys() == build_model("squeezenet", 9, width=0.25).state_dict().keys()


def test_architectures_page_table_is_the_models():
    """The hand-written size-and-cost table of book/method/architectures.md."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "book" / "method" / "architectures.md"
    rows = re.findall(r"^\| `(\w+)` \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) M \| ([\d,]+) M \|$",
                      page.read_text(), flags=re.MULTILINE)
    assert {r[0] for r in rows} == {"vgg16", "vgg16_bn", "mobilenet_v1", "squeezenet"}
    for name, *numbers in rows:
        p21, p9, base, m21, m9 = (int(n.replace(",", "")) for n in numbers)
        big, small = build_model(name, 21), build_model(name, 9)
        assert (n_params(big), n_params(small), n_params(big.backbone)) == (p21, p9, base), name
        assert (round(conv_macs(big) / 1e6), round(conv_macs(small) / 1e6)) == (m21, m9), name
