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
  centre of mass, that holds :data:`EFFECTIVE_MASS` of it (clipped by the image); its
  noise, the 95 % bootstrap interval over the images averaged.

The default boxes of map k range from the small square of side ``min_size`` to the
longest side of its elongated boxes (``min_size * sqrt(max aspect ratio)``) and the big
square ``sqrt(min_size * max_size)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ssdstudy.model import SSD

#: Share of the gradient the effective field's square holds.
EFFECTIVE_MASS = 0.95
#: Bootstrap draws of the images for the effective field's interval.
EFFECTIVE_RESAMPLES = 200


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


def effective_fields(model: SSD, images: Iterable[Tensor], mass: float = EFFECTIVE_MASS,
                     chunk: int = 8, resamples: int = EFFECTIVE_RESAMPLES, seed: int = 0) -> list[dict[str, float]]:
    """The effective receptive field of a centre cell of each source map over
    ``images`` (preprocessed ``(3, S, S)`` tensors, as the model reads them).

    Returns, per map: ``side`` (px, the square holding ``mass`` of the mean absolute
    gradient, clipped by the image), ``side_low`` and ``side_high`` (the 95 % bootstrap
    interval of ``side`` over the images: ``resamples`` draws of the images with
    replacement, drawn by a generator seeded with ``seed``, each giving the side of its
    mean gradient; NaN with one image or ``resamples`` 0), ``centre_x``, ``centre_y`` (px, the gradient's centre of mass) and
    ``images`` (how many were averaged).
    """
    model = model.float().eval()
    images = list(images)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(images), size=(resamples, len(images))) if len(images) > 1 else None
    out = []
    for index in range(len(model.feature_map_sizes)):
        parts = []
        for start in range(0, len(images), chunk):  # a few images at a time: VGG16's backward is large
            batch = torch.stack(images[start:start + chunk]).float()
            parts.append(_centre_gradient(model, batch, index).abs().sum(dim=1).double())
        per_image = torch.cat(parts).numpy()  # (N, H, W): each image's own gradient
        found = {**_mass_square(per_image.mean(axis=0), mass), "side_low": float("nan"),
                 "side_high": float("nan"), "images": len(images)}
        if draws is not None and resamples > 0:
            counts = np.stack([np.bincount(d, minlength=len(images)) for d in draws])  # (R, N)
            sides = [_mass_square(np.tensordot(c, per_image, axes=1) / len(images), mass)["side"] for c in counts]
            found["side_low"], found["side_high"] = (float(v) for v in np.percentile(sides, [2.5, 97.5]))
        out.append(found)
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
        row = {"map": k, "map_size": size, "image_size": model.image_size, "theoretical": side,
               **{f"box_{n}": v for n, v in boxes.items()}}
        if effective is not None:
            row["effective"] = effective[k]["side"]
            row["effective_low"], row["effective_high"] = effective[k]["side_low"], effective[k]["side_high"]
            row["images"] = effective[k]["images"]
        rows.append(row)
    return pd.DataFrame(rows)


#: Test images averaged for an effective field.
EFFECTIVE_IMAGES = 50


def study_fields(profile: str, results: Path | None = None, *, images: int = EFFECTIVE_IMAGES):
    """The fields of each baseline of ``profile`` (the backbone experiment's runs with
    augmentation and 3:1 mining; the width experiment's too where trained), one row per
    source map:
    theoretical always, effective where the run's checkpoint, or that of the same setting
    with another seed (the seeds experiment), is on this machine (the row's ``run_id``
    says which run was measured; the checkpoints are not published: ``ssdstudy study
    fields`` writes the effective fields of the machine that trained the runs into
    :func:`fields_path`)."""
    import pandas as pd

    from ssdstudy.augment import build_transform
    from ssdstudy.config import read_profile
    from ssdstudy.data import DetectionDataset
    from ssdstudy.model import build_from_config
    from ssdstudy.pipeline import load_model
    from ssdstudy.results import run_label
    from ssdstudy.runs import RESULTS
    from ssdstudy.study import read_experiment
    from ssdstudy.workspace import Workspace

    prof = read_profile(profile)
    configs = {}
    for name in ("backbone", "width"):
        if name in prof.study.experiments:
            for cfg in read_experiment(name, prof).runs:
                if cfg.augment.enabled and cfg.loss.neg_pos_ratio == 3:
                    configs.setdefault(cfg.run_id, (name, cfg))

    def checkpoint_of(run_id: str) -> Path:
        return (results or RESULTS) / profile / "runs" / run_id / "checkpoint.pt"

    # the same setting trained with another seed stands in for a baseline whose checkpoint
    # is not on this machine (a field is a property of a trained model, not of one seed)
    others = read_experiment("seeds", prof).runs if "seeds" in prof.study.experiments else []
    frames = []
    for run_id, (name, cfg) in configs.items():
        if not checkpoint_of(run_id).is_file():
            stand_in = next((o for o in others if _unseeded(o) == _unseeded(cfg) and checkpoint_of(o.run_id).is_file()),
                            None)
            if stand_in is not None:
                run_id, cfg = stand_in.run_id, stand_in
        checkpoint = checkpoint_of(run_id)
        trained = checkpoint.is_file() and images > 0
        if name == "width" and not trained:
            continue  # a width changes no field, only what training makes of it
        if trained:
            model, _, _ = load_model(checkpoint)
            records = Workspace(cfg, progress=False).test_records[:images]
            dataset = DetectionDataset(records, build_transform(False, cfg.model.image_size, model.mean, model.std))
            table = field_table(model, [dataset[i][0] for i in range(len(dataset))])
        else:
            table = field_table(build_from_config(cfg.model, num_classes=2))
        table.insert(0, "label", run_label(cfg.to_dict()).split(",")[0])
        table.insert(0, "run_id", run_id)
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _unseeded(cfg) -> dict:
    """A run's configuration without its seed: the setting it trains."""
    data = cfg.to_dict()
    data["train"].pop("seed")
    return data


