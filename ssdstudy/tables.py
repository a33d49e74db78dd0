"""The book's tables and the names they give: result frames shaped for display.

Every function takes plain data (a pandas DataFrame with the columns of
:func:`ssdstudy.results.load_runs` or :func:`ssdstudy.results.load_hardware`, a run's
``metrics.json`` or ``timing.json``, or priors) and returns a DataFrame; none reads or
writes files. The names a run goes by in the book's tables and figures
(:func:`short_label`, :func:`backbone_label`) are here, and :mod:`ssdstudy.plots`, which
draws the figures, uses them. Nothing here needs matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ssdstudy.results import BACKBONE_LABELS

__all__ = [
    "MEMORY_PEAKS",
    "PriorMap",
    "ap_table",
    "backbone_label",
    "backbone_rank",
    "cell",
    "device_label",
    "family_label",
    "hardware_memory_table",
    "has_memory",
    "memory_table",
    "mining_order",
    "mining_table",
    "mining_text",
    "nms_stages",
    "nms_table",
    "prior_layout",
    "prior_maps",
    "prior_table",
    "require",
    "short_label",
    "split_label",
    "timing_table",
    "width_text",
]

#: The peak-memory columns (MB) a run or hardware row may hold.
MEMORY_PEAKS = ("train_peak_mb", "predict_peak_mb")


def cell(row: Mapping[str, Any] | pd.Series, key: str, default: Any = None) -> Any:
    value = row.get(key, default)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return default
    return value


def width_text(width: Any) -> str:
    try:
        w = float(width)
    except (TypeError, ValueError):
        return ""
    return "" if np.isnan(w) or w == 1.0 else f" x{w:g}"


def backbone_label(name: str) -> str:
    """``"mobilenet_v1"`` -> ``"MobileNetV1"``; unknown names are returned as they are."""
    return BACKBONE_LABELS.get(name, str(name))


def family_label(df: pd.DataFrame, family: str) -> str:
    """The label of a study backbone in ``df``, naming the exact backbones its rows used
    (column ``variant``): "VGG16-BN" where VGG16 with BatchNorm stood for VGG16."""
    if "variant" in df.columns and "backbone" in df.columns:
        variants = sorted({str(v) for v in df.loc[df["backbone"] == family, "variant"].dropna()})
        if variants:
            return " / ".join(backbone_label(v) for v in variants)
    return backbone_label(family)


def short_label(row: Mapping[str, Any] | pd.Series) -> str:
    """A compact label of a run: ``"MobileNetV1 x0.5, no aug, no mining"``.

    Uses the columns ``backbone``, ``width``, ``augment`` and ``mining`` when present
    (the baseline settings, augmentation "all" and mining "3:1", are not written);
    falls back on ``label``.
    """
    backbone = cell(row, "variant") or cell(row, "backbone")  # the exact backbone: VGG16-BN, not VGG16
    if backbone is None:
        return str(cell(row, "label", "run"))
    parts = [backbone_label(backbone) + width_text(cell(row, "width", 1.0))]
    augment = cell(row, "augment", "all")
    if augment == "none":
        parts.append("no aug")
    elif augment != "all":
        parts.append(str(augment))
    mining = cell(row, "mining", "3:1")
    if mining == "none":
        parts.append("no mining")
    elif mining != "3:1":
        parts.append(f"mining {mining}")
    tiling = cell(row, "tiling", "own")
    if tiling not in ("own", None) and not pd.isna(tiling):
        parts.append(f"boxes {tiling}")
    return ", ".join(parts)


def backbone_rank(name: str) -> tuple[int, str]:
    order = list(BACKBONE_LABELS)
    return (order.index(name) if name in order else len(order), str(name))


def require(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing and len(df):
        raise KeyError(f"{where}: the frame lacks column(s) {', '.join(missing)}")


def device_label(row: Mapping[str, Any] | pd.Series) -> str:
    name = str(cell(row, "device_name", "") or cell(row, "device", "device"))
    threads = cell(row, "threads")
    if cell(row, "device") == "cpu" and threads is not None:
        name += f" ({int(threads)} threads)"
    return name


def has_memory(df: pd.DataFrame) -> bool:
    """Whether any row of ``df`` holds a measured peak memory."""
    cols = [c for c in MEMORY_PEAKS if c in df.columns]
    return bool(len(df) and cols and df[cols].notna().any().any())


def memory_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run with memory figures (MB): the peaks of a training step and of a
    prediction, the parameters, the optimiser's state, each step's working memory and
    the processes' baseline (interpreter and libraries), beside the run's mAP. Empty
    when no run has them."""
    if not has_memory(df):
        return pd.DataFrame()
    columns = {
        "voc07_map": "mAP (VOC07)", "train_peak_mb": "train peak", "predict_peak_mb": "predict peak",
        "params_mb": "parameters", "optimizer_mb": "optimiser state", "activations_mb": "train working",
        "predict_activations_mb": "predict working", "memory_baseline_mb": "baseline",
    }
    rows = df[df[[c for c in MEMORY_PEAKS if c in df.columns]].notna().any(axis=1)]
    out = pd.DataFrame({"run": [short_label(r) for _, r in rows.iterrows()]})
    for col, text in columns.items():
        out[text] = rows[col].to_numpy() if col in rows.columns else np.nan
    return out.set_index("run")


