"""Receptive fields of SSD's source feature maps, against the default boxes they predict.

Each head reads one feature map and predicts, for each cell, offsets and scores of a
few default boxes of fixed sizes. What a cell can see is its receptive field:

* **theoretical**: every input pixel that can change the cell's value at all. It is
  measured, not derived from a formula, so that parallel branches (SqueezeNet's Fire
  modules), dilations and padding count as the network computes them: the network is
  made linear and positive (every convolution averages its window, batch norm and
  L2 normalisation become identities, ReLUs pass everything, max pools average their
  window; one channel per layer suffices) and the gradient of the centre cell is taken with respect to an input large
  enough that the field does not reach its border; the pixels with a non-zero
  gradient are the field. Its side is in input pixels.
* **effective** (Luo et al., 2016, "Understanding the Effective Receptive Field in Deep
  Convolutional Neural Networks"): how much each pixel actually moves the cell in a
  trained network. The gradient of the centre cell (summed over channels) with respect
  to real test images, in absolute value summed over colour channels and averaged over
  the images; its size is the side of the smallest square, centred on the gradient's
  centre of mass, that holds :data:`EFFECTIVE_MASS` of it (clipped by the image).

The default boxes of map k range from the small square of side ``min_size`` to the
longest side of its elongated boxes (``min_size * sqrt(max aspect ratio)``) and the big
square ``sqrt(min_size * max_size)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from ssdstudy.model import SSD

#: Share of the gradient the effective field's square holds.
EFFECTIVE_MASS = 0.95


def feature_maps(model: SSD, x: Tensor) -> list[Tensor]:
    """The source maps the heads read, ``x`` of any size the network accepts."""
    maps = list(model.backbone(x))
    y = maps[-1]
    for block in model.extras:
        y = block(y)
        maps.append(y)
    return maps


def _replace(module: nn.Module, kind: type | tuple[type, ...], make) -> None:
    for name, child in module.named_children():
        if isinstance(child, kind):
            setattr(module, name, make(child))
        else:
            _replace(child, kind, make)


class _SupportConv(nn.Module):
    """A convolution's window on the mean of its input channels, with equal positive
    weights: one output channel whose support is the convolution's."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / self.conv.weight.numel())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.mean(dim=1, keepdim=True))


def linearised(model: SSD) -> SSD:
    """A copy of ``model`` that computes a positive linear function of its input with
    the same support as the network (see the module docstring), in float64. Every
    channel of such a network would carry the same values, so each layer keeps one:
    every convolution becomes a one-channel window on the mean of its inputs, and the
    copy costs little at any input size."""
    from ssdstudy.model.vgg import L2Norm

    lin = copy.deepcopy(model)
    _replace(lin, nn.Conv2d, _SupportConv)
    _replace(lin, nn.MaxPool2d, lambda m: nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode))
    _replace(lin, (nn.ReLU, nn.ReLU6, L2Norm, nn.BatchNorm2d), lambda m: nn.Identity())
    return lin.double().eval()


