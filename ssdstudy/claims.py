"""The original study's eight claims, checked against this project's results.

Kunar et al. (TU Delft, 2020) drew eight conclusions from their experiments (see
``STUDY.md``). Each function here takes the result frames of one experiment
(:func:`ssdstudy.study.experiment_frame`, :func:`ssdstudy.results.load_hardware`),
splits its claim into checks that the numbers can answer, and returns a
:class:`Verdict`:

Each check ends in one of four outcomes: it **holds**, it **fails**, it is **too close
to call** (the difference is within the noise: the test set's, by a paired bootstrap of
its images; the timings', by their interquartile ranges), or it **cannot be tested** (a
run or a device is missing, or a run compared has not learned: its VOC07 mAP, on the
whole test set or in the size bin compared, is below :data:`MAP_FLOOR`). The verdict
follows from the outcomes by one table (:data:`VERDICT_TABLE`, printed in the
conclusions chapter):

=====================  ==================================================================
verdict                when
=====================  ==================================================================
supported              every tested check holds (none fails, none too close to call)
refuted                every tested check fails
mixed                  some checks hold and some fail
too close to call      otherwise, when a check is too close to call
cannot test            no check could be tested, or a model compared did not learn
=====================  ==================================================================

"Tested" leaves out the checks that cannot be tested; a verdict with such checks names
them (``supported; not tested: on a GPU, ...``), so that an untested half of a claim is
never counted for it.

The criteria are stated in each check's sentence, so the book shows both the verdict
and the numbers behind it. They test the direction of each effect, not its size: the
study's "greatly" and "slightly" have no threshold to reproduce, and results on the
generated dataset are not comparable in magnitude with VOC's.

How each check is settled (the test set's bootstrap, the spread between seeds, the
timings' spread, the mAP floor, a busy machine) is :mod:`ssdstudy.checks`'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ssdstudy.checks import (
    MAP_FLOOR,
    Check,
    bin_index,
    bin_metrics,
    bin_statistic,
    busy_check,
    busy_reason,
    column_mean,
    contrast_check,
    map_check,
    map_contrast,
    missing,
    not_learned,
    number,
    row_extreme,
    row_mean,
    seed_band,
    settle,
    time_check,
    time_outcome,
)
from ssdstudy.seednoise import SeedNoise

__all__ = [
    "BOTTLENECK_SHARE",
    "CLAIMS",
    "LARGE_BINS",
    "MAP_FLOOR",  # from ssdstudy.checks: the chapters state it beside the verdicts
    "VERDICT_TABLE",
    "SMALL_BINS",
    "Verdict",
    "assess_all",
    "claim_augmentation",
    "claim_backbone",
    "claim_gpu_cpu",
    "claim_mining",
    "claim_nms",
    "claim_sizes",
    "claim_training_devices",
    "claim_width",
    "combine_frames",
    "select_hardware",
    "verdict_table",
]

#: The original study's claims, in our words (numbered as in STUDY.md).
CLAIMS: dict[int, str] = {
    1: "VGG16-SSD is more accurate than MobileNet-SSD, but each prediction takes longer "
       "(measured on a K80 GPU in the original).",
    2: "Augmentation raises mAP a lot for both backbones, most of all for small objects; "
       "without it an epoch of training takes less time.",
    3: "Narrowing MobileNetV1 (a lower width multiplier) costs much accuracy and buys little "
       "prediction speed.",
    4: "On GPUs VGG16-SSD's inference is slightly faster than MobileNet-SSD's; on CPUs "
       "MobileNet-SSD is the faster one.",
    5: "Non-maximum suppression, which the original code runs on the CPU, is a bottleneck of "
       "SSD's prediction time because of its many default boxes.",
    6: "Without hard-negative mining mAP drops (to about 0.40 after 15 epochs), more for "
       "MobileNet, and prediction takes longer; after 15 epochs with mining MobileNet-SSD "
       "beats VGG16-SSD.",
    7: "Small objects are the hardest for every model; VGG16 leads MobileNet most on small "
       "objects; without augmentation MobileNet beats VGG16 on objects of 40-80 % of the image.",
    8: "VGG16-SSD trains fastest on a P100 GPU, MobileNet-SSD on a T4.",
}

#: Bins of "small" objects: under 10 % of the image area.
SMALL_BINS: tuple[str, ...] = ("0-5", "5-10")
#: Bins of the claim on large objects (40-80 % of the image area).
LARGE_BINS: tuple[str, ...] = ("40-60", "60-80")
#: Post-processing is called a bottleneck when it takes at least this share of the
#: prediction time (as long as the network's forward pass, or longer).
BOTTLENECK_SHARE = 0.5
#: The verdict table: (verdict, when), in the order it is decided.
VERDICT_TABLE: tuple[tuple[str, str], ...] = (
    ("cannot test", "no check could be tested, or a model the claim compares did not learn"),
    ("supported", "every tested check holds"),
    ("refuted", "every tested check fails"),
    ("mixed", "some checks hold and some fail"),
    ("too close to call", "otherwise: no check fails or none holds, and some are too close to call"),
)

_NAMES = {"vgg16": "VGG16", "vgg16_bn": "VGG16-BN", "mobilenet_v1": "MobileNetV1", "squeezenet": "SqueezeNet 1.1"}
VGG, MOBILENET = "vgg16", "mobilenet_v1"


@dataclass(frozen=True)
class Verdict:
    number: int
    checks: tuple[Check, ...]
    note: str = ""

    @property
    def claim(self) -> str:
        return CLAIMS[self.number]

    @property
    def undecided(self) -> list[Check]:
        return [c for c in self.checks if c.undecided]

    @property
    def untested(self) -> list[Check]:
        return [c for c in self.checks if c.outcome == "cannot test"]

    @property
    def status(self) -> str:
        """The verdict by :data:`VERDICT_TABLE`: ``supported``, ``refuted``, ``mixed``,
        ``too close to call`` or ``cannot test``."""
        held = sum(c.outcome == "holds" for c in self.checks)
        failed = sum(c.outcome == "fails" for c in self.checks)
        close = len(self.undecided)
        if held + failed + close == 0 or self.not_learned:
            return "cannot test"
        if held and not failed and not close:
            return "supported"
        if failed and not held and not close:
            return "refuted"
        if held and failed:
            return "mixed"
        return "too close to call"

    @property
    def not_learned(self) -> bool:
        """A model the claim compares did not learn: its other parts (times, say) describe
        no trained detector either, so the whole claim cannot be tested."""
        return any(c.not_learned for c in self.checks)

    @property
    def scope(self) -> str:
        """What was not tested, when a verdict rests on part of its checks."""
        if self.not_learned:
            return "the models compared did not learn"
        if self.status == "cannot test" or not self.untested:
            return ""
        return "not tested: " + "; ".join(c.statement for c in self.untested)

    def summary(self) -> str:
        """``"2 hold, 1 fails, 1 too close to call, 1 cannot be tested"``."""
        counts = {o: sum(c.outcome == o for c in self.checks)
                  for o in ("holds", "fails", "too close to call", "cannot test")}
        words = {"holds": ("holds", "hold"), "fails": ("fails", "fail"),
                 "too close to call": ("too close to call", "too close to call"),
                 "cannot test": ("cannot be tested", "cannot be tested")}
        parts = [f"{n} {words[o][0] if n == 1 else words[o][1]}" for o, n in counts.items() if n]
        return ", ".join(parts) if parts else "no check"

    def markdown(self) -> str:
        """The verdict as a MyST/Markdown block: claim, verdict, one bullet per check."""
        scope = f"; {self.scope}" if self.scope else ""
        lines = [f"**Claim {self.number}.** {self.claim}", "",
                 f"**Verdict: {self.status}**{scope} ({self.summary()}).", ""]
        for c in self.checks:
            detail = f": {c.detail}" if c.detail else ""
            lines.append(f"- {c.statement}: *{c.outcome}*{detail}.")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """``{"claim", "status", "scope", "checks": [{"statement", "outcome", "detail"}]}``."""
        return {"claim": self.number, "text": self.claim, "status": self.status, "scope": self.scope,
                "checks": [{"statement": c.statement, "outcome": c.outcome, "detail": c.detail}
                           for c in self.checks],
                "note": self.note}


# --- selecting rows ----------------------------------------------------------------------


def _rows(df: pd.DataFrame, **equal: Any) -> pd.DataFrame:
    if df is None or df.empty:
        return pd.DataFrame()
    out = df
    for col, value in equal.items():
        if col not in out.columns:
            if col == "width" and value == 1.0:
                continue
            return pd.DataFrame()
        out = out[out[col].fillna(1.0) == value] if col == "width" else out[out[col] == value]
    return out


def _run(df: pd.DataFrame, backbone: str, augment: str = "all", mining: str | None = "3:1",
         width: float = 1.0) -> pd.DataFrame:
    kw: dict[str, Any] = {"backbone": backbone, "augment": augment, "width": width}
    if mining is not None:
        kw["mining"] = mining
    return _rows(df, **kw)


def _budget_note(vgg: pd.DataFrame, mobilenet: pd.DataFrame) -> str:
    """A sentence when the two backbones' runs were trained on different numbers of
    images (a profile may give the slower VGG16 fewer): their mAPs then compare budgets
    as much as backbones."""
    seen = []
    for rows in (vgg, mobilenet):
        images, epochs = column_mean(rows, "train_images"), column_mean(rows, "epochs")
        if images is None or epochs is None:
            return ""
        seen.append((images, epochs))
    if seen[0] == seen[1]:
        return ""
    (vi, ve), (mi, me) = seen
    return (f"The two backbones were not trained on the same budget: VGG16 on {vi:,.0f} images for "
            f"{ve:.0f} epochs, MobileNetV1 on {mi:,.0f} for {me:.0f} (the profile's choice, to fit "
            "its time). Their mAPs compare the budgets as much as the backbones.")


def _device(df: pd.DataFrame) -> str:
    if "device_name" in df.columns and df["device_name"].notna().any():
        names = sorted({str(n) for n in df["device_name"].dropna() if str(n)})
        if names:
            return ", ".join(names)
    return "the study machine"


def _bin_values(row: pd.Series | None) -> dict[str, float]:
    """Populated bins of one run: name -> mAP (bins with images and a number)."""
    if row is None:
        return {}
    out = {}
    for col in row.index:
        if not (isinstance(col, str) and col.startswith("bin ")):
            continue
        name = col[4:]
        images = number(row.get(f"images {name}", 1))
        value = number(row[col])
        if value is not None and (images is None or images > 0):
            out[name] = value
    return dict(sorted(out.items(), key=lambda kv: float(kv[0].split("-")[0])))


def _first(df: pd.DataFrame) -> pd.Series | None:
    if df.empty:
        return None
    return df.mean(numeric_only=True) if len(df) > 1 else df.iloc[0]


# --- the claims -------------------------------------------------------------------------


def claim_backbone(df: pd.DataFrame, seeds: SeedNoise | None = None) -> Verdict:
    """Claim 1 from the backbone experiment: baselines (augmentation on, 3:1 mining);
    ``seeds``: the study's spreads between seeds (see :func:`settle`)."""
    v, m = _run(df, VGG), _run(df, MOBILENET)
    checks = []
    for col, text, better in (("voc07_map", "VGG16-SSD has the higher mAP", "higher"),
                              ("prediction_ms", "VGG16-SSD takes longer per prediction", "longer")):
        a, b = column_mean(v, col), column_mean(m, col)
        if a is None or b is None:
            checks.append(missing(text))
        elif col == "prediction_ms":
            detail = f"VGG16 {a:.3g} ms against MobileNetV1 {b:.3g} ms on {_device(pd.concat([v, m]))}"
            checks.append(time_check(text, v, m, col, detail))
        else:
            checks.append(map_check(text, v, m, f"VGG16 {a:.3f} against MobileNetV1 {b:.3f}", seeds))
    return Verdict(1, tuple(checks), _budget_note(v, m))


