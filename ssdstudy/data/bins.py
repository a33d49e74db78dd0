"""Object-size bins: the size of an object is its box area over the image area.

Bins, in percent of the image area: 0-5, 5-10, 10-20, 20-40, 40-60, 60-80, 80-100.
A ratio exactly on an edge belongs to the upper bin (5 % -> "5-10"); 100 % (and,
defensively, anything above) belongs to "80-100".

An image belongs to a bin only when all its (non-difficult) objects fall in that bin;
an image whose objects fall in different bins, or that has no object, has no bin
(``None``) and is left out of the per-bin evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Bin names, in order; a bin index indexes this tuple.
SIZE_BINS: tuple[str, ...] = (
    "0-5",
    "5-10",
    "10-20",
    "20-40",
    "40-60",
    "60-80",
    "80-100",
)

#: Bin edges in percent of the image area (len(SIZE_BINS) + 1 values).
BIN_EDGES_PERCENT: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0)


def size_ratios(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Box area over image area, float64 (K,), for XYXY pixel boxes (K, 4)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    return areas / (float(width) * float(height))


def object_bins(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """The size-bin index of every box: int64 (K,) in ``range(len(SIZE_BINS))``.

    Args:
        boxes: (K, 4) XYXY in pixels of an image of ``width`` x ``height`` pixels.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    # Compare area * 100 with edge * image area: exact for integer pixel boxes, so a
    # box of exactly 5 % lands in "5-10" without floating-point luck.
    inner = np.asarray(BIN_EDGES_PERCENT[1:-1], dtype=np.float64) * (
        float(width) * float(height)
    )
    return np.searchsorted(inner, areas * 100.0, side="right").astype(np.int64)


def image_bin(
    boxes: np.ndarray,
    width: float,
    height: float,
    difficult: np.ndarray | None = None,
) -> int | None:
    """The size-bin index of an image, or ``None`` when its objects mix bins or it has none.

    Args:
        boxes: (K, 4) XYXY pixel boxes of the image's objects.
        difficult: optional bool (K,); difficult objects are ignored when given.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    if difficult is not None:
        boxes = boxes[~np.asarray(difficult, dtype=bool)]
    if len(boxes) == 0:
        return None
    bins = object_bins(boxes, width, height)
    return int(bins[0]) if np.all(bins == bins[0]) else None


def bin_histogram(records: Iterable) -> tuple[dict[str, int], int]:
    """Count images per bin over records (anything with ``boxes``, ``width``,
    ``height`` and ``difficult``; difficult objects ignored).

    Returns:
        ``({bin name: images}, unbinned)`` where ``unbinned`` counts images that mix
        bins or hold no non-difficult object.
    """
    counts = dict.fromkeys(SIZE_BINS, 0)
    unbinned = 0
    for record in records:
        index = image_bin(record.boxes, record.width, record.height, record.difficult)
        if index is None:
            unbinned += 1
        else:
            counts[SIZE_BINS[index]] += 1
    return counts, unbinned