def hardware_memory_table(hw: pd.DataFrame) -> pd.DataFrame:
    """One row per model, device and machine measured (hardware files and the study's
    runs): the memory figures of :func:`memory_table` (MB), without mAP. Memory does not
    depend on the weights, so a model timed with random weights stands for its trained
    runs. Empty when nothing has them."""
    if not has_memory(hw):
        return pd.DataFrame()
    columns = {
        "train_peak_mb": "train peak", "predict_peak_mb": "predict peak", "params_mb": "parameters",
        "optimizer_mb": "optimiser state", "activations_mb": "train working",
        "predict_activations_mb": "predict working", "memory_baseline_mb": "baseline",
    }
    rows = hw[hw[[c for c in MEMORY_PEAKS if c in hw.columns]].notna().any(axis=1)]
    rows = rows.assign(model=[short_label(r) for _, r in rows.iterrows()])
    keep = ["model", "device", "machine", *[c for c in columns if c in rows.columns]]
    out = rows[keep].drop_duplicates(subset=["model", "device", "machine"]).rename(columns=columns)
    return out.set_index(["model", "device", "machine"])


def mining_order(values: Sequence[str]) -> list[str]:
    return sorted(set(values), key=lambda m: (m == "none", str(m)))


def mining_text(m: str) -> str:
    return "no mining" if m == "none" else f"mining {m}"


def mining_table(df: pd.DataFrame) -> pd.DataFrame:
    """The study's table 1: mAP and prediction time with and without mining, per backbone.

    Returns a frame indexed by backbone (display names, VGG16 first) with the columns
    ``"mAP, mining 3:1"``, ``"mAP, no mining"``, ``"prediction ms, mining 3:1"``,
    ``"prediction ms, no mining"`` (one pair per mining setting present; rows of one
    backbone and setting averaged). Empty when ``df`` is.
    """
    if df.empty:
        return pd.DataFrame()
    require(df, ["backbone", "mining", "voc07_map", "prediction_ms"], "mining_table")
    settings = mining_order(df["mining"].astype(str).tolist())
    backbones = sorted(df["backbone"].unique(), key=backbone_rank)
    means = df.groupby(["backbone", "mining"])[["voc07_map", "prediction_ms"]].mean()
    out = pd.DataFrame(index=pd.Index([family_label(df, b) for b in backbones], name="backbone"))
    for metric, text in (("voc07_map", "mAP"), ("prediction_ms", "prediction ms")):
        for m in settings:
            out[f"{text}, {mining_text(m)}"] = [
                means.at[(b, m), metric] if (b, m) in means.index else np.nan for b in backbones
            ]
    return out


