"""Peak memory of a training step and of a prediction, each in a fresh process: the
measurement on a tiny model, its failure path, the timing hook, the results' columns and
the figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import io
import math
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection

from ssdstudy import memory, plots, tables, timing
from ssdstudy.config import ModelConfig
from ssdstudy.results import memory_columns, timing_columns

TINY = ModelConfig(backbone="mobilenet_v1", width=0.25, image_size=96)


@pytest.fixture(scope="module")
def tiny() -> dict:
    """The two measurements of MobileNetV1 x0.25 at 96 px (training at batch 2, bf16)."""
    return memory.measure_memory(TINY, 9, batch_size=2, precision="bf16", threads=1)


def test_measurement_in_fresh_processes_gives_sensible_figures(tiny):
    assert "error" not in tiny, tiny.get("error")
    train, predict = tiny["train"], tiny["predict"]
    assert tiny["kind"] == "process_peak_rss" and tiny["device"] == "cpu" and tiny["method"] == memory.METHOD
    assert tiny["train_peak_mb"] == train["peak_mb"] and tiny["predict_peak_mb"] == predict["peak_mb"]
    # each in its own process: neither saw the other's model
    assert train["baseline_mb"] > 0 and predict["baseline_mb"] > 0
    assert train["pid"] != predict["pid"] and os.getpid() not in (train["pid"], predict["pid"])
    for m in (train, predict):
        assert m["peak_mb"] >= m["baseline_mb"] + m["params_mb"]
        assert m["activations_mb"] > 0 and m["peak_mb"] >= m["before_mb"]
        assert m["model_mb"] > 0
    assert train["batch_size"] == 2 and train["precision"] == "bf16" and predict["batch_size"] == 1
    assert tiny["train_peak_mb"] > tiny["predict_peak_mb"]
    assert tiny["activations_mb"] > tiny["predict_activations_mb"]
    # the parameters counted exactly; AdamW keeps two moments of each; the loss ran
    from ssdstudy.model import build_from_config

    model = build_from_config(TINY, 9)
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    assert tiny["params_mb"] == pytest.approx(params)
    assert tiny["optimizer_mb"] == pytest.approx(2 * params, rel=0.01)
    assert train["gradients_mb"] == pytest.approx(params)
    assert train["positives"] > 0 and math.isfinite(train["loss"])


def test_a_failed_child_is_an_error_entry_not_an_exception():
    with pytest.warns(RuntimeWarning, match="not measured"):
        out = memory.measure_memory({"backbone": "no_such_net", "width": 1.0, "image_size": 96}, 9,
                                    batch_size=2, threads=1)
    assert "no_such_net" in out["train"]["error"] and "error" in out["predict"]
    assert out["train_peak_mb"] is None and out["predict_peak_mb"] is None
    assert out["error"].startswith("train: ")
    cols = memory_columns(out)
    assert np.isnan(cols["train_peak_mb"]) and cols["memory_error"]


def test_memory_for_config_of_something_else_is_an_error_entry():
    with pytest.warns(RuntimeWarning):
        out = memory.memory_for_config(SimpleNamespace(), 9)
    assert out["error"] and out["train_peak_mb"] is None


class Fake(torch.nn.Module):
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.register_buffer("priors", torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 8))

    def forward(self, x):
        n = x.shape[0]
        return torch.zeros(n, 8, 4), torch.randn(n, 8, 3)


def test_time_run_records_memory_once_per_device_in_each_entry(monkeypatch):
    calls = []

    def fake(config, num_classes, device="cpu", **kw):
        calls.append((num_classes, device))
        return {"train_peak_mb": 100.0, "predict_peak_mb": 50.0, "device": device}

    monkeypatch.setattr(memory, "memory_for_config", fake)
    config = SimpleNamespace(
        timing=SimpleNamespace(devices=["cpu"], cpu_threads=[1, 2], warmup=0, throughput_batch=1),
        eval=SimpleNamespace(score_threshold=0.01, nms_iou=0.45, top_k=200))
    imgs, sizes = [torch.zeros(3, 4, 4)] * 2, [(40, 50)] * 2
    out = timing.time_run(Fake(), imgs, sizes, config, ["cpu"])
    assert calls == [(3, "cpu")]
    assert out["cpu-1t"]["memory"]["train_peak_mb"] == 100.0 and out["cpu-2t"]["memory"] == out["cpu-1t"]["memory"]
    assert timing_columns(out["cpu-1t"])["predict_peak_mb"] == 50.0
    assert "memory" not in timing.time_run(Fake(), imgs, sizes, config, ["cpu"], memory=False)["cpu-1t"]


def test_timing_columns_read_the_memory_entry(tiny):
    cols = timing_columns({"inference_ms": {"median": 1.0, "iqr": 0.1}, "memory": tiny})
    assert cols["train_peak_mb"] == tiny["train_peak_mb"] and cols["predict_peak_mb"] == tiny["predict_peak_mb"]
    assert cols["params_mb"] == tiny["params_mb"] and cols["activations_mb"] == tiny["activations_mb"]
    assert cols["memory_kind"] == "process_peak_rss" and cols["memory_error"] == ""
    old = timing_columns({"inference_ms": {"median": 1.0, "iqr": 0.1}})  # timed before memory was
    assert all(np.isnan(old[c]) for c in ("train_peak_mb", "predict_peak_mb", "params_mb", "activations_mb"))


def runs(with_memory: bool) -> pd.DataFrame:
    rows = []
    for backbone, width, mAP, train, predict in (("vgg16", 1.0, 0.6, 3900.0, 1200.0),
                                                 ("mobilenet_v1", 1.0, 0.5, 2060.0, 990.0),
                                                 ("mobilenet_v1", 0.25, 0.3, 1290.0, 950.0),
                                                 ("squeezenet", 1.0, 0.4, 1800.0, 960.0)):
        row = {"backbone": backbone, "variant": backbone, "width": width, "augment": "all", "mining": "3:1",
               "voc07_map": mAP, "voc07_map_low": mAP - 0.05, "voc07_map_high": mAP + 0.05}
        if with_memory:
            row.update(train_peak_mb=train, predict_peak_mb=predict, params_mb=20.0, optimizer_mb=40.0,
                       activations_mb=train - 1000, predict_activations_mb=predict - 920, memory_baseline_mb=870.0)
        rows.append(row)
    return pd.DataFrame(rows)


def points(ax) -> np.ndarray:
    found = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    return np.concatenate(found) if found else np.zeros((0, 2))


def test_map_vs_memory_draws_two_panels_one_point_per_run():
    df = runs(True)
    fig = plots.map_vs_memory(df)
    left, right = fig.axes
    assert sorted(points(left)[:, 0]) == sorted(df["train_peak_mb"])
    assert sorted(points(right)[:, 0]) == sorted(df["predict_peak_mb"])
    assert "MobileNetV1 x0.25" in [t.get_text() for t in left.texts]
    fig.savefig(io.BytesIO(), format="png")
    table = tables.memory_table(df)
    assert len(table) == 4 and table.loc["VGG16", "train peak"] == 3900.0


@pytest.mark.parametrize("df", [runs(False), runs(True).assign(train_peak_mb=np.nan, predict_peak_mb=np.nan),
                                pd.DataFrame()])
def test_map_vs_memory_without_memory_says_so(df):
    fig = plots.map_vs_memory(df)
    assert all(len(points(ax)) == 0 for ax in fig.axes)
    said = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert ("no memory measured" in said) if len(df) else ("no finished runs" in said)
    fig.savefig(io.BytesIO(), format="png")
    assert not tables.has_memory(df) and tables.memory_table(df).empty


def test_run_timing_table_shows_the_memory_peaks(tiny):
    t = tables.timing_table({"cpu": {"inference_ms": {"median": 1.0}, "memory": tiny}, "cuda": {}})
    assert t.loc["cpu", "train step peak MB"] == tiny["train_peak_mb"]
    assert np.isnan(t.loc["cuda", "prediction peak MB"])


def test_the_hardware_chapter_tables_every_models_memory_once_per_device_and_machine():
    """Hardware rows (a bench file's entries and the study's runs, several thread counts
    each) give one memory row per model, device and machine; rows without memory are
    left out."""
    hw = runs(True).drop(columns=["voc07_map", "voc07_map_low", "voc07_map_high"])
    hw = pd.concat([hw.assign(threads=1), hw.assign(threads=2)], ignore_index=True)
    hw = hw.assign(device="cpu", machine="xeon")
    none = runs(False).assign(device="cuda", machine="gpu box", threads=None)
    table = tables.hardware_memory_table(pd.concat([hw, none], ignore_index=True))
    assert len(table) == 4
    assert table.loc[("VGG16", "cpu", "xeon"), "train peak"] == 3900.0
    assert table.loc[("MobileNetV1 x0.25", "cpu", "xeon"), "predict peak"] == 950.0
    assert tables.hardware_memory_table(runs(False).assign(device="cpu", machine="x")).empty
