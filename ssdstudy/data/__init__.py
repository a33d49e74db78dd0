"""The data layer: VOC-layout reading, the generated dataset, size bins, torch Dataset.

Public API::

    VOC_CLASSES, Record, read_annotation, load_split, read_class_names   (voc)
    SIZE_BINS, object_bins, image_bin                                    (bins)
    DetectionDataset, collate                                            (dataset; imports torch)
    generate, SYNTH_CLASSES                                              (synth)
    check_dataset, dataset_stats                                         (checks)

Errors in the data raise :class:`ssdstudy.errors.DataError` naming the file; see
:mod:`ssdstudy.data.voc` for the rules. ``DetectionDataset``, ``collate``, ``generate``
and the checks are imported on first use, so that reading annotations does not pull
in torch or OpenCV.
"""

from __future__ import annotations

import importlib

from ssdstudy.data.bins import SIZE_BINS, image_bin, object_bins
from ssdstudy.data.voc import (
    VOC_CLASSES,
    Record,
    SkippedFileWarning,
    find_year_dirs,
    list_image_sets,
    load_split,
    read_annotation,
    read_class_names,
)

_LAZY = {
    "DetectionDataset": "ssdstudy.data.dataset",
    "collate": "ssdstudy.data.dataset",
    "read_image": "ssdstudy.data.dataset",
    "generate": "ssdstudy.data.synth",
    "SYNTH_CLASSES": "ssdstudy.data.synth",
    "check_dataset": "ssdstudy.data.checks",
    "dataset_stats": "ssdstudy.data.checks",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssdstudy.data' has no attribute {name!r}")


__all__ = [
    "SIZE_BINS",
    "SYNTH_CLASSES",
    "VOC_CLASSES",
    "DetectionDataset",
    "Record",
    "SkippedFileWarning",
    "check_dataset",
    "collate",
    "dataset_stats",
    "find_year_dirs",
    "generate",
    "image_bin",
    "list_image_sets",
    "load_split",
    "object_bins",
    "read_annotation",
    "read_class_names",
    "read_image",
]
