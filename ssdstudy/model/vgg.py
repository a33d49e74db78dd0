"""VGG16-SSD300, the ``vgg16-ssd`` network of the original code base (qfgaohao/pytorch-ssd).

Base network: the 13 convolutions of VGG16 (3x3, ReLU) with the third pooling in
ceil mode (75 -> 38 at 300 px), pool5 turned into a 3x3 stride-1 padding-1 max pool,
and the fully connected fc6 / fc7 as convolutions: fc6 3x3 with dilation 6
(1024 channels), fc7 1x1 (1024). Heads read conv4_3 (512 ch, 38x38 at 300 px, after
its ReLU and a normalisation layer) and fc7 (1024 ch, 19x19); four extra blocks
(1x1 then 3x3 convolutions) continue to 10x10, 5x5, 3x3 and 1x1. 8,732 default
boxes; 26,285,998 parameters for 21 classes.

Normalisation of conv4_3 (option ``conv4_3_norm``):

* ``"batchnorm"`` (default): a ``BatchNorm2d(512)``, as the original code base
  uses (its ``source_layer_add_ons``); its published VOC model
  ``vgg16-ssd-mp-0_7726.pth`` has these weights and the parameter count above
  includes them.
* ``"l2"``: the SSD paper's L2 normalisation over channels with a learned
  per-channel scale initialised to 20 (512 parameters instead of 1,024).

Input: RGB, ``x = pixel - (123, 117, 104)`` on raw 0..255 pixels, the original's
``image_mean`` with ``image_std`` 1. On [0, 1]-scaled pixels that is
``mean = (123, 117, 104) / 255`` and ``std = 1 / 255``.

Module names inside :class:`VGG16Base`: ``features.N`` follows torchvision's
``vgg16().features`` numbering up to conv5_3's ReLU (convolutions at 0, 2, 5, 7,
10, 12, 14, 17, 19, 21, 24, 26, 28; pool3 at 16 in ceil mode), then ``pool5``,
``fc6``, ``fc7`` and ``conv4_3_norm``. The original's ``base_net.N`` uses the same
numbers for N <= 29, 31 for fc6 and 33 for fc7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssdstudy.model.priors import VGG16_PRIORS
from ssdstudy.model.registry import Backbone, BackboneParts, KeyTable, ModelConfigError, register_backbone

#: VGG16's convolution widths; "M" a 2x2 max pool, "C" the same in ceil mode.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)
#: Index in ``features`` after which conv4_3 (after its ReLU) feeds the first head.
_CONV4_3_END = 23

#: torchvision's ImageNet normalisation (RGB, [0, 1] pixels) of ``vgg16-397923af.pth``.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

VGG_MEAN = (123 / 255, 117 / 255, 104 / 255)
VGG_STD = (1 / 255, 1 / 255, 1 / 255)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (SSD paper).

    ``(N, C, H, W) -> (N, C, H, W)``: each position's channel vector divided by its
    L2 norm, then multiplied by ``scale`` (``C`` parameters, initially ``initial_scale``).
    """

    def __init__(self, channels: int, initial_scale: float = 20.0):
        super().__init__()
        self.initial_scale = float(initial_scale)
        self.scale = nn.Parameter(torch.full((channels,), self.initial_scale))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.scale.fill_(self.initial_scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=1) * self.scale.view(1, -1, 1, 1)