def _small_gain_check(name: str, on: pd.DataFrame, off: pd.DataFrame, seeds: SeedNoise | None = None) -> Check:
    """Is the mAP gain of ``on`` over ``off`` larger, on average, in the small bins?"""
    text = f"for {name} the gain is largest on small objects (under 10 % of the image)"
    if on.empty or off.empty:
        return missing(text)
    with_aug, without = _bin_values(_first(on)), _bin_values(_first(off))
    gains = {k: with_aug[k] - without[k] for k in with_aug.keys() & without.keys()}
    small = [g for k, g in gains.items() if k in SMALL_BINS]
    other = [g for k, g in gains.items() if k not in SMALL_BINS]
    if not small or not other:
        return Check(text, None, "no test images of small and of larger objects in both runs")
    gate = not_learned(text, [x for x in (column_mean(on, "voc07_map"), column_mean(off, "voc07_map")) if x is not None]
                        + [with_aug[k] for k in gains if k in SMALL_BINS], " (on the whole test set or on small objects)")
    if gate is not None:
        return gate
    s, o = float(np.mean(small)), float(np.mean(other))
    small_bins = bin_index([k for k in gains if k in SMALL_BINS])
    other_bins = bin_index([k for k in gains if k not in SMALL_BINS])

    def excess(maps: Sequence[np.ndarray]) -> np.ndarray:
        gain = maps[0] - maps[1]
        return row_mean(gain[:, small_bins]) - row_mean(gain[:, other_bins])

    # a difference of two differences of the runs' bin mAPs: twice a spread between seeds
    band = seed_band(seeds, [on, off], bin_metrics(list(gains)), scale=2.0)
    return settle(text, s > o, f"mean gain {s:+.3f} on small objects, {o:+.3f} on larger ones",
                   bin_statistic([on, off], excess), value=s - o, seeds=seeds, band=band)


