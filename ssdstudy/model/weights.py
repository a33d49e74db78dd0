"""Checkpoints in and out: our own, the original code base's, torchvision's.

:func:`load_weights` reads a file and :func:`load_state` a state dict already in
memory. The layout is recognised by its key names (or named with ``source``):

``ssdstudy``
    Our module's ``state_dict`` (``backbone.*``, ``extras.*``, ``loc_heads.*``,
    ``cls_heads.*``), plain or inside a dict under ``"model"`` with metadata (a
    training checkpoint: ``config``, ``optimizer``...; or :func:`save_weights`).
``original-ssd``
    A whole SSD of the original code base (qfgaohao/pytorch-ssd), e.g. its VOC
    models ``vgg16-ssd-mp-0_7726.pth`` and ``mobilenet-v1-ssd-mp-0_675.pth``:
    ``base_net.*``, ``source_layer_add_ons.*`` (VGG16's conv4_3 BatchNorm),
    ``extras.N.M.*``, ``classification_headers.N.*``, ``regression_headers.N.*``.
``original-base``
    Its ImageNet base networks: state dicts of its ``base_net``
    (``vgg16_reducedfc.pth``: ``N.weight``; ``mobilenet_v1_with_relu_69_5.pth``:
    ``N.M.weight``). ``original-mobilenet`` is a whole ``MobileNetV1`` state dict
    (``model.N.M.*`` and the classifier ``fc.*``, which is not used).
``torchvision-vgg16``
    torchvision's ImageNet VGG16 (``vgg16-397923af.pth``: ``features.*``,
    ``classifier.*``). It fills the 13 convolutions only: SSD's fc6/fc7 are
    subsampled convolutions that this file does not contain, and ``classifier.*`` is
    skipped. Its first convolution is rewritten for the model's input normalisation
    (torchvision's weights expect ImageNet mean/std on [0, 1] pixels; VGG16-SSD feeds
    ``pixel - mean`` on 0..255), see :func:`ssdstudy.model.vgg.fold_input_normalisation`.

Loading is strict over what the layout covers: a base-network file must supply
every tensor of the base network and nothing else, a whole-model file every tensor
of the model. Anything else raises :class:`CheckpointError` naming the file, the
layout it was read as, the missing and unexpected keys (the first ten of each with
their counts) and any shape mismatches; nothing is copied in that case. Parts a
base-network file does not cover (extras, heads) keep their initialisation, as in
the original's ``init_from_base_net``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssdstudy.errors import UserError
from ssdstudy.files import atomic_path
from ssdstudy.model.registry import KeyTable
from ssdstudy.model.ssd import SSD

#: Keys shown per list in an error message.
_SHOWN = 10
#: BatchNorm counters that files written by PyTorch < 0.4.1 do not have.
_OPTIONAL_SUFFIX = ".num_batches_tracked"


class CheckpointError(UserError):
    """A weights file (or state dict) that does not fit the model it is loaded into."""

    def __init__(self, path: str | os.PathLike[str], message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_state` did.

    Attributes:
        format: the layout the state was read as.
        loaded: model keys that received a tensor from the file.
        skipped: file keys the layout deliberately does not use (``classifier.*``).
        kept: model keys the layout does not cover, left as they were (the extras
            and heads after loading a base network).
        metadata: the entries stored beside the weights (our checkpoints), if any.
    """

    format: str
    loaded: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


def key_tables(model: SSD) -> list[KeyTable]:
    """Every checkpoint layout ``model`` can read, ours first."""
    own = list(model.state_dict())
    tables = [KeyTable("ssdstudy", {k: k for k in own}, description="an ssdstudy SSD")]
    original = {}
    for key in own:
        top, _, rest = key.partition(".")
        if top == "backbone":
            part, name = model.backbone.original_name(rest)
            original[f"{part}.{name}"] = key
        elif top == "extras":
            original[key] = key
        elif top == "loc_heads":
            original[f"regression_headers.{rest}"] = key
        elif top == "cls_heads":
            original[f"classification_headers.{rest}"] = key
        else:  # a module this mapping does not know: no original name for it
            raise KeyError(f"no original-code-base name for {key}")
    tables.append(KeyTable("original-ssd", original, description="a whole SSD of the original code base"))
    tables += model.backbone.base_key_tables("backbone.")
    return tables