def _centre_gradient(model: nn.Module, x: Tensor, index: int) -> Tensor:
    """d(sum over channels of the centre cell of map ``index``) / dx, ``(N, 3, H, W)``."""
    x = x.detach().requires_grad_(True)
    fmap = feature_maps(model, x)[index]
    h, w = fmap.shape[-2:]
    fmap[:, :, h // 2, w // 2].sum().backward()
    return x.grad


def _support(grad: Tensor) -> tuple[int, int, int, int]:
    """Rows and columns ``(top, bottom, left, right)`` (inclusive) of the non-zero gradient."""
    mask = grad.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def theoretical_fields(model: SSD, *, start: int | None = None, limit: int = 4096) -> list[int]:
    """The side, in input pixels, of the theoretical receptive field of a centre cell
    of each source map (see the module docstring).

    The probe input starts at ``start`` (default: the model's input size) and doubles
    until each field lies inside it, up to ``limit``; a field that still touches the
    border there raises ``RuntimeError``.
    """
    lin = linearised(model)
    n_maps = len(model.feature_map_sizes)
    sides: list[int] = []
    size = start or model.image_size
    for index in range(n_maps):
        while True:
            x = torch.ones(1, 3, size, size, dtype=torch.float64)
            top, bottom, left, right = _support(_centre_gradient(lin, x, index))
            if top > 0 and left > 0 and bottom < size - 1 and right < size - 1:
                sides.append(max(bottom - top, right - left) + 1)
                break
            if size * 2 > limit:
                raise RuntimeError(f"map {index}: the receptive field reaches beyond a {size} px input")
            size *= 2
    return sides


def effective_fields(model: SSD, images: Iterable[Tensor], mass: float = EFFECTIVE_MASS) -> list[dict[str, float]]:
    """The effective receptive field of a centre cell of each source map over
    ``images`` (preprocessed ``(3, S, S)`` tensors, as the model reads them).

    Returns, per map: ``side`` (px, the square holding ``mass`` of the mean absolute
    gradient, clipped by the image), ``centre_x``, ``centre_y`` (px, the gradient's
    centre of mass) and ``images`` (how many were averaged).
    """
    model = model.float().eval()
    batch = torch.stack(list(images)).float()
    out = []
    for index in range(len(model.feature_map_sizes)):
        grad = _centre_gradient(model, batch, index).abs().sum(dim=1).mean(dim=0).double()
        out.append({**_mass_square(grad.numpy(), mass), "images": int(batch.shape[0])})
    return out


def _mass_square(weight: np.ndarray, mass: float) -> dict[str, float]:
    """The smallest square centred on ``weight``'s centre of mass holding ``mass`` of it."""
    total = float(weight.sum())
    if total <= 0:
        return {"side": float("nan"), "centre_x": float("nan"), "centre_y": float("nan")}
    h, w = weight.shape
    ys, xs = np.mgrid[0:h, 0:w]
    cy, cx = float((weight * ys).sum() / total), float((weight * xs).sum() / total)
    # Chebyshev distance of each pixel centre from the centre of mass: a square of half
    # side r holds the pixels with distance < r
    dist = np.maximum(np.abs(ys + 0.5 - (cy + 0.5)), np.abs(xs + 0.5 - (cx + 0.5)))
    order = np.argsort(dist, axis=None)
    held = np.cumsum(weight.ravel()[order]) / total
    radius = float(dist.ravel()[order][int(np.searchsorted(held, mass))])
    return {"side": min(2 * radius + 1, float(max(h, w))), "centre_x": cx, "centre_y": cy}


def box_sides(model: SSD) -> list[dict[str, float]]:
    """Per source map, the default boxes' sides in input pixels at the model's size:
    ``smallest`` (the small square), ``square`` (the big square) and ``longest`` (the
    longest side of any of its boxes)."""
    scale = model.image_size / model.prior_config.image_size
    out = []
    for spec in model.prior_config.specs:
        big = math.sqrt(spec.min_size * spec.max_size)
        longest = max([big, *(spec.min_size * math.sqrt(r) for r in spec.aspect_ratios)])
        out.append({"smallest": spec.min_size * scale, "square": big * scale, "longest": longest * scale})
    return out


def field_table(model: SSD, images: Iterable[Tensor] | None = None):
    """One row per source map: its size, theoretical field, effective field (when
    ``images`` are given) and default-box sides, all in input pixels."""
    import pandas as pd

    theory = theoretical_fields(model)
    effective = effective_fields(model, images) if images is not None else None
    rows = []
    for k, (size, side, boxes) in enumerate(zip(model.feature_map_sizes, theory, box_sides(model), strict=True)):
        row = {"map": k, "map_size": size, "theoretical": side, **{f"box_{n}": v for n, v in boxes.items()}}
        if effective is not None:
            row["effective"] = effective[k]["side"]
            row["images"] = effective[k]["images"]
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["EFFECTIVE_MASS", "box_sides", "effective_fields", "feature_maps", "field_table", "linearised",
           "theoretical_fields"]