def claim_augmentation(df: pd.DataFrame, seeds: SeedNoise | None = None) -> Verdict:
    """Claim 2 from runs with augmentation "all" and "none" (backbone experiment)."""
    checks = []
    for backbone in (VGG, MOBILENET):
        name = _NAMES[backbone]
        on, off = _run(df, backbone, "all"), _run(df, backbone, "none")
        a, b = column_mean(on, "voc07_map"), column_mean(off, "voc07_map")
        text = f"augmentation raises {name}'s mAP"
        checks.append(missing(text) if a is None or b is None
                      else map_check(text, on, off, f"{b:.3f} without, {a:.3f} with", seeds))
        checks.append(_small_gain_check(name, on, off, seeds))
        a, b = column_mean(on, "epoch_seconds"), column_mean(off, "epoch_seconds")
        text = f"an epoch of {name} takes less time without augmentation"
        checks.append(missing(text) if a is None or b is None
                      else time_check(text, on, off, "epoch_seconds", f"{b:.3g} s without, {a:.3g} s with"))
    return Verdict(2, tuple(checks))


def claim_width(df: pd.DataFrame, seeds: SeedNoise | None = None) -> Verdict:
    """Claim 3 from the width experiment: for each width below 1, the relative loss of
    mAP against the relative saving of prediction time, both from width 1.0."""
    checks = []
    for augment in ("all", "none"):
        rows = _rows(df, backbone=MOBILENET, augment=augment)
        if rows.empty or "width" not in rows.columns:
            continue
        full = rows[rows["width"] == 1.0]
        ref_map, ref_ms = column_mean(full, "voc07_map"), column_mean(full, "prediction_ms")
        for width in sorted(w for w in rows["width"].unique() if w < 1.0):
            text = (f"x{width:g} ({'with' if augment == 'all' else 'without'} augmentation) loses a larger "
                    "share of mAP than it saves of prediction time")
            sub = rows[rows["width"] == width]
            m, t = column_mean(sub, "voc07_map"), column_mean(sub, "prediction_ms")
            if None in (ref_map, ref_ms, m, t) or not ref_map or not ref_ms:
                checks.append(Check(text, None, "no width-1.0 run to compare with"))
                continue
            loss, saving = 1 - m / ref_map, 1 - t / ref_ms
            detail = (f"mAP {m:.3f} against {ref_map:.3f} ({-loss:+.0%}), "
                      f"{t:.3g} ms against {ref_ms:.3g} ms ({-saving:+.0%})")
            gate = not_learned(text, [m, ref_map])
            if gate is not None:
                checks.append(gate)
                continue
            busy = busy_reason(sub, full, metric="prediction_ms")
            if busy:
                checks.append(busy_check(text, detail, busy))
                continue
            iqr = column_mean(sub, "prediction_ms_iqr"), column_mean(full, "prediction_ms_iqr")
            if None not in iqr and abs(ref_ms - t) < (iqr[0] + iqr[1]) / 2:
                checks.append(Check(text, None, detail + ": the time saved is within the timings' spread",
                                    undecided=True))
                continue
            # loss > saving  <=>  (1 - saving) * mAP(1.0) - mAP(width) > 0: a contrast of the two runs
            terms = [(1 - saving, full), (-1.0, sub)]
            band = seed_band(seeds, [full, sub], scale=(abs(1 - saving) + 1) / 2)
            checks.append(settle(text, loss > saving, detail, map_contrast(terms),
                                  value=(1 - saving) * ref_map - m, seeds=seeds, band=band))
    if not checks:
        checks.append(missing("narrower MobileNets lose more accuracy than they gain in speed"))
    return Verdict(3, tuple(checks))