def _unwrap(state: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Split a checkpoint dict into (state dict, metadata); strip DataParallel's ``module.``."""
    metadata: dict[str, Any] = {}
    if "model" in state and isinstance(state["model"], Mapping):
        metadata = {k: v for k, v in state.items() if k != "model"}
        state = state["model"]
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, metadata


def _identity(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Backbone / width / num_classes recorded in a checkpoint's metadata, if any."""
    found: dict[str, Any] = {}
    config = metadata.get("config")
    model_cfg = config.get("model") if isinstance(config, Mapping) else None
    for source in (model_cfg, metadata):
        if isinstance(source, Mapping):
            for key in ("backbone", "width"):
                if key in source and key not in found:
                    found[key] = source[key]
    if "num_classes" in metadata:
        found["num_classes"] = metadata["num_classes"]
    elif isinstance(metadata.get("class_names"), (list, tuple)):
        found["num_classes"] = len(metadata["class_names"]) + 1
    return found


def _check_identity(model: SSD, metadata: Mapping[str, Any], where: str) -> None:
    ident = _identity(metadata)
    ours = {"backbone": model.backbone_name, "width": model.width, "num_classes": model.num_classes}
    wrong = [f"{k} {ident[k]!r} (model: {ours[k]!r})" for k in ours if k in ident and ident[k] != ours[k]]
    if wrong:
        raise CheckpointError(
            where, f"checkpoint is for another model: {', '.join(wrong)}; this model is {model.describe()}"
        )


def _shorten(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return shown + more


def _choose(model: SSD, state: Mapping[str, Any], source: str, where: str) -> KeyTable:
    tables = key_tables(model)
    if source != "auto":
        for table in tables:
            if table.format == source:
                return table
        raise CheckpointError(
            where,
            f"layout {source!r} is not one a {model.backbone_name} model reads; "
            f"choose from: auto, {', '.join(t.format for t in tables)}",
        )
    keys = set(state)
    best = max(tables, key=lambda t: len(keys & set(t.names)))  # first wins ties: ours
    if not keys & set(best.names):
        raise CheckpointError(
            where,
            f"not a checkpoint for {model.describe()}: none of its {len(keys)} keys "
            f"({_shorten(sorted(keys))}) is a tensor of this model in any layout it reads "
            f"({', '.join(t.format for t in tables)})",
        )
    return best


def load_state(
    model: SSD,
    state_dict: Mapping[str, Any],
    source: str = "auto",
    *,
    name: str | os.PathLike[str] = "<state dict>",
) -> LoadReport:
    """Copy the tensors of ``state_dict`` into ``model``, strictly.

    Args:
        model: an :class:`~ssdstudy.model.ssd.SSD` from ``build_model``.
        state_dict: a state dict in one of the layouts of this module, or our
            checkpoint dict (state under ``"model"``).
        source: ``"auto"`` (recognise the layout by its keys) or a layout name:
            ``"ssdstudy"``, ``"original-ssd"``, ``"original-base"``,
            ``"original-mobilenet"`` (mobilenet_v1), ``"torchvision-vgg16"`` (vgg16).
        name: what to call the state in messages (the file's path).

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: the state does not fit (missing, unexpected or misshapen
            tensors, another backbone, width or class count); the model is unchanged.
    """
    where = str(name)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            where, f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    state, metadata = _unwrap(state_dict)
    _check_identity(model, metadata, where)
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(where, f"entries that are not tensors: {_shorten([str(k) for k in not_tensors])}")
    table = _choose(model, state, source, where)
    own = model.state_dict()
    missing = [k for k in table.names if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in table.names and not table.is_ignored(k)]
    misshapen = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[table.names[k]].shape)})"
        for k in table.names
        if k in state and state[k].shape != own[table.names[k]].shape
    ]
    if missing or unexpected or misshapen:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_shorten(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_shorten(unexpected)})")
        if misshapen:
            problems.append(f"{len(misshapen)} shape mismatches ({_shorten(misshapen)})")
        hint = model.backbone.load_hint(missing, unexpected)
        raise CheckpointError(
            where,
            f"does not fit {model.describe()} when read as {table.description} ({table.format} layout): "
            + "; ".join(problems)
            + (f". Hint: {hint}" if hint else ""),
        )
    converted = {table.names[k]: state[k].detach().clone() for k in table.names if k in state}
    if table.adapt is not None:
        table.adapt(model, converted)
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys:  # the tables only name the model's own keys
        raise AssertionError(f"key table {table.format} names unknown model keys {result.unexpected_keys}")
    covered = set(table.names.values())
    return LoadReport(
        format=table.format,
        loaded=tuple(converted),
        skipped=tuple(k for k in state if table.is_ignored(k)),
        kept=tuple(k for k in own if k not in covered),
        metadata=metadata,
    )


def read_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Read a ``.pth`` file on the CPU without running code from it (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, not a torch file, or pickled objects
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(path, f"not a readable PyTorch weights file ({type(err).__name__}: {first})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a state dict")
    return state


def load_weights(model: SSD, path: str | os.PathLike[str], source: str = "auto") -> LoadReport:
    """Load the weights file ``path`` into ``model`` (see :func:`load_state`)."""
    return load_state(model, read_checkpoint(path), source, name=path)


def save_weights(model: SSD, path: str | os.PathLike[str], **metadata: Any) -> Path:
    """Write ``{"format": "ssdstudy-weights-1", "model": state_dict, **model.metadata(),
    **metadata}`` to ``path`` (atomically: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "ssdstudy-weights-1", **model.metadata(), **metadata, "model": model.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
