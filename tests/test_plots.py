"""The book's figures: each returns a Figure with the expected axes and artists, built
from small hand-made frames; tables hold the right numbers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ssdstudy import plots, tables

BINS = ("0-5", "5-10", "10-20", "20-40", "40-60", "60-80", "80-100")


def run_row(backbone, width=1.0, augment="all", mining="3:1", mAP=0.5, ms=10.0, **extra):
    row = {
        "run_id": f"{backbone}-{width}-{augment}-{mining}", "label": f"{backbone} {width} {augment} {mining}",
        "backbone": backbone, "width": width, "augment": augment, "mining": mining,
        "voc07_map": mAP, "prediction_ms": ms, "inference_ms": 0.8 * ms, "forward_ms": 0.8 * ms,
        "postprocess_ms": 0.2 * ms, "reference_prediction_ms": 2 * ms, "epoch_seconds": 60.0,
        "device_name": "Test CPU",
    }
    for i, b in enumerate(BINS):
        row[f"bin {b}"] = 0.1 * (i + 1) * mAP if i < 6 else np.nan
        row[f"images {b}"] = (5, 6, 7, 8, 9, 10, 0)[i]
    row.update(extra)
    return row


@pytest.fixture
def runs() -> pd.DataFrame:
    return pd.DataFrame([
        run_row("vgg16", mAP=0.62, ms=120.0),
        run_row("vgg16", augment="none", mAP=0.45, ms=118.0),
        run_row("mobilenet_v1", mAP=0.55, ms=30.0),
        run_row("mobilenet_v1", augment="none", mAP=0.40, ms=29.0),
        run_row("mobilenet_v1", width=0.5, mAP=0.45, ms=15.0),
        run_row("mobilenet_v1", width=0.25, mAP=0.30, ms=10.0),
    ])


def n_bars(ax) -> int:
    """Bars drawn by bar/barh (legend patches are not in ax.patches)."""
    return sum(isinstance(p, Rectangle) for p in ax.patches)


def renders(fig: Figure) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_short_label():
    assert tables.short_label(run_row("mobilenet_v1", width=0.5, augment="none", mining="none")) == \
        "MobileNetV1 x0.5, no aug, no mining"
    assert tables.short_label(run_row("vgg16")) == "VGG16"
    assert tables.short_label({"label": "x"}) == "x"
    assert plots.backbone_color("vgg16") != plots.backbone_color("mobilenet_v1")
    assert plots.augment_marker("all") != plots.augment_marker("none")


def test_map_vs_prediction_time_draws_one_labelled_point_per_run(runs):
    fig = plots.map_vs_prediction_time(runs)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points) == len(runs)
    offsets = np.concatenate([p.get_offsets() for p in points])
    assert sorted(offsets[:, 0]) == sorted(runs["prediction_ms"])
    texts = [t.get_text() for t in ax.texts]
    assert "MobileNetV1 x0.25" in texts and "VGG16, no aug" in texts
    # the three MobileNet widths with augmentation are joined by one line
    assert len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == 3
    # colour names the backbone
    vgg = [p for p, (_, r) in zip(points, runs.iterrows()) if r.backbone == "vgg16"]
    assert matplotlib.colors.to_hex(vgg[0].get_facecolor()[0]) == plots.backbone_color("vgg16")
    renders(fig)


def test_map_vs_prediction_time_draws_each_runs_interval(runs):
    from matplotlib.container import ErrorbarContainer

    with_bars = runs.assign(voc07_map_low=runs["voc07_map"] - 0.01, voc07_map_high=runs["voc07_map"] + 0.02)
    with_bars.loc[0, "voc07_map_low"] = np.nan  # a run without an interval gets no bar
    (ax,) = plots.map_vs_prediction_time(with_bars).axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(runs) - 1
    segment = bars[0].lines[2][0].get_segments()[0]
    assert segment[1, 1] - segment[0, 1] == pytest.approx(0.03)


def test_empty_frames_give_a_figure_that_says_so():
    empty = pd.DataFrame()
    for fig in (plots.map_vs_prediction_time(empty), plots.size_bins(empty), plots.nms_split(empty),
                plots.augmentation_ablation(empty), plots.mining_figure(empty),
                plots.device_times(empty, "inference_ms"), plots.training_curves({})):
        assert isinstance(fig, Figure)
        assert any("no " in t.get_text() for ax in fig.axes for t in ax.texts)
    assert tables.mining_table(empty).empty


@pytest.fixture
def hardware() -> pd.DataFrame:
    rows = []
    for device, name, threads in (("cpu", "Xeon", 2), ("cpu", "Xeon", 8), ("cuda", "Tesla T4", None)):
        for backbone, factor in (("vgg16", 4.0), ("mobilenet_v1", 1.0)):
            rows.append({"machine": "m", "device": device, "device_name": name, "threads": threads,
                         "backbone": backbone, "width": 1.0, "inference_ms": factor * 10,
                         "prediction_ms": factor * 12, "reference_prediction_ms": factor * 30,
                         "epoch_seconds": np.nan if device == "cpu" else factor * 100, "source": "x.json"})
    return pd.DataFrame(rows)


def test_device_times_one_bar_per_device_and_backbone(hardware):
    fig = plots.device_times(hardware, "prediction_ms")
    (ax,) = fig.axes
    assert n_bars(ax) == 6
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["Xeon (2 threads)", "Xeon (8 threads)", "Tesla T4"]  # CPUs first
    assert sorted(p.get_width() for p in ax.patches) == sorted(hardware["prediction_ms"])
    # epoch time measured on the GPU only: the CPU rows are left out
    fig = plots.device_times(hardware, "epoch_seconds", log=True)
    assert n_bars(fig.axes[0]) == 2 and fig.axes[0].get_xscale() == "log"
    renders(fig)
    with pytest.raises(ValueError, match="unknown metric"):
        plots.device_times(hardware, "loss")


def test_device_times_averages_duplicate_rows(hardware):
    doubled = pd.concat([hardware, hardware.assign(prediction_ms=hardware.prediction_ms * 3)])
    fig = plots.device_times(doubled, "prediction_ms")
    widths = sorted(p.get_width() for p in fig.axes[0].patches)
    assert widths == pytest.approx(sorted(hardware["prediction_ms"] * 2))


def test_size_bins_orders_bins_and_counts_images(runs):
    shuffled = runs.iloc[:4][list(runs.columns[::-1])]  # bin columns in reverse order
    fig = plots.size_bins(shuffled)
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert [t.split(" %")[0] for t in ticks] == list(BINS)
    assert ticks[0] == "0-5 %\n5 images" and ticks[-1] == "80-100 %\n0 images"
    assert n_bars(ax) == 4 * 6  # NaN in 80-100 draws nothing
    renders(fig)


@pytest.fixture
def mining() -> pd.DataFrame:
    return pd.DataFrame([
        run_row("mobilenet_v1", mining="3:1", mAP=0.55, ms=30.0),
        run_row("mobilenet_v1", mining="none", mAP=0.35, ms=50.0),
        run_row("vgg16", mining="3:1", mAP=0.62, ms=120.0),
        run_row("vgg16", mining="none", mAP=0.40, ms=160.0),
    ])


def test_mining_table_values(mining):
    table = tables.mining_table(mining)
    assert list(table.index) == ["VGG16", "MobileNetV1"]
    assert list(table.columns) == ["mAP, mining 3:1", "mAP, no mining",
                                   "prediction ms, mining 3:1", "prediction ms, no mining"]
    assert table.loc["VGG16", "mAP, no mining"] == pytest.approx(0.40)
    assert table.loc["MobileNetV1", "mAP, mining 3:1"] == pytest.approx(0.55)
    assert table.loc["MobileNetV1", "prediction ms, no mining"] == pytest.approx(50.0)
    assert table.loc["VGG16", "prediction ms, mining 3:1"] == pytest.approx(120.0)


def test_mining_table_averages_repeats_and_leaves_gaps(mining):
    extra = pd.DataFrame([run_row("vgg16", mining="3:1", mAP=0.58, ms=100.0)])
    table = tables.mining_table(pd.concat([mining, extra]).iloc[[0, 2, 3, 4]])
    assert table.loc["VGG16", "mAP, mining 3:1"] == pytest.approx(0.60)
    assert np.isnan(table.loc["MobileNetV1", "mAP, no mining"])


def test_mining_figure_two_panels(mining):
    fig = plots.mining_figure(mining)
    assert len(fig.axes) == 2
    assert [n_bars(ax) for ax in fig.axes] == [4, 4]
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == pytest.approx(sorted(mining["voc07_map"]))
    renders(fig)


def test_nms_split_stacks_forward_and_postprocessing(runs):
    df = runs.iloc[[0, 2]]
    fig = plots.nms_split(df)
    (ax,) = fig.axes
    assert n_bars(ax) == 2 * 2 * 2  # runs x paths x stages
    table = tables.nms_table(df)
    ref = table[(table.path == "reference loop") & (table.run == "VGG16")].iloc[0]
    assert ref["forward"] == pytest.approx(96.0) and ref["total"] == pytest.approx(240.0)
    assert ref["post-processing share"] == pytest.approx(0.6)
    renders(fig)


def test_nms_split_uses_decode_and_nms_columns_when_present(runs):
    df = runs.iloc[[2]].assign(decode_ms=1.0, nms_ms=5.0, reference_decode_ms=1.5, reference_nms_ms=40.0)
    fig = plots.nms_split(df)
    assert n_bars(fig.axes[0]) == 2 * 3
    table = tables.nms_table(df)
    assert list(table["NMS"]) == [5.0, 40.0]


def test_augmentation_ablation_bars_in_order():
    df = pd.DataFrame([run_row("mobilenet_v1", augment=a, mAP=m) for a, m in
                       (("no mirror", 0.53), ("none", 0.40), ("all", 0.55), ("no crop", 0.50))])
    fig = plots.augmentation_ablation(df)
    (ax,) = fig.axes
    assert n_bars(ax) == 4
    assert [t.get_text() for t in ax.get_yticklabels()] == ["all", "none", "no crop", "no mirror"]
    assert any("(-0.150)" in t.get_text() for t in ax.texts)
    renders(fig)


def test_training_curves_lines_and_missing_validation():
    h = pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "loc_loss": [1.0, 0.8, 0.6],
                      "cls_loss": [2.0, 1.2, 0.9], "val_voc07_map": [np.nan, 0.2, 0.3]})
    fig = plots.training_curves({"run a": h})
    loss_ax, map_ax = fig.axes
    assert len(loss_ax.lines) == 3 and len(map_ax.lines) == 1
    assert list(map_ax.lines[0].get_xdata()) == [2, 3]
    fig = plots.training_curves({"a": h, "b": h.assign(val_voc07_map=np.nan)})
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1
    fig = plots.training_curves({"a": h.assign(val_voc07_map=np.nan)})
    assert "no validation" in fig.axes[1].texts[0].get_text()
    renders(fig)


def test_draw_detections_filters_and_names_boxes():
    image = np.zeros((60, 80, 3), np.uint8)
    boxes = np.array([[1, 2, 30, 40], [10, 10, 70, 50], [0, 0, 5, 5]], dtype=np.float32)
    fig = plots.draw_detections(image, boxes, np.array([1, 12, 3]), np.array([0.9, 0.6, 0.1]),
                                ["aeroplane", "b", "c"] + [f"x{i}" for i in range(8)] + ["dog"],
                                score_threshold=0.5)
    (ax,) = fig.axes
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == 2
    assert rects[0].get_xy() == (1.0, 2.0) and rects[0].get_width() == 29.0
    assert [t.get_text() for t in ax.texts] == ["aeroplane 0.90", "dog 0.60"]
    # into a given axes, ground truth without scores
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    assert plots.draw_detections(image, boxes[:1], [2], None, ["a", "b"], ax=ax2) is fig2
    assert ax2.texts[0].get_text() == "b"


def test_detection_grid():
    image = np.zeros((40, 40, 3), np.uint8)
    det = {"boxes": np.array([[1, 1, 10, 10]]), "labels": np.array([1]), "scores": np.array([0.8])}
    fig = plots.detection_grid([(image, det, ["cat"])] * 3, ncols=2)
    assert len(fig.axes) == 4
    assert sum(len(ax.patches) for ax in fig.axes) == 3


def grid_priors(sizes_boxes):
    """Priors in the model's layout: map by map, rows outer, boxes of a cell together."""
    out = []
    for f, b in sizes_boxes:
        c = (np.arange(f) + 0.5) / f
        for cy in c:
            for cx in c:
                for k in range(b):
                    s = 0.1 * (k + 1)
                    out.append([cx, cy, s, s * 0.5])
    return np.array(out)