def _hardware_pairs(hw: pd.DataFrame, metric: str) -> list[tuple[str, str, float, float, float | None, float | None, str]]:
    """(device kind, device text, VGG16 value, MobileNetV1 value, their interquartile
    ranges when recorded, and why either was measured on a busy machine) per measured
    device of each machine: two machines with the same device are compared apart (the
    machine is named when they share a device)."""
    rows = _rows(hw, width=1.0)
    if rows.empty or metric not in rows.columns:
        return []
    rows = rows.dropna(subset=[metric]).copy()
    if rows.empty:
        return []
    threads = rows["threads"] if "threads" in rows.columns else pd.Series(np.nan, index=rows.index)
    rows["_text"] = [
        f"{r.get('device_name') or r.get('device')}" + (f" ({int(t)} threads)" if r.get("device") == "cpu"
                                                      and number(t) is not None else "")
        for (_, r), t in zip(rows.iterrows(), threads)
    ]
    machine = rows["machine"].fillna("?").astype(str) if "machine" in rows.columns else pd.Series("", index=rows.index)
    shared = rows.assign(_machine=machine).groupby("_text")["_machine"].transform("nunique") > 1
    rows["_text"] = [f"{t} of {m}" if s else t for t, m, s in zip(rows["_text"], machine, shared)]
    out = []
    for (kind, text), group in rows.groupby([rows["device"].fillna("?"), "_text"], sort=True):
        vg, mg = group[group["backbone"] == VGG], group[group["backbone"] == MOBILENET]
        v, m = column_mean(vg, metric), column_mean(mg, metric)
        if v is not None and m is not None:
            out.append((str(kind), str(text), v, m, column_mean(vg, f"{metric}_iqr"), column_mean(mg, f"{metric}_iqr"),
                        busy_reason(vg, mg, metric=metric)))
    return out


