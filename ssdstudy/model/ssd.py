"""The SSD detector: a backbone's feature maps, extra layers, and one head per map.

``build_model("mobilenet_v1", 21)`` assembles the parts a registered backbone
factory returns (:mod:`ssdstudy.model.registry`), measures the feature maps at the
requested input size with a dry pass (on PyTorch's "meta" device: shapes only, no
arithmetic), gives the extra layers padding where the input has become too small
for them, and computes the default boxes for the maps it found.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ssdstudy.model.layers import float32_where_taps_see_padding
from ssdstudy.model.priors import PriorConfig, generate_priors, scaled_priors
from ssdstudy.model.registry import BACKBONES, BackboneParts, ModelConfigError, check_width

#: The smallest input side :func:`build_model` will try when it looks for the
#: smallest size a backbone supports (for the error message).
_SMALLEST_TRIED = 8


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    ``forward(x)`` with ``x (N, 3, S, S)`` (``S = image_size``, normalised with
    ``mean`` / ``std``) returns ``(locs (N, P, 4), logits (N, P, C))``: box offsets
    relative to ``priors`` (encoded with variances 0.1 / 0.2 by the loss) and class
    scores before softmax, ``C = num_classes`` with class 0 the background. Prediction
    k belongs to default box ``priors[k]``.

    Sub-modules (state-dict prefixes): ``backbone`` (the base network),
    ``extras`` (one block per extra map), ``loc_heads`` and ``cls_heads`` (3x3
    convolutions, one per map, ``boxes_per_cell * 4`` and ``* C`` channels).

    Attributes:
        priors: buffer ``(P, 4)`` centre-form default boxes in [0, 1] (not saved in
            the state dict: it follows from the configuration).
        mean, std: 3-tuples, the input normalisation of pixels scaled to [0, 1]
            (``x = (pixel / 255 - mean) / std``): vgg16 uses ``(123, 117, 104) / 255``
            and ``1 / 255`` (the original's raw-pixel mean subtraction), mobilenet_v1
            ``127 / 255`` and ``128 / 255`` (the original's ``(p - 127) / 128``).
        image_size, backbone_name, width, num_classes: as built.
        options: the backbone's keyword options.
        feature_map_sizes: side of each head's feature map at ``image_size``.
        boxes_per_cell: default boxes per cell of each map.
        padded_extras: names of extra convolutions that were given padding because
            the input size left them a map smaller than their kernel.
    """

    def __init__(
        self,
        parts: BackboneParts,
        num_classes: int,
        image_size: int,
        *,
        backbone_name: str,
        width: float,
    ):
        super().__init__()
        self.backbone = parts.body
        self.extras = parts.extras
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbone_name = backbone_name
        self.width = width
        self.mean = tuple(float(m) for m in parts.mean)
        self.std = tuple(float(s) for s in parts.std)
        self.options = dict(parts.options)
        self.prior_config: PriorConfig = parts.priors
        self.boxes_per_cell = parts.priors.boxes_per_cell
        self.loc_heads = nn.ModuleList(
            nn.Conv2d(c, b * 4, kernel_size=3, padding=1)
            for c, b in zip(parts.head_channels, self.boxes_per_cell, strict=True)
        )
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(c, b * num_classes, kernel_size=3, padding=1)
            for c, b in zip(parts.head_channels, self.boxes_per_cell, strict=True)
        )
        self.feature_map_sizes, self.padded_extras, conv_inputs = self._measure_maps()
        # convolutions with a kernel tap that sees only padding at this size compute in
        # float32 under CPU autocast (see ssdstudy.model.layers)
        guarded = set(float32_where_taps_see_padding(conv_inputs))
        self.float32_convs = tuple(name for name, m in self.named_modules() if m in guarded)
        self.register_buffer("priors", generate_priors(self.prior_config, self.feature_map_sizes), persistent=False)
        self.reset_parameters()

    # -- construction helpers -------------------------------------------------------
    def _measure_maps(self) -> tuple[tuple[int, ...], tuple[str, ...], dict[nn.Conv2d, tuple[int, int]]]:
        """Feature-map sides at ``image_size`` (after fitting the extras), the extra
        convolutions that needed padding, and the input (H, W) of every convolution."""
        x = torch.empty(1, 3, self.image_size, self.image_size, device="meta")
        conv_inputs: dict[nn.Conv2d, tuple[int, int]] = {}

        def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            conv_inputs[module] = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))

        hooks = [m.register_forward_pre_hook(record) for m in self.modules() if isinstance(m, nn.Conv2d)]
        try:
            return self._measure_maps_of(x, conv_inputs)
        finally:
            for hook in hooks:
                hook.remove()

    def _measure_maps_of(
        self, x: Tensor, conv_inputs: dict[nn.Conv2d, tuple[int, int]]
    ) -> tuple[tuple[int, ...], tuple[str, ...], dict[nn.Conv2d, tuple[int, int]]]:
        try:
            maps = dry_run(self.backbone, x)
        except (RuntimeError, ValueError) as err:
            raise ModelConfigError(
                f"model.image_size {self.image_size} is too small for backbone {self.backbone_name!r} "
                f"({str(err).splitlines()[0]}); the smallest size it supports is "
                f"{smallest_image_size(self.backbone)}"
            ) from None
        sizes = [int(m.shape[-1]) for m in maps]
        padded = fit_extras(self.extras, sizes[-1])
        y = maps[-1]
        for block in self.extras:
            y = dry_run(block, y)
            sizes.append(int(y.shape[-1]))
        for heads in (self.loc_heads, self.cls_heads):
            for head, side in zip(heads, sizes, strict=True):
                conv_inputs[head] = (side, side)
        return tuple(sizes), padded, conv_inputs

    def reset_parameters(self) -> None:
        """Initialise as the original code base does when it starts from a base network:
        Xavier-uniform weights for every convolution of the extras and heads (biases
        keep PyTorch's default). The base network keeps its own initialisation
        (PyTorch's defaults; VGG16's conv4_3 normalisation: BN 1 / 0 or L2 scale 20)."""
        for module in itertools.chain(self.extras.modules(), self.loc_heads.modules(), self.cls_heads.modules()):
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)

    # -- forward --------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, 3, S, S)`` -> ``(locs (N, P, 4), logits (N, P, num_classes))``."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"SSD built for {self.image_size}x{self.image_size} inputs got a tensor of shape {tuple(x.shape)}; "
                f"expected (N, 3, {self.image_size}, {self.image_size})"
            )
        maps = self.backbone(x)
        y = maps[-1]
        for block in self.extras:
            y = block(y)
            maps.append(y)
        n = x.shape[0]
        locs, logits = [], []
        for fmap, loc_head, cls_head in zip(maps, self.loc_heads, self.cls_heads, strict=True):
            # (N, B*K, H, W) -> (N, H, W, B*K) -> (N, H*W*B, K): cell by cell, row-major,
            # then box by box: the order of the default boxes.
            locs.append(loc_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, 4))
            logits.append(cls_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
        return torch.cat(locs, dim=1), torch.cat(logits, dim=1)

    # -- description ----------------------------------------------------------------
    @property
    def num_priors(self) -> int:
        return int(self.priors.shape[0])

    def metadata(self) -> dict[str, Any]:
        """What identifies this architecture (stored with saved weights)."""
        return {
            "backbone": self.backbone_name,
            "width": self.width,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "options": dict(self.options),
        }

    def describe(self) -> str:
        """``"mobilenet_v1 (width 0.5), 21 classes, 300 px"``, for messages."""
        width = f" (width {self.width:g})" if self.width != 1.0 else ""
        options = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"{self.backbone_name}{width}{options}, {self.num_classes} classes, {self.image_size} px"

    def extra_repr(self) -> str:
        return (
            f"{self.describe()}, feature maps {self.feature_map_sizes}, {self.num_priors} default boxes, "
            f"mean={tuple(round(m, 4) for m in self.mean)}, std={tuple(round(s, 4) for s in self.std)}"
        )


def _conv_out(size: int, conv: nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def fit_extras(extras: nn.ModuleList, size: int) -> tuple[str, ...]:
    """Give padding to extra convolutions that an input of side ``size`` would shrink
    below 1x1 (VGG16's unpadded 3x3 convolutions below about 268 px input).

    The padding is ``dilation * (kernel - 1) // 2`` ("same"), so such a layer keeps
    its map size (a 2x2 map stays 2x2) instead of failing; parameters are unchanged,
    so weights move freely between input sizes.

    Args:
        extras: the extra blocks (convolutions and element-wise layers only).
        size: side of the map the first block receives.

    Returns:
        The names (``"2.2"``: block 2, layer 2) of the convolutions given padding.
    """
    padded = []
    for b, block in enumerate(extras):
        for name, layer in block.named_modules():
            if isinstance(layer, nn.Conv2d):
                if not isinstance(layer.padding, tuple) or len(set(layer.kernel_size)) != 1:
                    raise ValueError(f"extra layer {b}.{name}: only square kernels with numeric padding are supported")
                if _conv_out(size, layer) < 1:
                    pad = layer.dilation[0] * (layer.kernel_size[0] - 1) // 2
                    layer.padding = (pad, pad)
                    padded.append(f"{b}.{name}")
                size = _conv_out(size, layer)
            elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                raise ValueError(f"extra layer {b}.{name}: pooling layers are not supported in extras")
    return tuple(padded)


def dry_run(module: nn.Module, *inputs: Tensor) -> Any:
    """Run ``module`` in eval mode on meta tensors: output shapes, no arithmetic, and
    its weights and buffers untouched."""
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(module.named_parameters(), module.named_buffers())
    }
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return functional_call(module, state, inputs)
    finally:
        module.train(was_training)


def smallest_image_size(backbone: nn.Module, upto: int = 1024) -> int | None:
    """The smallest square input side for which ``backbone`` yields its maps."""
    for size in range(_SMALLEST_TRIED, upto + 1):
        try:
            dry_run(backbone, torch.empty(1, 3, size, size, device="meta"))
        except (RuntimeError, ValueError):
            continue
        return size
    return None


def build_model(
    backbone: str,
    num_classes: int,
    width: float = 1.0,
    image_size: int = 300,
    *,
    priors: Mapping[str, Any] | None = None,
    **options: Any,
) -> SSD:
    """Build an SSD with a registered backbone.

    Args:
        backbone: a name in :data:`ssdstudy.model.BACKBONES` (``"vgg16"``,
            ``"mobilenet_v1"``).
        num_classes: classes including the background (21 for Pascal VOC).
        width: MobileNet's width multiplier in (0, 1]; other backbones need 1.0.
        image_size: input side S; the default boxes follow the maps at this size.
        priors: default boxes by the SSD paper's scale rule instead of the backbone's
            own: ``{"min_scale", "max_scale", "aspect_ratios"}`` (see
            :func:`ssdstudy.model.priors.scaled_priors`); None: the backbone's.
        **options: the backbone's own options (vgg16: ``conv4_3_norm``; mobilenet_v1:
            ``stride8_map``).

    Returns:
        The :class:`SSD`, with Xavier-initialised extras and heads.

    Raises:
        ModelConfigError: unknown backbone or option, width out of range or not
            supported by the backbone, bad ``num_classes`` or ``image_size``.
    """
    if not isinstance(backbone, str):
        raise ModelConfigError(f"model.backbone must be a name, got {backbone!r}")
    factory = BACKBONES[backbone]
    width = check_width(width)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelConfigError(f"num_classes must be an integer >= 2 (background + classes), got {num_classes!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ModelConfigError(f"model.image_size must be a positive integer, got {image_size!r}")
    signature = inspect.signature(factory)
    try:
        signature.bind(width=width, **options)
    except TypeError:
        known = [p for p in signature.parameters if p != "width"]
        unknown = sorted(set(options) - set(known))
        raise ModelConfigError(
            f"unknown model option(s) {', '.join(map(repr, unknown))} for backbone {backbone!r}; "
            f"its options: {', '.join(known) or 'none'}"
        ) from None
    parts = factory(width=width, **options)
    if priors is not None:
        rule = {"min_scale": float(priors["min_scale"]), "max_scale": float(priors["max_scale"]),
                "aspect_ratios": [float(r) for r in priors["aspect_ratios"]]}
        parts = dataclasses.replace(parts, priors=scaled_priors(parts.priors, **rule),
                                    options={**parts.options, "priors": rule})
    return SSD(parts, num_classes, image_size, backbone_name=backbone, width=width)


def build_from_config(model: Any, num_classes: int) -> SSD:
    """:func:`build_model` for a :class:`ssdstudy.config.ModelConfig` (``model``)."""
    options: dict[str, Any] = {"stride8_map": True} if getattr(model, "stride8_map", False) else {}
    priors = getattr(model, "priors", None)
    if priors is not None:
        options["priors"] = dataclasses.asdict(priors) if dataclasses.is_dataclass(priors) else dict(priors)
    return build_model(model.backbone, num_classes, width=model.width, image_size=model.image_size, **options)
