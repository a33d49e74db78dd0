"""How much of a difference in mAP is the test set's sampling noise: a paired bootstrap.

Two runs scored on the same test images differ in mAP partly because of what they
learnt and partly because of which images happen to be in the test split. Resampling
the test images with replacement (the bootstrap), scoring both runs on every resample
and reading the spread of their difference answers "would another test set of the same
kind reverse this?". The resamples are paired: both runs see the same images each time.

Rescoring needs no second matching. VOC matching is per image, so a detection's outcome
(true positive, false positive or ignored) does not change when its image is drawn
again; drawing an image ``k`` times weighs its detections and its objects by ``k``.
:class:`Outcomes` keeps what that needs, one file per run (``outcomes.npz``), and
:meth:`Outcomes.voc07_map` computes the VOC07 11-point mAP for many weightings at once.
With all weights 1 it equals :func:`ssdstudy.evaluate.evaluate`'s ``voc07_map``.

The size bins resample the same way. An image's bin does not depend on the draw, so a
bin's mAP on a resample is the mAP of its images weighed by their draws
(:meth:`Outcomes.bin_voc07_maps`), and a statement about several bins of several runs
(a gain largest on small objects, a lead on large ones) gets its interval from
:func:`paired_statistic` over the same resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdstudy.data.bins import SIZE_BINS
from ssdstudy.evaluate.voc import (
    IGNORED,
    TRUE_POSITIVE,
    VOC07_RECALL_THRESHOLDS,
    VOCMatches,
)
from ssdstudy.files import atomic_path

__all__ = [
    "MapDifference", "Outcomes", "map_interval", "paired_contrast", "paired_difference", "paired_statistic",
    "resample_weights",
]


@dataclass(frozen=True)
class Outcomes:
    """The VOC outcome of every detection of one evaluation, and the objects per image.

    Attributes:
        class_names: C names; class ``i`` has label ``i + 1``.
        image_ids: I ids of the evaluated images, in order.
        labels: (N,) int64 1-based labels of the detections, by descending score.
        image_index: (N,) int64 image of each detection (index into ``image_ids``).
        outcome: (N,) int8: 1 true positive, 0 false positive, -1 ignored.
        positives: (I, C) int64 objects per image and class that count (not ignored).
        image_bins: (I,) int64 size-bin index of each image (into
            :data:`ssdstudy.data.bins.SIZE_BINS`, -1 for an image in no bin), or None
            when the evaluation did not record them (files written before they were).
    """

    class_names: tuple[str, ...]
    image_ids: tuple[str, ...]
    labels: np.ndarray
    image_index: np.ndarray
    outcome: np.ndarray
    positives: np.ndarray
    image_bins: np.ndarray | None = None

    @classmethod
    def from_matches(cls, matches: VOCMatches, image_ids: Sequence[str],
                     image_bins: np.ndarray | None = None) -> Outcomes:
        """The outcomes of ``matches``; ``image_bins`` as from
        :func:`ssdstudy.evaluate.image_bins` of the same records (optional)."""
        gt = matches.gt
        if len(image_ids) != gt.num_images:
            raise ValueError(f"{len(image_ids)} image ids for {gt.num_images} evaluated images")
        if image_bins is not None and len(image_bins) != gt.num_images:
            raise ValueError(f"{len(image_bins)} image bins for {gt.num_images} evaluated images")
        num_classes = len(matches.class_names)
        counted = ~gt.ignored
        positives = np.zeros((gt.num_images, num_classes), dtype=np.int64)
        np.add.at(positives, (gt.image_index[counted], gt.labels[counted] - 1), 1)
        return cls(
            class_names=tuple(matches.class_names),
            image_ids=tuple(str(i) for i in image_ids),
            labels=np.asarray(matches.labels, dtype=np.int64),
            image_index=np.asarray(matches.image_index, dtype=np.int64),
            outcome=np.asarray(matches.outcome, dtype=np.int8),
            positives=positives,
            image_bins=None if image_bins is None else np.asarray(image_bins, dtype=np.int64),
        )

    def save(self, path: str | Path) -> None:
        """Write ``path`` (``.npz``) atomically."""
        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(
                tmp, class_names=np.array(self.class_names), image_ids=np.array(self.image_ids),
                labels=self.labels, image_index=self.image_index, outcome=self.outcome,
                positives=self.positives,
                **({} if self.image_bins is None else {"image_bins": self.image_bins}),
            )

    @classmethod
    def load(cls, path: str | Path) -> Outcomes:
        with np.load(path, allow_pickle=False) as f:
            return cls(
                class_names=tuple(str(n) for n in f["class_names"]),
                image_ids=tuple(str(i) for i in f["image_ids"]),
                labels=f["labels"].astype(np.int64), image_index=f["image_index"].astype(np.int64),
                outcome=f["outcome"].astype(np.int8), positives=f["positives"].astype(np.int64),
                image_bins=f["image_bins"].astype(np.int64) if "image_bins" in f.files else None,
            )

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def voc07_map(self, weights: np.ndarray | None = None, chunk: int = 1000) -> np.ndarray:
        """VOC07 11-point mAP with each image counted ``weights[b, i]`` times.

        Args:
            weights: (B, I) non-negative integer counts (one row per resample); None is
                a single row of ones (the evaluation as it was).
            chunk: rows computed at a time.

        Returns:
            (B,) float64: the mean over the classes with at least one counted object in
            that resample (nan when none has).
        """
        w = np.ones((1, self.num_images)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != self.num_images:
            raise ValueError(f"weights must have shape (B, {self.num_images}), got {w.shape}")
        parts = [self._voc07_map(w[s : s + chunk]) for s in range(0, len(w), chunk)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def subset(self, images: np.ndarray) -> Outcomes:
        """The outcomes of the images ``images`` (sorted indices) alone, renumbered."""
        images = np.asarray(images, dtype=np.int64)
        new_index = np.full(self.num_images, -1, dtype=np.int64)
        new_index[images] = np.arange(len(images))
        keep = new_index[self.image_index] >= 0
        return Outcomes(
            class_names=self.class_names, image_ids=tuple(self.image_ids[i] for i in images),
            labels=self.labels[keep], image_index=new_index[self.image_index[keep]],
            outcome=self.outcome[keep], positives=self.positives[images],
            image_bins=None if self.image_bins is None else self.image_bins[images],
        )

    def bin_voc07_maps(self, weights: np.ndarray | None = None) -> np.ndarray:
        """VOC07 mAP of each size bin's images, each image counted ``weights[b, i]`` times.

        Returns:
            (B, len(SIZE_BINS)) float64; nan for a bin with no counted object in a
            resample (or no image at all), as the evaluation reports an empty bin.

        Raises:
            ValueError: when the bins of the images were not recorded.
        """
        if self.image_bins is None:
            raise ValueError("these outcomes hold no size bins (written before they were recorded)")
        w = np.ones((1, self.num_images)) if weights is None else np.asarray(weights, dtype=np.float64)
        out = np.full((len(w), len(SIZE_BINS)), np.nan)
        for b in range(len(SIZE_BINS)):
            members = np.flatnonzero(self.image_bins == b)
            if len(members):
                out[:, b] = self.subset(members).voc07_map(w[:, members])
        return out

    def _voc07_map(self, w: np.ndarray) -> np.ndarray:
        # Only the points of the precision-recall curve that end on a true positive
        # matter: a false positive keeps the recall of the true positive before it and
        # lowers the precision, so it never raises the interpolated precision (and
        # before any true positive the precision is 0). So each class needs, at each of
        # its T true positives, the weighted count of true and of false positives up to
        # there: the false positives enter through an (images x T) count matrix.
        num_classes = len(self.class_names)
        npos = w @ self.positives  # (B, C)
        ap = np.full((len(w), num_classes), np.nan)
        kept = self.outcome != IGNORED
        for c in range(num_classes):
            has_objects = npos[:, c] > 0
            if not has_objects.any():
                continue
            select = kept & (self.labels == c + 1)
            is_tp = self.outcome[select] == TRUE_POSITIVE
            images = self.image_index[select]
            tps = int(is_tp.sum())
            if tps == 0:
                ap[has_objects, c] = 0.0
                continue
            before = np.cumsum(is_tp) - is_tp  # true positives ahead of each detection
            fp = ~is_tp & (before < tps)  # false positives after the last one never matter
            counts = np.zeros((self.num_images, tps))
            np.add.at(counts, (images[fp], before[fp]), 1.0)
            tp_sum = np.cumsum(w[:, images[is_tp]], axis=1)  # (B, T)
            fp_sum = np.cumsum(w @ counts, axis=1)
            precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = tp_sum / npos[:, c : c + 1]
            total = np.zeros(len(w))
            for t in VOC07_RECALL_THRESHOLDS:
                total += np.where(recall >= t, precision, 0.0).max(axis=1)
            ap[has_objects, c] = total[has_objects] / len(VOC07_RECALL_THRESHOLDS)
        with np.errstate(invalid="ignore"):
            counted = ~np.isnan(ap)
            sums = np.where(counted, ap, 0.0).sum(axis=1)
            n = counted.sum(axis=1)
            return np.where(n > 0, sums / np.maximum(n, 1), np.nan)


def resample_weights(num_images: int, n: int, seed: int = 0) -> np.ndarray:
    """(n, num_images) counts: ``n`` bootstrap resamples of the images (with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=n)


