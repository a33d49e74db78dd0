"""Reading results back: one table row per finished run, and the hardware files.

Chapters read everything through these functions, so a figure never depends on how
a result file happens to be laid out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ssdstudy.config import backbone_family
from ssdstudy.runs import RESULTS, RunPaths

SIZE_BIN_NAMES = ("0-5", "5-10", "10-20", "20-40", "40-60", "60-80", "80-100")
AUGMENT_STEPS = ("photometric", "expand", "crop", "mirror")
BACKBONE_LABELS = {
    "vgg16": "VGG16", "vgg16_bn": "VGG16-BN", "mobilenet_v1": "MobileNetV1", "squeezenet": "SqueezeNet 1.1",
}


def augment_label(augment: dict[str, Any]) -> str:
    """"all", "none", "no crop" (one step left out), or the steps joined by "+"."""
    if not augment.get("enabled", True):
        return "none"
    on = [s for s in AUGMENT_STEPS if augment.get(s, True)]
    if len(on) == len(AUGMENT_STEPS):
        return "all"
    if not on:
        return "none"
    if len(on) == len(AUGMENT_STEPS) - 1:
        return "no " + next(s for s in AUGMENT_STEPS if s not in on)
    return "+".join(on)


def mining_label(neg_pos_ratio: float | None) -> str:
    return "none" if neg_pos_ratio is None else f"{neg_pos_ratio:g}:1"


def tiling_label(model: dict[str, Any]) -> str:
    """The default boxes of a run's model: ``"own"`` (the backbone's, the original's), or
    the paper's scale rule and the extra 38x38 map it asks for
    (``"scales 0.1-0.9, ratios 2 3, 38x38 map"``)."""
    parts = []
    rule = model.get("priors")
    if rule:
        ratios = " ".join(f"{r:g}" for r in rule.get("aspect_ratios", []))
        parts.append(f"scales {rule['min_scale']:g}-{rule['max_scale']:g}, ratios {ratios}")
    if model.get("stride8_map"):
        parts.append("38x38 map")
    return ", ".join(parts) or "own"


def run_label(config: dict[str, Any]) -> str:
    model = config["model"]
    name = BACKBONE_LABELS.get(model["backbone"], model["backbone"])
    if model.get("width", 1.0) != 1.0:
        name += f" x{model['width']:g}"
    tiling = tiling_label(model)
    boxes = f", boxes {tiling}" if tiling != "own" else ""
    return (f"{name}, aug {augment_label(config['augment'])}, mining {mining_label(config['loss']['neg_pos_ratio'])}"
            f"{boxes}")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


#: The memory columns of :func:`timing_columns`: key of a timing entry's ``memory``
#: record (:func:`ssdstudy.memory.measure_memory`) -> column.
MEMORY_COLUMNS = {
    "train_peak_mb": "train_peak_mb",
    "predict_peak_mb": "predict_peak_mb",
    "params_mb": "params_mb",
    "optimizer_mb": "optimizer_mb",
    "activations_mb": "activations_mb",
    "predict_activations_mb": "predict_activations_mb",
    "baseline_mb": "memory_baseline_mb",
}


def memory_columns(memory: dict[str, Any] | None) -> dict[str, Any]:
    """The memory columns of a timing entry's ``memory`` record: peak memory of a training
    step and of a prediction, parameters, optimiser state, the steps' working memory and
    the process's baseline (MiB; nan when not measured: runs timed before memory was, or
    a failed measurement, whose error is in ``memory_error``)."""
    memory = memory or {}
    cols: dict[str, Any] = {col: _nan(memory.get(key)) for key, col in MEMORY_COLUMNS.items()}
    cols["memory_kind"] = memory.get("kind", "")
    cols["memory_error"] = memory.get("error", "")
    return cols


def timing_columns(t: dict[str, Any]) -> dict[str, Any]:
    """Table columns of one timing entry (a ``timing.json`` value, a hardware file's
    ``timing``): medians and interquartile ranges, the stages of post-processing, the
    boxes entering NMS, whether the machine was busy (the entry's own flag; for
    files written before the flag, the spread half of :data:`ssdstudy.timing.BUSY_RULE`),
    and the memory of a training step and of a prediction (:func:`memory_columns`)."""
    from ssdstudy.timing import busy_reasons

    stages = t.get("stages_ms") or {}
    reasons = t.get("busy_reasons")
    if reasons is None:
        reasons = busy_reasons(t)
    return {
        "inference_ms": _nan((t.get("inference_ms") or {}).get("median")),
        "inference_ms_iqr": _nan((t.get("inference_ms") or {}).get("iqr")),
        "prediction_ms": _nan((t.get("prediction_ms") or {}).get("median")),
        "prediction_ms_iqr": _nan((t.get("prediction_ms") or {}).get("iqr")),
        "reference_prediction_ms": _nan((t.get("reference_prediction_ms") or {}).get("median")),
        "forward_ms": _nan(stages.get("forward")),
        "postprocess_ms": _nan(stages.get("postprocess")),
        "decode_ms": _nan(stages.get("decode")),
        "nms_ms": _nan(stages.get("nms")),
        "reference_decode_ms": _nan(stages.get("reference_decode")),
        "reference_nms_ms": _nan(stages.get("reference_nms")),
        "nms_candidates": _nan(t.get("nms_candidates")),
        "busy": bool(t.get("busy", bool(reasons))),
        "busy_reason": "; ".join(reasons),
        **memory_columns(t.get("memory")),
    }


#: A validation curve has stopped rising when its last validation gained less VOC07 mAP
#: over the one before (``train.eval_every`` epochs earlier, or fewer where the last
#: epoch is not a multiple) than this; a drop counts as not rising. It is below one
#: run's noise: the 95 % bootstrap half-width of a test mAP is about 0.025 on the default
#: profile's 500 test images, and the 400 validation images hold fewer objects.
FLAT_GAIN = 0.02


def curve_end(history: pd.DataFrame) -> dict[str, Any]:
    """The end of a run's validation curve: ``val_map`` (its last validation VOC07 mAP),
    ``val_last_gain`` (what the last validation gained over the one before) and
    ``curve_flat`` (that gain below :data:`FLAT_GAIN`, a drop included; None with fewer
    than two validations)."""
    values = history["val_voc07_map"].dropna() if "val_voc07_map" in history else pd.Series(dtype=float)
    if len(values) < 2:
        return {"val_map": float(values.iloc[-1]) if len(values) else float("nan"), "val_last_gain": float("nan"),
                "curve_flat": None}
    gain = float(values.iloc[-1] - values.iloc[-2])
    return {"val_map": float(values.iloc[-1]), "val_last_gain": gain, "curve_flat": gain < FLAT_GAIN}


#: A run's mean training loss over an epoch is said to jump when it exceeds the epoch
#: before's by more than this factor. Between epochs of a run that trains normally it
#: falls, or rises by a few per cent where the learning rate changes; the published
#: runs' jumps under the default recipe went from 1.36x to 2.5x, the largest undoing
#: every epoch before it (the loss back above its first epoch's).
LOSS_JUMP = 1.3


def loss_jumps(history: pd.DataFrame) -> list[dict[str, float]]:
    """The epochs where the mean training loss jumped (:data:`LOSS_JUMP`): ``epoch``,
    ``before`` (the epoch before's loss), ``after`` (this epoch's) and ``back_to`` (the
    last earlier epoch whose loss was at least ``after``: the training the jump undid; 0
    when the loss went above every earlier epoch's)."""
    if "loss" not in history or len(history) < 2:
        return []
    epochs = history["epoch"].astype(int).tolist()
    loss = history["loss"].astype(float).tolist()
    out = []
    for i in range(1, len(loss)):
        if loss[i] > LOSS_JUMP * loss[i - 1]:
            back = max((epochs[j] for j in range(i) if loss[j] >= loss[i]), default=0)
            out.append({"epoch": epochs[i], "before": loss[i - 1], "after": loss[i], "back_to": back})
    return out


def jump_text(jumps: list[dict[str, float]]) -> str:
    """``"epoch 9: 5.17 to 7.66, undoing epochs 2-8"``, jumps joined by "; " (the
    epochs whose progress in loss the jump undid: those after ``back_to``)."""
    parts = []
    for j in jumps:
        first, last = int(j["back_to"]) + 1, int(j["epoch"]) - 1
        undone = ("undoing every earlier epoch" if not j["back_to"]
                  else f"undoing epoch {last}" if first >= last else f"undoing epochs {first}-{last}")
        parts.append(f"epoch {j['epoch']}: {j['before']:.2f} to {j['after']:.2f}, {undone}")
    return "; ".join(parts)


def clipped_text(history: pd.DataFrame) -> str:
    """``"2 outlier steps clipped (epochs 9, 23)"`` (``train.clip_outliers``), or "" when
    none was or the history predates the count."""
    if "clipped_steps" not in history:
        return ""
    counts = history["clipped_steps"].fillna(0).astype(int)
    total = int(counts.sum())
    if not total:
        return ""
    epochs = ", ".join(str(int(e)) for e in history.loc[counts > 0, "epoch"])
    return f"{total} outlier step{'s' if total > 1 else ''} clipped (epoch{'s' if (counts > 0).sum() > 1 else ''} {epochs})"


def run_row(paths: RunPaths) -> dict[str, Any]:
    """The table row of one finished run."""
    config = yaml.safe_load(paths.config.read_text())
    metrics = _read_json(paths.metrics)
    timing = _read_json(paths.timing)
    history = pd.read_csv(paths.history)
    jumps = loss_jumps(history)
    cpu = timing.get("cpu") or next(iter(timing.values()), {})
    row: dict[str, Any] = {
        "run_id": paths.root.name,
        "run_dir": str(paths.root),
        "label": run_label(config),
        # the study backbone the run stands for (VGG16-BN for VGG16) and the exact one
        "backbone": backbone_family(config["model"]["backbone"]),
        "variant": config["model"]["backbone"],
        "width": float(config["model"]["width"]),
        "augment": augment_label(config["augment"]),
        "mining": mining_label(config["loss"]["neg_pos_ratio"]),
        "neg_pos_ratio": config["loss"]["neg_pos_ratio"],
        "tiling": tiling_label(config["model"]),
        # the backbone's starting weights: "scratch", or the file of pretrained ones
        "pretrained": Path(config["model"]["pretrained"]).name if config["model"].get("pretrained") else "scratch",
        "image_size": config["model"]["image_size"],
        "seed": int(config["train"].get("seed", 0)),
        "epochs": int(history["epoch"].max()) if len(history) else 0,
        "train_images": _nan(config["data"].get("max_train_images")),
        "voc07_map": _nan(metrics.get("voc07_map")),
        "voc_map": _nan(metrics.get("voc_map")),
        "voc07_map_low": _nan((metrics.get("voc07_map_interval") or [None, None])[0]),
        "voc07_map_high": _nan((metrics.get("voc07_map_interval") or [None, None])[1]),
        "coco_ap": _nan((metrics.get("coco") or {}).get("AP")),
        "coco_ap50": _nan((metrics.get("coco") or {}).get("AP50")),
        **timing_columns(cpu),
        "weights": "trained (the run's own)",
        "epoch_seconds": float(history["epoch_seconds"].median()) if len(history) else float("nan"),
        "epoch_seconds_iqr": (float(history["epoch_seconds"].quantile(0.75) - history["epoch_seconds"].quantile(0.25))
                              if len(history) > 1 else float("nan")),
        "images_per_s": float(history["images_per_s"].median()) if len(history) else float("nan"),
        **curve_end(history),
        "loss_jumps": jump_text(jumps),
        # a jump that undid every earlier epoch: the run trained again from that epoch on
        "restarted_at": max((j["epoch"] for j in jumps if not j["back_to"]), default=np.nan),
        "peak_memory_mb": _nan(cpu.get("peak_memory_mb")),
        "device_name": cpu.get("device_name", ""),
        # where it was trained (its epoch times are that device's): a GPU's name, or the CPU's
        "trained_on": (_read_json(paths.provenance).get("device_name", "") if paths.provenance.is_file() else ""),
    }
    bins = metrics.get("size_bins") or {}
    for name in SIZE_BIN_NAMES:
        entry = bins.get(name) or {}
        row[f"bin {name}"] = _nan(entry.get("voc07_map"))
        row[f"images {name}"] = int(entry.get("images") or 0)
    return row


def finished_result(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's results read from its files, as :func:`ssdstudy.pipeline.execute_run`
    returns them (``{"metrics", "timing", "history", "run_dir"}``), for a run whose
    checkpoint is not here (a published run): its notebook is made without training."""
    paths = RunPaths(Path(run_dir))
    return {"metrics": _read_json(paths.metrics), "timing": _read_json(paths.timing),
            "history": pd.read_csv(paths.history), "run_dir": str(paths.root)}


def run_paths(profile: str, results: Path | None = None) -> list[RunPaths]:
    root = (results or RESULTS) / profile / "runs"
    return [RunPaths(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []


def load_runs(profile: str, run_ids: Iterable[str] | None = None, results: Path | None = None) -> pd.DataFrame:
    """One row per complete run of ``profile`` (only ``run_ids`` when given)."""
    wanted = None if run_ids is None else list(run_ids)
    rows = []
    for paths in run_paths(profile, results):
        if wanted is not None and paths.root.name not in wanted:
            continue
        if paths.complete():
            rows.append(run_row(paths))
    frame = pd.DataFrame(rows)
    if wanted is not None and len(frame):
        frame = frame.set_index("run_id").loc[[r for r in wanted if r in set(frame["run_id"])]].reset_index()
    return frame


def load_history(profile: str, run_id: str, results: Path | None = None) -> pd.DataFrame:
    return pd.read_csv((results or RESULTS) / profile / "runs" / run_id / "history.csv")


def hardware_rows(data: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Rows of one hardware file written by ``ssdstudy bench --out``."""
    rows = []
    for entry in data.get("entries", []):
        t = entry["timing"]
        rows.append({
            "machine": data.get("machine", source),
            "device": t.get("device"),
            "device_name": t.get("device_name"),
            "threads": t.get("threads"),
            "backbone": backbone_family(str(entry.get("backbone"))),
            "variant": entry.get("backbone"),
            "width": entry.get("width", 1.0),
            "image_size": entry.get("image_size"),
            **timing_columns(t),
            "epoch_seconds": _nan(entry.get("epoch_seconds")),
            "images_per_s_train": _nan(entry.get("train_images_per_s")),
            "train_busy": bool(entry.get("train_busy", False)),
            "train_busy_reason": "; ".join(entry.get("train_busy_reasons") or []),
            "weights": entry.get("weights", "not recorded"),
            # untrained weights put (nearly) every default box into NMS: its worst case
            "trained": entry.get("trained", str(entry.get("weights", "")).startswith("trained")),
            "profile": data.get("profile"),
            "source": source,
        })
    return rows


def load_hardware(profile: str | None = None, run_ids: Iterable[str] | None = None,
                  results: Path | None = None) -> pd.DataFrame:
    """Every hardware measurement: ``results/hardware/*.json`` (for ``profile``, only the
    files of that profile and their entries measured at its input size), plus, for
    ``profile``, the timings of its own runs (``run_ids`` only, when given) on the machine
    that ran the study. A run's time per epoch is given on the device it was trained on
    only."""
    base = results or RESULTS
    rows: list[dict[str, Any]] = []
    hw = base / "hardware"
    size = None
    if profile is not None:
        from ssdstudy.config import load_profile

        size = load_profile(profile).model.image_size
    for path in sorted(hw.glob("*.json")) if hw.is_dir() else []:
        data = _read_json(path)
        # only files of the profile (its classes, hence its heads and its NMS) measured at
        # its input size are comparable with its runs
        if profile is not None and data.get("profile") != profile:
            continue
        rows.extend(r for r in hardware_rows(data, path.name) if size is None or r.get("image_size") == size)
    wanted = None if run_ids is None else set(run_ids)
    for paths in run_paths(profile, results) if profile is not None else []:
        if not paths.complete() or (wanted is not None and paths.root.name not in wanted):
            continue
        config = yaml.safe_load(paths.config.read_text())
        history = pd.read_csv(paths.history)
        trained_on = str(_read_json(paths.provenance).get("device", "cpu")).split(":")[0]
        for t in _read_json(paths.timing).values():
            on_training_device = t.get("device") == trained_on and len(history)
            rows.append({
                "machine": "study machine", "device": t.get("device"), "device_name": t.get("device_name"),
                "threads": t.get("threads"), "backbone": backbone_family(config["model"]["backbone"]),
                "variant": config["model"]["backbone"],
                "width": config["model"]["width"], "image_size": config["model"]["image_size"],
                **timing_columns(t),
                "epoch_seconds": float(history["epoch_seconds"].median()) if on_training_device else np.nan,
                "images_per_s_train": float(history["images_per_s"].median()) if on_training_device else np.nan,
                "train_busy": False,
                "weights": "trained (the run's own)",
                "trained": True,
                "profile": profile,
                "source": f"{profile}/{paths.root.name}",
            })
    return pd.DataFrame(rows)


def _entry_label(row: pd.Series) -> str:
    name = BACKBONE_LABELS.get(str(row.get("variant") or row.get("backbone")), str(row.get("backbone")))
    width = row.get("width")
    if width is not None and not pd.isna(width) and float(width) != 1.0:
        name += f" x{float(width):g}"
    device = str(row.get("device_name") or row.get("device") or "device")
    threads = row.get("threads")
    if row.get("device") == "cpu" and threads is not None and not pd.isna(threads):
        device += f" ({int(threads)} threads)"
    where = ", ".join(str(x) for x in dict.fromkeys((row.get("machine"), row.get("source"))) if x and not pd.isna(x))
    return f"{name} on {device}" + (f" [{where}]" if where else "")


def timing_notes(frame: pd.DataFrame) -> str:
    """The notes a chapter prints beside its timings (rows of :func:`load_hardware` or
    :func:`load_runs`): whose weights were timed, and, by name, every measurement
    flagged busy (:data:`ssdstudy.timing.BUSY_RULE`), which the claims do not test.
    Empty for an empty frame."""
    if frame is None or frame.empty:
        return ""
    from ssdstudy.timing import BUSY_RULE

    lines = []
    weights = frame["weights"] if "weights" in frame.columns else pd.Series("not recorded", index=frame.index)
    where = frame["machine"] if "machine" in frame.columns else pd.Series("study machine", index=frame.index)
    said = {}
    for w, m in zip(weights.fillna("not recorded"), where.fillna("?")):
        said.setdefault(str(m), []).append(str(w))
    parts = [f"{m}: " + "; ".join(dict.fromkeys(ws)) for m, ws in said.items()]
    lines.append(":::{note}\nWeights timed: " + " | ".join(parts) + ".")
    trained = frame["trained"] if "trained" in frame.columns else weights.astype(str).str.startswith("trained")
    untrained = frame[~trained.fillna(False).astype(bool)]
    if len(untrained):
        boxes = untrained["nms_candidates"].dropna() if "nms_candidates" in untrained.columns else pd.Series([])
        many = f" ({boxes.median():,.0f} boxes per image entered NMS)" if len(boxes) else ""
        lines.append("Untrained weights score nearly every default box above the threshold" + many
                     + ", so their post-processing and prediction times are a worst case, an upper bound "
                     "of a trained model's; their inference times are unaffected.")
    lines.append(":::")
    busy = frame[frame["busy"].fillna(False).astype(bool)] if "busy" in frame.columns else frame.iloc[:0]
    train = (frame[frame["train_busy"].fillna(False).astype(bool)] if "train_busy" in frame.columns
             else frame.iloc[:0])
    if len(busy) or len(train):
        lines.append("")
        lines.append(":::{warning}\nMeasured on a busy machine (" + BUSY_RULE.removeprefix("busy: ")
                     + "). The claims do not test the inference and prediction times listed here:\n")
        for _, row in busy.iterrows():
            reason = row.get("busy_reason") or "flagged in its file"
            lines.append(f"- {_entry_label(row)}: {reason}")
        for _, row in train.iterrows():
            reason = row.get("train_busy_reason") or "flagged in its file"
            lines.append(f"- {_entry_label(row)}, training speed: {reason}")
        lines.append(":::")
    return "\n".join(lines)


#: What makes runs the same setting apart from their seed.
SETTING_COLUMNS = ("backbone", "variant", "width", "pretrained", "augment", "mining", "tiling", "image_size", "epochs")


def runtimes_folder(profile: str, results: Path | None = None) -> Path:
    """Where a profile's runtime measurements are published:
    ``results/<profile>/runtimes/*.json``, each written by ``benchmarks/runtimes.py
    --checkpoint <a run's checkpoint> --data <its data> --map --json PATH``."""
    return (results or RESULTS) / profile / "runtimes"


def load_runtimes(profile: str, results: Path | None = None) -> pd.DataFrame:
    """One row per runtime and model of every runtime file of ``profile``: its inference
    and prediction medians and spreads, their ratios to eager float32 measured in the same
    process, the share of prediction spent after inference, whether it was timed on a
    busy machine, and (with ``--map``) its VOC07 mAP and the paired bootstrap difference
    to eager float32's."""
    rows = []
    folder = runtimes_folder(profile, results)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _read_json(path)
        machine = (data.get("machine") or {}).get("device_name") or path.stem
        for entry in (data.get("backbones") or {}).values():
            model = entry.get("model", {})
            scores = (entry.get("map") or {}).get("runtimes", {})
            for name, t in entry.get("runtimes", {}).items():
                score = scores.get(name, {})
                diff = score.get("difference_to_eager") or {}
                inference, prediction = _nan(t.get("inference_ms")), _nan(t.get("prediction_ms"))
                rows.append({
                    "source": path.name, "machine": machine, "runtime": name,
                    "backbone": backbone_family(str(model.get("backbone"))), "variant": model.get("backbone"),
                    "width": float(model.get("width", 1.0)), "weights": model.get("weights", ""),
                    "inference_ms": inference, "inference_ms_iqr": _nan(t.get("inference_iqr_ms")),
                    "prediction_ms": prediction, "prediction_ms_iqr": _nan(t.get("prediction_iqr_ms")),
                    "prediction_vs_eager": _nan((t.get("ratio_to_eager") or {}).get("prediction")),
                    "after_inference_share": (prediction - inference) / prediction if prediction > 0 else np.nan,
                    "busy": bool(t.get("busy", False)), "busy_reason": "; ".join(t.get("busy_reasons") or []),
                    "voc07_map": _nan(score.get("voc07_map")),
                    "map_difference": _nan(diff.get("difference")),
                    "map_difference_low": _nan(diff.get("low")), "map_difference_high": _nan(diff.get("high")),
                })
    return pd.DataFrame(rows)


def seed_spread(df: pd.DataFrame, metric: str = "voc07_map") -> pd.DataFrame:
    """One row per setting (runs equal but for their seed): the number of seeds, the mean,
    the sample standard deviation and the range of ``metric`` over them, and the mean of
    the runs' own 95 % bootstrap half-widths (the test set's noise, for comparison)."""
    if df.empty:
        return pd.DataFrame()
    keys = [c for c in SETTING_COLUMNS if c in df.columns]
    interval = metric == "voc07_map" and {"voc07_map_low", "voc07_map_high"} <= set(df.columns)
    data = df.assign(_half=(df["voc07_map_high"] - df["voc07_map_low"]) / 2) if interval else df
    rows = []
    for key, group in data.groupby(keys, sort=False, dropna=False):
        values = group[metric].astype(float)
        setting = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rows.append({
            **setting,
            "label": group["label"].iloc[0] if "label" in group else ", ".join(str(v) for v in setting.values()),
            "seeds": int(values.notna().sum()),
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.notna().sum() > 1 else float("nan"),
            "min": float(values.min()),
            "max": float(values.max()),
            "range": float(values.max() - values.min()),
            "bootstrap_half_width": float(group["_half"].mean()) if "_half" in group else float("nan"),
        })
    return pd.DataFrame(rows)


def bin_seed_spread(df: pd.DataFrame) -> pd.DataFrame:
    """The spread between seeds (range) of each size bin's VOC07 mAP, one row per setting
    with several seeds (index ``label``), one column per bin with test images (NaN
    where a bin has fewer than two of the setting's seeds measured)."""
    if df.empty:
        return pd.DataFrame()
    settings = seed_spread(df)  # every metric groups the same settings in the same order
    several = settings["seeds"] >= 2
    out = pd.DataFrame({"label": settings.loc[several, "label"]})
    for name in SIZE_BIN_NAMES:
        col = f"bin {name}"
        if col not in df.columns or not df[col].notna().any():
            continue
        spread = seed_spread(df, col)
        out[f"{name} %"] = spread["range"].where(spread["seeds"] >= 2)[several].to_numpy()
    return out.set_index("label") if len(out) else pd.DataFrame()
