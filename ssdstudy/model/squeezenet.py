"""SqueezeNet-SSD300: SqueezeNet 1.1's Fire modules as the backbone, MobileNetV1-SSD300's
heads, extra layers and default boxes.

The original study named SqueezeNet, with Fire modules as in Fire SSD (Liau et al.,
2018), as the backbone to try next against MobileNetV1. A Fire module (Iandola et al.,
2016) squeezes its input with a 1x1 convolution to s channels, then expands it with
e1 1x1 and e3 3x3 convolutions side by side and concatenates the two: ``e1 + e3``
channels, with a 3x3 filter seeing only s inputs.

Base network, SqueezeNet 1.1 (torchvision's ``squeezenet1_1`` without its classifier)
made to keep SSD's map sizes, then two more Fire modules after a fourth pool (layer:
channels out, map side at 300 px):

========  ==============================================  ===========  ========
layer     what                                            channels     map
========  ==============================================  ===========  ========
conv1     3x3 convolution, stride 2                       64           150
pool1     3x3 max pool, stride 2                          64           75
fire2     squeeze 16, expand 64 + 64                      128          75
fire3     squeeze 16, expand 64 + 64                      128          75
pool3     3x3 max pool, stride 2                          128          38
fire4     squeeze 32, expand 128 + 128                    256          38
fire5     squeeze 32, expand 128 + 128                    256          38
pool5     3x3 max pool, stride 2                          256          19
fire6     squeeze 48, expand 192 + 192                    384          19
fire7     squeeze 48, expand 192 + 192                    384          19
fire8     squeeze 64, expand 256 + 256                    512          19
fire9     squeeze 64, expand 256 + 256                    512          19
pool9     3x3 max pool, stride 2                          512          10
fire10    squeeze 80, expand 320 + 320                    640          10
fire11    squeeze 80, expand 320 + 320                    640          10
========  ==============================================  ===========  ========

Heads read fire9 (512 channels, 19x19 at 300 px: SqueezeNet 1.1's last Fire module,
where MobileNetV1-SSD reads its 512-channel layer 12) and fire11 (640 channels,
10x10, where MobileNetV1-SSD reads layer 14). fire10 and fire11 continue SqueezeNet's
own rule for its widths (the expand width grows by 128 every second module, squeeze
= expand / 8, half the expand filters 3x3), as Fire SSD appends Fire modules to its
SqueezeNet base for its smaller maps. From fire11 on, everything is MobileNetV1-SSD300's:
four extra blocks (1x1 conv, 3x3 stride-2 conv, ReLU; no BatchNorm) to 5x5, 3x3, 2x2
and 1x1, one 3x3 convolution per map for box offsets and one for class scores, six
default boxes per cell (:data:`~ssdstudy.model.priors.MOBILENET_V1_PRIORS`, 3,000
boxes) and MobileNetV1's input normalisation, so that a comparison of the two changes
the backbone only. 6,977,796 parameters for 21 classes at width 1 (1,332,480 of them
in the base network).

Changes from torchvision's SqueezeNet 1.1, and why:

* Padding: conv1 and the pools are padded by 1 (``ceil(S / 2)`` each; torchvision's
  conv1 is unpadded and its pools round up, 300 -> 149 -> 74 -> 37 -> 18), so the
  maps are 19x19 and 10x10 at 300 px, ``ceil(S / 16)`` and ``ceil(S / 32)`` at any
  input size: those of MobileNetV1-SSD, default boxes included.
* BatchNorm after every convolution of the base network (conv, BN, ReLU; the
  convolutions lose their biases), in each expand branch separately. The study
  trains every backbone from scratch, and ScratchDet (Zhu et al., 2019) found batch
  normalisation in the network the key to training SSD from scratch (here VGG16
  without it barely learns, see ``vgg16_bn``). MobileNetV1 has it after every
  convolution too, so both backbones are normalised alike; the extra layers of both
  stay without it. The convolutions keep PyTorch's default initialisation, as
  MobileNetV1's do.
* No classifier (``conv10`` and the global pool) and no dropout.

There are no ImageNet weights for this network (torchvision's have no BatchNorm):
it trains from scratch only.

Width multiplier ``width`` (alpha, in (0, 1]): conv1 and every squeeze and expand
convolution has ``max(1, floor(alpha * c))`` channels instead of c, as MobileNetV1's
layers do; the extra blocks' own widths stay. At 0.25, 0.5 and 0.75 every count is
exact (16 * 0.25 = 4).

bf16: no convolution here is depthwise, so none needs MobileNetV1's float32 strided
depthwise layer; every convolution is a plain ``nn.Conv2d``, so the SSD makes the ones
with kernel taps that see only padding at its input size compute in float32 under CPU
autocast, as for the other backbones (see :mod:`ssdstudy.model.layers`): at 300 px the
last extra and the heads on the 1x1 map; at 32 px and less also fire10's and fire11's
3x3 expands.

Module names: ``layers.<layer>`` as in the table; a Fire module's parts are
``squeeze``, ``expand1x1`` and ``expand3x3``, each ``(conv, BN, ReLU)`` as ``0``,
``1``, ``2``. The original code base's ``squeezenet-ssd-lite`` is another network
(no BatchNorm, unpadded, separable extra layers, 17x17 first map): none of its files
loads into this one.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ssdstudy.model.priors import MOBILENET_V1_PRIORS
from ssdstudy.model.registry import Backbone, BackboneParts, KeyTable, register_backbone

#: The base network in order: ``(name, channels)`` of conv1, ``(name, None)`` of a max
#: pool, ``(name, (squeeze, expand 1x1, expand 3x3))`` of a Fire module (width 1).
_SQUEEZENET_LAYOUT: tuple[tuple[str, int | tuple[int, int, int] | None], ...] = (
    ("conv1", 64),
    ("pool1", None),
    ("fire2", (16, 64, 64)),
    ("fire3", (16, 64, 64)),
    ("pool3", None),
    ("fire4", (32, 128, 128)),
    ("fire5", (32, 128, 128)),
    ("pool5", None),
    ("fire6", (48, 192, 192)),
    ("fire7", (48, 192, 192)),
    ("fire8", (64, 256, 256)),
    ("fire9", (64, 256, 256)),
    ("pool9", None),
    ("fire10", (80, 320, 320)),
    ("fire11", (80, 320, 320)),
)
#: The layers whose outputs feed heads: 19x19 and 10x10 at 300 px.
_SOURCE_LAYERS = ("fire9", "fire11")

#: MobileNetV1-SSD's input normalisation, ``(pixel - 127) / 128`` on 0..255 pixels.
SQUEEZENET_MEAN = (127 / 255, 127 / 255, 127 / 255)
SQUEEZENET_STD = (128 / 255, 128 / 255, 128 / 255)


def scaled_channels(channels: int, width: float) -> int:
    """``max(1, floor(width * channels))`` (a hair of tolerance for float noise)."""
    return max(1, int(channels * width + 1e-6))


def _conv_bn(inp: int, out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution (no bias), BatchNorm, ReLU; padded to keep ``ceil(S / stride)``."""
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class Fire(nn.Module):
    """A Fire module with BatchNorm: ``(N, C, H, W) -> (N, e1 + e3, H, W)``.

    ``squeeze`` (1x1, ``s`` channels), then ``expand1x1`` (1x1, ``e1``) and
    ``expand3x3`` (3x3, padding 1, ``e3``) on the squeezed map, concatenated
    (1x1 outputs first); each convolution followed by BatchNorm and ReLU.
    """

    def __init__(self, inp: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = _conv_bn(inp, squeeze, 1)
        self.expand1x1 = _conv_bn(squeeze, expand1x1, 1)
        self.expand3x3 = _conv_bn(squeeze, expand3x3, 3)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


class SqueezeNetBase(Backbone):
    """SqueezeNet 1.1 with BatchNorm and two more Fire modules (width ``alpha``):
    ``x (N, 3, S, S)`` -> ``[fire9 (N, 512a, ⌈S/16⌉, ..), fire11 (N, 640a, ⌈S/32⌉, ..)]``
    (19x19 and 10x10 at S = 300; ``512a`` is ``2 * floor(256 * alpha)``)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = width
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        out_channels = []
        for name, spec in _SQUEEZENET_LAYOUT:
            if spec is None:
                layers[name] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            elif isinstance(spec, int):
                layers[name] = _conv_bn(channels, scaled_channels(spec, width), 3, stride=2)
                channels = scaled_channels(spec, width)
            else:
                fire = Fire(channels, *(scaled_channels(c, width) for c in spec))
                layers[name] = fire
                channels = fire.out_channels
            if name in _SOURCE_LAYERS:
                out_channels.append(channels)
        self.layers = nn.Sequential(layers)
        self.out_channels = tuple(out_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for name, layer in self.layers.named_children():
            x = layer(x)
            if name in _SOURCE_LAYERS:
                maps.append(x)
        return maps

    def original_name(self, key: str) -> tuple[str, str]:
        # The original code base has no such network (its squeezenet-ssd-lite differs:
        # see the module docstring). The name given is this module's own key, so a whole
        # SSD of the original layout maps to keys none of its files holds: such a file
        # fails to load with the keys that differ, rather than loading wrongly.
        module, _, rest = key.partition(".")
        if module != "layers":
            raise KeyError(key)
        return "base_net", rest

    def base_key_tables(self, prefix: str) -> list[KeyTable]:
        """None: there are no ImageNet weights for this network."""
        return []


def _extra(in_channels: int, mid: int, out: int) -> nn.Sequential:
    """MobileNetV1-SSD's extra block: 1x1 conv, ReLU, 3x3 stride-2 conv, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(mid, out, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
    )


@register_backbone("squeezenet")
def squeezenet(width: float = 1.0) -> BackboneParts:
    """SqueezeNet 1.1 (Fire modules, BatchNorm) with MobileNetV1-SSD300's extra layers,
    heads and default boxes, width multiplier ``width`` (see the module docstring)."""
    body = SqueezeNetBase(width)
    c19, c10 = body.out_channels
    extras = nn.ModuleList(
        [
            _extra(c10, 256, 512),  # 10 -> 5
            _extra(512, 128, 256),  # 5 -> 3
            _extra(256, 128, 256),  # 3 -> 2
            _extra(256, 128, 256),  # 2 -> 1
        ]
    )
    return BackboneParts(
        body=body,
        extras=extras,
        head_channels=(c19, c10, 512, 256, 256, 256),
        priors=MOBILENET_V1_PRIORS,
        mean=SQUEEZENET_MEAN,
        std=SQUEEZENET_STD,
        options={},
    )
