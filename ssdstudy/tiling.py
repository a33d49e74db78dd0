"""The tiling chapter's numbers: what each choice of default boxes buys and costs.

Every run of the tiling experiment is compared with the run that keeps the backbone's
own default boxes (``tiling == "own"``), on the same test images: its whole-set mAP
and its mAP in each of the two smallest size bins, each difference with the 95 %
interval of a paired bootstrap of the test images; and its count of default boxes and
its prediction time (what more boxes cost in decoding and NMS). A difference whose
interval holds 0 is too close to call; a run below the mAP floor did not learn and
cannot be compared (:data:`ssdstudy.checks.MAP_FLOOR`), nor can a run that restarted
(its training loss jumped above every earlier epoch's: :func:`ssdstudy.checks.restarted`). Each interval is a 95 % interval
of its own comparison, with no correction for the nine made (three runs, three
measures): one of them may leave out 0 by chance.

Each tiling is trained with one seed. Given the study's spreads between seeds
(:class:`ssdstudy.seednoise.SeedNoise`), a difference smaller than the spread between
seeds of the own boxes' setting (of its whole-set mAP, or of the bin's mAP; where that
setting has one seed, the study's largest spread stands in, and the verdict says so) is
too close to call as well: another seed of either run could reverse it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ssdstudy.evaluate.bootstrap import (
    MapDifference,
    Outcomes,
    paired_difference,
    paired_statistic,
)
from ssdstudy.results import SIZE_BIN_NAMES
from ssdstudy.seednoise import Band, SeedNoise

#: The bins where the original study saw every model fail: objects under 10 % of the image.
SMALL_BINS = ("0-5", "5-10")
#: What the table says of a bin without test images.
NO_IMAGES = "no test images"


def default_boxes(run_dir: str | Path) -> int:
    """How many default boxes the run's model has (built from its ``config.yaml``)."""
    from ssdstudy.model import build_from_config
    from ssdstudy.runs import read_config

    config = read_config(Path(run_dir) / "config.yaml")
    return build_from_config(config.model, num_classes=2).num_priors


def _verdict(diff: MapDifference, learned: bool, seeds: SeedNoise | None = None, band: Band | None = None,
             restart: str = "") -> str:
    if restart:  # the cause, where a restarted run also fell below the floor
        return f"cannot test: {restart}"
    if not learned:
        return "cannot test: a run did not learn"
    if not diff.settled:
        return "too close to call"
    if band is not None and abs(diff.difference) < band.width:
        whose = ", the study's largest standing in" if band.stand_in else ""
        return f"too close to call: within the spread between seeds ({band.width:.3f}{whose})"
    verdict = "better" if diff.difference > 0 else "worse"
    return f"{verdict} (spread between seeds not measured)" if seeds is not None and band is None else verdict


def tiling_table(df: pd.DataFrame, *, resamples: int = 1000, seeds: SeedNoise | None = None) -> pd.DataFrame:
    """One row per run of ``df`` (the tiling experiment's frame): its boxes, mAP, the
    differences to the run with the backbone's own boxes, and prediction time; with
    ``seeds``, a difference within the spread between seeds is too close to call."""
    from ssdstudy.checks import MAP_FLOOR, restarted

    own = df[df["tiling"] == "own"]
    if own.empty or df.empty:
        return pd.DataFrame()
    base = own.iloc[0]
    pair = [own.iloc[:1]]  # the own boxes' setting: the spread between seeds of its runs
    base_outcomes = Outcomes.load(Path(base["run_dir"]) / "outcomes.npz")
    rows = []
    for index, r in df.iterrows():
        row = {
            "default boxes": r["tiling"],
            "boxes": default_boxes(r["run_dir"]),
            "mAP": r["voc07_map"],
            "prediction ms": r.get("prediction_ms", np.nan),
            "prediction ms IQR": r.get("prediction_ms_iqr", np.nan),
            "training loss jumps": r.get("loss_jumps", "") or "none",
        }
        for name in SMALL_BINS:
            row[f"mAP {name} %"] = r.get(f"bin {name}", np.nan)
        if r["run_id"] != base["run_id"]:
            outcomes = Outcomes.load(Path(r["run_dir"]) / "outcomes.npz")
            learned = min(r["voc07_map"], base["voc07_map"]) >= MAP_FLOOR
            gate = restarted("", [df.loc[[index]], own.iloc[:1]])
            restart = gate.detail if gate is not None else ""
            diff = paired_difference(outcomes, base_outcomes, resamples=resamples)
            row["vs own: mAP"] = f"{diff.difference:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
            band = seeds.band(pair) if seeds is not None else None
            row["vs own: verdict"] = _verdict(diff, learned, seeds, band, restart)
            for name in SMALL_BINS:
                values = np.array([r.get(f"bin {name}", np.nan), base.get(f"bin {name}", np.nan)], dtype=float)
                if np.isnan(values).any():  # a bin's mAP is a number wherever it has test images
                    row[f"vs own: {name} %"] = row[f"vs own: {name} % verdict"] = NO_IMAGES
                    continue
                k = SIZE_BIN_NAMES.index(name)
                small = paired_statistic(lambda maps, k=k: maps[0][:, k] - maps[1][:, k], [outcomes, base_outcomes],
                                         resamples=resamples)
                bin_learned = bool(np.all(values >= MAP_FLOOR))
                row[f"vs own: {name} %"] = f"{small.difference:+.3f} [{small.low:+.3f}, {small.high:+.3f}]"
                bin_band = seeds.band(pair, [f"bin {name}"]) if seeds is not None else None
                row[f"vs own: {name} % verdict"] = _verdict(small, bin_learned, seeds, bin_band, restart)
        rows.append(row)
    return pd.DataFrame(rows)


