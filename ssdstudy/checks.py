"""One check of a claim, and how its outcome is settled from the numbers.

A :class:`Check` is one testable part of a claim (:mod:`ssdstudy.claims`): a sentence,
whether it holds, and the numbers behind the answer. The functions here settle a
check from result frames: a difference of mAPs (:func:`map_check`,
:func:`contrast_check`), a statistic of size bins (:func:`bin_statistic` with
:func:`settle`) or of times (:func:`time_check`), each against the noise that could
have made it.

A direction can be noise. Where a check compares the mAPs of runs scored on the same
test images (a difference, claim 6's difference of two drops, claim 3's share of mAP
lost, or a statement about size bins) and their folders hold ``outcomes.npz``, a paired
bootstrap of the test images (:mod:`ssdstudy.evaluate.bootstrap`) gives the comparison a
95 % interval; when the interval holds 0 the check is too close to call. A timing check
is too close to call when the two medians are closer than the mean of their
interquartile ranges (the spread the timing files record). A timing measured on a busy
machine (flagged by :func:`ssdstudy.timing.busy_reasons`) cannot be tested: see
:func:`busy_reason`.

Training is noise too. Given the study's runs with several seeds (the seeds
experiment's frame, as :class:`ssdstudy.seednoise.SeedNoise`), a comparison of mAPs
whose difference is smaller than the spread between seeds of the settings it compares
(:meth:`ssdstudy.seednoise.SeedNoise.band`: the whole-set mAP's spread, or for a
statement about size bins the largest spread of the bins it uses) is too close to call
as well, whatever the bootstrap says: another seed could reverse it. The check's detail
names the band, the spread it scales and whose seeds measured it (and when the study's
largest spread stands in for settings trained once); where no setting was trained with
several seeds it says that the spread between seeds was not measured.

A comparison of a model that has not learned (VOC07 mAP below :data:`MAP_FLOOR`, on the
whole test set or in the bin compared) is no test: :func:`not_learned`; nor is one of a
run that restarted (its training loss jumped above every earlier epoch's, see
:func:`ssdstudy.results.loss_jumps`): :func:`restarted`. Smaller jumps are named in the
check's detail (:func:`jump_note`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssdstudy.data.bins import SIZE_BINS
from ssdstudy.evaluate.bootstrap import MapDifference, Outcomes, paired_contrast, paired_statistic
from ssdstudy.seednoise import Band, SeedNoise

__all__ = [
    "MAP_FLOOR",
    "Check",
    "bin_index",
    "bin_metrics",
    "bin_statistic",
    "busy_check",
    "busy_reason",
    "column_mean",
    "contrast_check",
    "jump_note",
    "map_check",
    "map_contrast",
    "missing",
    "not_learned",
    "restarted",
    "number",
    "row_extreme",
    "row_mean",
    "run_outcomes",
    "seed_band",
    "settle",
    "time_check",
    "time_outcome",
]


#: A model whose VOC07 mAP (on the test set, or in the size bin compared) is below this
#: has not learned what a comparison is about: the comparison cannot be tested.
MAP_FLOOR = 0.1


@dataclass(frozen=True)
class Check:
    """One testable part of a claim: a sentence, whether it holds (None: not settled; with
    ``undecided`` the difference is within the noise, else it cannot be tested), and the
    numbers behind the answer."""

    statement: str
    holds: bool | None
    detail: str = ""
    undecided: bool = False
    #: Untestable because a model compared did not learn (below :data:`MAP_FLOOR`).
    not_learned: bool = False

    @property
    def outcome(self) -> str:
        """``holds``, ``fails``, ``too close to call`` or ``cannot test``."""
        if self.undecided:
            return "too close to call"
        return {True: "holds", False: "fails", None: "cannot test"}[self.holds]


def number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(v) else v


def column_mean(df: pd.DataFrame, col: str) -> float | None:
    if df.empty or col not in df.columns:
        return None
    return number(df[col].mean())


def missing(what: str) -> Check:
    return Check(what, None, "no finished run to compare")


@lru_cache(maxsize=256)
def _outcomes_file(path: str, mtime: float) -> Outcomes:
    return Outcomes.load(path)


def run_outcomes(frame: pd.DataFrame) -> Outcomes | None:
    """The outcomes of a frame of one run whose folder (column ``run_dir``) holds
    ``outcomes.npz``; None otherwise."""
    if len(frame) != 1 or "run_dir" not in frame.columns:
        return None
    path = Path(str(frame.iloc[0]["run_dir"])) / "outcomes.npz"
    return _outcomes_file(str(path), path.stat().st_mtime) if path.is_file() else None


def map_contrast(terms: Sequence[tuple[float, pd.DataFrame]]) -> MapDifference | None:
    """Paired-bootstrap value of a weighted sum of runs' VOC07 mAPs, when each frame is
    one run with its ``outcomes.npz`` and all were scored on the same images; None
    otherwise."""
    runs = [run_outcomes(f) for _, f in terms]
    if any(o is None for o in runs):
        return None
    try:
        return paired_contrast([(coef, o) for (coef, _), o in zip(terms, runs, strict=True)])
    except ValueError:
        return None


def bin_statistic(frames: Sequence[pd.DataFrame],
                  statistic: Callable[[Sequence[np.ndarray]], np.ndarray]) -> MapDifference | None:
    """Paired-bootstrap value of ``statistic`` of runs' size-bin mAPs (each run's
    ``(B, 7)`` array, in the order of ``frames``), when each frame is one run whose
    ``outcomes.npz`` records its images' bins, all scored on the same images; None
    otherwise."""
    runs = [run_outcomes(f) for f in frames]
    if any(o is None or o.image_bins is None for o in runs):
        return None
    try:
        return paired_statistic(statistic, runs)
    except ValueError:
        return None


def bin_index(names: Sequence[str]) -> list[int]:
    return [SIZE_BINS.index(n) for n in names]


def row_mean(values: np.ndarray) -> np.ndarray:
    """Mean of each row over its non-nan entries (nan for a row of nans), quietly."""
    counted = ~np.isnan(values)
    n = counted.sum(axis=1)
    return np.where(n > 0, np.where(counted, values, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def row_extreme(values: np.ndarray, largest: bool) -> np.ndarray:
    """Max (or min) of each row over its non-nan entries (nan for a row of nans)."""
    fill = -np.inf if largest else np.inf
    filled = np.where(np.isnan(values), fill, values)
    out = filled.max(axis=1) if largest else filled.min(axis=1)
    return np.where(np.isinf(out), np.nan, out)


def settle(text: str, holds: bool, detail: str, diff: MapDifference | None, *, ties_hold: bool = False,
            value: float | None = None, seeds: SeedNoise | None = None, band: Band | None = None) -> Check:
    """The check "a statistic is positive" (``holds``: its direction from the results'
    numbers). With its bootstrap value ``diff`` it holds when the whole interval is above
    0, fails when it is below 0, and is too close to call otherwise; with ``ties_hold``
    (a statement "at least") an interval at or above 0 holds.

    With ``seeds`` given, the statistic's ``value`` (``diff.difference`` when None) is
    also held against the spread between seeds ``band``: a settled check whose value is
    smaller than ``band.width`` becomes too close to call; without a band the detail says
    that the spread between seeds was not measured."""
    if diff is None:
        check = Check(text, holds, detail)
    else:
        detail = f"{detail}; {diff.text()}"
        if ties_hold and diff.low >= 0:
            check = Check(text, True, detail)
        else:
            check = (Check(text, diff.difference > 0, detail) if diff.settled
                     else Check(text, None, detail, undecided=True))
    if seeds is None:
        return check
    if band is None:
        return Check(text, check.holds, f"{check.detail}; spread between seeds not measured", check.undecided)
    value = value if value is not None else (diff.difference if diff is not None else None)
    if check.holds is not None and value is not None and abs(value) < band.width:
        return Check(text, None, f"{check.detail}; within {band.text()}", undecided=True)
    return Check(text, check.holds, f"{check.detail}; beyond {band.text()}" if check.holds is not None
                 else f"{check.detail}; {band.text()}", check.undecided)


def seed_band(seeds: SeedNoise | None, frames: Sequence[pd.DataFrame], metrics: Sequence[str] = ("voc07_map",),
               scale: float = 1.0) -> Band | None:
    """:meth:`SeedNoise.band` of a comparison, None without seeds."""
    return seeds.band(frames, metrics, scale) if seeds is not None else None


def bin_metrics(names: Sequence[str]) -> list[str]:
    return [f"bin {n}" for n in names]


def not_learned(text: str, values: Sequence[float], where: str = "") -> Check | None:
    """The cannot-test check when a run compared scores below :data:`MAP_FLOOR`."""
    low = [v for v in values if v < MAP_FLOOR]
    if not low:
        return None
    return Check(text, None, f"a model compared did not learn{where} "
                             f"(VOC07 mAP {min(low):.3f}, below the floor of {MAP_FLOOR:g})", not_learned=True)


def contrast_check(text: str, terms: Sequence[tuple[float, pd.DataFrame]], detail: str,
                    seeds: SeedNoise | None = None) -> Check:
    """Check that the weighted sum of the runs' mAPs is positive; too close to call when
    its bootstrap interval holds 0 or (with ``seeds``) when it is smaller than the spread
    between seeds, scaled by half of the sum of the absolute weights; cannot test when a
    run has not learned."""
    values = [column_mean(rows, "voc07_map") for _, rows in terms]
    if any(v is None for v in values):
        return missing(text)
    gate = restarted(text, [rows for _, rows in terms]) or not_learned(text, values)  # the cause first
    if gate is not None:
        return gate
    value = sum(coef * v for (coef, _), v in zip(terms, values, strict=True))
    band = seed_band(seeds, [rows for _, rows in terms], scale=sum(abs(c) for c, _ in terms) / 2)
    check = settle(text, value > 0, detail, map_contrast(terms), value=value, seeds=seeds, band=band)
    jumps = jump_note([rows for _, rows in terms])
    return replace(check, detail=f"{check.detail}; {jumps}") if jumps else check


def restarted(text: str, frames: Sequence[pd.DataFrame]) -> Check | None:
    """The cannot-test check when a compared run restarted: its training loss jumped
    above every earlier epoch's (column ``restarted_at``), so it trained on fewer epochs
    than its setting plans and its mAP measures the jump as much as the setting."""
    for frame in frames:
        if frame is None or frame.empty or "restarted_at" not in frame.columns:
            continue
        for _, run in frame.iterrows():
            epoch = number(run["restarted_at"])
            if epoch is not None:
                name = run.get("label") or run.get("run_id") or "a run"
                return Check(text, None, f"{name} restarted: its training loss jumped at epoch {epoch:.0f} above "
                                         "every earlier epoch's, undoing all its training before")
    return None


def jump_note(frames: Sequence[pd.DataFrame]) -> str:
    """Which of the compared runs had their training loss jump (column ``loss_jumps``,
    :func:`ssdstudy.results.loss_jumps`), and where: a jump undoes epochs of training,
    so such a run's mAP may understate its setting. Empty when none did."""
    parts = []
    for frame in frames:
        if frame is None or frame.empty or "loss_jumps" not in frame.columns:
            continue
        for _, run in frame.iterrows():
            if isinstance(run["loss_jumps"], str) and run["loss_jumps"]:
                name = run.get("label") or run.get("run_id") or "a run"
                parts.append(f"{name}: {run['loss_jumps']}")
    return ("training loss jumped in " + "; ".join(dict.fromkeys(parts))) if parts else ""