def _vgg16_features(batch_norm: bool = False) -> nn.Sequential:
    """VGG16's 13 convolutions and pools; with ``batch_norm`` a BatchNorm2d after every
    convolution (torchvision's ``vgg16_bn`` layout: conv, BN, ReLU)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers.append(nn.Conv2d(in_channels, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            in_channels = item
    return nn.Sequential(*layers)


class VGG16Base(Backbone):
    """VGG16 up to fc7 as SSD uses it: ``x (N, 3, S, S)`` -> ``[conv4_3 (N, 512, ⌈S/8⌉, ..),
    fc7 (N, 1024, ..)]`` (38x38 and 19x19 at S = 300); conv4_3 after ``conv4_3_norm``."""

    out_channels = (512, 1024)

    #: Index in ``features`` after conv4_3's ReLU.
    conv4_3_end = _CONV4_3_END

    def __init__(self, conv4_3_norm: str = "batchnorm"):
        super().__init__()
        self.features = _vgg16_features()
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.fc6_bn: nn.Module = nn.Identity()
        self.fc7_bn: nn.Module = nn.Identity()
        if conv4_3_norm == "batchnorm":
            self.conv4_3_norm: nn.Module = nn.BatchNorm2d(512)
        elif conv4_3_norm == "l2":
            self.conv4_3_norm = L2Norm(512, initial_scale=20.0)
        else:
            raise ModelConfigError(
                f"model option conv4_3_norm must be 'batchnorm' (original code base) or 'l2' (SSD paper), "
                f"got {conv4_3_norm!r}"
            )
        self.norm_kind = conv4_3_norm

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.features[: self.conv4_3_end](x)
        conv4_3 = self.conv4_3_norm(x)
        x = self.features[self.conv4_3_end:](x)
        x = self.pool5(x)
        x = F.relu(self.fc6_bn(self.fc6(x)), inplace=True)
        x = F.relu(self.fc7_bn(self.fc7(x)), inplace=True)
        return [conv4_3, x]

    def original_name(self, key: str) -> tuple[str, str]:
        module, _, param = key.partition(".")
        if module == "features":
            return "base_net", param
        if module == "fc6":
            return "base_net", f"31.{param}"
        if module == "fc7":
            return "base_net", f"33.{param}"
        if module == "conv4_3_norm":
            return "source_layer_add_ons", f"0.{param}"
        raise KeyError(key)

    def base_key_tables(self, prefix: str) -> list[KeyTable]:
        return [*super().base_key_tables(prefix), self._torchvision_table(
            prefix, "torchvision-vgg16", "torchvision's ImageNet VGG16 (its 13 convolutions; fc6/fc7 are not in it)")]

    def _torchvision_table(self, prefix: str, name: str, description: str) -> KeyTable:
        """The layout of torchvision's ImageNet weights for ``features`` (its classifier
        ignored), with its input normalisation folded into the first convolution."""
        keys = [k for k in self.state_dict() if k.startswith("features.")]
        return KeyTable(
            name,
            {key: prefix + key for key in keys},
            ignored_prefixes=("classifier.",),
            adapt=lambda model, state: fold_input_normalisation(
                state, prefix + "features.0", TORCHVISION_MEAN, TORCHVISION_STD, model.mean, model.std
            ),
            description=description,
        )

    def load_hint(self, missing: list[str], unexpected: list[str]) -> str | None:
        keys = missing + unexpected
        if keys and all("conv4_3_norm" in k or k.startswith("source_layer_add_ons.") for k in keys):
            return (
                f"only the conv4_3 normalisation differs: this model uses conv4_3_norm={self.norm_kind!r} "
                "('batchnorm' fits the original code base's files, 'l2' the SSD paper's L2Norm with a scale)"
            )
        return None


class VGG16BNBase(VGG16Base):
    """VGG16 with a BatchNorm after every convolution, for training from scratch.

    Plain VGG16 barely learns from scratch (SSD's VGG16 starts from ImageNet weights);
    ScratchDet (Zhu et al., CVPR 2019) trains SSD from scratch by adding BatchNorm to
    the backbone and the extra layers. Here: torchvision's ``vgg16_bn`` layout for the
    13 convolutions (conv, BN, ReLU; conv4_3's ReLU at ``features.32``), a BatchNorm
    after fc6 and after fc7, conv4_3's normalisation as in :class:`VGG16Base`, and He
    (Kaiming) initialisation of the convolutions. The extra layers get BatchNorm too
    (see :func:`vgg16_bn`); the heads stay plain convolutions. The original code base
    has no such model: its checkpoints do not load into it, torchvision's ImageNet
    ``vgg16_bn`` weights do (the 13 convolutions and their BatchNorms).
    """

    conv4_3_end = 33

    def __init__(self, conv4_3_norm: str = "batchnorm"):
        super().__init__(conv4_3_norm)
        self.features = _vgg16_features(batch_norm=True)
        self.fc6_bn = nn.BatchNorm2d(1024)
        self.fc7_bn = nn.BatchNorm2d(1024)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def original_name(self, key: str) -> tuple[str, str]:
        """The original code base has no VGG16 with BatchNorm: its whole-SSD layout is
        given this network's own names, which no file of the original matches (so
        loading one fails with the usual missing-keys message, and our own
        checkpoints load)."""
        return "base_net", key

    def base_key_tables(self, prefix: str) -> list[KeyTable]:
        return [self._torchvision_table(
            prefix, "torchvision-vgg16-bn", "torchvision's ImageNet VGG16-BN (its 13 convolutions and BatchNorms)")]


def fold_input_normalisation(
    state: dict[str, Tensor],
    conv: str,
    file_mean: tuple[float, ...],
    file_std: tuple[float, ...],
    model_mean: tuple[float, ...],
    model_std: tuple[float, ...],
) -> None:
    """Rewrite the first convolution of ``state`` for the model's input normalisation.

    Weights trained on ``x' = (p - file_mean) / file_std`` (p: [0, 1] pixels) give the
    same first-layer response to the model's ``x = (p - model_mean) / model_std``
    after ``W' = W * model_std / file_std`` (per input channel) and
    ``b' = b + sum W * (model_mean - file_mean) / file_std``: exact away from the
    one-pixel border, where zero padding means a different pixel value. Changes
    ``state[conv + ".weight"]`` and ``state[conv + ".bias"]`` in place.
    """
    weight, bias = state[conv + ".weight"], state[conv + ".bias"]
    dtype = weight.dtype
    w = weight.double()

    def vec(values: tuple[float, ...]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64)

    scale = vec(model_std) / vec(file_std)
    shift = (vec(model_mean) - vec(file_mean)) / vec(file_std)
    state[conv + ".weight"] = (w * scale.view(1, -1, 1, 1)).to(dtype)
    state[conv + ".bias"] = (bias.double() + (w * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))).to(dtype)


def _extra(in_channels: int, mid: int, out: int, stride: int, padding: int, batch_norm: bool = False) -> nn.Sequential:
    def bn(channels: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(channels)] if batch_norm else []

    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1),
        *bn(mid),
        nn.ReLU(),
        nn.Conv2d(mid, out, kernel_size=3, stride=stride, padding=padding),
        *bn(out),
        nn.ReLU(),
    )


def _vgg16_parts(body: VGG16Base, conv4_3_norm: str, batch_norm: bool) -> BackboneParts:
    extras = nn.ModuleList(
        [
            _extra(1024, 256, 512, stride=2, padding=1, batch_norm=batch_norm),  # 19 -> 10
            _extra(512, 128, 256, stride=2, padding=1, batch_norm=batch_norm),  # 10 -> 5
            _extra(256, 128, 256, stride=1, padding=0, batch_norm=batch_norm),  # 5 -> 3
            _extra(256, 128, 256, stride=1, padding=0, batch_norm=batch_norm),  # 3 -> 1
        ]
    )
    return BackboneParts(
        body=body,
        extras=extras,
        head_channels=(512, 1024, 512, 256, 256, 256),
        priors=VGG16_PRIORS,
        mean=VGG_MEAN,
        std=VGG_STD,
        options={"conv4_3_norm": conv4_3_norm},
    )


@register_backbone("vgg16")
def vgg16(width: float = 1.0, conv4_3_norm: str = "batchnorm") -> BackboneParts:
    """VGG16-SSD300 of the original code base (see the module docstring).

    Args:
        width: must be 1.0: VGG16 has no width multiplier here.
        conv4_3_norm: ``"batchnorm"`` (original code base, default) or ``"l2"``.
    """
    if width != 1.0:
        raise ModelConfigError(f"model.width applies to mobilenet_v1 only; vgg16 needs width 1.0, got {width!r}")
    return _vgg16_parts(VGG16Base(conv4_3_norm), conv4_3_norm, batch_norm=False)


@register_backbone("vgg16_bn")
def vgg16_bn(width: float = 1.0, conv4_3_norm: str = "batchnorm") -> BackboneParts:
    """VGG16-SSD300 with BatchNorm after every backbone and extra convolution, for
    training from scratch (see :class:`VGG16BNBase`); default boxes as VGG16-SSD300.
    """
    if width != 1.0:
        raise ModelConfigError(f"model.width applies to mobilenet_v1 only; vgg16_bn needs width 1.0, got {width!r}")
    return _vgg16_parts(VGG16BNBase(conv4_3_norm), conv4_3_norm, batch_norm=True)
