"""Timing: models measured interleaved at their own thread counts, post-processing split
into decoding and NMS, and a busy machine noticed and flagged."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ssdstudy import timing
from ssdstudy.timing import (
    BUSY_MARGIN_CORES,
    BUSY_SPREAD,
    Subject,
    busy_reasons,
    time_models,
    watch_load,
)


class Fake(nn.Module):
    """A stand-in SSD: 8 priors, 3 classes; each forward call is logged with its batch
    size and the thread count it ran at."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log
        self.register_buffer("priors", torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 8))

    def forward(self, x):
        self.log.append((self.name, x.shape[0], torch.get_num_threads()))
        n = x.shape[0]
        return torch.zeros(n, 8, 4), torch.randn(n, 8, 3)


def images(n: int) -> tuple[list, list]:
    return [torch.zeros(3, 4, 4) for _ in range(n)], [(40, 50)] * n


def collapse(names):
    return [k for k, _ in itertools.groupby(names)]


def test_models_are_timed_round_robin_each_at_its_thread_count():
    log: list = []
    before = torch.get_num_threads()
    imgs, sizes = images(3)
    results = time_models([Subject(Fake("A", log), imgs, sizes, 1, "A"), Subject(Fake("B", log), imgs, sizes, 2, "B")],
                          "cpu", warmup=1, throughput_batch=2)
    single = [name for name, batch, _ in log if batch == 1]
    # warm-up one model after the other, then one image of each in turn (inference,
    # prediction, reference loop: three calls), never all of A before B
    assert single[:2] == ["A", "B"]
    assert collapse(single[2:]) == ["A", "B"] * 3
    assert single[2:].count("A") == single[2:].count("B") == 3 * 3
    # the throughput repetitions alternate too (after one untimed pass each)
    batched = [name for name, batch, _ in log if batch == 2]
    assert batched[-6:] == ["A", "B"] * 3
    # each model ran at its own thread count, and the process's count is restored
    assert {t for name, _, t in log if name == "A"} == {1}
    assert {t for name, _, t in log if name == "B"} == {2}
    assert torch.get_num_threads() == before
    a, b = results
    assert a["threads"] == 1 and b["threads"] == 2
    assert a["interleaved_with"] == ["B"] and b["interleaved_with"] == ["A"]
    assert a["inference_ms"]["n"] == 3


def test_models_with_fewer_images_drop_out_of_later_rounds():
    log: list = []
    time_models([Subject(Fake("A", log), *images(1)), Subject(Fake("B", log), *images(2))], "cpu",
                warmup=0, throughput_batch=1, reference=False)
    single = [name for name, batch, _ in log if batch == 1]
    # rounds: A, B (inference + prediction each), then B alone; then A, B once untimed
    # and three throughput repetitions
    assert collapse(single[:6]) == ["A", "B"] and single[4:6] == ["B", "B"]


def test_time_run_interleaves_the_profiles_thread_counts():
    log: list = []
    config = SimpleNamespace(
        timing=SimpleNamespace(devices=["cpu", "cuda"], cpu_threads=[1, 2], warmup=0, throughput_batch=1),
        eval=SimpleNamespace(score_threshold=0.01, nms_iou=0.45, top_k=200))
    out = timing.time_run(Fake("M", log), *images(2), config, ["cpu"], memory=False)
    assert list(out) == ["cpu-1t", "cpu-2t"]
    assert out["cpu-1t"]["threads"] == 1 and out["cpu-2t"]["threads"] == 2
    assert out["cpu-1t"]["interleaved_with"] == ["cpu-2t"]
    assert collapse([t for _, batch, t in log if batch == 1][:12]) == [1, 2, 1, 2]


def test_time_model_splits_post_processing_and_records_the_load():
    from ssdstudy.model import build_model

    model = build_model("mobilenet_v1", 4, width=0.25, image_size=96)
    imgs = [torch.randn(3, 96, 96) for _ in range(2)]
    t = timing.time_model(model, imgs, [(100, 120)] * 2, "cpu", cpu_threads=1, warmup=0, throughput_batch=2)
    stages = t["stages_ms"]
    assert {"forward", "decode", "nms", "postprocess", "reference_decode", "reference_nms",
            "reference_postprocess"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    # random weights: every prior passes the threshold for every class (200 at most each)
    assert t["nms_candidates"] == min(200, model.priors.shape[0]) * 3
    assert 0 < t["detections"] <= 200
    load = t["load"]
    assert {"cpus", "wall_s", "process_cpu_s", "process_cpu_per_wall", "other_cpu_cores",
            "loadavg_before", "loadavg_after"} <= set(load)
    assert t["busy"] == bool(t["busy_reasons"]) == bool(busy_reasons(t, load, 1))
    assert t["interleaved_with"] == []


def test_busy_rule():
    quiet = {"inference_ms": {"median": 10.0, "iqr": 10.0 * BUSY_SPREAD}, "prediction_ms": {"median": 12.0, "iqr": 1.0}}
    assert busy_reasons(quiet) == []
    spread = {**quiet, "inference_ms": {"median": 10.0, "iqr": 10.0 * BUSY_SPREAD + 0.1}}
    assert busy_reasons(spread) == [f"inference spread: IQR 26% of the median (limit {BUSY_SPREAD:.0%})"]
    # prediction's spread follows the boxes each image sends into NMS: not the machine's
    assert busy_reasons({**quiet, "prediction_ms": {"median": 12.0, "iqr": 12.0}}) == []
    # two CPUs, one thread timed: one CPU was free, plus the margin
    limit = 1 + BUSY_MARGIN_CORES
    assert busy_reasons(quiet, {"cpus": 2, "other_cpu_cores": limit - 0.1}, 1) == []
    assert busy_reasons(quiet, {"cpus": 2, "other_cpu_cores": limit + 0.1}, 1) == [
        f"other processes kept {limit + 0.1:.1f} of 2 CPUs busy while 1 thread was timed"]
    # two threads on two CPUs: another process using more than the margin takes a core from them
    assert len(busy_reasons(quiet, {"cpus": 2, "other_cpu_cores": BUSY_MARGIN_CORES + 0.1}, 2)) == 1
    assert busy_reasons(quiet, {"cpus": 2, "other_cpu_cores": BUSY_MARGIN_CORES - 0.1}, 2) == []
    # unknown load (no /proc/stat): only the spread decides
    assert busy_reasons(quiet, {"cpus": 2, "other_cpu_cores": None}, 2) == []
    assert len(busy_reasons(spread, {"cpus": 2, "other_cpu_cores": 2.0}, 2)) == 2


def test_watch_load_separates_this_process_from_the_rest():
    with watch_load() as load:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
    assert load["process_cpu_s"] >= 0.2
    assert load["wall_s"] >= load["process_cpu_s"] * 0.5
    assert load["cpus"] >= 1
    if load["other_cpu_cores"] is not None:  # Linux
        assert load["other_cpu_cores"] >= 0
    assert load["process_cpu_per_wall"] == pytest.approx(load["process_cpu_s"] / load["wall_s"])
