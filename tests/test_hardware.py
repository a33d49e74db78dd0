"""Hardware files read back: only those comparable with a profile are merged, and every
row says whose weights were timed and whether the machine was busy."""

from __future__ import annotations

import json

import pandas as pd

from ssdstudy.config import load_profile
from ssdstudy.results import hardware_rows, load_hardware, timing_notes


def timing(median=10.0, iqr=1.0, **extra):
    return {"device": "cpu", "device_name": "Xeon", "threads": 2,
            "inference_ms": {"median": median, "iqr": iqr}, "prediction_ms": {"median": median + 2, "iqr": iqr},
            "stages_ms": {"forward": median, "decode": 0.5, "nms": 1.5, "postprocess": 2.0,
                          "reference_decode": 0.5, "reference_nms": 30.0},
            **extra}


def entry(backbone="mobilenet_v1", size=128, **extra):
    return {"backbone": backbone, "width": 1.0, "image_size": size, "timing": timing(), **extra}


def write(folder, name, profile, entries):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"machine": name[:-5], "profile": profile, "entries": entries}))


def test_only_files_of_the_profile_at_its_input_size_are_merged(tmp_path):
    size = load_profile("smoke").model.image_size
    hw = tmp_path / "hardware"
    write(hw, "same.json", "smoke", [entry(size=size), entry(size=size + 32)])
    write(hw, "other-profile.json", "default", [entry(size=size)])
    write(hw, "no-profile.json", None, [entry(size=size)])
    rows = load_hardware("smoke", results=tmp_path)
    assert list(rows["source"]) == ["same.json"] and list(rows["image_size"]) == [size]
    # without a profile every file is read
    assert len(load_hardware(None, results=tmp_path)) == 4


def test_rows_say_whose_weights_and_whether_the_machine_was_busy():
    data = {"machine": "m", "profile": "smoke", "entries": [
        entry(weights="trained (run abc)", trained=True),
        entry("vgg16", weights="random (no checkpoint of run def here)", trained=False,
              timing=timing(busy=True, busy_reasons=["other processes kept 1.9 of 2 CPUs busy"], nms_candidates=1600.0)),
        # a file written before the busy flag: its spread decides
        entry(timing=timing(median=14.0, iqr=260.0)),
    ]}
    rows = pd.DataFrame(hardware_rows(data, "m.json"))
    assert list(rows["trained"]) == [True, False, False]
    assert list(rows["busy"]) == [False, True, True]
    assert rows.loc[1, "busy_reason"] == "other processes kept 1.9 of 2 CPUs busy"
    assert "inference spread" in rows.loc[2, "busy_reason"]
    assert rows.loc[0, "decode_ms"] == 0.5 and rows.loc[0, "nms_ms"] == 1.5 and rows.loc[0, "reference_nms_ms"] == 30.0
    assert rows.loc[2, "weights"] == "not recorded"

    notes = timing_notes(rows)
    assert "trained (run abc)" in notes and "random (no checkpoint of run def here)" in notes
    assert "worst case" in notes and "1,600 boxes per image" in notes
    assert ":::{warning}" in notes
    flagged = [line for line in notes.splitlines() if line.startswith("- ")]
    assert len(flagged) == 2
    assert flagged[0].startswith("- VGG16 on Xeon (2 threads) [m, m.json]: other processes")
    assert timing_notes(pd.DataFrame()) == ""
    # nothing busy, all trained: a note on the weights, no warning
    quiet = timing_notes(rows.iloc[[0]])
    assert "warning" not in quiet and "worst case" not in quiet
