"""Object-size bins: edges, image-level binning, histogram."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssdstudy.data.bins import (
    BIN_EDGES_PERCENT,
    SIZE_BINS,
    bin_histogram,
    image_bin,
    object_bins,
)


def box_of_percent(percent: float, width: int = 200, height: int = 100) -> list[float]:
    """A box whose area is exactly ``percent`` of a width x height image (integer sides)."""
    area = percent / 100 * width * height
    w = width
    return [0.0, 0.0, float(w), area / w]


def test_bin_names():
    assert SIZE_BINS == ("0-5", "5-10", "10-20", "20-40", "40-60", "60-80", "80-100")
    assert len(BIN_EDGES_PERCENT) == len(SIZE_BINS) + 1


def test_exactly_five_percent_is_in_the_upper_bin():
    # 25 x 20 pixels in a 100 x 100 image: 500 / 10000 = 5 %.
    bins = object_bins(
        np.array([[0, 0, 25, 20], [0, 0, 25, 19.9]], np.float32), 100, 100
    )
    assert bins.dtype == np.int64
    assert [SIZE_BINS[i] for i in bins] == ["5-10", "0-5"]


@pytest.mark.parametrize(
    "index,percent", list(enumerate(BIN_EDGES_PERCENT[1:-1], start=1))
)
def test_every_inner_edge_belongs_to_the_upper_bin(index, percent):
    box = box_of_percent(percent)
    assert object_bins(np.array([box]), 200, 100).tolist() == [index]
    below = box_of_percent(percent - 0.01)
    assert object_bins(np.array([below]), 200, 100).tolist() == [index - 1]


def test_full_image_box_is_in_the_last_bin():
    assert SIZE_BINS[image_bin(np.array([[0, 0, 500, 375]]), 500, 375)] == "80-100"
    assert (
        SIZE_BINS[image_bin(np.array([[0, 0, 400, 300]]), 500, 375)] == "60-80"
    )  # 64 %


def test_image_bin_all_objects_in_one_bin():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 70, 60]])  # 1 % and 2 % of 100 x 100
    assert image_bin(boxes, 100, 100) == 0


def test_mixed_image_and_empty_image_have_no_bin():
    mixed = np.array([[0, 0, 10, 10], [0, 0, 50, 50]])  # 1 % and 25 %
    assert image_bin(mixed, 100, 100) is None
    assert image_bin(np.zeros((0, 4)), 100, 100) is None


def test_difficult_objects_are_ignored_for_the_image_bin():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 50, 50]])
    assert image_bin(boxes, 100, 100, difficult=np.array([False, True])) == 0
    assert image_bin(boxes, 100, 100, difficult=np.array([True, True])) is None


def test_histogram_counts_images_and_unbinned():
    records = [
        SimpleNamespace(
            boxes=np.array([[0, 0, 10, 10]]),
            width=100,
            height=100,
            difficult=np.array([False]),
        ),
        SimpleNamespace(
            boxes=np.array([[0, 0, 100, 100]]),
            width=100,
            height=100,
            difficult=np.array([False]),
        ),
        SimpleNamespace(
            boxes=np.array([[0, 0, 10, 10], [0, 0, 90, 90]]),
            width=100,
            height=100,
            difficult=np.array([False, False]),
        ),
        SimpleNamespace(
            boxes=np.zeros((0, 4)), width=100, height=100, difficult=np.zeros(0, bool)
        ),
    ]
    counts, unbinned = bin_histogram(records)
    assert list(counts) == list(SIZE_BINS)
    assert counts["0-5"] == 1 and counts["80-100"] == 1 and sum(counts.values()) == 2
    assert unbinned == 2


@given(
    w=st.integers(1, 600),
    h=st.integers(1, 600),
    bw=st.integers(1, 600),
    bh=st.integers(1, 600),
)
def test_bin_index_matches_the_edges(w, h, bw, bh):
    bw, bh = min(bw, w), min(bh, h)
    index = int(object_bins(np.array([[0, 0, bw, bh]], np.float32), w, h)[0])
    percent_times_area = 100 * bw * bh  # compare exactly in integers
    lo, hi = BIN_EDGES_PERCENT[index], BIN_EDGES_PERCENT[index + 1]
    assert lo * w * h <= percent_times_area
    assert percent_times_area < hi * w * h or index == len(SIZE_BINS) - 1