def test_prior_layout_recovers_maps():
    priors = grid_priors([(5, 4), (3, 6), (2, 6), (1, 4)])
    layout = tables.prior_layout(priors)
    assert [(m.size, m.boxes_per_cell, m.start) for m in layout] == [(5, 4, 0), (3, 6, 100), (2, 6, 154), (1, 4, 178)]
    assert sum(m.count for m in layout) == len(priors)
    with pytest.raises(ValueError, match="not square"):
        tables.prior_layout(priors[:8])  # two cells of a 5x5 map


def test_prior_layout_matches_the_model_priors():
    import ssdstudy.model.priors as priors_mod

    for config in (priors_mod.VGG16_PRIORS, priors_mod.MOBILENET_V1_PRIORS):
        layout = tables.prior_layout(priors_mod.generate_priors(config).numpy())
        assert tuple(m.size for m in layout) == config.feature_map_sizes
        assert tuple(m.boxes_per_cell for m in layout) == config.boxes_per_cell


def test_draw_priors_one_panel_per_map():
    priors = grid_priors([(5, 4), (3, 6), (1, 4)])
    fig = plots.draw_priors(np.zeros((50, 100, 3), np.uint8), priors, points=[(0.5, 0.5), (0.1, 0.1)])
    assert len(fig.axes) == 3
    assert [len(ax.patches) for ax in fig.axes] == [8, 12, 8]
    # a 5x5 map: the centre cell's smallest box, in pixels of the 100 x 50 image
    first = fig.axes[0].patches[0]
    assert first.get_xy() == pytest.approx(((0.5 - 0.05) * 100, (0.5 - 0.025) * 50))
    fig = plots.draw_priors(None, priors, layout=[(5, 4), (3, 6), (1, 4)])
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="layout covers"):
        plots.draw_priors(None, priors, layout=[(5, 4)])