@dataclass(frozen=True)
class MapDifference:
    """VOC07 mAP of run a minus run b on the same test images, with a bootstrap interval."""

    difference: float
    low: float
    high: float
    level: float
    resamples: int

    @property
    def settled(self) -> bool:
        """The interval leaves out 0: the sign of the difference is not sampling noise."""
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        return (f"difference {self.difference:+.3f}, {self.level:.0%} interval "
                f"{self.low:+.3f} to {self.high:+.3f} over {self.resamples} resamples of the test images")


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _same_images(runs: Sequence[Outcomes]) -> Outcomes:
    """The first of ``runs``, once all are known to be scored on the same images and classes."""
    first = runs[0]
    if any(o.image_ids != first.image_ids or o.class_names != first.class_names for o in runs):
        raise ValueError("the evaluations were not made on the same test images and classes")
    return first


def map_interval(outcomes: Outcomes, *, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of one run's VOC07 mAP over resamples of its test images."""
    return _percentiles(outcomes.voc07_map(resample_weights(outcomes.num_images, resamples, seed)), level)


def paired_contrast(terms: list[tuple[float, Outcomes]], *, resamples: int = 1000, level: float = 0.95,
                    seed: int = 0) -> MapDifference:
    """A weighted sum of several runs' mAPs (``[(+1, a), (-1, b)]`` is a - b) and its
    percentile interval, every run rescored on the same resamples of the test images.

    Raises:
        ValueError: when the runs were not scored on the same images and classes.
    """
    first = _same_images([o for _, o in terms])
    weights = resample_weights(first.num_images, resamples, seed)
    values = sum(coef * o.voc07_map(weights) for coef, o in terms)
    low, high = _percentiles(values, level)
    point = float(sum(coef * o.voc07_map()[0] for coef, o in terms))
    return MapDifference(point, low, high, level, int(np.count_nonzero(~np.isnan(values))))


def paired_statistic(statistic: Callable[[Sequence[np.ndarray]], np.ndarray], runs: Sequence[Outcomes], *,
                     resamples: int = 1000, level: float = 0.95, seed: int = 0) -> MapDifference:
    """A statistic of several runs' size-bin mAPs and its percentile interval, every run
    rescored on the same resamples of the test images.

    Args:
        statistic: maps the runs' (B, len(SIZE_BINS)) bin mAPs (in the order of
            ``runs``) to (B,) values; nan values (a resample that left a bin empty)
            are left out of the interval.
        runs: outcomes with their size bins, scored on the same images.

    Raises:
        ValueError: when the runs were not scored on the same images and classes, or
            hold no size bins.
    """
    first = _same_images(runs)
    weights = resample_weights(first.num_images, resamples, seed)
    values = np.asarray(statistic([o.bin_voc07_maps(weights) for o in runs]), dtype=np.float64)
    low, high = _percentiles(values, level)
    point = float(np.asarray(statistic([o.bin_voc07_maps() for o in runs]))[0])
    return MapDifference(point, low, high, level, int(np.count_nonzero(~np.isnan(values))))


def paired_difference(a: Outcomes, b: Outcomes, *, resamples: int = 1000, level: float = 0.95,
                      seed: int = 0) -> MapDifference:
    """mAP(a) - mAP(b) and its percentile interval from a paired bootstrap of the test images.

    Raises:
        ValueError: when the two were not scored on the same images and classes.
    """
    return paired_contrast([(1.0, a), (-1.0, b)], resamples=resamples, level=level, seed=seed)
