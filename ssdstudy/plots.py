"""The book's figures, drawn from the frames of :mod:`ssdstudy.results`.

Every function takes plain data (a pandas DataFrame with the columns of
:func:`ssdstudy.results.load_runs` or :func:`ssdstudy.results.load_hardware`, or numpy
images) and returns a :class:`matplotlib.figure.Figure`; the tables and the names runs
go by are :mod:`ssdstudy.tables`'. No function reads or writes files or touches
pyplot's global figure list: figures are made with :class:`~matplotlib.figure.Figure`
directly and styled inside a temporary ``rc_context``, so a notebook shows each figure
once (``%matplotlib inline`` renders a figure that a cell returns) and tests can make
hundreds without leaking memory.

One visual language throughout: colour names the backbone, the marker (or the bar's
hatch) names the augmentation setting, and widths of MobileNetV1 are written beside
the points (``x0.5``). A frame with no usable rows gives a figure that says so instead
of raising, so a chapter over an unfinished study still builds.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from ssdstudy.tables import (
    backbone_label,
    backbone_rank,
    cell,
    device_label,
    family_label,
    has_memory,
    mining_order,
    mining_table,
    mining_text,
    nms_stages,
    prior_maps,
    require,
    short_label,
    split_label,
    width_text,
)

__all__ = [
    "augment_marker",
    "augmentation_ablation",
    "augmentation_grid",
    "backbone_color",
    "detection_grid",
    "device_times",
    "draw_detections",
    "draw_priors",
    "map_vs_memory",
    "map_vs_prediction_time",
    "mining_figure",
    "nms_split",
    "seed_spread_figure",
    "size_bins",
    "to_uint8_image",
    "training_curves",
]

# --- the visual language ---------------------------------------------------------------

_PALETTE = sns.color_palette("colorblind", 10).as_hex()
_BACKBONE_COLORS: dict[str, str] = {
    "vgg16": _PALETTE[3], "vgg16_bn": _PALETTE[3], "mobilenet_v1": _PALETTE[0], "squeezenet": _PALETTE[2],
}
_OTHER_COLORS = [_PALETTE[i] for i in (2, 4, 1, 5, 6, 7, 8, 9)]

#: Augmentation settings in the order the book lists them, with their markers.
AUGMENT_ORDER: tuple[str, ...] = ("all", "none", "no photometric", "no expand", "no crop", "no mirror")
_AUGMENT_MARKERS: dict[str, str] = {
    "all": "o", "none": "X", "no photometric": "s", "no expand": "^", "no crop": "v", "no mirror": "D",
}
_OTHER_MARKERS = ("P", "*", "h", "<", ">", "p", "d")

_METRIC_LABELS: dict[str, str] = {
    "epoch_seconds": "training time per epoch (s)",
    "prediction_ms": "prediction time per image (ms, median, batch 1)",
    "inference_ms": "inference time per image (ms, median, batch 1)",
    "reference_prediction_ms": "prediction time, reference NMS loop (ms, median)",
}
MAP_LABEL = "mAP (VOC07 11-point)"

_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """The book's style for the figures made inside the block (rcParams restored after)."""
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        yield


def _figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    """A free-standing figure (not registered with pyplot) and its axes."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def backbone_color(name: str) -> str:
    """The colour of a backbone (a stable colour for names the study does not know)."""
    if name in _BACKBONE_COLORS:
        return _BACKBONE_COLORS[name]
    return _OTHER_COLORS[sum(map(ord, str(name))) % len(_OTHER_COLORS)]


def augment_marker(setting: str) -> str:
    """The marker of an augmentation setting ("all", "none", "no crop", ...)."""
    if setting in _AUGMENT_MARKERS:
        return _AUGMENT_MARKERS[setting]
    return _OTHER_MARKERS[sum(map(ord, str(setting))) % len(_OTHER_MARKERS)]


def _augment_rank(setting: str) -> tuple[int, str]:
    return (AUGMENT_ORDER.index(setting) if setting in AUGMENT_ORDER else len(AUGMENT_ORDER), str(setting))


def _fmt(value: float) -> str:
    """A time for a bar label: ``1,234``, ``56.7``, ``8.9``, ``0.12``."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.2g}"


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _lighten(color: str, amount: float) -> tuple[float, float, float]:
    """Mix ``color`` with white (amount 0: unchanged, 1: white)."""
    r, g, b = mpl.colors.to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def _series_colors(df: pd.DataFrame) -> list[tuple[float, float, float]]:
    """One colour per row: the backbone's colour, lighter for each further row of it."""
    seen: dict[str, int] = {}
    colors = []
    for _, row in df.iterrows():
        b = cell(row, "backbone", "")
        k = seen.get(b, 0)
        seen[b] = k + 1
        colors.append(_lighten(backbone_color(b), min(0.6, 0.22 * k)))
    return colors


def _hatch(augment: Any) -> str:
    return "" if augment in (None, "all") else ("//" if augment == "none" else "..")


