"""The tiling chapter's table: each change of the default boxes against the own boxes,
settled by the test set's bootstrap and held against the spread between seeds."""

from __future__ import annotations

import pandas as pd
import pytest

from ssdstudy import tiling
from ssdstudy.seednoise import SeedNoise
from tests.test_bootstrap import _binned_frame, binned_outcomes, small_and_large

SETTING = {"backbone": "mobilenet_v1", "augment": "all"}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """The own boxes find the large objects and a third of the small ones; the change
    finds every object."""
    monkeypatch.setattr(tiling, "default_boxes", lambda run_dir: 3000)  # no config.yaml in these folders
    records, found = small_and_large()
    own = _binned_frame(tmp_path, "own", binned_outcomes(records, found["large"]), tiling="own", **SETTING)
    change = _binned_frame(tmp_path, "small", binned_outcomes(records, found["all"]), tiling="scales 0.1-0.9",
                           **SETTING)
    return pd.concat([own, change], ignore_index=True)


def seeds_of(own: pd.Series, spread: float) -> SeedNoise:
    rows = [{**own.to_dict(), "seed": s, "label": "MobileNetV1", "voc07_map": own["voc07_map"] + d,
             "bin 0-5": own["bin 0-5"] + d} for s, d in enumerate((0.0, spread))]
    return SeedNoise(pd.DataFrame(rows))


def test_a_clear_gain_is_better(runs):
    table = tiling.tiling_table(runs, resamples=200).set_index("default boxes")
    change = table.loc["scales 0.1-0.9"]
    assert change["vs own: verdict"] == "better" and change["vs own: 0-5 % verdict"] == "better"
    assert pd.isna(table.loc["own", "vs own: verdict"])


def test_a_gain_within_the_spread_between_seeds_is_too_close_to_call(runs):
    own = runs.iloc[0]
    gain = runs.iloc[1]["voc07_map"] - own["voc07_map"]
    wide = tiling.tiling_table(runs, resamples=200, seeds=seeds_of(own, gain + 0.01)).set_index("default boxes")
    verdict = wide.loc["scales 0.1-0.9", "vs own: verdict"]
    assert verdict == f"too close to call: within the spread between seeds ({gain + 0.01:.3f})"
    narrow = tiling.tiling_table(runs, resamples=200, seeds=seeds_of(own, gain / 4)).set_index("default boxes")
    assert narrow.loc["scales 0.1-0.9", "vs own: verdict"] == "better"


def test_the_findings_name_each_change_and_its_gain_on_small_objects(runs):
    table = tiling.tiling_table(runs, resamples=200)
    table["prediction ms"] = [30.0, 36.0]
    table["prediction ms IQR"] = [1.0, 1.0]
    text = tiling.findings(table)
    assert text.startswith("Against the own default boxes (3,000 boxes, VOC07 mAP")
    change = next(line for line in text.splitlines() if line.startswith("- **scales 0.1-0.9**"))
    assert "(3,000 boxes, +0%)" in change and "better" in change and "prediction 36 ms against 30 ms (+20%)" in change
    assert "objects of 5-10 %: no test images" in change  # the generated case has no 5-10 % objects
    assert text.endswith("A gain on small objects beyond the noise: scales 0.1-0.9 (0-5 %).")
    table["prediction ms"] = [30.0, 30.5]
    assert "prediction 30.5 ms against 30 ms (within the timings' spread)" in tiling.findings(table)
    close = tiling.tiling_table(runs, resamples=200, seeds=seeds_of(runs.iloc[0], 1.0))
    assert "None of the changes computed so far settles a gain" in tiling.findings(close)
    assert tiling.findings(close[close["default boxes"] != "own"]) == ""


def test_a_restarted_run_cannot_be_compared(runs):
    runs = runs.assign(loss_jumps=["", "epoch 23: 4.68 to 11.69, undoing every earlier epoch"],
                       restarted_at=[float("nan"), 23.0], label=["own", "small scales"])
    table = tiling.tiling_table(runs, resamples=200).set_index("default boxes")
    change = table.loc["scales 0.1-0.9"]
    assert change["vs own: verdict"].startswith("cannot test: small scales restarted: its training loss jumped at "
                                                "epoch 23")
    assert change["vs own: 0-5 % verdict"] == change["vs own: verdict"]
    assert change["training loss jumps"] == "epoch 23: 4.68 to 11.69, undoing every earlier epoch"
    assert table.loc["own", "training loss jumps"] == "none"
    # a restart is named as the cause even where the restarted run fell below the floor
    low = runs.assign(**{"bin 0-5": [0.5, 0.02]})
    verdict = tiling.tiling_table(low, resamples=100).set_index("default boxes").loc["scales 0.1-0.9"]
    assert verdict["vs own: 0-5 % verdict"].startswith("cannot test: small scales restarted")
