"""MobileNetV1-SSD300, the ``mb1-ssd`` network of the original code base (qfgaohao/pytorch-ssd).

Base network: MobileNetV1 with batch norm and ReLU (not ReLU6): a 3x3 stride-2
convolution, then 13 depthwise-separable blocks (3x3 depthwise conv, BN, ReLU, 1x1
pointwise conv, BN, ReLU). Heads read layer 12 (the twelfth block's output, 512
channels, 19x19 at 300 px) and layer 14 (the last, 1024 channels, 10x10); four
extra blocks (1x1 conv, 3x3 stride-2 conv) continue to 5x5, 3x3, 2x2 and 1x1.
Six default boxes per cell on every map: 3,000 boxes; 9,468,996 parameters for 21
classes at width 1.

Width multiplier ``width`` (alpha, in (0, 1]): every MobileNet layer has
``max(1, floor(alpha * c))`` channels instead of c (as Keras' and TF-slim's
MobileNet, without TF-slim's floor of 8 channels), so the two heads fed by the
network and the first extra block get alpha-scaled inputs. The extra blocks' own
widths (256/512, 128/256) stay as in the original: they are SSD's layers, not
MobileNet's, and the study's fork scaled only MobileNet and the inputs connected to
it. At 0.25, 0.5 and 0.75 every count is exact (32 * 0.25 = 8).

Input: RGB, ``x = (pixel - 127) / 128`` on raw 0..255 pixels (the original's
``image_mean`` 127 and ``image_std`` 128). On [0, 1]-scaled pixels that is
``mean = 127 / 255`` and ``std = 128 / 255`` for every channel.

Module names: ``layers.N.M`` is the original's ``base_net.N.M`` (and the ``N.M`` of
its ImageNet base-network file ``mobilenet_v1_with_relu_69_5.pth``, or ``model.N.M``
of a whole ``MobileNetV1`` state dict, whose classifier ``fc`` is not used).
"""

from __future__ import annotations

from torch import Tensor, nn

from ssdstudy.model.layers import Float32AutocastConv2d
from ssdstudy.model.priors import MOBILENET_V1_PRIORS, VGG16_PRIORS, PriorConfig
from ssdstudy.model.registry import Backbone, BackboneParts, KeyTable, register_backbone

#: (output channels, stride) of the first convolution and the 13 separable blocks.
_MOBILENET_V1_LAYOUT = (
    (32, 2),
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
#: Indices (0-based) of the layers whose outputs feed heads: layers 12 and 14.
_SOURCE_LAYERS = (11, 13)
#: With ``stride8_map``: layer 6 (256a channels, stride 8: 38x38 at 300 px) feeds a head
#: too, as conv4_3 does in VGG16-SSD300, with VGG16-SSD300's first-map default boxes.
_STRIDE8_LAYER = 5

MOBILENET_MEAN = (127 / 255, 127 / 255, 127 / 255)
MOBILENET_STD = (128 / 255, 128 / 255, 128 / 255)


def scaled_channels(channels: int, width: float) -> int:
    """``max(1, floor(width * channels))`` (a hair of tolerance for float noise)."""
    return max(1, int(channels * width + 1e-6))


def _conv_bn(inp: int, out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class StridedDepthwiseConv2d(Float32AutocastConv2d):
    """A 3x3 depthwise convolution with stride 2 that a CPU computes in float32 even
    under bf16 autocast.

    oneDNN's bf16 kernels for a strided depthwise convolution are slow: forward and
    backward of the four in MobileNetV1-SSD300 take 1.6-8 times as long as in float32
    (channels-last, 2 cores), while every other convolution is faster in bf16. The
    weights, the module and its state-dict keys are those of ``nn.Conv2d``; outside
    CPU autocast nothing changes.
    """


def _conv_dw(inp: int, out: int, stride: int) -> nn.Sequential:
    depthwise = StridedDepthwiseConv2d if stride > 1 else nn.Conv2d
    return nn.Sequential(
        depthwise(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class MobileNetV1Base(Backbone):
    """MobileNetV1 (width ``alpha``) without its classifier: ``x (N, 3, S, S)`` ->
    ``[layer 12 (N, 512a, ⌈S/16⌉, ..), layer 14 (N, 1024a, ⌈S/32⌉, ..)]``
    (19x19 and 10x10 at S = 300)."""

    def __init__(self, width: float = 1.0, stride8_map: bool = False):
        super().__init__()
        self.width = width
        channels = [scaled_channels(c, width) for c, _ in _MOBILENET_V1_LAYOUT]
        blocks = [_conv_bn(3, channels[0], _MOBILENET_V1_LAYOUT[0][1])]
        for i in range(1, len(_MOBILENET_V1_LAYOUT)):
            blocks.append(_conv_dw(channels[i - 1], channels[i], _MOBILENET_V1_LAYOUT[i][1]))
        self.layers = nn.Sequential(*blocks)
        self.source_layers = ((_STRIDE8_LAYER,) if stride8_map else ()) + _SOURCE_LAYERS
        self.out_channels = tuple(channels[i] for i in self.source_layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.source_layers:
                maps.append(x)
        return maps

    def original_name(self, key: str) -> tuple[str, str]:
        module, _, rest = key.partition(".")
        if module != "layers":
            raise KeyError(key)
        return "base_net", rest

    def base_key_tables(self, prefix: str) -> list[KeyTable]:
        tables = super().base_key_tables(prefix)
        whole = {f"model.{name}": model_key for name, model_key in tables[0].names.items()}
        tables.append(
            KeyTable(
                "original-mobilenet",
                whole,
                ignored_prefixes=("fc.",),
                description="a whole MobileNetV1 of the original code base (its classifier fc is not used)",
            )
        )
        return tables


def _extra(in_channels: int, mid: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(mid, out, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
    )


@register_backbone("mobilenet_v1")
def mobilenet_v1(width: float = 1.0, stride8_map: bool = False) -> BackboneParts:
    """MobileNetV1-SSD300 of the original code base with width multiplier ``width``;
    with ``stride8_map`` a seventh head on layer 6's 38x38 map (VGG16-SSD300's first
    default boxes there: 5,776 more boxes at 300 px)."""
    body = MobileNetV1Base(width, stride8_map)
    *first, c12, c14 = body.out_channels
    extras = nn.ModuleList(
        [
            _extra(c14, 256, 512),  # 10 -> 5
            _extra(512, 128, 256),  # 5 -> 3
            _extra(256, 128, 256),  # 3 -> 2
            _extra(256, 128, 256),  # 2 -> 1
        ]
    )
    return BackboneParts(
        body=body,
        extras=extras,
        head_channels=(*first, c12, c14, 512, 256, 256, 256),
        priors=(PriorConfig((VGG16_PRIORS.specs[0], *MOBILENET_V1_PRIORS.specs), MOBILENET_V1_PRIORS.image_size)
                if stride8_map else MOBILENET_V1_PRIORS),
        mean=MOBILENET_MEAN,
        std=MOBILENET_STD,
        options={"stride8_map": True} if stride8_map else {},
    )
