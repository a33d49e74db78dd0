"""Convolutions that a CPU computes in float32 under bf16 autocast, and where to use them.

Two kinds of convolution are better left in float32 when training in bf16 on a CPU:

* a strided depthwise convolution (MobileNetV1): oneDNN's bf16 kernels for it are
  slower than its float32 ones (see :class:`ssdstudy.model.mobilenet.StridedDepthwiseConv2d`);
* a convolution with a kernel tap that reads only padding at the model's input size
  (a 3x3 convolution on a 1x1 or 2x2 map, VGG16's dilated fc6 on a map of 6x6 or
  less). On a CPU with AMX, oneDNN's bf16 weight gradient of such a layer leaves the
  taps that see no input unwritten: they hold whatever the memory held, now and then
  NaN, so training in bf16 at small input sizes failed at random (the loss turned NaN
  after a few steps, differently in each run of the same seed). Their exact gradient
  is zero; in float32 it is.

The layers keep ``nn.Conv2d``'s parameters and state-dict keys; outside CPU autocast
they are plain convolutions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Float32AutocastConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` computed in float32 under CPU autocast (output in the input's dtype)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def taps_without_input(size: tuple[int, int], conv: nn.Conv2d) -> bool:
    """Whether some kernel tap of ``conv`` reads only padding on an input of ``size`` (H, W)."""
    for n, k, s, p, d in zip(size, conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        outputs = (n + 2 * p - d * (k - 1) - 1) // s + 1
        for tap in range(k):
            if not any(0 <= o * s - p + tap * d < n for o in range(outputs)):
                return True
    return False


def float32_where_taps_see_padding(convs: dict[nn.Conv2d, tuple[int, int]]) -> list[nn.Conv2d]:
    """Make every plain ``nn.Conv2d`` of ``convs`` (conv -> its input's (H, W)) that has a
    tap without input a :class:`Float32AutocastConv2d`, in place; returns those changed."""
    changed = []
    for conv, size in convs.items():
        if type(conv) is nn.Conv2d and isinstance(conv.padding, tuple) and taps_without_input(size, conv):
            conv.__class__ = Float32AutocastConv2d
            changed.append(conv)
    return changed


__all__ = ["Float32AutocastConv2d", "float32_where_taps_see_padding", "taps_without_input"]
