"""Writing an evaluation result: JSON (nan as null) and a plain-text table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_json(value: Any) -> Any:
    """A JSON-serialisable copy of an evaluation result (or any nested value).

    numpy scalars and arrays become Python numbers and lists, nan and infinities
    become None, tuples become lists, mapping keys become strings; so
    ``json.dumps(to_json(evaluate(...)))`` works with the standard ``allow_nan=False``.
    """
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_json(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


#: Keys whose None means "not computed" rather than an undefined number.
_OPTIONAL_SECTIONS = ("coco", "size_bins", "size_bins_unassigned")


def from_json(data: str | Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`to_json` on a result (JSON text or the parsed dict): None where a
    number belongs becomes nan again; ``coco``, ``size_bins`` and
    ``size_bins_unassigned`` stay None when they were not computed."""

    def restore(value: Any, key: str | None = None) -> Any:
        if isinstance(value, Mapping):
            return {k: restore(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        if value is None and key not in _OPTIONAL_SECTIONS:
            return float("nan")
        return value

    return restore(json.loads(data) if isinstance(data, str) else data)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text report: AP per class, the means, COCO metrics and size bins.

    Undefined values (no ground truth) print as ``-``.
    """
    per_class = result["ap_per_class"]
    width = max([len("class"), len("mean"), *(len(name) for name in per_class)])
    lines = [
        f"{'class':<{width}}  {'npos':>6}  {'dets':>7}  {'AP07':>6}  {'AP':>6}",
        "-" * (width + 35),
    ]
    for name, row in per_class.items():
        lines.append(
            f"{name:<{width}}  {row['npos']:>6d}  {row.get('detections', 0):>7d}  "
            f"{_number(row['voc07']):>6}  {_number(row['voc']):>6}"
        )
    lines.append("-" * (width + 35))
    lines.append(
        f"{'mean':<{width}}  {'':>6}  {'':>7}  "
        f"{_number(result['voc07_map']):>6}  {_number(result['voc_map']):>6}"
    )
    lines.append(
        f"(AP07: VOC2007 11-point; AP: all-point; IoU > {result.get('iou_threshold', 0.5)}; "
        f"difficult objects {result.get('difficult', 'ignored')})"
    )
    coco = result.get("coco")
    if coco:
        lines.append("")
        lines.append("COCO  " + "  ".join(f"{k} {_number(v, 3)}" for k, v in coco.items()))
    bins = result.get("size_bins")
    if bins:
        lines.append("")
        lines.append(f"{'size bin (%)':<12}  {'images':>6}  {'AP07':>6}  {'AP':>6}")
        for name, row in bins.items():
            lines.append(
                f"{name:<12}  {row['images']:>6d}  {_number(row['voc07_map']):>6}  "
                f"{_number(row['voc_map']):>6}"
            )
        unassigned = result.get("size_bins_unassigned")
        if unassigned is not None:
            lines.append(f"{'(no bin)':<12}  {unassigned:>6d}")
    return "\n".join(lines)
