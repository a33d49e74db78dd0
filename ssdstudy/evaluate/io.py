"""The detections file: a JSON list with one object per detection.

Format::

    [
      {"image_id": "000001", "label": "dog", "bbox": [x1, y1, x2, y2], "score": 0.9},
      ...
    ]

``bbox`` is XYXY in continuous pixel coordinates of the original image (the records'
convention), ``label`` a class name, ``score`` a finite number. Other keys are allowed
and ignored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssdstudy.errors import DataError
from ssdstudy.evaluate.voc import RecordLike
from ssdstudy.files import atomic_write_text

_REQUIRED = ("image_id", "label", "bbox", "score")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_detections(
    path: str | os.PathLike[str],
    records: Sequence[RecordLike],
    class_names: Sequence[str],
) -> dict[str, dict[str, np.ndarray]]:
    """Read a detections file into ``{image_id: {"boxes", "scores", "labels"}}``.

    Every image of ``records`` gets an entry (empty arrays when it has no detection):
    ``boxes`` (K,4) float32 XYXY pixels, ``scores`` (K,) float32, ``labels`` (K,)
    int64 1-based (class ``i`` of ``class_names`` is label ``i + 1``).

    Raises:
        DataError: the file is missing or not valid JSON, is not a list, or an entry
            (named by its 0-based index) is not an object, lacks a key, names an unknown
            label or image id, or has a bad bbox or score.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "detections file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read the detections file: {err}") from None
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            path, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(entries, list):
        raise DataError(
            path, f"expected a JSON list of detections, found {type(entries).__name__}"
        )

    label_of = {name: i + 1 for i, name in enumerate(class_names)}
    index_of = {record.image_id: i for i, record in enumerate(records)}
    n = len(entries)
    image_index = np.empty(n, dtype=np.int64)
    labels = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.float64)
    scores = np.empty(n, dtype=np.float64)
    for k, entry in enumerate(entries):
        where = f"entry {k}"
        if not isinstance(entry, dict):
            raise DataError(path, f"{where}: expected an object, found {type(entry).__name__}")
        missing = [key for key in _REQUIRED if key not in entry]
        if missing:
            raise DataError(path, f"{where}: missing key {missing[0]!r}")
        image_id, label, bbox, score = (entry[key] for key in _REQUIRED)
        if not isinstance(image_id, str):
            raise DataError(
                path, f"{where}: image_id must be a string such as \"000001\", got {image_id!r}"
            )
        if image_id not in index_of:
            raise DataError(path, f"{where}: image_id {image_id!r} is not in the evaluated images")
        if not isinstance(label, str) or label not in label_of:
            raise DataError(
                path,
                f"{where}: unknown label {label!r} (expected one of {', '.join(class_names)})",
            )
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(_is_number(v) and math.isfinite(v) for v in bbox)
            and bbox[0] <= bbox[2]
            and bbox[1] <= bbox[3]
        ):
            raise DataError(
                path,
                f"{where}: bbox must be 4 finite numbers [x1, y1, x2, y2] with x1 <= x2 and "
                f"y1 <= y2, got {bbox!r}",
            )
        if not (_is_number(score) and math.isfinite(score)):
            raise DataError(path, f"{where}: score must be a finite number, got {score!r}")
        image_index[k] = index_of[image_id]
        labels[k] = label_of[label]
        boxes[k] = bbox
        scores[k] = score

    order = np.argsort(image_index, kind="stable")
    bounds = np.searchsorted(image_index[order], np.arange(len(records) + 1))
    result: dict[str, dict[str, np.ndarray]] = {}
    for i, record in enumerate(records):
        rows = order[bounds[i] : bounds[i + 1]]
        result[record.image_id] = {
            "boxes": boxes[rows].astype(np.float32).reshape(-1, 4),
            "scores": scores[rows].astype(np.float32),
            "labels": labels[rows],
        }
    return result


def write_detections(
    path: str | os.PathLike[str],
    detections: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
) -> None:
    """Write ``{image_id: {"boxes" (K,4), "scores" (K,), "labels" (K,) 1-based}}`` as a
    detections file (one entry per line), the inverse of :func:`read_detections`.

    Numbers are written with full precision, so float32 values read back unchanged.
    The file is written to a temporary name and moved into place.

    Raises:
        ValueError: a label outside 1..len(class_names) or mismatched array shapes.
    """
    path = Path(path)
    lines: list[str] = []
    for image_id, det in detections.items():
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"detections of image {image_id!r}: boxes, scores and labels disagree in length"
            )
        if len(labels) and (labels.min() < 1 or labels.max() > len(class_names)):
            raise ValueError(
                f"detections of image {image_id!r}: labels must lie in 1..{len(class_names)}"
            )
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            entry = {
                "image_id": str(image_id),
                "label": class_names[label - 1],
                "bbox": box,
                "score": score,
            }
            lines.append(json.dumps(entry))
    text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    atomic_write_text(path, text)