def nms_stages(row: Mapping[str, Any] | pd.Series) -> dict[str, dict[str, float]]:
    """Stage times (ms) of the two post-processing paths of one run.

    The vectorised path: ``forward_ms`` then ``decode_ms`` and ``nms_ms`` when the frame
    has them, else ``postprocess_ms``. The reference loop: ``forward_ms`` then
    ``reference_decode_ms`` and ``reference_nms_ms``, else ``reference_postprocess_ms``,
    else ``reference_prediction_ms - forward_ms`` (medians of separate measurements, so
    a difference of medians; clipped at 0).
    """
    forward = cell(row, "forward_ms", cell(row, "inference_ms"))
    out: dict[str, dict[str, float]] = {}
    if forward is None:
        return out
    if cell(row, "decode_ms") is not None and cell(row, "nms_ms") is not None:
        out["vectorised"] = {"forward": forward, "decoding": row["decode_ms"], "NMS": row["nms_ms"]}
    elif cell(row, "postprocess_ms") is not None:
        out["vectorised"] = {"forward": forward, "post-processing": row["postprocess_ms"]}
    if cell(row, "reference_decode_ms") is not None and cell(row, "reference_nms_ms") is not None:
        out["reference loop"] = {"forward": forward, "decoding": row["reference_decode_ms"],
                                 "NMS": row["reference_nms_ms"]}
    elif cell(row, "reference_postprocess_ms") is not None:
        out["reference loop"] = {"forward": forward, "post-processing": row["reference_postprocess_ms"]}
    elif cell(row, "reference_prediction_ms") is not None:
        out["reference loop"] = {"forward": forward,
                                 "post-processing": max(0.0, row["reference_prediction_ms"] - forward)}
    return out


def split_label(row: Mapping[str, Any] | pd.Series) -> str:
    """A run's short label; for a hardware row (column ``machine``) its device and machine too."""
    machine = cell(row, "machine")
    return short_label(row) + (f", {device_label(row)} [{machine}]" if machine else "")