#: Timings a busy machine spoils (training speed is measured apart, over whole epochs).
_BUSY_METRICS = ("inference_ms", "prediction_ms", "reference_prediction_ms", "forward_ms", "postprocess_ms")


def busy_reason(*frames: pd.DataFrame, metric: str = "prediction_ms") -> str:
    """Why a timing of ``metric`` in ``frames`` was measured on a busy machine (column
    ``busy``, reasons in ``busy_reason``); empty when none was.

    Such a check cannot be tested rather than being too close to call: a busy machine
    does not widen a timing's noise around its true value, it shifts it (another
    process's threads take the cores; a 2-thread inference was once measured at 275 ms
    against 14 ms on 1 thread), so neither the direction nor the spread says anything
    about the models, and "too close to call" would claim a difference measured small."""
    if metric not in _BUSY_METRICS:
        return ""
    reasons = []
    for df in frames:
        if df is None or df.empty or "busy" not in df.columns:
            continue
        flagged = df[df["busy"].fillna(False).astype(bool)]
        for _, r in flagged.iterrows():
            reasons.extend(str(r.get("busy_reason") or "flagged busy").split("; "))
    return "; ".join(dict.fromkeys(reasons))


def busy_check(text: str, detail: str, busy: str) -> Check:
    return Check(text, None, f"{detail}: measured on a busy machine ({busy})")