# --- fig. 9: accuracy against speed ------------------------------------------------------


def map_vs_prediction_time(
    df: pd.DataFrame,
    *,
    x: str = "prediction_ms",
    y: str = "voc07_map",
    log_x: bool = False,
    title: str | None = None,
) -> Figure:
    """mAP against prediction time, one point per run (the study's fig. 9).

    Colour: backbone; marker: augmentation setting; every point labelled with
    :func:`short_label`. Runs of one backbone that differ only in width are joined by a
    thin line in order of width. Where the rows hold ``voc07_map_low`` and
    ``voc07_map_high`` (the run's 95 % bootstrap interval over its test images), a
    vertical bar shows it.

    Args:
        df: rows of :func:`ssdstudy.results.load_runs` (columns ``backbone``, ``width``,
            ``augment``, ``mining``, ``x`` and ``y``).
    """
    require(df, ["backbone", x, y], "map_vs_prediction_time")
    with _style():
        fig, axes = _figure(figsize=(7.0, 4.6))
        ax = axes[0, 0]
        data = df.dropna(subset=[x, y]) if len(df) else df
        if data.empty:
            _empty(ax, "no finished runs to plot")
            return fig
        data = _accuracy_points(ax, data, x, y)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(_METRIC_LABELS.get(x, x))
        ax.set_ylabel(MAP_LABEL if y == "voc07_map" else y)
        _accuracy_legends(ax, data)
        if title:
            ax.set_title(title)
    return fig


