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
* a statement about size bins takes the spreads of the bins' mAPs it uses, and the
  largest of them: a bin holds fewer objects than the whole test set, and a statement
  averaging several bins is held against its noisiest bin (on the side of caution);
* a statement about a weighted sum of runs' mAPs (``sum c_i * mAP_i``) gets that spread
  times half of ``sum |c_i|``: one spread for the difference of two runs, two for a
  difference of two differences (claim 6's drops, a gain on small objects against a
  gain on larger ones), less than one for claim 3's ``(1 - saving) * mAP(1.0) - mAP(w)``.

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
            comparison is too close to call: ``scale * spread``.
        spread: the spread between seeds it was scaled from.
        scale: half of the sum of the statistic's absolute weights.
        metric: the result column the spread is of (``voc07_map``, ``bin 0-5``).
        source: which setting's seeds measured ``spread`` ("MobileNetV1, aug all, ...,
            42 epochs").
        seeds: how many seeds that setting has.
        stand_in: True when no setting compared has several seeds and the study's largest
            spread stands in for theirs.
        unmeasured: how many of the settings compared have a single seed (their own
            spread is not known; the band takes the others').
    """

    width: float
    spread: float
    scale: float
    metric: str
    source: str
    seeds: int
    stand_in: bool = False
    unmeasured: int = 0

    @property
    def of(self) -> str:
        """What the spread is of: ``"mAP"`` or ``"the 0-5 % bin's mAP"``."""
        return f"the {self.metric[4:]} % bin's mAP" if self.metric.startswith("bin ") else "mAP"

    def text(self) -> str:
        """The band in words: its width, the spread it scales and whose seeds measured
        it, saying when it stands in for settings trained with one seed."""
        whose = f"{self.source}, {self.seeds} seeds"
        if self.stand_in:
            whose = f"the study's largest, of {whose}, standing in: the settings compared have one seed each"
        elif self.unmeasured:
            whose += f"; {self.unmeasured} other setting{'s' if self.unmeasured > 1 else ''} compared, one seed"
        spread = f"the spread between seeds of {self.of}, {self.spread:.3f} ({whose})"
        if self.scale == 1.0:
            return spread
        return f"{self.width:.3f} = {self.scale:.3g} x {spread}"


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

    def _settings(self, frames: Sequence[pd.DataFrame]) -> list[tuple]:
        """The distinct settings (key tuples) of the runs in ``frames``."""
        out: list[tuple] = []
        for frame in frames:
            if frame is None or frame.empty:
                continue
            for _, run in frame.iterrows():
                key = tuple(run.get(k) for k in self.keys)
                if not any(_same(key, k) for k in out):
                    out.append(key)
        return out

    def _source(self, row: pd.Series) -> str:
        epochs = f", {int(row['epochs'])} epochs" if "epochs" in row and pd.notna(row["epochs"]) else ""
        return f"{row['label']}{epochs}"

    def band(self, frames: Sequence[pd.DataFrame], metrics: Sequence[str] = ("voc07_map",),
             scale: float = 1.0) -> Band | None:
        """The spread that bounds a comparison of the runs in ``frames`` on ``metrics``
        (several for a statement over several size bins: the largest of their spreads),
        times ``scale`` (half of the sum of the statistic's absolute weights); None when
        no setting of the study has several seeds measured on these metrics."""
        settings = self._settings(frames)
        own, stand_ins = [], []  # (spread, metric, row, settings measured)
        for metric in metrics:
            table = self.spreads(metric)
            if table.empty:
                continue
            keys = [tuple(r[k] for k in self.keys) for _, r in table.iterrows()]
            mine = [i for i, key in enumerate(keys) if any(_same(key, s) for s in settings)]
            if mine:
                rows = table.iloc[mine]
                best = rows.loc[rows["range"].idxmax()]
                own.append((float(best["range"]), metric, best, len(mine)))
            else:
                best = table.loc[table["range"].idxmax()]
                stand_ins.append((float(best["range"]), metric, best, 0))
        if not own and not stand_ins:
            return None
        spread, metric, best, measured = max(own or stand_ins, key=lambda c: c[0])
        return Band(spread * scale, spread, scale, metric, self._source(best), int(best["seeds"]),
                    stand_in=not own, unmeasured=max(len(settings) - measured, 0) if own else 0)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))


def _equal(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False