def claim_gpu_cpu(hw: pd.DataFrame) -> Verdict:
    """Claim 4 from hardware rows (inference time, width 1.0, per device)."""
    checks = []
    pairs = _hardware_pairs(hw, "inference_ms")
    for kind, text, v, m, iqr_v, iqr_m, busy in pairs:
        gpu = kind != "cpu"
        statement = f"on {text}, {'VGG16' if gpu else 'MobileNetV1'}-SSD's inference is faster"
        detail = f"VGG16 {v:.3g} ms, MobileNetV1 {m:.3g} ms"
        checks.append(time_outcome(statement, m, v, iqr_m, iqr_v, detail, busy) if gpu
                      else time_outcome(statement, v, m, iqr_v, iqr_m, detail, busy))
    kinds = {k for k, *_ in pairs}
    if not any(k != "cpu" for k in kinds):
        checks.append(Check("on a GPU, VGG16-SSD's inference is faster", None, "no GPU was measured"))
    if "cpu" not in kinds:
        checks.append(Check("on a CPU, MobileNetV1-SSD's inference is faster", None, "no CPU was measured"))
    return Verdict(4, tuple(checks))


def claim_nms(df: pd.DataFrame, hw: pd.DataFrame | None = None) -> Verdict:
    """Claim 5: with the original code's per-class NMS loop, post-processing takes at
    least :data:`BOTTLENECK_SHARE` of the prediction time. Checked on every run of the
    nms experiment (CPU) and every device of ``hw`` that measured the reference loop;
    the vectorised path's share is reported in the note."""
    checks, notes = [], []
    for _, row in (df.iterrows() if df is not None and len(df) else iter(())):
        name = _NAMES.get(row.get("backbone"), str(row.get("backbone")))
        forward = number(row.get("forward_ms", row.get("inference_ms")))
        ref = number(row.get("reference_prediction_ms"))
        text = f"{name} on {row.get('device_name') or 'the study machine'}: the reference NMS loop takes at least half of prediction time"
        if forward is None or ref is None or ref <= 0:
            checks.append(Check(text, None, "no reference-loop timing"))
            continue
        share = max(0.0, ref - forward) / ref
        busy = busy_reason(pd.DataFrame([row]), metric="reference_prediction_ms")
        checks.append(busy_check(text, f"{share:.0%} of {ref:.3g} ms", busy) if busy
                      else Check(text, share >= BOTTLENECK_SHARE, f"{share:.0%} of {ref:.3g} ms"))
        pred, post = number(row.get("prediction_ms")), number(row.get("postprocess_ms"))
        if pred and post is not None:
            notes.append(f"{name}: {post / pred:.0%} of {pred:.3g} ms")
    if hw is not None and len(hw):
        rows = hw.dropna(subset=[c for c in ("reference_prediction_ms", "inference_ms") if c in hw.columns])
        if "device" in rows.columns and {"reference_prediction_ms", "inference_ms"} <= set(rows.columns):
            rows = rows[rows["device"] != "cpu"]
            trained = (rows["trained"].fillna(True).astype(bool) if "trained" in rows.columns
                       else pd.Series(True, index=rows.index))
            for (dev, backbone, is_trained), group in rows.groupby(["device_name", "backbone", trained]):
                ref, fwd = column_mean(group, "reference_prediction_ms"), column_mean(group, "inference_ms")
                if ref is None or fwd is None or ref <= 0:
                    continue
                share = max(0.0, ref - fwd) / ref
                text = (f"{_NAMES.get(backbone, backbone)} on {dev}{'' if is_trained else ' (untrained weights)'}: "
                        "the reference NMS loop takes at least half of prediction time")
                detail = f"{share:.0%} of {ref:.3g} ms"
                busy = busy_reason(group, metric="reference_prediction_ms")
                if busy:
                    checks.append(busy_check(text, detail, busy))
                elif not is_trained and share >= BOTTLENECK_SHARE:
                    # untrained weights send (nearly) every default box into NMS: the share is
                    # an upper bound of a trained model's, so only its failing says something
                    checks.append(Check(text, None, detail + ": untrained weights, post-processing at its worst "
                                        "case (an upper bound)"))
                else:
                    checks.append(Check(text, share >= BOTTLENECK_SHARE,
                                        detail + ("" if is_trained else ", an upper bound (untrained weights)")))
    if not checks:
        checks.append(missing("the reference NMS loop takes at least half of prediction time"))
    note = ("With the vectorised post-processing (one batched NMS call) the share after the forward pass is "
            + "; ".join(notes) + ".") if notes else ""
    return Verdict(5, tuple(checks), note)