def test_to_uint8_image_inverts_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = (image.transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert np.array_equal(plots.to_uint8_image(x, mean, std), image)
    with pytest.raises(ValueError):
        plots.to_uint8_image(np.zeros((4, 5, 3)), mean, std)


def test_augmentation_grid_titles_and_boxes():
    image = np.zeros((20, 30, 3), np.uint8)
    fig = plots.augmentation_grid({"original": image, "mirror": image, "crop": image},
                                  boxes=[np.array([[1, 1, 5, 5]]), None, np.zeros((0, 4))], ncols=2)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == ["original", "mirror", "crop"]
    assert [len(ax.patches) for ax in fig.axes] == [1, 0, 0, 0]
    assert len(plots.augmentation_grid([image, image]).axes) == 2


def test_run_tables():
    metrics = {"ap_per_class": {"cat": {"voc07": 0.5, "voc": 0.52}, "dog": {"voc07": 0.7, "voc": 0.71}}}
    table = tables.ap_table(metrics)
    assert list(table.index) == ["dog", "cat"] and table.loc["cat", "AP (VOC10+)"] == 0.52
    timing = {"cpu": {"device_name": "Xeon", "threads": 2,
                      "inference_ms": {"median": 10.0, "iqr": 1.0, "mean": 10.2, "n": 5},
                      "prediction_ms": {"median": 12.0, "iqr": 1.5, "mean": 12.1, "n": 5},
                      "throughput_images_per_s": 90.0, "peak_memory_mb": 500.0}}
    t = tables.timing_table(timing)
    assert t.loc["cpu", "prediction ms"] == 12.0 and t.loc["cpu", "inference IQR"] == 1.0
    assert np.isnan(t.loc["cpu", "reference prediction ms"])
    assert tables.timing_table({}).empty


def test_no_figure_is_left_open_in_pyplot(runs):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plots.map_vs_prediction_time(runs)
    plots.size_bins(runs)
    assert len(plt.get_fignums()) == before
    assert matplotlib.rcParams["font.size"] == matplotlib.rcParamsDefault["font.size"]


def test_prior_table_counts_boxes():
    priors = grid_priors([(5, 4), (1, 4)])
    table = tables.prior_table(priors)
    assert list(table["feature map"]) == ["5x5", "1x1"]
    assert list(table["default boxes"]) == [100, 4]
    # consecutive 1x1 maps need the layout
    priors = grid_priors([(2, 4), (1, 6), (1, 6)])
    table = tables.prior_table(priors, layout=[(2, 4), (1, 6), (1, 6)])
    assert list(table["boxes per cell"]) == [4, 6, 6]
    # boxes (0.1k, 0.05k): sqrt(w h) = 0.1 k / sqrt(2)
    assert table.loc[0, "smallest box (%)"] == pytest.approx(round(10 / np.sqrt(2), 1))


def test_device_times_chooses_a_log_axis_for_wide_ranges(hardware):
    assert plots.device_times(hardware, "inference_ms").axes[0].get_xscale() == "linear"
    wide = hardware.assign(inference_ms=np.where(hardware.device == "cuda", 0.5, 400.0))
    assert plots.device_times(wide, "inference_ms").axes[0].get_xscale() == "log"
    assert plots.device_times(wide, "inference_ms", log=False).axes[0].get_xscale() == "linear"


def test_device_times_keeps_machines_apart_and_marks_busy_bars(hardware):
    other = hardware.assign(machine="laptop", prediction_ms=hardware.prediction_ms * 10,
                            busy=hardware.backbone == "vgg16")
    fig = plots.device_times(pd.concat([hardware.assign(busy=False), other]), "prediction_ms")
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "Xeon (2 threads) [m]" in labels and "Xeon (2 threads) [laptop]" in labels
    assert n_bars(ax) == 12  # never averaged across machines
    notes = [t.get_text() for t in ax.texts if t.get_text().endswith("(busy)")]
    assert len(notes) == 3  # VGG16 on each of the laptop's devices
    renders(fig)