def measured_apart(metric: str, *frames: pd.DataFrame) -> str:
    """Why ``metric`` of ``frames`` cannot be compared: their rows were measured on
    different devices (epoch times on the device each run was trained on, column
    ``trained_on``; the other times on the timed device, ``device_name``), so the
    difference would be the devices'. Empty when they can (or a frame does not say)."""
    column, verb = ("trained_on", "trained") if metric == "epoch_seconds" else ("device_name", "timed")
    names = sorted({str(n) for df in frames if df is not None and column in df.columns
                    for n in df[column].dropna() if str(n)})
    return f"{verb} on different devices ({' and '.join(names)})" if len(names) > 1 else ""


def time_check(text: str, rows_a: pd.DataFrame, rows_b: pd.DataFrame, metric: str, detail: str) -> Check:
    """Check that ``metric`` (a time) of ``rows_a`` is larger than of ``rows_b``; too close
    to call when the medians differ by less than the mean of their interquartile ranges
    (column ``<metric>_iqr``; without it the direction decides); cannot test when the
    rows were measured on different devices (:func:`measured_apart`) or either on a busy
    machine (:func:`busy_reason`)."""
    a, b = column_mean(rows_a, metric), column_mean(rows_b, metric)
    if a is None or b is None:
        return missing(text)
    apart = measured_apart(metric, rows_a, rows_b)
    if apart:
        return Check(text, None, f"{detail}, but {apart}")
    return time_outcome(text, a, b, column_mean(rows_a, f"{metric}_iqr"), column_mean(rows_b, f"{metric}_iqr"), detail,
                         busy=busy_reason(rows_a, rows_b, metric=metric))


def time_outcome(text: str, a: float, b: float, iqr_a: float | None, iqr_b: float | None, detail: str,
                  busy: str = "") -> Check:
    """``a > b`` as a check, too close to call within the timings' spread; cannot test
    when ``busy`` says why a timing was measured on a busy machine."""
    if busy:
        return busy_check(text, detail, busy)
    if iqr_a is not None and iqr_b is not None:
        band = (iqr_a + iqr_b) / 2
        detail = f"{detail} (spread {band:.3g})"
        if abs(a - b) < band:
            return Check(text, None, detail + ": within the timings' spread", undecided=True)
    return Check(text, a > b, detail)


def map_check(text: str, higher: pd.DataFrame, lower: pd.DataFrame, detail: str,
               seeds: SeedNoise | None = None) -> Check:
    """Check that run ``higher`` has the higher mAP than run ``lower``."""
    return contrast_check(text, [(1.0, higher), (-1.0, lower)], detail, seeds)