def claim_mining(df: pd.DataFrame, seeds: SeedNoise | None = None) -> Verdict:
    """Claim 6 from the mining experiment (3:1 against every negative)."""
    checks = []
    drops = {}
    for backbone in (VGG, MOBILENET):
        name = _NAMES[backbone]
        on, off = _run(df, backbone, mining="3:1"), _run(df, backbone, mining="none")
        a, b = column_mean(on, "voc07_map"), column_mean(off, "voc07_map")
        text = f"without mining {name}'s mAP drops"
        if a is None or b is None:
            checks.append(missing(text))
        else:
            drops[backbone] = a - b
            checks.append(map_check(text, on, off, f"{a:.3f} with 3:1 mining, {b:.3f} without", seeds))
        a, b = column_mean(on, "prediction_ms"), column_mean(off, "prediction_ms")
        text = f"without mining {name}'s prediction takes longer"
        checks.append(missing(text) if a is None or b is None
                      else time_check(text, off, on, "prediction_ms", f"{a:.3g} ms with mining, {b:.3g} ms without"))
    text = "the drop is larger for MobileNetV1"
    checks.append(contrast_check(
        text,
        [(1.0, _run(df, MOBILENET, mining="3:1")), (-1.0, _run(df, MOBILENET, mining="none")),
         (-1.0, _run(df, VGG, mining="3:1")), (1.0, _run(df, VGG, mining="none"))],
        f"{drops[MOBILENET]:.3f} against {drops[VGG]:.3f}", seeds,
    ) if len(drops) == 2 else missing(text))
    v_rows, m_rows = _run(df, VGG, mining="3:1"), _run(df, MOBILENET, mining="3:1")
    v, m = column_mean(v_rows, "voc07_map"), column_mean(m_rows, "voc07_map")
    text = "with mining on this schedule MobileNetV1-SSD beats VGG16-SSD"
    epochs = column_mean(df, "epochs") if df is not None else None
    when = f" after {epochs:.0f} epochs" if epochs is not None else ""
    checks.append(missing(text) if v is None or m is None
                  else map_check(text, m_rows, v_rows, f"MobileNetV1 {m:.3f}, VGG16 {v:.3f}{when}", seeds))
    return Verdict(6, tuple(checks), _budget_note(v_rows, m_rows))