def _known(value) -> bool:
    """A measured number: not missing, not NaN."""
    return value is not None and not math.isnan(value)


def disagreements(fields) -> str:
    """Sentences naming, per model, the maps whose fields and boxes disagree: a field
    smaller than the map's longest default box (the cell cannot see the whole object its
    box stands for; an effective field only where its bootstrap interval lies below the
    box, else it is said to be too close to call), and a theoretical field more than
    twice the input (the cell's window reaches far past the image: only its centre
    counts)."""
    if fields is None or len(fields) == 0:
        return "No fields to compare."
    lines = []
    for model, rows in fields.groupby("label", sort=False):
        notes = []
        for _, r in rows.iterrows():
            name = f"{int(r['map_size'])}x{int(r['map_size'])}"
            if r["theoretical"] < r["box_longest"]:
                notes.append(f"on the {name} map the theoretical field ({r['theoretical']:.0f} px) is smaller "
                             f"than the longest default box ({r['box_longest']:.0f} px)")
            effective, high = r.get("effective"), r.get("effective_high")
            if _known(effective) and effective < r["box_longest"]:
                if _known(high) and high >= r["box_longest"]:
                    notes.append(f"on the {name} map the effective field ({effective:.0f} px, 95 % interval up to "
                                 f"{high:.0f} px) is too close to the longest default box ({r['box_longest']:.0f} px) "
                                 "to call smaller")
                else:
                    notes.append(f"on the {name} map the effective field ({effective:.0f} px) is smaller than the "
                                 f"longest default box ({r['box_longest']:.0f} px)")
        wide = [f"{int(r['map_size'])}x{int(r['map_size'])}" for _, r in rows.iterrows()
                if r["theoretical"] > 2 * r.get("image_size", r["theoretical"])]
        if wide:
            notes.append(f"the theoretical fields of the {', '.join(wide)} maps are more than twice the input's side")
        lines.append(f"- **{model}**: " + ("; ".join(notes) if notes else "every field covers its boxes") + ".")
    return "\n".join(lines)


def fields_path(profile: str, results: Path | None = None) -> Path:
    """Where a profile's fields are published: ``results/<profile>/receptive-fields.json``."""
    from ssdstudy.runs import RESULTS

    return (results or RESULTS) / profile / "receptive-fields.json"


def write_fields(profile: str, results: Path | None = None, *, images: int = EFFECTIVE_IMAGES) -> Path:
    """Compute :func:`study_fields` here and publish them with their provenance."""
    from ssdstudy import provenance

    table = study_fields(profile, results, images=images)
    path = fields_path(profile, results)
    provenance.write_json(path, {
        "what": "receptive fields of the source maps of each baseline (ssdstudy.receptive)",
        "effective_images": images, "effective_mass": EFFECTIVE_MASS, "effective_resamples": EFFECTIVE_RESAMPLES,
        "git": provenance.git_state(), "machine": provenance.cpu_name(),
        "rows": table.to_dict(orient="records"),
    })
    return path


def load_fields(profile: str, results: Path | None = None):
    """The published fields of ``profile`` (:func:`write_fields`), else the theoretical
    ones computed now (no effective field without the trained checkpoints)."""
    import json

    import pandas as pd

    path = fields_path(profile, results)
    if path.is_file():
        return pd.DataFrame(json.loads(path.read_text())["rows"])
    return study_fields(profile, results, images=0)


__all__ = [
    "EFFECTIVE_IMAGES",
    "EFFECTIVE_MASS",
    "EFFECTIVE_RESAMPLES",
    "box_sides",
    "disagreements",
    "effective_fields",
    "feature_maps",
    "field_table",
    "fields_path",
    "linearised",
    "load_fields",
    "study_fields",
    "theoretical_fields",
    "write_fields",
]
