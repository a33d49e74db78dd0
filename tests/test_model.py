"""The SSD models: sizes of the original networks, forward shapes, options, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssdstudy.errors import ConfigError, UserError
from ssdstudy.model import (
    BACKBONES,
    SSD,
    Backbone,
    BackboneParts,
    ModelConfigError,
    PriorConfig,
    PriorSpec,
    available_backbones,
    build_model,
    register_backbone,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vgg() -> SSD:
    return build_model("vgg16", 21).eval()


@pytest.fixture(scope="module")
def mobilenet() -> SSD:
    return build_model("mobilenet_v1", 21).eval()


def test_registry_lists_the_backbones():
    assert available_backbones() == ("mobilenet_v1", "squeezenet", "vgg16", "vgg16_bn")
    assert set(BACKBONES) == {"vgg16", "vgg16_bn", "mobilenet_v1", "squeezenet"}


def test_parameter_counts_equal_the_original_networks(vgg, mobilenet):
    # qfgaohao/pytorch-ssd create_vgg_ssd(21) and create_mobilenetv1_ssd(21).
    assert n_params(vgg) == 26_285_998
    assert n_params(mobilenet) == 9_468_996


def test_mobilenet_width_scales_every_mobilenet_layer():
    counts = {w: n_params(build_model("mobilenet_v1", 21, width=w)) for w in (0.25, 0.5, 0.75, 1.0)}
    assert counts[0.25] < counts[0.5] < counts[0.75] < counts[1.0] == 9_468_996
    half = build_model("mobilenet_v1", 21, width=0.5)
    convs = [m for m in half.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 16 and convs[-1].out_channels == 512
    assert half.backbone.out_channels == (256, 512)
    assert half.cls_heads[0].in_channels == 256 and half.cls_heads[1].in_channels == 512
    assert half.extras[0][0].in_channels == 512  # fed by the last MobileNet layer
    assert half.extras[0][2].out_channels == 512  # the extras' own widths stay
    # An odd width works too (floor, at least one channel).
    odd = build_model("mobilenet_v1", 21, width=0.3)
    assert odd.backbone.out_channels == (153, 307)
    tiny = build_model("mobilenet_v1", 21, width=0.001)
    assert tiny.backbone.out_channels == (1, 1)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, 2, float("nan"), float("inf"), "0.5", None, True, [0.5]])
def test_width_out_of_range_is_a_clear_error(bad):
    with pytest.raises(ModelConfigError, match="model.width") as info:
        build_model("mobilenet_v1", 21, width=bad)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    assert isinstance(info.value, UserError)


def test_vgg16_has_no_width_multiplier():
    with pytest.raises(ModelConfigError, match="vgg16 needs width 1.0"):
        build_model("vgg16", 21, width=0.5)


def test_unknown_backbone_option_and_arguments_are_clear_errors():
    with pytest.raises(ModelConfigError, match="unknown backbone 'resnet'.*mobilenet_v1, squeezenet, vgg16"):
        build_model("resnet", 21)
    with pytest.raises(ModelConfigError, match="'dropout'.*its options: conv4_3_norm"):
        build_model("vgg16", 21, dropout=0.1)
    with pytest.raises(ModelConfigError, match="'dropout'.*its options: none"):
        build_model("squeezenet", 21, dropout=0.1)
    with pytest.raises(ModelConfigError, match="'dropout'.*its options: stride8_map"):
        build_model("mobilenet_v1", 21, dropout=0.1)
    with pytest.raises(ModelConfigError, match="conv4_3_norm must be"):
        build_model("vgg16", 21, conv4_3_norm="layernorm")
    for classes in (1, 0, 2.5, True):
        with pytest.raises(ModelConfigError, match="num_classes"):
            build_model("mobilenet_v1", classes)
    for size in (0, -300, 300.0, "300"):
        with pytest.raises(ModelConfigError, match="image_size"):
            build_model("mobilenet_v1", 21, image_size=size)


def test_too_small_input_names_the_smallest_supported_size():
    with pytest.raises(ModelConfigError, match=r"image_size 8 is too small.*smallest size it supports is 12"):
        build_model("vgg16", 21, image_size=8)
    assert build_model("mobilenet_v1", 21, image_size=8).feature_map_sizes == (1, 1, 1, 1, 1, 1)


def test_forward_shapes_at_300(vgg, mobilenet):
    with torch.inference_mode():
        locs, logits = mobilenet(torch.randn(2, 3, 300, 300))
        assert locs.shape == (2, 3000, 4) and logits.shape == (2, 3000, 21)
        locs, logits = vgg(torch.randn(1, 3, 300, 300))
        assert locs.shape == (1, 8732, 4) and logits.shape == (1, 8732, 21)
    assert vgg.feature_map_sizes == (38, 19, 10, 5, 3, 1)
    assert mobilenet.feature_map_sizes == (19, 10, 5, 3, 2, 1)
    assert vgg.priors.shape == (8732, 4) and mobilenet.priors.shape == (3000, 4)


@pytest.mark.parametrize(("backbone", "size", "count"), [("vgg16", 160, 2412), ("mobilenet_v1", 160, 840),
                                                         ("mobilenet_v1", 224, 1602)])
def test_forward_at_smaller_sizes(backbone, size, count):
    model = build_model(backbone, 5, image_size=size).eval()
    with torch.inference_mode():
        locs, logits = model(torch.randn(1, 3, size, size))
    assert locs.shape == (1, count, 4) and logits.shape == (1, count, 5)
    assert model.priors.shape == (count, 4)
    assert torch.isfinite(locs).all() and torch.isfinite(logits).all()


def test_vgg_extras_get_padding_only_where_the_input_is_too_small():
    assert build_model("vgg16", 21, image_size=300).padded_extras == ()
    small = build_model("vgg16", 21, image_size=224)
    assert small.padded_extras == ("3.2",)
    assert small.extras[3][2].padding == (1, 1) and small.extras[2][2].padding == (0, 0)
    assert small.feature_map_sizes == (28, 14, 7, 4, 2, 2)
    # Same parameters at every size: weights move between sizes.
    small.load_state_dict(build_model("vgg16", 21).state_dict())


def test_forward_rejects_another_input_size(mobilenet):
    with pytest.raises(ValueError, match=r"built for 300x300.*\(1, 3, 256, 256\)"):
        mobilenet(torch.zeros(1, 3, 256, 256))


def test_normalisation_matches_the_original_code_base(vgg, mobilenet):
    # vgg: pixel - (123, 117, 104); mobilenet: (pixel - 127) / 128, on 0..255 pixels.
    pixel = torch.tensor([200.0, 100.0, 50.0])
    vgg_x = (pixel / 255 - torch.tensor(vgg.mean)) / torch.tensor(vgg.std)
    assert torch.allclose(vgg_x, pixel - torch.tensor([123.0, 117.0, 104.0]), atol=1e-4)
    mb_x = (pixel / 255 - torch.tensor(mobilenet.mean)) / torch.tensor(mobilenet.std)
    assert torch.allclose(mb_x, (pixel - 127) / 128, atol=1e-6)


def test_extras_and_heads_start_xavier_uniform(mobilenet):
    for conv in [mobilenet.cls_heads[1], mobilenet.loc_heads[0], mobilenet.extras[2][2]]:
        fan_in = conv.in_channels * 9 if conv.kernel_size == (3, 3) else conv.in_channels
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        bound = math.sqrt(6 / (fan_in + fan_out))
        top = conv.weight.abs().max().item()
        assert 0.95 * bound < top <= bound * (1 + 1e-6)  # the float32 weights may round past the bound


def test_vgg_l2norm_option_is_the_papers_layer():
    model = build_model("vgg16", 21, conv4_3_norm="l2")
    assert n_params(model) == 26_285_998 - 1024 + 512
    norm = model.backbone.conv4_3_norm
    x = torch.rand(2, 512, 4, 4) + 0.1
    assert torch.allclose(norm(x).norm(dim=1), torch.full((2, 4, 4), 20.0), atol=1e-4)
    assert model.options == {"conv4_3_norm": "l2"}


def test_metadata_and_description(mobilenet):
    half = build_model("mobilenet_v1", 21, width=0.5, image_size=160)
    assert half.metadata() == {"backbone": "mobilenet_v1", "width": 0.5, "num_classes": 21, "image_size": 160,
                               "options": {}}
    assert "width 0.5" in half.describe() and "840 default boxes" in repr(half)


class _TinyBody(Backbone):
    """Two convolutions; maps at stride 2 and 4."""

    out_channels = (4, 8)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.a(x)
        return [x, self.b(x)]

    def original_name(self, key):
        return "base_net", key


def test_a_new_backbone_is_one_registered_factory():
    @register_backbone("tiny_test")
    def tiny(width: float = 1.0) -> BackboneParts:
        specs = (PriorSpec(16, 2, 8, 16, (2,)), PriorSpec(8, 4, 16, 24, ()), PriorSpec(4, 8, 24, 32, ()))
        extras = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())])
        return BackboneParts(_TinyBody(), extras, (4, 8, 8), PriorConfig(specs, image_size=32),
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    try:
        assert "tiny_test" in available_backbones()
        model = build_model("tiny_test", 3, image_size=32)
        assert model.feature_map_sizes == (16, 8, 4)
        locs, logits = model(torch.zeros(2, 3, 32, 32))
        assert locs.shape == (2, 16 * 16 * 4 + 64 * 2 + 16 * 2, 4) and logits.shape[-1] == 3
        assert model.priors.shape[0] == locs.shape[1]
    finally:
        BACKBONES._remove("tiny_test")
    assert "tiny_test" not in available_backbones()


def test_strided_depthwise_convolutions_run_in_float32_under_cpu_autocast():
    from ssdstudy.model.mobilenet import StridedDepthwiseConv2d

    model = build_model("mobilenet_v1", 9, image_size=128)
    strided = [m for m in model.modules() if isinstance(m, StridedDepthwiseConv2d)]
    assert [m.in_channels for m in strided] == [64, 128, 256, 512]  # the four stride-2 depthwise layers
    assert all(m.stride == (2, 2) and m.groups == m.in_channels for m in strided)
    conv = strided[0]
    x = torch.randn(2, 64, 16, 16).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    expected = torch.nn.functional.conv2d(x.float(), conv.weight, None, 2, 1, 1, 64)
    assert torch.equal(y, expected.to(torch.bfloat16))
    assert torch.equal(conv(x.float()), expected)  # outside autocast: an ordinary convolution


def test_vgg16_bn_is_vgg16_with_batchnorm_after_every_convolution(vgg):
    bn = build_model("vgg16_bn", 21).eval()
    assert bn.feature_map_sizes == vgg.feature_map_sizes and torch.equal(bn.priors, vgg.priors)
    convs = [m for m in bn.backbone.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in bn.backbone.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 13
    assert isinstance(bn.backbone.features[32], torch.nn.ReLU)  # conv4_3's ReLU, torchvision's vgg16_bn index
    assert isinstance(bn.backbone.fc6_bn, torch.nn.BatchNorm2d) and isinstance(bn.backbone.fc7_bn, torch.nn.BatchNorm2d)
    extra_norms = [m for m in bn.extras.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(extra_norms) == 8
    # the same convolutions as VGG16; BatchNorm adds 2 parameters per channel
    bn_params = sum(m.weight.numel() + m.bias.numel() for m in bn.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv4_3_norm = 2 * 512
    assert n_params(bn) - bn_params == n_params(vgg) - conv4_3_norm
    with torch.inference_mode():
        locs, logits = bn(torch.randn(1, 3, 300, 300))
    assert locs.shape == (1, 8732, 4) and logits.shape == (1, 8732, 21)
    # He initialisation of the backbone's convolutions: std sqrt(2 / fan_out)
    w = bn.backbone.features[0].weight
    assert abs(float(w.detach().std()) - (2 / (64 * 9)) ** 0.5) < 0.2 * (2 / (64 * 9)) ** 0.5


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "dilation", "expected"), [
    ((1, 1), 3, 2, 1, 1, True),    # a 3x3 convolution on a 1x1 map: 8 taps read padding only
    ((2, 2), 3, 2, 1, 1, True),    # stride 2 on 2x2: the first row and column of taps see padding
    ((2, 2), 3, 1, 1, 1, False),
    ((3, 3), 3, 1, 0, 1, False),
    ((6, 6), 3, 1, 6, 6, True),    # VGG16's fc6 (dilation 6) on a 6x6 map
    ((8, 8), 3, 1, 6, 6, False),
    ((5, 5), 1, 1, 0, 1, False),
])
def test_taps_without_input(size, kernel, stride, padding, dilation, expected):
    from ssdstudy.model.layers import taps_without_input

    conv = torch.nn.Conv2d(4, 4, kernel, stride=stride, padding=padding, dilation=dilation)
    assert taps_without_input(size, conv) is expected


def test_convolutions_whose_taps_see_only_padding_compute_in_float32_under_autocast():
    from ssdstudy.model.layers import Float32AutocastConv2d

    model = build_model("mobilenet_v1", 9, image_size=300)
    # the maps are 19, 10, 5, 3, 2, 1: the last extra and the two heads on the 1x1 map
    assert model.float32_convs == ("extras.3.2", "loc_heads.5", "cls_heads.5")
    assert all(isinstance(model.get_submodule(n), Float32AutocastConv2d) for n in model.float32_convs)
    assert build_model("vgg16", 9, image_size=300).float32_convs == ("loc_heads.5", "cls_heads.5")
    assert "fc6" in " ".join(build_model("vgg16", 9, image_size=96).float32_convs)
    head = model.get_submodule("cls_heads.5")
    x = torch.randn(2, 256, 1, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = head(x)
    y.float().sum().backward()
    assert torch.isfinite(head.weight.grad).all()
    # taps that see only padding get exactly zero gradient
    border = head.weight.grad.clone()
    border[:, :, 1, 1] = 0
    assert torch.count_nonzero(border) == 0
    assert model.state_dict().keys() == build_model("mobilenet_v1", 9, image_size=300).state_dict().keys()


def test_tiling_options_change_the_default_boxes_and_heads_only():
    base = build_model("mobilenet_v1", num_classes=9, width=0.25)
    wide = build_model("mobilenet_v1", num_classes=9, width=0.25, stride8_map=True)
    assert wide.feature_map_sizes == (38, *base.feature_map_sizes)
    assert wide.num_priors == base.num_priors + 38 * 38 * 4  # VGG16's first-map boxes
    assert torch.equal(wide.priors[38 * 38 * 4:], base.priors)
    assert wide.backbone.out_channels == (64, 128, 256)  # layer 6 at width 0.25
    locs, logits = wide(torch.zeros(1, 3, 300, 300))
    assert locs.shape == (1, wide.num_priors, 4) and logits.shape == (1, wide.num_priors, 9)
    # the layers keep their names: the base network's weights are the same tensors
    assert list(base.backbone.state_dict()) == list(wide.backbone.state_dict())
    ratios = build_model("mobilenet_v1", num_classes=9, width=0.25,
                         priors={"min_scale": 0.2, "max_scale": 0.95, "aspect_ratios": [2]})
    assert ratios.num_priors == 2000 and ratios.metadata()["options"]["priors"]["aspect_ratios"] == [2.0]
    with pytest.raises(ModelConfigError, match="stride8_map"):
        build_model("vgg16", num_classes=9, stride8_map=True)