def claim_sizes(df: pd.DataFrame, seeds: SeedNoise | None = None) -> Verdict:
    """Claim 7 from the sizes experiment (both backbones, augmentation on and off)."""
    checks = []
    if df is not None and len(df):
        for _, row in df.iterrows():
            values = _bin_values(row)
            label = ", ".join(
                [_NAMES.get(row.get("backbone"), str(row.get("backbone")))]
                + (["no augmentation"] if row.get("augment") == "none" else [])
            )
            text = f"{label}: the smallest populated bin has the lowest mAP"
            gate = not_learned(text, [v for v in [number(row.get("voc07_map"))] if v is not None])
            if gate is not None:
                checks.append(gate)
                continue
            if len(values) < 2:
                checks.append(Check(text, None, "fewer than two populated bins"))
                continue
            smallest = next(iter(values))
            worst = min(values, key=values.get)
            detail = f"{smallest} %: {values[smallest]:.3f}"
            detail += (f", the lowest of {len(values)} bins" if values[smallest] <= values[worst]
                       else f"; lowest: {worst} %: {values[worst]:.3f}")
            first, others = bin_index([smallest])[0], bin_index([k for k in values if k != smallest])

            def margin(maps: Sequence[np.ndarray], first: int = first, others: list[int] = others) -> np.ndarray:
                # how far the smallest bin lies below the lowest of the others
                return row_extreme(maps[0][:, others], largest=False) - maps[0][:, first]

            one = pd.DataFrame([row])
            below = min(v for k, v in values.items() if k != smallest) - values[smallest]
            checks.append(settle(text, values[smallest] <= values[worst], detail, bin_statistic([one], margin),
                                  ties_hold=True, value=below, seeds=seeds,
                                  band=seed_band(seeds, [one], bin_metrics(list(values)))))
    for augment, which in (("all", "with augmentation"),):
        v, m = _bin_values(_first(_run(df, VGG, augment))), _bin_values(_first(_run(df, MOBILENET, augment)))
        lead = {k: v[k] - m[k] for k in v.keys() & m.keys()}
        text = f"{which}, VGG16's lead over MobileNetV1 is largest on small objects (under 10 %)"
        gate = not_learned(text, [v[k] for k in v if k in SMALL_BINS] + [m[k] for k in m if k in SMALL_BINS]
                            + [x for x in (column_mean(_run(df, VGG, augment), "voc07_map"),
                                           column_mean(_run(df, MOBILENET, augment), "voc07_map")) if x is not None],
                            " (on the whole test set or on small objects)")
        if not lead or not any(k in SMALL_BINS for k in lead):
            checks.append(Check(text, None, "no small objects measured for both backbones"))
        elif gate is not None:
            checks.append(gate)
        else:
            best = max(lead, key=lead.get)
            detail = ("largest lead " + f"{lead[best]:+.3f} in bin {best} %; "
                      + ", ".join(f"{k} %: {lead[k]:+.3f}" for k in sorted(lead, key=lambda s: float(s.split('-')[0]))))
            small_bins = bin_index([k for k in lead if k in SMALL_BINS])
            other_bins = bin_index([k for k in lead if k not in SMALL_BINS])

            def excess(maps: Sequence[np.ndarray]) -> np.ndarray:
                # the largest lead on small objects over the largest elsewhere
                gap = maps[0] - maps[1]
                return row_extreme(gap[:, small_bins], largest=True) - row_extreme(gap[:, other_bins], largest=True)

            pair = [_run(df, VGG, augment), _run(df, MOBILENET, augment)]
            diff = bin_statistic(pair, excess) if other_bins else None
            small_lead = max(lead[k] for k in lead if k in SMALL_BINS)
            other_lead = max((lead[k] for k in lead if k not in SMALL_BINS), default=float("nan"))
            value = small_lead - other_lead if other_bins else None
            # a difference of two leads (each a difference of two runs): twice a spread
            checks.append(settle(text, best in SMALL_BINS, detail, diff, value=value, seeds=seeds,
                                  band=seed_band(seeds, pair, bin_metrics(list(lead)), scale=2.0)))
    v, m = _bin_values(_first(_run(df, VGG, "none"))), _bin_values(_first(_run(df, MOBILENET, "none")))
    common = [k for k in LARGE_BINS if k in v and k in m]
    text = "without augmentation MobileNetV1 beats VGG16 on objects of 40-80 % of the image"
    gate = not_learned(text, [v[k] for k in common] + [m[k] for k in common], " (on objects of 40-80 %)")
    if not common:
        checks.append(Check(text, None, "no objects of 40-80 % measured for both backbones without augmentation"))
    elif gate is not None:
        checks.append(gate)
    else:
        a, b = float(np.mean([m[k] for k in common])), float(np.mean([v[k] for k in common]))
        large_bins = bin_index(common)

        def lead(maps: Sequence[np.ndarray]) -> np.ndarray:
            return row_mean(maps[0][:, large_bins]) - row_mean(maps[1][:, large_bins])

        pair = [_run(df, MOBILENET, "none"), _run(df, VGG, "none")]
        checks.append(settle(text, a > b, f"mean mAP over bins {', '.join(common)}: MobileNetV1 {a:.3f}, VGG16 {b:.3f}",
                              bin_statistic(pair, lead), value=a - b, seeds=seeds,
                              band=seed_band(seeds, pair, bin_metrics(common))))
    return Verdict(7, tuple(checks), _budget_note(_run(df, VGG), _run(df, MOBILENET)))


