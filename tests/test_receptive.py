"""Receptive fields: the measured theoretical field equals the field derived by hand for
a chain of layers; the effective field's square holds what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssdstudy.model import build_from_config, build_model
from ssdstudy.receptive import (
    _mass_square,
    box_sides,
    effective_fields,
    field_table,
    study_fields,
    theoretical_fields,
)


def chain(layers: list[tuple[int, int]], taps: list[int]) -> list[int]:
    """Receptive field sides after the layers listed in ``taps`` of a chain of
    ``(kernel, stride)`` layers: r += (k - 1) * jump, then jump *= stride."""
    r, jump, out = 1, 1, []
    for i, (k, s) in enumerate(layers):
        r += (k - 1) * jump
        jump *= s
        if i in taps:
            out.append(r)
    return out


EXTRAS = [(1, 1), (3, 2)] * 4  # MobileNetV1-SSD's four extra blocks (SqueezeNet's too)


def test_mobilenet_fields_are_those_of_its_chain_of_layers():
    # conv 3x3/2, then 13 blocks of (depthwise 3x3/s, pointwise 1x1)
    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    layers = [(3, 2)] + [layer for s in strides for layer in ((3, s), (1, 1))] + EXTRAS
    taps = [22, 26] + [26 + 2 * i for i in range(1, 5)]  # after blocks 11 and 13, then each extra
    model = build_model("mobilenet_v1", num_classes=3, width=0.25)
    assert theoretical_fields(model) == chain(layers, taps) == [219, 315, 379, 507, 763, 1275]


def test_squeezenet_fields_count_the_wider_branch_of_each_fire_module():
    fire = [(1, 1), (3, 1)]  # squeeze, then the 3x3 expand (the 1x1 expand sees less)
    pool = [(3, 2)]
    layers = [(3, 2)] + pool + fire * 2 + pool + fire * 2 + pool + fire * 4 + pool + fire * 2 + EXTRAS
    after_fire9 = 1 + 1 + 4 + 1 + 4 + 1 + 8 - 1
    taps = [after_fire9, after_fire9 + 5] + [after_fire9 + 5 + 2 * i for i in range(1, 5)]
    model = build_model("squeezenet", num_classes=3, width=0.25)
    assert theoretical_fields(model) == chain(layers, taps)


def test_the_mass_square():
    delta = np.zeros((31, 31))
    delta[10, 20] = 1.0
    assert _mass_square(delta, 0.95) == {"side": 1.0, "centre_x": 20.0, "centre_y": 10.0}
    block = np.zeros((31, 31))
    block[10:21, 5:16] = 1.0  # an 11 x 11 square centred at (10, 15)
    found = _mass_square(block, 1.0)
    assert found["side"] == 11.0 and (found["centre_x"], found["centre_y"]) == (10.0, 15.0)
    assert _mass_square(block, 0.5)["side"] < 11.0


def test_effective_fields_lie_inside_the_image_and_the_theoretical_field():
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", num_classes=3, width=0.25, image_size=128)
    images = [torch.randn(3, 128, 128) for _ in range(2)]
    fields = effective_fields(model, images)
    theory = theoretical_fields(model)
    assert len(fields) == len(theory) == 6
    for found, limit in zip(fields, theory, strict=True):
        assert 1 <= found["side"] <= min(limit, 128) and found["images"] == 2
        assert found["side_low"] <= found["side"] <= found["side_high"] <= 128
        assert 0 <= found["centre_x"] < 128 and 0 <= found["centre_y"] < 128


def test_box_sides_and_the_table():
    model = build_model("mobilenet_v1", num_classes=3, width=0.25)
    first = box_sides(model)[0]  # 60 px squares, sqrt(60 * 105), 60 * sqrt(3)
    assert first == pytest.approx({"smallest": 60.0, "square": (60 * 105) ** 0.5, "longest": 60 * 3 ** 0.5})
    table = field_table(model)
    assert list(table["map_size"]) == [19, 10, 5, 3, 2, 1]
    assert (table["theoretical"] > table["box_longest"]).all()


def test_the_study_fields_and_where_they_disagree_with_the_boxes(tmp_path):
    from ssdstudy.plots import receptive_fields
    from ssdstudy.receptive import disagreements, load_fields

    fields = load_fields("smoke", results=tmp_path)  # nothing trained: theoretical fields only
    assert list(dict.fromkeys(fields["label"])) == ["VGG16", "MobileNetV1", "SqueezeNet 1.1"]
    assert "effective" not in fields.columns
    text = disagreements(fields)
    assert "**VGG16**: the theoretical fields of the 8x8, 4x4, 2x2, 2x2, 2x2 maps are more than twice" in text
    small = fields.iloc[:1].assign(theoretical=10.0, effective=5.0)
    assert "theoretical field (10 px) is smaller than the longest default box (18 px)" in disagreements(small)
    assert "effective field (5 px)" in disagreements(small)
    unsure = small.assign(effective_low=3.0, effective_high=20.0)  # the interval reaches the 18 px box
    assert "too close to the longest default box (18 px) to call smaller" in disagreements(unsure)
    sure = small.assign(effective_low=3.0, effective_high=9.0)
    assert "effective field (5 px) is smaller than the longest default box (18 px)" in disagreements(sure)
    assert len(receptive_fields(fields).axes) == 3


def test_published_fields_are_read_back(tmp_path):
    import json

    from ssdstudy.receptive import fields_path, load_fields, write_fields

    path = write_fields("smoke", results=tmp_path, images=1)  # no checkpoint here: theoretical only
    assert path == fields_path("smoke", tmp_path)
    data = json.loads(path.read_text())
    assert data["effective_images"] == 1 and data["git"]["commit"]
    assert load_fields("smoke", results=tmp_path).equals(load_fields("smoke", results=tmp_path / "elsewhere"))


def test_fields_command_checks_its_image_count(capsys):
    from ssdstudy.cli import main

    assert main(["study", "fields", "--profile", "smoke", "--images", "0"]) == 2
    assert "--images must be at least 1" in capsys.readouterr().err


def test_a_baseline_without_checkpoint_is_measured_on_another_seed_of_its_setting(tmp_path):
    """The effective field needs a trained model: where the backbone experiment's
    MobileNetV1 has no checkpoint here, that of its seed-1 run (seeds experiment) is
    measured, and the row names that run."""
    from ssdstudy.config import read_profile
    from ssdstudy.study import read_experiment
    from ssdstudy.workspace import Workspace

    prof = read_profile("smoke")
    seed1 = next(c for c in read_experiment("seeds", prof).runs
                 if c.model.backbone == "mobilenet_v1" and c.train.seed == 1 and c.augment.enabled
                 and c.model.width == 1.0)
    baseline = next(c for c in read_experiment("backbone", prof).runs
                    if c.model.backbone == "mobilenet_v1" and c.augment.enabled)
    names = Workspace(seed1, progress=False).class_names
    torch.manual_seed(0)
    model = build_from_config(seed1.model, len(names) + 1)
    folder = tmp_path / "smoke" / "runs" / seed1.run_id
    folder.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": seed1.to_dict(), "class_names": list(names)},
               folder / "checkpoint.pt")
    fields = study_fields("smoke", results=tmp_path, images=1)
    mobilenet = fields[fields["label"] == "MobileNetV1"]
    assert set(mobilenet["run_id"]) == {seed1.run_id} and baseline.run_id not in set(fields["run_id"])
    assert mobilenet["effective"].notna().all()
    assert fields[fields["label"] == "VGG16"]["effective"].isna().all()  # no checkpoint of any seed
