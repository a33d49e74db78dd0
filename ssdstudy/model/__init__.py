"""SSD300 models: backbones by name, default boxes, checkpoint interoperability.

>>> from ssdstudy.model import build_model, available_backbones
>>> available_backbones()
('mobilenet_v1', 'squeezenet', 'vgg16', 'vgg16_bn')
>>> model = build_model("mobilenet_v1", num_classes=21, width=0.5)
>>> model.priors.shape
torch.Size([3000, 4])

Backbones register themselves when their module is imported; the modules listed
in ``_BACKBONE_MODULES`` are imported here.
"""

from __future__ import annotations

import importlib

from ssdstudy.model.priors import PriorConfig, PriorSpec, count_priors, generate_priors, scaled_priors
from ssdstudy.model.registry import (
    BACKBONES,
    Backbone,
    BackboneParts,
    KeyTable,
    ModelConfigError,
    available_backbones,
    register_backbone,
)
from ssdstudy.model.ssd import SSD, build_from_config, build_model
from ssdstudy.model.weights import CheckpointError, LoadReport, load_state, load_weights, save_weights

#: Modules that define backbones (each registers its factory on import).
_BACKBONE_MODULES = ("vgg", "mobilenet", "squeezenet")

for _name in _BACKBONE_MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "BACKBONES",
    "SSD",
    "Backbone",
    "BackboneParts",
    "CheckpointError",
    "KeyTable",
    "LoadReport",
    "ModelConfigError",
    "PriorConfig",
    "PriorSpec",
    "available_backbones",
    "build_from_config",
    "build_model",
    "count_priors",
    "generate_priors",
    "load_state",
    "load_weights",
    "register_backbone",
    "save_weights",
    "scaled_priors",
]
