"""ssdstudy: SSD300 with VGG16 and MobileNetV1 backbones, studied reproducibly.

The public API that notebooks and scripts use is re-exported here lazily, so that
``import ssdstudy`` stays cheap and the command line starts fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "build_model": "ssdstudy.model",
    "load_weights": "ssdstudy.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssdstudy' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