_FASTEST = {VGG: ("P100", re.compile(r"P100")), MOBILENET: ("T4", re.compile(r"\bT4\b"))}


def claim_training_devices(hw: pd.DataFrame) -> Verdict:
    """Claim 8 from hardware rows: the GPU with the shortest epoch, per backbone (at least
    two GPUs must have been measured, one of them the GPU the claim names)."""
    checks = []
    rows = _rows(hw, width=1.0)
    if not rows.empty and {"epoch_seconds", "device", "backbone"} <= set(rows.columns):
        rows = rows[(rows["device"] != "cpu")].dropna(subset=["epoch_seconds"])
    for backbone, (gpu, pattern) in _FASTEST.items():
        text = f"{_NAMES[backbone]}-SSD trains fastest on a {gpu}"
        sub = rows[rows["backbone"] == backbone] if not rows.empty else rows
        if sub.empty:
            checks.append(Check(text, None, "no GPU training time measured"))
            continue
        times = sub.groupby("device_name")["epoch_seconds"].mean().sort_values()
        fastest = str(times.index[0])
        if len(times) < 2:
            checks.append(Check(text, None, f"only one GPU measured ({fastest}, {times.iloc[0]:.3g} s)"))
            continue
        if not any(pattern.search(str(n)) for n in times.index):
            checks.append(Check(text, None, f"no {gpu} measured; fastest measured: {fastest} ({times.iloc[0]:.3g} s)"))
            continue
        checks.append(Check(text, bool(pattern.search(fastest)),
                            "; ".join(f"{n}: {s:.3g} s" for n, s in times.items())))
    return Verdict(8, tuple(checks))


# --- all of them ----------------------------------------------------------------------------


def combine_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Rows of several experiments, each run once (experiments share runs)."""
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out.drop_duplicates("run_id") if "run_id" in out.columns else out


def assess_all(frames: Mapping[str, pd.DataFrame], hardware: pd.DataFrame | None = None) -> list[Verdict]:
    """The eight verdicts, from the frames of the experiments by name (``backbone``,
    ``width``, ``augmentation``, ``mining``, ``sizes``, ``hardware``, ``nms``, ``seeds``;
    missing ones count as empty) and the hardware table. The seeds experiment's runs
    give the spreads between seeds that the mAP comparisons are held against."""
    empty = pd.DataFrame()

    def get(name: str) -> pd.DataFrame:
        return frames.get(name, empty)

    hw = hardware if hardware is not None else empty
    seeds = SeedNoise(get("seeds"))
    return [
        claim_backbone(get("backbone"), seeds),
        claim_augmentation(combine_frames([get("backbone"), get("sizes"), get("augmentation")]), seeds),
        claim_width(get("width"), seeds),
        claim_gpu_cpu(hw),
        claim_nms(get("nms"), hw),
        claim_mining(get("mining"), seeds),
        claim_sizes(get("sizes"), seeds),
        claim_training_devices(hw),
    ]


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per claim: its number, the claim, the verdict and how many checks hold."""
    return pd.DataFrame(
        {"claim": [v.claim for v in verdicts], "verdict": [v.status for v in verdicts],
         "checks": [v.summary() for v in verdicts],
         "not tested": [", ".join(c.statement for c in v.untested) if v.scope else "" for v in verdicts]},
        index=pd.Index([v.number for v in verdicts], name="#"),
    )


def select_hardware(hw: pd.DataFrame, profile: str, run_ids: Sequence[str]) -> pd.DataFrame:
    """Hardware rows from other machines' files, plus the study machine's rows of only
    ``run_ids`` (``load_hardware(profile)`` adds a row per device for every run of the
    profile; an experiment compares its own runs)."""
    if hw is None or hw.empty or "source" not in hw.columns:
        return hw if hw is not None else pd.DataFrame()
    source = hw["source"].astype(str)
    own = source.str.startswith(f"{profile}/")
    keep = ~own | source.isin([f"{profile}/{r}" for r in run_ids])
    return hw[keep].reset_index(drop=True)