def _accuracy_points(ax: Axes, data: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The runs of ``data`` as points of ``y`` against ``x`` on ``ax`` (colour: backbone,
    marker: augmentation, label: :func:`short_label`), joined by a thin line across
    widths of one series, with their 95 % intervals where the rows hold them. Returns
    ``data`` with the defaults of missing ``width``, ``augment`` and ``mining``."""
    data = data.copy()
    for col, default in (("width", 1.0), ("augment", "all"), ("mining", "3:1")):
        if col not in data.columns:
            data[col] = default
    # width series: same backbone, augmentation and mining, several widths
    for _, group in data.groupby(["backbone", "augment", "mining"], sort=False):
        if group["width"].nunique() > 1:
            g = group.sort_values("width")
            ax.plot(g[x], g[y], color=backbone_color(g["backbone"].iloc[0]), lw=1, alpha=0.5, zorder=2)
    for _, row in data.iterrows():
        low, high = row.get(f"{y}_low"), row.get(f"{y}_high")
        if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
            ax.errorbar([row[x]], [row[y]], yerr=[[max(row[y] - low, 0)], [max(high - row[y], 0)]],
                        fmt="none", ecolor=backbone_color(row["backbone"]), elinewidth=1, capsize=3,
                        alpha=0.7, zorder=2)
        ax.scatter(
            [row[x]], [row[y]], s=64, color=backbone_color(row["backbone"]),
            marker=augment_marker(row["augment"]), edgecolor="black", linewidth=0.6, zorder=3,
        )
        ax.annotate(short_label(row), (row[x], row[y]), xytext=(5, 4), textcoords="offset points", fontsize=7)
    ax.margins(x=0.15, y=0.12)
    return data


def _accuracy_handles(data: pd.DataFrame) -> tuple[list[Patch], list[Line2D]]:
    """Legend entries of the backbones (colour) and augmentation settings (marker) in ``data``."""
    backbones = sorted(data["backbone"].unique(), key=backbone_rank)
    augments = sorted(data["augment"].unique(), key=_augment_rank)
    return ([Patch(color=backbone_color(b), label=family_label(data, b)) for b in backbones],
            [Line2D([], [], ls="", marker=augment_marker(a), color="0.35", label=str(a)) for a in augments])


def _accuracy_legends(ax: Axes, data: pd.DataFrame) -> None:
    """The backbone (colour) and augmentation (marker) legends, right of ``ax``."""
    backbones, augments = _accuracy_handles(data)
    first = ax.legend(handles=backbones, title="backbone", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.add_artist(first)
    ax.legend(handles=augments, title="augmentation", loc="lower left", bbox_to_anchor=(1.01, 0.0))


# --- accuracy against memory ---------------------------------------------------------------

#: The memory columns of :func:`map_vs_memory`'s panels and their axis labels.
_MEMORY_PANELS = (
    ("train_peak_mb", "peak memory of a training step (MB)"),
    ("predict_peak_mb", "peak memory of a prediction at batch 1 (MB)"),
)
#: Said where no run has memory figures.
NO_MEMORY = "no memory measured for these runs (timed before it was, or with timing.memory off)"


def map_vs_memory(df: pd.DataFrame, *, y: str = "voc07_map", title: str | None = None) -> Figure:
    """mAP against peak memory, one point per run: a training step at the run's batch
    size (left) and a prediction at batch 1 (right), each measured in a fresh process
    (:mod:`ssdstudy.memory`; on the CPU, the process's peak resident set, the
    interpreter and libraries included).

    The visual language of :func:`map_vs_prediction_time`: colour the backbone, marker
    the augmentation, a thin line across widths, the 95 % interval as a bar. A dotted
    line marks the processes' baseline (the memory of the interpreter and libraries
    before any model: column ``memory_baseline_mb``), the part no model can save.
    Runs without memory figures (timed before memory was measured) are left out; with
    none, the panels say so.

    Args:
        df: rows of :func:`ssdstudy.results.load_runs` (columns ``backbone``, ``y`` and,
            for the points, ``train_peak_mb`` and ``predict_peak_mb``).
    """
    require(df, ["backbone", y], "map_vs_memory")
    with _style():
        fig, axes = _figure(1, 2, figsize=(10.0, 4.4), sharey=True)
        if not len(df):
            for ax in axes[0]:
                _empty(ax, "no finished runs to plot")
            return fig
        drawn = None
        for ax, (x, label) in zip(axes[0], _MEMORY_PANELS):
            data = df.dropna(subset=[x, y]) if x in df.columns else df.iloc[:0]
            if data.empty:
                _empty(ax, NO_MEMORY if not has_memory(df) else "not measured for these runs")
                continue
            drawn = _accuracy_points(ax, data, x, y)
            base = data["memory_baseline_mb"].dropna() if "memory_baseline_mb" in data.columns else pd.Series([])
            if len(base):
                ax.axvline(float(base.median()), color="0.5", ls=":", lw=1, zorder=1)
                ax.annotate("interpreter and libraries", (float(base.median()), 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -3), textcoords="offset points", fontsize=7, color="0.4", va="top")
                lo, hi = ax.get_xlim()
                ax.set_xlim(min(lo, float(base.min()) * 0.97), hi)
            ax.set_xlabel(label)
        axes[0, 0].set_ylabel(MAP_LABEL if y == "voc07_map" else y)
        if drawn is not None:  # beside both panels, room made by the layout
            backbones, augments = _accuracy_handles(drawn)
            fig.legend(handles=backbones, title="backbone", loc="outside right upper")
            fig.legend(handles=augments, title="augmentation", loc="outside right lower")
        if title:
            fig.suptitle(title)
    return fig


# --- figs. 10-12: devices ------------------------------------------------------------------


def device_times(hw_df: pd.DataFrame, metric: str = "prediction_ms", *, log: bool | None = None) -> Figure:
    """Grouped horizontal bars: one group per device, one bar per backbone (figs. 10-12).

    Args:
        hw_df: rows of :func:`ssdstudy.results.load_hardware` (``device``,
            ``device_name``, ``threads``, ``backbone``, ``width`` and ``metric``).
            Several rows of one (device, backbone) are averaged; rows without the
            metric (NaN) are left out. A device measured on several machines (column
            ``machine``) is shown once per machine. A bar with a row flagged ``busy``
            (``train_busy`` for ``epoch_seconds``) is hatched and labelled "(busy)".
        metric: ``"epoch_seconds"``, ``"prediction_ms"``, ``"inference_ms"`` or
            ``"reference_prediction_ms"``.
        log: a logarithmic time axis; None (default) chooses one when the largest
            value is more than 30 times the smallest (CPUs against GPUs).
    """
    if metric not in _METRIC_LABELS:
        raise ValueError(f"device_times: unknown metric {metric!r} (use {', '.join(_METRIC_LABELS)})")
    require(hw_df, ["backbone", metric], "device_times")
    data = hw_df.dropna(subset=[metric]) if len(hw_df) else hw_df
    n_devices, n_series = 1, 1
    if not data.empty:
        data = data.copy()
        data["_device"] = [device_label(r) for _, r in data.iterrows()]
        if "machine" in data.columns:
            # one device of two machines (the study machine and this one, say): two groups
            machine = data["machine"].fillna("?").astype(str)
            shared = data.assign(_m=machine).groupby("_device")["_m"].transform("nunique") > 1
            data["_device"] = [f"{d} [{m}]" if two else d for d, m, two in zip(data["_device"], machine, shared)]
        flag = "train_busy" if metric == "epoch_seconds" else "busy"
        data["_busy"] = data[flag].fillna(False).astype(bool) if flag in data.columns else False
        data["_gpu"] = [0 if cell(r, "device", "cpu") == "cpu" else 1 for _, r in data.iterrows()]
        data["_series"] = [backbone_label(cell(r, "variant") or r["backbone"]) + width_text(cell(r, "width", 1.0)) for _, r in data.iterrows()]
        n_devices, n_series = data["_device"].nunique(), data["_series"].nunique()
    with _style():
        fig, axes = _figure(figsize=(7.0, 1.0 + 0.3 * n_devices * (n_series + 0.5)))
        ax = axes[0, 0]
        if data.empty:
            _empty(ax, f"no measurements of {metric}")
            return fig
        devices = (
            data.groupby("_device")["_gpu"].first().reset_index().sort_values(["_gpu", "_device"])["_device"].tolist()
        )
        series_rows = data.drop_duplicates("_series").assign(_rank=lambda d: [backbone_rank(b) for b in d["backbone"]])
        series_rows = series_rows.sort_values(["_rank", "width"] if "width" in series_rows else ["_rank"])
        series = series_rows["_series"].tolist()
        table = data.pivot_table(index="_device", columns="_series", values=metric, aggfunc="mean")
        busy = data.pivot_table(index="_device", columns="_series", values="_busy", aggfunc="max")
        height = 0.8 / len(series)
        colors = _series_colors(series_rows)
        for j, (name, color) in enumerate(zip(series, colors)):
            for i, device in enumerate(devices):
                value = table.at[device, name] if name in table.columns and device in table.index else np.nan
                if pd.isna(value):
                    continue
                y = i - 0.4 + height * (j + 0.5)
                flagged = bool(busy.at[device, name]) if name in busy.columns and device in busy.index else False
                ax.barh(y, value, height=height * 0.92, color=color, hatch="xx" if flagged else "",
                        edgecolor="white" if flagged else None)
                ax.annotate(_fmt(value) + (" (busy)" if flagged else ""), (value, y), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(range(len(devices)), devices)
        ax.invert_yaxis()
        ax.set_xlabel(_METRIC_LABELS[metric])
        values = table.to_numpy(dtype=float)
        values = values[np.isfinite(values) & (values > 0)]
        if log is None:
            log = bool(len(values)) and values.max() > 30 * values.min()
        if log:
            ax.set_xscale("log")
        ax.margins(x=0.12)
        ax.legend(handles=[Patch(color=c, label=s) for s, c in zip(series, colors)], title="backbone",
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --- fig. 12 (sizes) ------------------------------------------------------------------------


def _bin_columns(df: pd.DataFrame) -> list[str]:
    """The ``"bin <lo>-<hi>"`` columns, in order of their lower edge."""
    cols = [c for c in df.columns if isinstance(c, str) and re.fullmatch(r"bin \d+(\.\d+)?-\d+(\.\d+)?", c)]
    return sorted(cols, key=lambda c: float(c[4:].split("-")[0]))


def size_bins(df: pd.DataFrame) -> Figure:
    """mAP per object-size bin, one bar per run (the study's fig. 12 on sizes).

    Bins are the frame's ``"bin 0-5"`` ... ``"bin 80-100"`` columns in order of size;
    the tick labels give the number of test images in each bin (``"images 0-5"``...).
    Colour: backbone; hatching: augmentation off (``//``) or partial (``..``).
    """
    bins = _bin_columns(df)
    with _style():
        fig, axes = _figure(figsize=(7.5, 3.8))
        ax = axes[0, 0]
        if df.empty or not bins:
            _empty(ax, "no per-bin results to plot")
            return fig
        rows = df.reset_index(drop=True)
        labels = [short_label(r) for _, r in rows.iterrows()]
        colors = _series_colors(rows)
        width = 0.8 / len(rows)
        for j, (_, row) in enumerate(rows.iterrows()):
            for i, col in enumerate(bins):
                value = row[col]
                if pd.isna(value):
                    continue
                ax.bar(i - 0.4 + width * (j + 0.5), value, width=width * 0.92, color=colors[j],
                       hatch=_hatch(cell(row, "augment", "all")), edgecolor="white", linewidth=0.4)
        ticks = []
        for col in bins:
            name = col[4:]
            count_col = f"images {name}"
            if count_col in rows.columns:
                counts = rows[count_col].dropna().astype(int)
                lo, hi = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
                n = f"{lo}" if lo == hi else f"{lo}-{hi}"
                ticks.append(f"{name} %\n{n} images")
            else:
                ticks.append(f"{name} %")
        ax.set_xticks(range(len(bins)), ticks)
        ax.set_xlabel("object area / image area (all objects of an image in the bin)")
        ax.set_ylabel(MAP_LABEL)
        ax.set_ylim(0, max(1e-3, float(np.nanmax(rows[bins].to_numpy(dtype=float)) if rows[bins].notna().any().any() else 1.0)) * 1.12)
        handles = [Patch(facecolor=c, hatch=_hatch(cell(r, "augment", "all")), edgecolor="white", label=lab)
                   for c, lab, (_, r) in zip(colors, labels, rows.iterrows())]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def runtime_tradeoff(df: pd.DataFrame) -> Figure:
    """VOC07 mAP (or, without scores, the model) against prediction time for each runtime,
    one panel per model measured: where the time goes and what it costs in accuracy."""
    with _style():
        models = list(dict.fromkeys(zip(df["variant"], df["width"], df["machine"]))) if len(df) else []
        fig, axes = _figure(1, max(1, len(models)), figsize=(4.2 * max(1, len(models)), 3.8))
        if not models:
            _empty(axes[0, 0], "no runtime measurements to plot")
            return fig
        for ax, (variant, width, machine) in zip(axes[0], models, strict=True):
            rows = df[(df["variant"] == variant) & (df["width"] == width) & (df["machine"] == machine)]
            scored = rows["voc07_map"].notna().any()
            y = rows["voc07_map"] if scored else pd.Series(range(len(rows)), index=rows.index)
            for k, (_, r) in enumerate(rows.iterrows()):
                ax.errorbar(r["prediction_ms"], y.loc[r.name], xerr=r["prediction_ms_iqr"] / 2,
                            fmt="o", color=_PALETTE[k % len(_PALETTE)], label=r["runtime"])
            ax.set_xscale("log")
            ax.set_xlabel("prediction time per image (ms, log)")
            ax.set_ylabel(MAP_LABEL if scored else "runtime")
            if not scored:
                ax.set_yticks(range(len(rows)), list(rows["runtime"]))
            ax.set_title(f"{backbone_label(variant)}{width_text(width)}\n{machine}", fontsize=9)
        axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def receptive_fields(fields: pd.DataFrame) -> Figure:
    """Receptive fields against default boxes, one panel per model: per source map, the
    theoretical field (circle), the effective field (diamond, where measured, with its
    95 % bootstrap interval over the images) and the
    span of its default boxes from the small square to the longest side (bar, the big
    square marked); sides in input pixels, on a log scale, the input's side dashed."""
    with _style():
        models = list(dict.fromkeys(fields["label"])) if len(fields) else []
        fig, axes = _figure(1, max(1, len(models)), figsize=(3.2 * max(1, len(models)), 3.6), sharey=True)
        if not models:
            _empty(axes[0, 0], "no fields to plot")
            return fig
        for ax, model in zip(axes[0], models, strict=True):
            rows = fields[fields["label"] == model].reset_index(drop=True)
            x = np.arange(len(rows))
            ax.vlines(x, rows["box_smallest"], rows["box_longest"], color="0.55", lw=6, alpha=0.6,
                      label="default boxes")
            ax.plot(x, rows["box_square"], "_", color="0.2", ms=12)
            ax.plot(x, rows["theoretical"], "o", color=_PALETTE[0], label="theoretical field")
            if "effective" in rows and rows["effective"].notna().any():
                ax.plot(x, rows["effective"], "D", color=_PALETTE[1], label="effective field")
                if "effective_high" in rows and rows["effective_high"].notna().any():
                    ax.vlines(x, rows["effective_low"], rows["effective_high"], color=_PALETTE[1], lw=1.2)
            size = rows.get("image_size")
            if size is not None and size.notna().any():
                ax.axhline(float(size.iloc[0]), color="0.3", ls="--", lw=0.8)
            ax.set_xticks(x, [f"{int(m)}x{int(m)}" for m in rows["map_size"]], rotation=45)
            ax.set_yscale("log")
            ax.set_title(model, fontsize=9)
            ax.set_xlabel("source map")
        axes[0, 0].set_ylabel("side (input pixels)")
        axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --- table 1: hard-negative mining -------------------------------------------------------------


def mining_figure(df: pd.DataFrame) -> Figure:
    """Two panels, mAP and prediction time, bars per backbone with and without mining.

    Colour: backbone; hatching: no mining.
    """
    table = mining_table(df)
    with _style():
        fig, axes = _figure(1, 2, figsize=(7.5, 3.2))
        if table.empty:
            for ax in axes[0]:
                _empty(ax, "no finished runs")
            return fig
        settings = mining_order(df["mining"].astype(str).tolist())
        backbones = sorted(df["backbone"].unique(), key=backbone_rank)
        width = 0.8 / len(settings)
        for ax, (metric, ylabel) in zip(axes[0], (("mAP", MAP_LABEL), ("prediction ms", "prediction time per image (ms)"))):
            for j, m in enumerate(settings):
                col = f"{metric}, {mining_text(m)}"
                for i, b in enumerate(backbones):
                    value = table.at[family_label(df, b), col]
                    if pd.isna(value):
                        continue
                    x = i - 0.4 + width * (j + 0.5)
                    ax.bar(x, value, width=width * 0.92, color=backbone_color(b),
                           hatch="//" if m == "none" else "", edgecolor="white", linewidth=0.4)
                    ax.annotate(f"{value:.3f}" if metric == "mAP" else _fmt(value), (x, value), xytext=(0, 2),
                                textcoords="offset points", ha="center", fontsize=7)
            ax.set_xticks(range(len(backbones)), [family_label(df, b) for b in backbones])
            ax.set_ylabel(ylabel)
            ax.margins(y=0.15)
        axes[0, 1].legend(
            handles=[Patch(facecolor="0.6", hatch="//" if m == "none" else "", edgecolor="white", label=mining_text(m))
                     for m in settings], loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --- the NMS bottleneck -----------------------------------------------------------------------


_STAGE_COLORS = {"decoding": "0.72", "NMS": "0.35", "post-processing": "0.5"}


def nms_split(df: pd.DataFrame) -> Figure:
    """Prediction time split into stages, vectorised path against the reference loop.

    One stacked horizontal bar per (run, path): the forward pass in the backbone's
    colour, then decoding and NMS (or post-processing as one stage) in greys; the total
    is written at the end of each bar. Columns read: see :func:`nms_table`.
    """
    with _style():
        rows = [(r, nms_stages(r)) for _, r in df.iterrows()] if len(df) else []
        bars = [(r, path, stages) for r, paths in rows for path, stages in paths.items()]
        fig, axes = _figure(figsize=(7.5, 1.0 + 0.45 * max(1, len(bars))))
        ax = axes[0, 0]
        if not bars:
            _empty(ax, "no stage timings to plot")
            return fig
        used: dict[str, Any] = {}
        for i, (row, path, stages) in enumerate(bars):
            left = 0.0
            for stage, ms in stages.items():
                color = backbone_color(row["backbone"]) if stage == "forward" else _STAGE_COLORS[stage]
                ax.barh(i, ms, left=left, height=0.7, color=color, edgecolor="white", linewidth=0.4,
                        hatch="//" if path == "reference loop" and stage != "forward" else "")
                used.setdefault(stage if stage != "forward" else "forward pass", color if stage != "forward" else "0.85")
                left += ms
            ax.annotate(f"{_fmt(left)} ms", (left, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(range(len(bars)), [f"{split_label(r)}: {p}" for r, p, _ in bars])
        ax.invert_yaxis()
        ax.set_xlabel("time per image (ms, medians, batch 1)")
        ax.margins(x=0.12)
        handles = [Patch(facecolor=c, edgecolor="0.5", label=s) for s, c in used.items()]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  title="forward: backbone colour")
    return fig


# --- augmentation ablation ----------------------------------------------------------------------


def augmentation_ablation(df: pd.DataFrame) -> Figure:
    """mAP with all augmentation steps, none, and each step left out in turn.

    One horizontal bar per (backbone, setting), settings in the order all, none, no
    photometric, no expand, no crop, no mirror (other combinations after); each bar is
    labelled with its mAP and its difference from "all" of the same backbone, which is
    also drawn as a dashed line.
    """
    require(df, ["backbone", "augment", "voc07_map"], "augmentation_ablation")
    data = df.dropna(subset=["voc07_map"]) if len(df) else df
    with _style():
        n = 1 if data.empty else len(data.groupby(["backbone", "augment"]))
        fig, axes = _figure(figsize=(7.0, 1.0 + 0.38 * n))
        ax = axes[0, 0]
        if data.empty:
            _empty(ax, "no finished runs to plot")
            return fig
        means = data.groupby(["backbone", "augment"])["voc07_map"].mean()
        backbones = sorted(data["backbone"].unique(), key=backbone_rank)
        settings = sorted(data["augment"].unique(), key=_augment_rank)
        y = 0
        ticks, labels = [], []
        for b in backbones:
            base = means.get((b, "all"), np.nan)
            start = y
            for s in settings:
                if (b, s) not in means.index:
                    continue
                value = means[(b, s)]
                ax.barh(y, value, height=0.7, color=backbone_color(b), hatch=_hatch(s), edgecolor="white",
                        linewidth=0.4)
                text = f"{value:.3f}"
                if not pd.isna(base) and s != "all":
                    text += f" ({value - base:+.3f})"
                ax.annotate(text, (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
                ticks.append(y)
                labels.append(f"{family_label(data, b)}: {s}" if len(backbones) > 1 else str(s))
                y += 1
            if not pd.isna(base):
                ax.plot([base, base], [start - 0.45, y - 0.55], ls="--", lw=1, color="0.3")
            y += 0.5
        ax.set_yticks(ticks, labels)
        ax.invert_yaxis()
        ax.set_xlabel(MAP_LABEL)
        ax.margins(x=0.2)
    return fig


# --- training curves -------------------------------------------------------------------------


def training_curves(histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Loss and validation mAP per epoch, one colour per run.

    Args:
        histories: run label -> history frame (``epoch``, ``loss``, optionally
            ``loc_loss``, ``cls_loss`` and ``val_voc07_map``; NaN where not measured).
            With a single run its localisation and classification losses are drawn
            too (dashed and dotted).
    """
    with _style():
        fig, axes = _figure(1, 2, figsize=(8.0, 3.2))
        ax_loss, ax_map = axes[0]
        usable = {k: h for k, h in histories.items() if len(h) and "epoch" in h and "loss" in h}
        if not usable:
            _empty(ax_loss, "no training history")
            _empty(ax_map, "no training history")
            return fig
        colors = sns.color_palette("colorblind", max(3, len(usable))).as_hex()
        any_map = False
        for (label, h), color in zip(usable.items(), colors):
            ax_loss.plot(h["epoch"], h["loss"], color=color, lw=1.5, label=label)
            if len(usable) == 1:
                for col, ls in (("loc_loss", "--"), ("cls_loss", ":")):
                    if col in h:
                        ax_loss.plot(h["epoch"], h[col], color=color, lw=1, ls=ls, label=col.replace("_", " "))
            if "val_voc07_map" in h and h["val_voc07_map"].notna().any():
                v = h.dropna(subset=["val_voc07_map"])
                ax_map.plot(v["epoch"], v["val_voc07_map"], color=color, marker="o", ms=4, lw=1.2, label=label)
                any_map = True
        for ax in (ax_loss, ax_map):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("training loss (per positive)")
        ax_loss.legend(loc="upper right")
        if any_map:
            ax_map.set_xlabel("epoch")
            ax_map.set_ylabel("validation " + MAP_LABEL)
        else:
            _empty(ax_map, "no validation mAP recorded during training")
    return fig


# --- images: detections, default boxes, augmentation ------------------------------------------


def _class_color(label: int) -> tuple[float, float, float]:
    palette = sns.color_palette("tab20", 20)
    return palette[(int(label) - 1) % 20]


def _as_image(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected an HWC image, got shape {arr.shape} (CHW? use to_uint8_image)")
    return arr


def draw_detections(
    image_uint8_hwc: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None,
    class_names: Sequence[str],
    ax: Axes | None = None,
    *,
    score_threshold: float = 0.0,
    max_boxes: int = 50,
    title: str | None = None,
) -> Figure:
    """An image with its detections (or ground truth, with ``scores=None``).

    Args:
        image_uint8_hwc: (H, W, 3) uint8 image.
        boxes: (K, 4) XYXY in the image's pixels.
        labels: (K,) 1-based labels (label i is ``class_names[i - 1]``; 0 is background).
        scores: (K,) scores, or None for ground truth.
        ax: draw into this axes; a new figure otherwise.
        score_threshold: boxes with a lower score are not drawn.
        max_boxes: at most this many boxes, best first.

    Returns:
        The figure holding ``ax``.
    """
    image = _as_image(image_uint8_hwc)
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(int)
    order = np.arange(len(boxes))
    if scores is not None:
        scores = np.asarray(scores, dtype=float).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= score_threshold]
    order = order[:max_boxes]
    with _style():
        if ax is None:
            _, axes = _figure(figsize=(5.0, 5.0 * image.shape[0] / max(1, image.shape[1])))
            ax = axes[0, 0]
        ax.imshow(image)
        for k in order:
            x1, y1, x2, y2 = boxes[k]
            color = _class_color(labels[k])
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.6))
            lab = labels[k]
            name = class_names[lab - 1] if 1 <= lab <= len(class_names) else str(lab)
            text = name if scores is None else f"{name} {scores[k]:.2f}"
            ax.text(x1, y1, text, fontsize=7, color="white", va="bottom",
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.85})
        ax.set_axis_off()
        if title:
            ax.set_title(title)
    return ax.figure


def detection_grid(
    samples: Sequence[tuple[np.ndarray, Mapping[str, Any], Sequence[str]]],
    *,
    ncols: int = 2,
    score_threshold: float = 0.0,
) -> Figure:
    """Several images with their detections, as returned by
    :func:`ssdstudy.pipeline.sample_detections`: ``(image (H,W,3) uint8, {"boxes",
    "labels", "scores"}, class_names)`` each."""
    n = max(1, len(samples))
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    with _style():
        fig, axes = _figure(nrows, ncols, figsize=(3.6 * ncols, 3.6 * nrows))
        flat = axes.ravel()
        for ax in flat[len(samples):]:
            ax.set_axis_off()
        if not samples:
            _empty(flat[0], "no test images")
            return fig
        for ax, (image, det, names) in zip(flat, samples):
            draw_detections(image, det["boxes"], det["labels"], det.get("scores"), names, ax=ax,
                            score_threshold=score_threshold)
    return fig


def draw_priors(
    image: np.ndarray | None,
    priors_cxcywh: np.ndarray,
    *,
    layout: Sequence[tuple[int, int]] | None = None,
    points: Sequence[tuple[float, float]] = ((0.5, 0.5),),
    ncols: int = 3,
) -> Figure:
    """The default boxes of a few cells of every feature map, drawn on an image.

    One panel per feature map: the map's grid of cells (for maps up to 19 cells
    across), and every default box of the cell that holds each of ``points``.

    Args:
        image: (H, W, 3) uint8 image the priors are drawn on (resized views are not
            needed: priors are relative), or None for a grey canvas of 300 x 300.
        priors_cxcywh: (P, 4) centre-form priors relative to the input, in [0, 1].
        layout: ``(feature-map size, boxes per cell)`` per map; inferred with
            :func:`prior_layout` when None.
        points: (x, y) points relative to the image; the cell holding each is drawn.
    """
    p = np.asarray(priors_cxcywh, dtype=np.float64).reshape(-1, 4)
    maps = prior_maps(p, layout)
    canvas = np.full((300, 300, 3), 200, np.uint8) if image is None else _as_image(image)
    h, w = canvas.shape[:2]
    n = max(1, len(maps))
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    with _style():
        fig, axes = _figure(nrows, ncols, figsize=(3.0 * ncols, 3.0 * nrows * h / w + 0.3))
        flat = axes.ravel()
        for ax in flat[len(maps):]:
            ax.set_axis_off()
        for ax, m in zip(flat, maps):
            ax.imshow(canvas)
            block = p[m.start:m.start + m.count].reshape(m.size * m.size, m.boxes_per_cell, 4)
            cell_centres = block[:, 0, :2]
            if m.size <= 19:
                xs = np.unique(np.round(cell_centres[:, 0], 9))
                step = (xs[1] - xs[0]) if len(xs) > 1 else 1.0
                for k in range(m.size + 1):
                    e = (xs[0] - step / 2 + k * step)
                    ax.axvline(e * w, color="white", lw=0.4, alpha=0.6)
                    ax.axhline(e * h, color="white", lw=0.4, alpha=0.6)
            for px, py in points:
                cell = int(np.argmin((cell_centres[:, 0] - px) ** 2 + (cell_centres[:, 1] - py) ** 2))
                palette = sns.color_palette("husl", m.boxes_per_cell)
                for b, (cx, cy, bw, bh) in enumerate(block[cell]):
                    ax.add_patch(Rectangle(((cx - bw / 2) * w, (cy - bh / 2) * h), bw * w, bh * h,
                                           fill=False, edgecolor=palette[b], linewidth=1.3))
                ax.plot([block[cell, 0, 0] * w], [block[cell, 0, 1] * h], marker="+", color="white", ms=6)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_axis_off()
            ax.set_title(f"{m.size}x{m.size} map, {m.boxes_per_cell} boxes per cell", fontsize=8)
    return fig


def to_uint8_image(tensor_chw: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the network's normalisation: (3, H, W) float ``(x / 255 - mean) / std`` ->
    (H, W, 3) uint8."""
    arr = np.asarray(tensor_chw, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) array, got shape {arr.shape}")
    arr = arr * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    return np.clip(np.round(arr.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def augmentation_grid(
    images: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    boxes: Sequence[np.ndarray | None] | None = None,
    ncols: int = 4,
) -> Figure:
    """A grid of images, e.g. one training image and several augmented versions of it
    (the study's figs. 6 and 7).

    Args:
        images: (H, W, 3) uint8 images, or a mapping title -> image.
        boxes: optional (K, 4) XYXY pixel boxes per image, drawn in white.
        ncols: images per row.
    """
    if isinstance(images, Mapping):
        titles, arrays = list(images.keys()), list(images.values())
    else:
        titles, arrays = [None] * len(images), list(images)
    n = max(1, len(arrays))
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    with _style():
        fig, axes = _figure(nrows, ncols, figsize=(2.4 * ncols, 2.5 * nrows))
        flat = axes.ravel()
        for ax in flat:
            ax.set_axis_off()
        if not arrays:
            _empty(flat[0], "no images")
            return fig
        for k, (ax, title, image) in enumerate(zip(flat, titles, arrays)):
            ax.imshow(_as_image(image))
            if boxes is not None and k < len(boxes) and boxes[k] is not None:
                for x1, y1, x2, y2 in np.asarray(boxes[k], dtype=float).reshape(-1, 4):
                    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", lw=1.2))
            if title:
                ax.set_title(str(title), fontsize=8)
    return fig


# --- tables of one run -----------------------------------------------------------------------


# --- seeds: the spread between training runs -----------------------------------------
def seed_spread_figure(df: pd.DataFrame) -> Figure:
    """Each setting's runs (one dot per seed, with its 95 % bootstrap interval over the
    test images as a bar) on one row: the spread between seeds beside the test set's noise.

    Args:
        df: rows of :func:`ssdstudy.results.load_runs` (``label``, ``seed``,
            ``voc07_map``, ``voc07_map_low``, ``voc07_map_high``, ``backbone``).
    """
    with _style():
        data = df.dropna(subset=["voc07_map"]) if len(df) else df
        n = 1 if data.empty else data["label"].nunique()
        fig, axes = _figure(1, 1, figsize=(7.0, 0.5 + 0.45 * n))
        ax = axes[0, 0]
        if data.empty:
            _empty(ax, "no finished runs to plot")
            return fig
        labels = list(dict.fromkeys(data["label"]))
        for y, label in enumerate(labels):
            group = data[data["label"] == label].sort_values("seed")
            color = backbone_color(group["backbone"].iloc[0])
            offsets = np.linspace(-0.15, 0.15, len(group)) if len(group) > 1 else np.zeros(1)
            for dy, (_, row) in zip(offsets, group.iterrows()):
                ax.errorbar([row["voc07_map"]], [y + dy],
                            xerr=[[row["voc07_map"] - row["voc07_map_low"]], [row["voc07_map_high"] - row["voc07_map"]]],
                            fmt="o", color=color, ms=5, elinewidth=1, capsize=2)
                ax.annotate(f"seed {int(row['seed'])}", (row["voc07_map"], y + dy), xytext=(4, 3),
                            textcoords="offset points", fontsize=7, color="0.35")
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel(MAP_LABEL + " (bars: 95 % bootstrap interval over the test images)")
    return fig
