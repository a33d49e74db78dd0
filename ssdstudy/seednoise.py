"""How far a run's mAP moves when only its seed changes: the noise of training.

The paired bootstrap of the test images (:mod:`ssdstudy.evaluate.bootstrap`) says how
much of a difference between two runs the choice of test images explains. It says
nothing about training: a second run of the same setting with another seed (other
initial weights, another order of the images and of the augmentation's draws) lands
elsewhere, sometimes further than the bootstrap's interval is wide. The seeds
experiment measures that: it trains the settings the claims compare most with several
seeds. A setting's **spread between seeds** is the range of a metric over its seeds
(the largest minus the smallest), for the whole test set's VOC07 mAP and for each size
bin's.

A comparison whose difference is smaller than the spread between seeds is not a
finding: another seed could reverse it. :meth:`SeedNoise.band` gives the spread that
bounds a comparison:

* the largest spread measured among the settings the comparison takes its runs from;
* where none of them was trained with several seeds, the largest spread measured in the
  study, on any setting, stands in (and says so): the noise of training measured on one
  setting is a better guess for another than none;
* a statement about a weighted sum of runs' mAPs (``sum c_i * mAP_i``) gets that spread
  times half of ``sum |c_i|``: one spread for the difference of two runs, two for a
  difference of two differences (claim 6's drops, a gain on small objects against a
  gain on larger ones).

With no setting trained with several seeds there is no band (None): the verdicts then
rest on the test set's noise alone, and say that the spread between seeds was not
measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssdstudy.results import SETTING_COLUMNS, seed_spread

__all__ = ["Band", "SeedNoise"]


@dataclass(frozen=True)
class Band:
    """The spread between seeds that bounds one comparison.

    Attributes:
        width: the difference (in the statistic's own units, mAP) below which the
            comparison is too close to call.
        spread: the spread between seeds it was scaled from.
        source: which setting's seeds measured ``spread`` ("MobileNetV1, aug all, ...").
        seeds: how many seeds that setting has.
        stand_in: True when no setting compared has several seeds and the study's largest
            spread stands in for theirs.
    """

    width: float
    spread: float
    source: str
    seeds: int
    stand_in: bool = False

    def text(self) -> str:
        """``"spread between seeds 0.049 (MobileNetV1 ..., 2 seeds)"``, saying when it
        stands in for settings not trained with several seeds."""
        whose = f"{self.source}, {self.seeds} seeds"
        if self.stand_in:
            whose = f"the study's largest, {whose}; the settings compared have one seed each"
        scaled = f", x{self.width / self.spread:g} for this statistic" if self.spread and self.width != self.spread else ""
        return f"spread between seeds {self.spread:.3f} ({whose}{scaled})"


class SeedNoise:
    """The spreads between seeds of a study's settings, from result rows (one per run,
    as :func:`ssdstudy.study.experiment_frame` gives; the seeds experiment's frame holds
    every seed of the settings trained with several)."""

    def __init__(self, runs: pd.DataFrame | None):
        self.runs = runs if runs is not None else pd.DataFrame()
        self.keys = [c for c in SETTING_COLUMNS if c in self.runs.columns]
        self._tables: dict[str, pd.DataFrame] = {}

    def spreads(self, metric: str = "voc07_map") -> pd.DataFrame:
        """Settings with at least two seeds measured on ``metric``: their keys, ``label``,
        ``seeds`` and ``range`` (as :func:`ssdstudy.results.seed_spread`)."""
        if metric not in self._tables:
            if self.runs.empty or metric not in self.runs.columns or not self.keys:
                table = pd.DataFrame()
            else:
                table = seed_spread(self.runs, metric)
                table = table[(table["seeds"] >= 2) & table["range"].notna()] if not table.empty else table
            self._tables[metric] = table
        return self._tables[metric]

    @property
    def measured(self) -> bool:
        """Whether any setting's VOC07 mAP was measured with several seeds."""
        return not self.spreads().empty

    def _setting_rows(self, table: pd.DataFrame, frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
        """The rows of ``table`` whose setting is that of a run in ``frames``."""
        wanted = []
        for frame in frames:
            if frame is None or frame.empty:
                continue
            for _, run in frame.iterrows():
                wanted.append(tuple(run.get(k) for k in self.keys))
        if not wanted or table.empty:
            return table.iloc[:0]

        def same(row: pd.Series) -> bool:
            have = tuple(row[k] for k in self.keys)
            return any(all(_equal(a, b) for a, b in zip(have, w, strict=True)) for w in wanted)

        return table[table.apply(same, axis=1)]

    def band(self, frames: Sequence[pd.DataFrame], metrics: Sequence[str] = ("voc07_map",),
             scale: float = 1.0) -> Band | None:
        """The spread that bounds a comparison of the runs in ``frames`` on ``metrics``
        (several for a statement over several size bins: the largest of their spreads),
        times ``scale`` (half of the sum of the statistic's absolute weights); None when
        no setting of the study has several seeds measured on these metrics."""
        candidates = []  # (spread, label, seeds, stand_in)
        for metric in metrics:
            table = self.spreads(metric)
            if table.empty:
                continue
            own = self._setting_rows(table, frames)
            for rows, stand_in in ((own, False), (table, True)):
                if not rows.empty:
                    best = rows.loc[rows["range"].idxmax()]
                    candidates.append((float(best["range"]), str(best["label"]), int(best["seeds"]), stand_in))
                    break
        if not candidates:
            return None
        # settings compared measured on some metric take precedence over the stand-in
        measured = [c for c in candidates if not c[3]] or candidates
        spread, label, seeds, stand_in = max(measured, key=lambda c: c[0])
        return Band(spread * scale, spread, label, seeds, stand_in)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False