def nms_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run and path: the stage times (ms), their total and the share after the forward pass.

    Columns: ``run``, ``path`` ("vectorised", "reference loop"), ``forward``, the
    post-processing stages present (``decoding`` and ``NMS``, or ``post-processing``),
    ``total``, ``post-processing share`` (fraction of the total spent after the forward
    pass).
    """
    records = []
    for _, row in df.iterrows():
        for path, stages in nms_stages(row).items():
            total = float(sum(stages.values()))
            rec: dict[str, Any] = {"run": split_label(row), "path": path, **stages, "total": total}
            rec["post-processing share"] = (total - stages["forward"]) / total if total > 0 else np.nan
            records.append(rec)
    return pd.DataFrame(records)


class PriorMap(NamedTuple):
    """One feature map's share of the priors: a ``size x size`` grid of cells,
    ``boxes_per_cell`` consecutive priors per cell, the first at index ``start``."""

    size: int
    boxes_per_cell: int
    start: int

    @property
    def count(self) -> int:
        return self.size * self.size * self.boxes_per_cell


def prior_layout(priors_cxcywh: np.ndarray) -> list[PriorMap]:
    """Recover the feature maps from priors laid out map by map, cell by cell (rows
    outer), the boxes of a cell consecutive (the layout of :mod:`ssdstudy.model.priors`
    and of the original code base).

    A cell is a run of priors with the same centre; a new map starts where the number
    of boxes per cell changes or the centre moves back up or left to a new row start
    that is not below the previous one. Consecutive 1x1 maps share their centre and
    cannot be told apart (small inputs give several): pass the model's
    ``zip(model.feature_map_sizes, model.boxes_per_cell)`` as ``layout`` instead.

    Raises:
        ValueError: when the priors do not form square maps in that layout.
    """
    p = np.asarray(priors_cxcywh, dtype=np.float64).reshape(-1, 4)
    if not len(p):
        return []
    centres = p[:, :2]
    change = np.any(np.abs(np.diff(centres, axis=0)) > 1e-9, axis=1)
    starts = np.concatenate([[0], np.nonzero(change)[0] + 1])
    counts = np.diff(np.concatenate([starts, [len(p)]]))
    maps: list[list[int]] = []  # per map: list of cell indices into starts
    for c in range(len(starts)):
        if not maps:
            maps.append([c])
            continue
        prev = maps[-1][-1]
        (px, py), (x, y) = centres[starts[prev]], centres[starts[c]]
        same_row = abs(y - py) <= 1e-9 and x > px
        next_row = y > py + 1e-9 and x <= centres[starts[maps[-1][0]]][0] + 1e-9
        if counts[c] == counts[prev] and (same_row or next_row):
            maps[-1].append(c)
        else:
            maps.append([c])
    out = []
    for cells in maps:
        side = round(np.sqrt(len(cells)))
        if side * side != len(cells):
            raise ValueError(f"prior_layout: a map of {len(cells)} cells is not square; pass layout explicitly")
        out.append(PriorMap(side, int(counts[cells[0]]), int(starts[cells[0]])))
    return out


def prior_maps(p: np.ndarray, layout: Sequence[tuple[int, int]] | None) -> list[PriorMap]:
    if layout is None:
        return prior_layout(p)
    maps, start = [], 0
    for size, per_cell in layout:
        maps.append(PriorMap(int(size), int(per_cell), start))
        start += int(size) * int(size) * int(per_cell)
    if start != len(p):
        raise ValueError(f"layout covers {start} priors, got {len(p)}")
    return maps


def prior_table(priors_cxcywh: np.ndarray, layout: Sequence[tuple[int, int]] | None = None) -> pd.DataFrame:
    """One row per feature map: its grid, boxes per cell, number of default boxes, and
    the smallest and largest box side (``sqrt(w * h)``, in % of the input side).

    ``layout`` as in :func:`draw_priors` (inferred when None).
    """
    p = np.asarray(priors_cxcywh, dtype=np.float64).reshape(-1, 4)
    maps = prior_maps(p, layout)
    rows = []
    for m in maps:
        block = p[m.start:m.start + m.count]
        side = np.sqrt(block[:, 2] * block[:, 3]) * 100
        rows.append({"feature map": f"{m.size}x{m.size}", "boxes per cell": m.boxes_per_cell,
                     "default boxes": m.count, "smallest box (%)": round(float(side.min()), 1),
                     "largest box (%)": round(float(side.max()), 1)})
    return pd.DataFrame(rows)


def ap_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class AP of one run's ``metrics.json``: index class, columns ``"AP (VOC07)"``
    and ``"AP (VOC10+)"``, sorted by VOC07 AP (best first)."""
    per_class = metrics.get("ap_per_class") or {}
    frame = pd.DataFrame(
        {"AP (VOC07)": [v.get("voc07", np.nan) for v in per_class.values()],
         "AP (VOC10+)": [v.get("voc", np.nan) for v in per_class.values()]},
        index=pd.Index(list(per_class), name="class"),
    )
    return frame.sort_values("AP (VOC07)", ascending=False)


def timing_table(timing: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per timed device of one run's ``timing.json``: medians and IQRs (ms) of
    inference, prediction and reference prediction, throughput, memory."""
    rows = []
    for key, t in timing.items():
        row: dict[str, Any] = {"device": key, "name": t.get("device_name", ""), "threads": t.get("threads")}
        for metric, text in (("inference_ms", "inference"), ("prediction_ms", "prediction"),
                             ("reference_prediction_ms", "reference prediction")):
            s = t.get(metric) or {}
            row[f"{text} ms"] = s.get("median", np.nan)
            row[f"{text} IQR"] = s.get("iqr", np.nan)
        row["images/s (batched)"] = t.get("throughput_images_per_s", np.nan)
        row["peak memory MB"] = t.get("peak_memory_mb", np.nan)
        memory = t.get("memory") or {}
        row["train step peak MB"] = np.nan if memory.get("train_peak_mb") is None else memory["train_peak_mb"]
        row["prediction peak MB"] = np.nan if memory.get("predict_peak_mb") is None else memory["predict_peak_mb"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("device") if rows else pd.DataFrame()