def _time_text(ms: float, iqr: float, base_ms: float, base_iqr: float) -> str:
    if np.isnan(ms) or np.isnan(base_ms) or not base_ms:
        return "prediction time not measured"
    text = f"prediction {ms:.3g} ms against {base_ms:.3g} ms"
    band = np.nanmean([iqr, base_iqr]) if not (np.isnan(iqr) and np.isnan(base_iqr)) else np.nan
    if not np.isnan(band) and abs(ms - base_ms) < band:
        return f"{text} (within the timings' spread)"
    return f"{text} ({ms / base_ms - 1:+.0%})"


def findings(table: pd.DataFrame) -> str:
    """What the tiling chapter found, in Markdown: one bullet per change of the default
    boxes (its boxes, its difference in mAP on the whole set and in the small bins with
    their intervals and verdicts, its prediction time), then which changes settled a gain
    on small objects. Empty without the own boxes' row."""
    if table.empty or "own" not in set(table["default boxes"]):
        return ""
    base = table[table["default boxes"] == "own"].iloc[0]
    changes = table[table["default boxes"] != "own"]
    lines = [f"Against the own default boxes ({base['boxes']:,} boxes, VOC07 mAP {base['mAP']:.3f}):", ""]
    gains = []
    for _, r in changes.iterrows():
        parts = [f"mAP {r['vs own: mAP']}, {r['vs own: verdict']}"]
        for name in SMALL_BINS:
            if r[f"vs own: {name} %"] == NO_IMAGES:
                parts.append(f"objects of {name} %: {NO_IMAGES}")
                continue
            parts.append(f"objects of {name} %: {r[f'vs own: {name} %']}, {r[f'vs own: {name} % verdict']}")
            if str(r[f"vs own: {name} % verdict"]).startswith("better"):
                gains.append(f"{r['default boxes']} ({name} %)")
        parts.append(_time_text(r["prediction ms"], r["prediction ms IQR"], base["prediction ms"],
                                base["prediction ms IQR"]))
        if r.get("training loss jumps", "none") != "none":
            parts.append(f"its training loss jumped ({r['training loss jumps']})")
        more = r["boxes"] / base["boxes"] - 1
        lines.append(f"- **{r['default boxes']}** ({r['boxes']:,} boxes, {more:+.0%}): " + "; ".join(parts) + ".")
    lines.append("")
    if changes.empty:
        lines.append("No change of the default boxes is computed yet.")
    elif gains:
        lines.append("A gain on small objects beyond the noise: " + ", ".join(gains) + ".")
    else:
        lines.append("None of the changes computed so far settles a gain on objects under 10 % of the image "
                     "(within this study's noise: the test set's and, where measured, the seeds').")
    return "\n".join(lines)


__all__ = ["NO_IMAGES", "SMALL_BINS", "default_boxes", "findings", "tiling_table"]
